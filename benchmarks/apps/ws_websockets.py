"""The ``websockets`` library's asyncio server for benchmarks/ws.py: ``python -m benchmarks.apps.ws_websockets PORT``.

``/echo`` echoes; ``/fan`` sockets hand what they receive to ``websockets.broadcast``
over every open ``/fan`` connection. max_size is raised to 32 MiB (16 MiB echo),
backlog to 1024 (as the other servers).
"""

from __future__ import annotations

import asyncio
import resource
import signal
import sys

import websockets
from websockets.asyncio.server import serve

FAN: set = set()


async def handler(ws) -> None:  # type: ignore[no-untyped-def]
    path = ws.request.path
    if path == "/fan":
        FAN.add(ws)
        try:
            async for message in ws:
                websockets.broadcast(FAN, message)
        finally:
            FAN.discard(ws)
    else:
        async for message in ws:
            await ws.send(message)


async def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    port = int(sys.argv[1])
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with serve(handler, "127.0.0.1", port, max_size=32 * 2**20, backlog=1024, compression=None):
        await stop


if __name__ == "__main__":
    asyncio.run(main())
