#!/usr/bin/env python3
"""Concurrent client for scripts/callgrind-proxy/run.sh (BUSY=1):
PORT N CONNS [SYNC]. Opens CONNS keep-alive connections and keeps one
request in flight on each. With SYNC (a path), it first sends CONNS * 2
requests to warm up, then writes SYNC.warm, waits for SYNC.go, and sends
N more; otherwise it sends N. Prints how many of the counted requests got
200, and the other statuses to stderr."""
import collections, os, selectors, socket, sys, time
from framing import split_response
port, n, conns = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
sync = sys.argv[4] if len(sys.argv) > 4 else None
req = b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n"
sel = selectors.DefaultSelector()
bufs = {}
socks = []
for _ in range(conns):
    c = socket.create_connection(("127.0.0.1", port))
    c.setblocking(False)
    bufs[c] = b""
    socks.append(c)
    sel.register(c, selectors.EVENT_READ)


def run(count):
    """Sends `count` requests, one in flight per connection; returns the statuses."""
    statuses = collections.Counter()
    sent = done = 0
    for c in socks[:count]:
        c.sendall(req)
        sent += 1
    while done < sent:
        for key, _ in sel.select(timeout=120):
            c = key.fileobj
            d = c.recv(65536)
            if not d:
                raise SystemExit("closed")
            buf = bufs[c] + d
            while (answer := split_response(buf)) is not None:
                status, buf = answer
                statuses[status] += 1
                done += 1
                if sent < count:
                    c.sendall(req)
                    sent += 1
            bufs[c] = buf
    return statuses


if sync:
    run(conns * 2)
    open(sync + ".warm", "w").close()
    while not os.path.exists(sync + ".go"):
        time.sleep(0.05)
statuses = run(n)
print(statuses.pop("200", 0))
if statuses:
    print("other statuses:", dict(statuses), file=sys.stderr)
