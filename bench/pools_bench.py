"""Does pooling pay? Pooled vs plain for the two candidates named in the foundation issue.

1. Per-connection objects: a new HttpProtocol (with its httptools parser) per connection vs
   taking a reset one from a free list.
2. Read buffers: ``recv`` into a new bytes object per read (what asyncio.Protocol gets from
   uvloop) vs ``recv_into`` a pooled bytearray (what a BufferedProtocol would do), over a real
   socketpair with 4 KiB and 64 KiB reads.

Usage: python bench/pools_bench.py   (prints a markdown table; numbers go to docs/benchmarks.md)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import timeit

import httptools

from infergate.engine.config import Limits
from infergate.engine.http.protocol import HttpContext, HttpProtocol
from infergate.engine.http.router import Router
from infergate.engine.stats import ReactorStats


def bench_protocol_objects() -> tuple[float, float]:
    loop = asyncio.new_event_loop()
    ctx = HttpContext(
        loop, Router(), Limits(), ReactorStats(), concurrent.futures.ThreadPoolExecutor(1)
    )
    free: list[HttpProtocol] = [HttpProtocol(ctx)]

    def plain() -> None:
        HttpProtocol(ctx)

    def pooled() -> None:
        p = free.pop() if free else HttpProtocol(ctx)
        # the reset a pool needs: a fresh parser (llhttp state cannot be rewound) + state
        p.parser = httptools.HttpRequestParser(p)
        p.pending.clear()
        p.tasks.clear()
        p.inflight = 0
        p.closing = p.streaming = p.lingering = False
        p.pause_reasons = 0
        p.headers = []
        p.body_parts = []
        free.append(p)

    n = 200_000
    t_plain = min(timeit.repeat(plain, number=n, repeat=5)) / n
    t_pooled = min(timeit.repeat(pooled, number=n, repeat=5)) / n
    loop.close()
    return t_plain, t_pooled


def bench_read_buffers(size: int) -> tuple[float, float]:
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    payload = b"x" * size
    buf = bytearray(256 * 1024)
    view = memoryview(buf)

    def plain() -> None:
        a.sendall(payload)
        got = 0
        while got < size:
            got += len(b.recv(256 * 1024))

    def pooled() -> None:
        a.sendall(payload)
        got = 0
        while got < size:
            got += b.recv_into(view)

    n = 50_000
    t_plain = min(timeit.repeat(plain, number=n, repeat=5)) / n
    t_pooled = min(timeit.repeat(pooled, number=n, repeat=5)) / n
    a.close()
    b.close()
    return t_plain, t_pooled


def main() -> None:
    rows = [("HttpProtocol per connection", *bench_protocol_objects())]
    for size in (4096, 65536):
        rows.append((f"read buffer, {size // 1024} KiB reads", *bench_read_buffers(size)))
    print("| candidate | plain µs | pooled µs | pooled saves |")
    print("|---|---:|---:|---:|")
    for name, plain, pooled in rows:
        print(f"| {name} | {plain * 1e6:.3f} | {pooled * 1e6:.3f} | {(1 - pooled / plain):.0%} |")


if __name__ == "__main__":
    main()
