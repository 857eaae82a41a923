"""Micro-benchmark of the protocol's per-request cost with a fake transport (no sockets).

Feeds N batches of 16 pipelined ``GET /hello`` to one HttpProtocol and prints µs per request.
Usage: python bench/proto_micro.py [--profile]
"""

import asyncio
import concurrent.futures
import sys
import time

from infergate.engine.config import Limits
from infergate.engine.http.protocol import HttpContext, HttpProtocol
from infergate.engine.http.response import Response
from infergate.engine.http.router import Router
from infergate.engine.stats import ReactorStats

HELLO = Response(b"Hello, World!", 200, b"text/plain")
REQ = b"GET /hello HTTP/1.1\r\nHost: localhost:8080\r\n\r\n" * 16


class FakeTransport:
    def __init__(self) -> None:
        self.n = 0

    def write(self, data: bytes) -> None:
        self.n += len(data)

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def main() -> None:
    loop = asyncio.new_event_loop()
    router = Router()
    router.add(["GET"], "/hello", lambda _r: HELLO)
    ex = concurrent.futures.ThreadPoolExecutor(1)
    ctx = HttpContext(loop, router, Limits(max_pipelined=256), ReactorStats(), ex)
    proto = HttpProtocol(ctx)
    proto.connection_made(FakeTransport())  # type: ignore[arg-type]
    n = 20000
    if "--profile" in sys.argv:
        import cProfile
        import pstats

        cProfile.runctx(
            "for _ in range(n): proto.data_received(REQ)", globals(), locals(), "/tmp/p"
        )
        pstats.Stats("/tmp/p").sort_stats("tottime").print_stats(18)
        return
    t = time.perf_counter()
    for _ in range(n):
        proto.data_received(REQ)
    dt = time.perf_counter() - t
    print(f"{dt / (n * 16) * 1e6:.3f} µs per pipelined request")


if __name__ == "__main__":
    main()
