#!/usr/bin/env python3
"""Client for scripts/callgrind-proxy/run.sh: PORT N CONNS, N sequential GETs spread over CONNS keep-alive connections; prints how many got 200. BROWSER_HEADERS=1 sends the fields a browser sends (11 instead of 1)."""
import os, socket, sys, time
from framing import split_response
port=int(sys.argv[1]); n=int(sys.argv[2]); conns=int(sys.argv[3]) if len(sys.argv)>3 else 1
req=b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n"
if os.environ.get("BROWSER_HEADERS"):
    # The fields a browser sends with an API call (about 560 bytes).
    req=(b"GET /x HTTP/1.1\r\nHost: localhost\r\n"
         b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36\r\n"
         b"Accept: application/json, text/plain, */*\r\nAccept-Language: en-US,en;q=0.9\r\n"
         b"Accept-Encoding: gzip, deflate, br\r\nReferer: https://app.example.com/dashboard\r\n"
         b"Origin: https://app.example.com\r\nSec-Fetch-Mode: cors\r\nSec-Fetch-Site: same-site\r\n"
         b"Cookie: session=7f3a9c2e1b4d8f6a0e5c3b9d7a1f2e4c; theme=dark\r\n"
         b"Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJl\r\n\r\n")
ok=0
for k in range(conns):
    c=socket.create_connection(("127.0.0.1",port))
    buf=b""
    for i in range(n//conns):
        c.sendall(req)
        while True:
            answer=split_response(buf)
            if answer is not None:
                status,buf=answer
                ok+=status=="200"
                break
            d=c.recv(65536)
            if not d: raise SystemExit("closed")
            buf+=d
    c.close()
print(ok)
