#!/usr/bin/env python3
"""Opens and holds many client connections to one HTTP port on loopback.

Usage: hold.py PORT CONNS [--request] [--sources K] [--source-base B] [--window W]

Connections are spread over K source addresses (127.0.0.B .. 127.0.0.B+K-1;
B is 1 unless given) so that more than one address's ephemeral ports can be
used (each gives about 28,000 ports toward one destination, but connect()
slows down past about half of them, as it searches one parity first).
Several holders run side by side with distinct ranges, so none shares
another's ports. With --request, each connection sends one keep-alive GET
and reads its answer; with --window, at most W requests are outstanding at
once (otherwise all are sent before any answer is read). Prints
`READY <conns> connect_s=<s> request_s=<s> failed=<n> non2xx=<n>` once done
(failed: no connection or no complete answer; non2xx: answered, but not with
a 2xx status), then holds every connection open until stdin closes.
"""
import selectors
import socket
import sys
import time

IP_BIND_ADDRESS_NO_PORT = 24
REQUEST = b"GET /api/v1/items HTTP/1.1\r\nHost: scale.test\r\n\r\n"


def main():
    port, conns = int(sys.argv[1]), int(sys.argv[2])
    request = "--request" in sys.argv
    sources = 1
    if "--sources" in sys.argv:
        sources = int(sys.argv[sys.argv.index("--sources") + 1])
    base = 1
    if "--source-base" in sys.argv:
        base = int(sys.argv[sys.argv.index("--source-base") + 1])
    window = 0
    if "--window" in sys.argv:
        window = int(sys.argv[sys.argv.index("--window") + 1])
    if sources < 1 or base < 1 or base + sources - 1 > 254:
        sys.exit(f"hold.py: source addresses 127.0.0.{base}..{base + sources - 1} out of range")
    sel = selectors.DefaultSelector()
    socks, failed, non2xx = [], 0, 0
    t0 = time.monotonic()
    pending = {}
    batch = 512
    i = 0
    while i < conns or pending:
        while i < conns and len(pending) < batch:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((f"127.0.0.{base + i % sources}", 0))
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            pending[s.fileno()] = s
            sel.register(s, selectors.EVENT_WRITE)
            i += 1
        for key, _ in sel.select(timeout=10):
            s = pending.pop(key.fd)
            sel.unregister(s)
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                socks.append(s)
            else:
                failed += 1
                s.close()
        if time.monotonic() - t0 > 300:
            break
    connect_s = time.monotonic() - t0
    t1 = time.monotonic()
    if request:
        waiting = {}
        sent = 0

        def fill():
            nonlocal sent, failed
            while sent < len(socks) and (window <= 0 or len(waiting) < window):
                s = socks[sent]
                sent += 1
                try:
                    s.send(REQUEST)
                    waiting[s.fileno()] = (s, b"")
                    sel.register(s, selectors.EVENT_READ)
                except OSError:
                    failed += 1

        fill()
        deadline = time.monotonic() + 120
        while waiting and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=5):
                s, got = waiting[key.fd]
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    failed += 1
                    sel.unregister(s)
                    del waiting[key.fd]
                    continue
                got += data
                end = got.find(b"\r\n\r\n")
                if end >= 0:
                    length = 0
                    for line in got[:end].split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    if len(got) >= end + 4 + length:
                        status = got.split(b" ", 2)[1:2]
                        if not (status and status[0].startswith(b"2")):
                            non2xx += 1
                        sel.unregister(s)
                        del waiting[key.fd]
                        continue
                waiting[key.fd] = (s, got)
            fill()
        failed += len(waiting) + len(socks) - sent
    request_s = time.monotonic() - t1
    print(f"READY {len(socks)} connect_s={connect_s:.3f} request_s={request_s:.3f} failed={failed} "
          f"non2xx={non2xx}",
          flush=True)
    sys.stdin.read()
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
