"""A WebSocket client (Python `websockets`) for tests/websocket.rs.

usage: client.py URL MODE [HEADER=VALUE ...]; prints one result line.
  echo   1 MiB binary and a text message echoed, a ping answered: `OK`
  many   50 small messages echoed: `OK`
  idle   connect, send nothing, wait for the close: `CLOSED <seconds>`
  hold   connect, print `OPEN`, wait for stdin to close, echo once: `OK`
A refused handshake prints `STATUS <code>`. For a `wss://` URL the server's
certificate is checked against the CA file named by `WS_CA`.
"""
import asyncio
import os
import ssl
import sys
import time

import websockets


async def run(url, mode, headers):
    try:
        tls = None
        if url.startswith("wss://"):
            tls = ssl.create_default_context(cafile=os.environ["WS_CA"])
        ws = await websockets.connect(
            url, extra_headers=headers, max_size=None, ping_interval=None,
            open_timeout=10, ssl=tls,
        )
    except websockets.InvalidStatusCode as e:
        print("STATUS", e.status_code, flush=True)
        return
    try:
        if mode == "echo":
            big = os.urandom(1 << 20)
            await ws.send(big)
            assert await asyncio.wait_for(ws.recv(), 20) == big, "1 MiB echo differs"
            await ws.send("hello through the gateway")
            assert await asyncio.wait_for(ws.recv(), 10) == "hello through the gateway"
            pong = await ws.ping(b"are you there")
            await asyncio.wait_for(pong, 10)
        elif mode == "many":
            for i in range(50):
                await ws.send(f"message {i}")
                assert await asyncio.wait_for(ws.recv(), 10) == f"message {i}"
        elif mode == "idle":
            start = time.monotonic()
            try:
                await asyncio.wait_for(ws.recv(), 20)
                print("MESSAGE", flush=True)
            except websockets.ConnectionClosed:
                print("CLOSED", round(time.monotonic() - start, 2), flush=True)
            return
        elif mode == "hold":
            print("OPEN", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
            await ws.send("still here")
            assert await asyncio.wait_for(ws.recv(), 10) == "still here"
        print("OK", flush=True)
    finally:
        await ws.close()


headers = [tuple(h.split("=", 1)) for h in sys.argv[3:]]
asyncio.run(run(sys.argv[1], sys.argv[2], headers))
