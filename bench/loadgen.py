"""A small open-loop / closed-loop HTTP load generator for the benchmarks (loopback only).

Open loop: request i is *scheduled* at ``t0 + i / rate`` whatever happened to earlier ones, and
its latency is measured from that scheduled time, so a slow server cannot hide its queueing
(no coordinated omission). Connections are keep-alive, one request in flight each, opened on
demand up to a cap.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_CL = re.compile(rb"content-length:\s*(\d+)", re.I)
_BATCH = re.compile(rb"x-infergate-batch-items:\s*(\d+)", re.I)


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    batch_items: list[int] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    def pct(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiter: asyncio.Future[bytes] | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        m = _CL.search(self.buf, 0, end)
        total = end + 4 + (int(m.group(1)) if m else 0)
        if len(self.buf) >= total:
            resp = bytes(self.buf[:total])
            del self.buf[:total]
            w, self.waiter = self.waiter, None
            if not w.done():
                w.set_result(resp)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed"))

    async def request(self, data: bytes) -> bytes:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


def build(path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


async def _one(pool: list[_Conn], port: int, data: bytes, res: Result, t_sched: float) -> None:
    loop = asyncio.get_running_loop()
    conn = pool.pop() if pool else None
    if conn is None or conn.closed:
        _, conn = await loop.create_connection(_Conn, "127.0.0.1", port)
    try:
        raw = await conn.request(data)
    except ConnectionError:
        res.statuses[-1] = res.statuses.get(-1, 0) + 1
        return
    status = int(raw[9:12])
    res.statuses[status] = res.statuses.get(status, 0) + 1
    if status == 200:
        res.latencies.append(time.perf_counter() - t_sched)
        m = _BATCH.search(raw)
        if m:
            res.batch_items.append(int(m.group(1)))
    pool.append(conn)


async def open_loop(port: int, data: bytes, rate: float, duration: float) -> Result:
    """Send ``rate`` requests/s for ``duration`` s; wait for all answers (bounded by 30 s)."""
    res = Result()
    pool: list[_Conn] = []
    n = int(rate * duration)
    tasks = []
    t0 = time.perf_counter()
    for i in range(n):
        t_sched = t0 + i / rate
        delay = t_sched - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the offered load, not synchronisation
        tasks.append(asyncio.ensure_future(_one(pool, port, data, res, t_sched)))
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    res.elapsed = time.perf_counter() - t0
    for c in pool:
        if c.transport is not None:
            c.transport.close()
    return res


async def closed_loop(port: int, data: bytes, clients: int, requests: int) -> Result:
    """``clients`` connections, each sending its next request when the last one returns."""
    res = Result()
    per = requests // clients

    async def client() -> None:
        pool: list[_Conn] = []
        for _ in range(per):
            await _one(pool, port, data, res, time.perf_counter())
        for c in pool:
            if c.transport is not None:
                c.transport.close()

    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(client() for _ in range(clients))), 120)
    res.elapsed = time.perf_counter() - t0
    return res


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_infergate(config: str) -> tuple[subprocess.Popen[str], int]:
    """Start ``python -m infergate.app`` with ``config`` (TOML text) pinned to core 0; returns its
    port."""
    proc, port, _ = start_infergate_admin(config)
    return proc, port


def start_infergate_admin(config: str) -> tuple[subprocess.Popen[str], int, int]:
    """``start_infergate``, also returning the admin listener's port (a free one)."""
    cfg = Path(tempfile.mkdtemp()) / "bench.toml"
    cfg.write_text(config)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "INFERGATE_LOG_LEVEL": "WARNING"}
    argv = [sys.executable, "-m", "infergate.app", "--config", str(cfg), "--headless"]
    proc = subprocess.Popen(
        ["taskset", "-c", "0", *argv, "--admin-listen", "127.0.0.1:0"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on http://127.0.0.1:" not in line:
        raise SystemExit(f"infergate did not start: {line!r}")
    port = int(line.split("http://127.0.0.1:")[1].split()[0])
    admin = line.split("admin: http://127.0.0.1:")
    return proc, port, int(admin[1].split(")")[0]) if len(admin) > 1 else 0
