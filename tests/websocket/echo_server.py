"""A WebSocket echo server (Python `websockets`) for tests/websocket.rs.

Prints its port on the first line, then one line per handshake:
`REQ <path> <X-Consumer or ->`. Paths starting with /refuse are answered
403 with a JSON body instead of switching protocols.
"""
import asyncio
import http
import sys

import websockets


async def echo(ws, path=None):
    try:
        async for message in ws:
            await ws.send(message)
    except websockets.ConnectionClosed:
        pass


async def process_request(path, headers):
    print("REQ", path, headers.get("X-Consumer", "-"), flush=True)
    if path.startswith("/refuse"):
        return (
            http.HTTPStatus.FORBIDDEN,
            [("Content-Type", "application/json")],
            b'{"refused":"by the upstream"}\n',
        )
    return None


async def main():
    async with websockets.serve(
        echo, "127.0.0.1", 0, process_request=process_request,
        max_size=None, ping_interval=None,
    ) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()


asyncio.run(main())
