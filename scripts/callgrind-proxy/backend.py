#!/usr/bin/env python3
"""Keep-alive backend for scripts/callgrind-proxy/run.sh: answers every request with a small JSON body."""
import socket, threading, sys
body=b'{"ok":true}'
resp=b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"%(len(body),body)
def serve(c):
    buf=b""
    while True:
        d=c.recv(65536)
        if not d: return
        buf+=d
        while b"\r\n\r\n" in buf:
            _,buf=buf.split(b"\r\n\r\n",1)
            c.sendall(resp)
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)
s.bind(("127.0.0.1",int(sys.argv[1]))); s.listen(4096)
while True:
    c,_=s.accept(); threading.Thread(target=serve,args=(c,),daemon=True).start()
