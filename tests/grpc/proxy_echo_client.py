"""A real gRPC client (grpcio) for the pass-through tests. Usage:
proxy_echo_client.py ADDR CASE; prints one JSON object with what it saw.
"""
import json
import queue
import sys
import threading
import time

import grpc


def call_info(call):
    trailers = dict(call.trailing_metadata() or ())
    return {"code": call.code().name, "details": call.details(), "trailers": trailers}


def main():
    addr, case = sys.argv[1], sys.argv[2]
    channel = grpc.insecure_channel(addr)
    grpc.channel_ready_future(channel).result(timeout=10)
    out = {}
    if case == "unary":
        f = channel.unary_unary("/test.Echo/Unary")
        resp, call = f.with_call(b"hello", metadata=(("x-tag", "t1"),))
        out = {"reply": resp.decode(), **call_info(call)}
    elif case == "unary-deadline":
        f = channel.unary_unary("/test.Echo/Unary")
        resp, call = f.with_call(b"hi", timeout=30)
        out = {"reply": resp.decode(), **call_info(call)}
    elif case in ("unary-fail", "unary-slow"):
        f = channel.unary_unary("/test.Echo/Unary")
        started = time.monotonic()
        try:
            arg = b"fail" if case == "unary-fail" else b"slow"
            f(arg, timeout=(1.0 if case == "unary-slow" else 10))
            out = {"code": "OK"}
        except grpc.RpcError as e:
            out = {"code": e.code().name, "details": e.details(),
                   "took": time.monotonic() - started}
    elif case == "server":
        f = channel.unary_stream("/test.Echo/ServerStream")
        started = time.monotonic()
        call = f(b"10")
        got, first_at = [], None
        for m in call:
            if first_at is None:
                first_at = time.monotonic() - started
            got.append(m.decode())
        out = {"messages": got, "first_at": first_at,
               "total": time.monotonic() - started, **call_info(call)}
    elif case == "client":
        f = channel.stream_unary("/test.Echo/ClientStream")
        resp, call = f.with_call(iter([b"a", b"b", b"c" * 100000]))
        out = {"reply_len": len(resp), "reply_head": resp[:6].decode(), **call_info(call)}
    elif case == "bidi":
        # Ping-pong: each message is sent only after the answer to the
        # previous one arrived, which needs both directions open at once.
        f = channel.stream_stream("/test.Echo/Bidi")
        q = queue.Queue()

        def requests():
            while True:
                item = q.get()
                if item is None:
                    return
                yield item

        q.put(b"m0")
        call = f(requests(), timeout=20)
        got = []
        for i, m in enumerate(call):
            got.append(m.decode())
            if i < 4:
                q.put(b"m%d" % (i + 1))
            else:
                q.put(None)
        out = {"messages": got, **call_info(call)}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    sys.exit(main())
