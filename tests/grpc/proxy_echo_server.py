"""A real gRPC server (grpcio) for the pass-through tests: service test.Echo
with raw-bytes messages in all four shapes. Prints its port, then serves
until killed.

- Unary: answers b"echo:" + request + the deadline it saw; b"fail" aborts
  NOT_FOUND; b"slow" sleeps 3 s first. Trailing metadata x-shape: unary.
- ServerStream: request is a count n; answers n messages 50 ms apart.
- ClientStream: answers the requests joined with b"+".
- Bidi: answers each request at once with b"re:" + request.
"""
import sys
import time
from concurrent import futures

import grpc


def unary(request, context):
    remaining = context.time_remaining()
    context.set_trailing_metadata((("x-shape", "unary"),))
    if request == b"fail":
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    if request == b"slow":
        time.sleep(3)
    seen = b"none" if remaining is None or remaining > 1e6 else b"%.1f" % remaining
    peer_md = dict(context.invocation_metadata())
    tag = peer_md.get("x-tag", "").encode()
    return b"echo:" + request + b"|deadline=" + seen + b"|tag=" + tag


def server_stream(request, context):
    context.set_trailing_metadata((("x-shape", "server"),))
    for i in range(int(request)):
        yield b"msg%d" % i
        time.sleep(0.05)


def client_stream(requests, context):
    context.set_trailing_metadata((("x-shape", "client"),))
    return b"+".join(requests)


def bidi(requests, context):
    context.set_trailing_metadata((("x-shape", "bidi"),))
    for r in requests:
        yield b"re:" + r


def main():
    handler = grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    sys.exit(main())
