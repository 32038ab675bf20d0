#!/usr/bin/env python3
"""Per-request instruction change by function between two builds.

usage: funcdiff.py A-1000.out A-3000.out B-1000.out B-3000.out [ROWS]

Each pair is one build's callgrind output from run.sh at N=1000 and N=3000;
a function's per-request cost is its self cost difference ÷ 2000. Prints
B − A, A and B per function, largest changes first, then the sums over
the gateway's own functions (but the timer wheel's): all of them, and those
outside async bodies; and the whole process's functions but those whose
cost depends on timing ("steady"). Totals of whole runs move by ±1,000
instructions per request between identical runs, and so does the code of
async bodies, timers, parking and wakers (how many event-loop turns, and
so polls, a request takes depends on timing); the rest does not, so
compare those. "steady" also counts library code the gateway calls (libc,
httparse, mimalloc, core), so a change that moves work between the
gateway's functions and the libraries' shows there as it is.
"""
import collections
import re
import subprocess
import sys


def load(path):
    text = subprocess.run(
        ["callgrind_annotate", "--threshold=100", "--auto=no", path],
        capture_output=True, text=True, check=True).stdout
    cost = collections.Counter()
    started = False
    for line in text.split("\n"):
        if "file:function" in line:
            started = True
            continue
        m = started and re.match(r"^\s*([0-9,]+) \(\s*[0-9.]+%\)\s+(\S.*)$", line)
        if not m:
            continue
        name = m.group(2).split(":", 1)[-1]
        cost[re.sub(r" \[.*\]$", "", name)] += int(m.group(1).replace(",", ""))
    return cost


a1, a3, b1, b3 = (load(p) for p in sys.argv[1:5])
rows = []
for f in set(a3) | set(b3):
    a, b = (a3[f] - a1[f]) / 2000, (b3[f] - b1[f]) / 2000
    rows.append((b - a, a, b, f))
rows.sort(key=lambda r: -abs(r[0]))
for d, a, b, f in rows[: int(sys.argv[5]) if len(sys.argv) > 5 else 30]:
    print(f"{d:+7.0f} {a:7.0f} {b:7.0f}  {f[:130]}")
own = [r for r in rows if "shardgate" in r[3] and "timer" not in r[3]]
plain = [r for r in own if "{{closure}}" not in r[3]]
# `Pin<P>`'s poll is a boxed future's: the async body inlined into it.
TIMING = re.compile(
    r"monoio::time|park|epoll_wait|Timespec|clock_gettime|timer::|raw::poll|waker|PollFn"
    r"|Pin<P> as core::future"
    r"|block_on|recv|schedule|\{\{closure\}\}|Notify|notify::Wait|asynccancel|sleep|Sleep"
    r"|scoped_tls|slab|Op<|LegacyDriver|mio::")
steady = [r for r in rows if not TIMING.search(r[3])]
for label, part in (
    ("gateway, all", own),
    ("gateway, outside async bodies", plain),
    ("steady: whole process but async bodies, timers, parking, wakers", steady),
):
    a, b = sum(r[1] for r in part), sum(r[2] for r in part)
    print(f"{b - a:+7.0f} {a:7.0f} {b:7.0f}  = {label}")
