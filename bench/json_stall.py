"""How long do large KServe JSON bodies stall a reactor? (issue 7.9)

A real server (``python -m infergate.app --headless``, port 0, default limits) serves
``sim-tensor``.
``--clients`` connections each send KServe JSON bodies of ``--mb`` MB (FP32, 2048 rows) in a
loop from a separate process, while this process times ``GET /healthz`` on its own kept-alive
connection every ``--probe-ms``. Bounded in time (``--seconds``) and in requests per client.

Usage: python bench/json_stall.py [--clients 16] [--mb 8] [--seconds 6] [--binary]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.client import RawConnection
from tests.support.server import ServerProcess

CONFIG = """
listen = "127.0.0.1:0"

[[models]]
name = "sim-tensor"
task = "tensor"
executor = "sim"
base_us = 1000
per_item_us = 1
"""
TARGET = "/v2/models/sim-tensor/infer"
MAX_REQUESTS_PER_CLIENT = 200
MAX_BODY = 8 * 1024 * 1024


def kserve_body(mb: float, binary: bool) -> tuple[bytes, list[tuple[str, str]]]:
    """A FP32 [2048, cols] request of about ``mb`` MB (below 8 MiB, the default body limit)."""
    rows = 2048
    size = min(mb * 1e6, MAX_BODY - 4096)
    cols = max(1, int(size / rows / (4 if binary else 11)))
    while True:
        x = np.round(np.random.default_rng(1).standard_normal((rows, cols)), 6)
        spec: dict[str, object] = {"name": "INPUT0", "datatype": "FP32", "shape": [rows, cols]}
        out = [{"name": "OUTPUT0", "parameters": {"binary_data": binary}}]
        if binary:
            data = x.astype("<f4").tobytes()
            spec["parameters"] = {"binary_data_size": len(data)}
            head = json.dumps({"inputs": [spec], "outputs": out}).encode()
            body, headers = head + data, [("Inference-Header-Content-Length", str(len(head)))]
        else:
            spec["data"] = x.reshape(-1).tolist()  # float64 values print as 0.123456
            body, headers = json.dumps({"inputs": [spec], "outputs": out}).encode(), []
        if len(body) <= size or cols == 1:
            return body, headers
        cols = max(1, int(cols * size / len(body)))


def _client(port: int, body: bytes, headers: list[tuple[str, str]], deadline: float,
            statuses: Counter[int], lock: threading.Lock) -> None:  # fmt: skip
    with RawConnection(port, timeout=60) as c:
        for _ in range(MAX_REQUESTS_PER_CLIENT):
            if time.monotonic() >= deadline:
                return
            r = c.request("POST", TARGET, [("Content-Type", "application/json"), *headers], body)
            with lock:
                statuses[r.status] += 1
            if r.header("connection") == "close":
                return


def load(port: int, clients: int, mb: float, binary: bool, seconds: float, q: object) -> None:
    body, headers = kserve_body(mb, binary)
    deadline = time.monotonic() + seconds
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    threads = [
        threading.Thread(target=_client, args=(port, body, headers, deadline, statuses, lock))
        for _ in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    q.put((len(body), dict(statuses)))  # type: ignore[attr-defined]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--mb", type=float, default=8.0)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--probe-ms", type=float, default=10.0)
    ap.add_argument("--binary", action="store_true", help="binary tensors instead of JSON")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "infergate.toml"
        cfg.write_text(CONFIG)
        with ServerProcess(cfg) as server:
            ctx = multiprocessing.get_context("spawn")
            q = ctx.Queue()
            proc = ctx.Process(
                target=load,
                args=(server.port, args.clients, args.mb, args.binary, args.seconds, q),
            )
            proc.start()
            lat = []
            with RawConnection(server.port) as c:
                c.request("GET", "/healthz")
                time.sleep(1.0)  # pacing, not synchronisation: let the load process ramp up
                end = time.monotonic() + args.seconds - 1.0
                while time.monotonic() < end:
                    t0 = time.perf_counter()
                    assert c.request("GET", "/healthz").status == 200
                    lat.append((time.perf_counter() - t0) * 1e3)
                    time.sleep(args.probe_ms / 1e3)
            size, statuses = q.get(timeout=args.seconds + 180)
            proc.join(30)
    lat.sort()
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    kind = "binary" if args.binary else "JSON"
    print(
        f"{args.clients} clients x {size / 1e6:.1f} MB {kind} bodies for {args.seconds:.0f} s: "
        f"responses {statuses}; /healthz n={len(lat)} p50={statistics.median(lat):.1f} ms "
        f"p99={p99:.1f} ms max={lat[-1]:.1f} ms"
    )


if __name__ == "__main__":
    main()
