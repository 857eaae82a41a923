"""The real engine plus two test routes, run as a child process by the end-to-end tests.

``GET /slow?ms=N`` sleeps N ms inside an async handler (work the server is doing, so tests can
have a response in flight) and prints ``slow: started N`` to stdout when it begins, so a test can
wait for the request to be in the server's hands. ``POST /echo`` returns the request body.
``GET /stream?n=K`` streams K chunks (``chunk 0\n`` ...) through a StreamResponse, yielding to
the loop between chunks.
``--nofile N`` lowers the process's open-file limit (for the accept-on-EMFILE test).

Usage: python tests/support/slow_app.py --config FILE [--listen HOST:PORT] [--nofile N]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import sys
from collections.abc import AsyncIterator

from infergate.app.config import load_config
from infergate.engine import __version__
from infergate.engine.http.request import Request
from infergate.engine.http.response import Response, StreamResponse
from infergate.engine.server import Server


async def slow(req: Request) -> Response:
    ms = int(req.query_params().get("ms", "0"))
    print(f"slow: started {ms}", flush=True)
    await asyncio.sleep(ms / 1000)
    return Response(b"slept %d" % ms)


def echo(req: Request) -> Response:
    return Response(req.body, 200, b"application/octet-stream")


def stream(req: Request) -> StreamResponse:
    n = int(req.query_params().get("n", "3"))

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(n):
            await asyncio.sleep(0)
            yield b"chunk %d\n" % i

    return StreamResponse(chunks(), 200, b"text/plain")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--admin-listen", default="127.0.0.1:0")
    p.add_argument("--nofile", type=int, default=0)
    args = p.parse_args()
    if args.nofile:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, hard))
    # Logs go to stdout, where tests wait for lines (e.g. "accept paused").
    logging.basicConfig(level=logging.INFO, stream=sys.stdout)
    loaded = load_config(args.config, {"listen": args.listen, "admin_listen": args.admin_listen})
    server = Server(loaded.server, loaded.static_root)
    server.router.add(["GET"], "/slow", slow)
    server.router.add(["POST"], "/echo", echo)
    server.router.add(["GET"], "/stream", stream)
    host, port = server.start()

    def ready() -> None:
        admin = server.admin_address
        where = f"admin: http://{admin[0]}:{admin[1]}" if admin else "admin: off"
        print(
            f"infergate {__version__} listening on http://{host}:{port} (slow_app; {where})",
            flush=True,
        )

    cut = server.run(install_signals=True, on_ready=ready)
    return 0 if cut == 0 else 3


if __name__ == "__main__":
    sys.exit(main())
