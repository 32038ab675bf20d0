"""A gRPC client (grpcio) for the HTTP/2 downstream tests.

Usage: h2tests_grpc.py HOST:PORT METHOD CALLS [KEY=VALUE ...]

Makes CALLS unary calls of METHOD (a full method path such as
/inventory.v1.Inventory/GetItem) over h2c with prior knowledge, the request
message an empty protobuf, KEY=VALUE pairs sent as metadata. Prints one line
per call: the status code name the client saw, a tab, and its details.

With H2TESTS_GRPC_CA set (a PEM file), the call goes over TLS (h2 by ALPN)
to a server certified for "localhost" by that CA.
"""

import os
import sys

import grpc


def main() -> int:
    target, method, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
    metadata = [tuple(kv.split("=", 1)) for kv in sys.argv[4:]]
    ca = os.environ.get("H2TESTS_GRPC_CA")
    if ca:
        with open(ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        options = [("grpc.ssl_target_name_override", "localhost")]
        channel = grpc.secure_channel(target, creds, options=options)
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        call = channel.unary_unary(
            method,
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        for _ in range(calls):
            try:
                call(b"", metadata=metadata, timeout=10)
                print("OK\t", flush=True)
            except grpc.RpcError as err:
                print(f"{err.code().name}\t{err.details()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
