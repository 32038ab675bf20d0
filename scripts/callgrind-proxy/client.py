#!/usr/bin/env python3
"""Client for scripts/callgrind-proxy/run.sh: PORT N CONNS, N sequential GETs spread over CONNS keep-alive connections; prints how many got 200."""
import socket, sys, time
port=int(sys.argv[1]); n=int(sys.argv[2]); conns=int(sys.argv[3]) if len(sys.argv)>3 else 1
req=b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n"
ok=0
for k in range(conns):
    c=socket.create_connection(("127.0.0.1",port))
    buf=b""
    for i in range(n//conns):
        c.sendall(req)
        while True:
            if b"\r\n\r\n" in buf:
                head,rest=buf.split(b"\r\n\r\n",1)
                cl=0
                for line in head.split(b"\r\n")[1:]:
                    k_,_,v=line.partition(b":")
                    if k_.strip().lower()==b"content-length": cl=int(v)
                if len(rest)>=cl:
                    if head.startswith(b"HTTP/1.1 200"): ok+=1
                    buf=rest[cl:]; break
            d=c.recv(65536)
            if not d: raise SystemExit("closed")
            buf+=d
    c.close()
print(ok)
