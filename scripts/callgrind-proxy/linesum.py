#!/usr/bin/env python3
import re, subprocess, sys
# usage: linesum.py OUT SRCFILE start-end[,start-end...]  -> Ir summed over those source lines (all contexts)
out, src, ranges = sys.argv[1], sys.argv[2], sys.argv[3]
rs=[tuple(map(int,r.split('-'))) for r in ranges.split(',')]
txt=subprocess.run(["callgrind_annotate","--auto=yes","--show-percs=no","--context=0",out],capture_output=True,text=True).stdout
# find the annotated section for src
sec=None; lines=txt.split('\n'); i=0; total=0
cur=None; ln=None
for l in lines:
    m=re.match(r'^-- Auto-annotated source: (.*)$', l.strip()) or re.match(r'^-- (?:Auto-)?annotated source file: (.*)$', l.strip())
    if 'Auto-annotated source:' in l or 'annotated source file:' in l:
        cur = l.split(':',1)[1].strip(); ln=None; continue
    if cur is None or not cur.endswith(src): continue
    m=re.match(r'^-- line (\d+) -+', l.strip())
    if m: ln=int(m.group(1)); continue
    if ln is None: continue
    if ' => ' in l or ' <- ' in l:
        continue
    m=re.match(r'^\s*([0-9,]+|\.)\s', l)
    if m:
        if m.group(1)!='.' and any(a<=ln<=b for a,b in rs):
            total+=int(m.group(1).replace(',',''))
        ln+=1
print(total)
