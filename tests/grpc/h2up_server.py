"""A gRPC server (grpcio, generic handlers, raw bytes messages) for the
HTTP/2 upstream and gRPC-Web tests. Prints its port, then serves until
stdin closes.

Methods of `test.Echo`:
- Unary: answers `echo:` + the request; trailing metadata `x-trailer: yes`.
- Stream: the request is a count N; sends `message 0`, then waits for
  Release (at most 10 s), then sends `message 1` .. `message N-1`.
- Release: lets a waiting Stream go on.
- Sleep: waits 3 s (or until its deadline), recording the time remaining
  it was given; LastDeadline answers that time in ms (`none` without one).
- Fail: aborts with NOT_FOUND `no such item` (a trailers-only answer).
"""

import sys
import threading
from concurrent import futures

import grpc

release = threading.Event()
last_deadline = {"ms": "unset"}


def unary(request, context):
    context.set_trailing_metadata((("x-trailer", "yes"),))
    return b"echo:" + request


def stream(request, context):
    n = int(request.decode() or "3")
    yield b"message 0"
    release.wait(10)
    release.clear()
    for i in range(1, n):
        yield ("message %d" % i).encode()


def do_release(request, context):
    release.set()
    return b"released"


def sleep(request, context):
    left = context.time_remaining()
    last_deadline["ms"] = "none" if left is None else str(int(left * 1000))
    done = threading.Event()
    context.add_callback(done.set)
    done.wait(3)
    return b"slept"


def deadline(request, context):
    return last_deadline["ms"].encode()


def fail(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such item")


def main():
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Release": grpc.unary_unary_rpc_method_handler(do_release),
        "Sleep": grpc.unary_unary_rpc_method_handler(sleep),
        "LastDeadline": grpc.unary_unary_rpc_method_handler(deadline),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(0)


if __name__ == "__main__":
    main()
