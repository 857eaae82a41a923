"""Where one client's latency over the bare executor call goes (issue 12's "~800 µs").

One request in flight, blocking-socket client on core 1 (the cheapest client there is), the
server on core 0 with ``sim-embed`` at ``base_us`` 5000 and 0. Compares against the executor
called in-process (the bare call) and against bench/loadgen.py's asyncio client, so the split
is: load generator, HTTP + JSON + hand-offs (base_us = 0), and what the 5 ms sleep adds
(thread wake-ups, timer slack). Server-side knobs come from the environment of the server:
``SWITCH_US`` (sys.setswitchinterval, via sitecustomize in a temp dir). The tree under test is
``TREE`` (default: this one).

Usage: python bench/single_client.py   (N requests per case, default 400)
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import build, closed_loop, free_port

from infergate.engine.executors.sim import SimExecutor

ROOT = Path(__file__).resolve().parent.parent
TREE = Path(os.environ.get("TREE", str(ROOT))).resolve()
N = int(os.environ.get("N", "400"))
CONFIG = """
listen = "127.0.0.1:{port}"
sub_reactors = 1
[[models]]
name = "sim-embed"
task = "embeddings"
executor = "sim"
dim = 384
base_us = {base_us}
per_item_us = 100
instances = 1
[models.batching]
policy = "adaptive"
max_batch_size = 64
"""
BODY = b'{"model":"sim-embed","input":"hello","encoding_format":"base64"}'


def start(base_us: int, switch_us: int | None) -> tuple[subprocess.Popen[bytes], int]:
    tmp = Path(tempfile.mkdtemp(prefix="infergate-single-"))
    port = free_port()
    (tmp / "c.toml").write_text(CONFIG.format(port=port, base_us=base_us))
    path = str(TREE)
    if switch_us is not None:
        (tmp / "sitecustomize.py").write_text(
            f"import sys\nsys.setswitchinterval({switch_us}e-6)\n"
        )
        path = f"{tmp}:{TREE}"
    env = {**os.environ, "PYTHONPATH": path, "INFERGATE_LOG_LEVEL": "WARNING"}
    argv = ["taskset", "-c", "0", sys.executable, "-m", "infergate.app",
            "--config", str(tmp / "c.toml"), "--headless",
            "--admin-listen", "127.0.0.1:0"]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=TREE, env=env, stdout=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    raise SystemExit("server did not start")


def _recv(s: socket.socket, spin: bool) -> bytes:
    while True:
        try:
            return s.recv(65536)
        except BlockingIOError:  # spin: the client's core never idles (no wake-up to pay)
            continue


def blocking_client(port: int, n: int, spin: bool = False) -> list[float]:
    """One request at a time; ``spin`` polls a non-blocking socket instead of sleeping."""
    data = build("/v1/embeddings", BODY)
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setblocking(not spin)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        s.sendall(data)
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += _recv(s, spin)
        head, _, rest = buf.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(rest) < length:
            rest += _recv(s, spin)
        out.append(time.perf_counter() - t)
    s.close()
    return out[20:]  # warm-up


def bare(base_us: int) -> float:
    ex = SimExecutor(1, "embeddings", 384, base_us, 100)
    times = []
    for _ in range(300):
        t = time.perf_counter()
        ex.run(["hello"], 0)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    os.sched_setaffinity(0, {1})
    rows = []
    for base_us in (5000, 0):
        for switch in (None, 100):
            proc, port = start(base_us, switch)
            try:
                blk = statistics.median(blocking_client(port, N))
                spin = statistics.median(blocking_client(port, N, spin=True))
                res = uvloop.run(closed_loop(port, build("/v1/embeddings", BODY), 1, N))
                agen = res.pct(50)
            finally:
                proc.terminate()
                proc.wait(10)
            b = bare(base_us)
            rows.append((base_us, switch, b, blk, spin, agen))
            print(rows[-1], file=sys.stderr)
    print("\np50 over the bare executor call, µs (one request in flight):\n")
    print("| sim base_us | server switch interval | bare call µs | blocking client "
          "| spinning client | asyncio loadgen |")  # fmt: skip
    print("|---:|---|---:|---:|---:|---:|")
    for base_us, switch, b, blk, spin, agen in rows:
        sw = "5 ms (default)" if switch is None else f"{switch} µs"
        print(f"| {base_us} | {sw} | {b * 1e6:.0f} | {(blk - b) * 1e6:.0f} | "
              f"{(spin - b) * 1e6:.0f} | {(agen - b) * 1e6:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
