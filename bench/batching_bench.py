"""Dynamic batching benchmark on the simulated executor: off vs window vs adaptive.

sim-embed: base_us=5000, per_item_us=100, instances=1, max_batch_size=64, so the backend's
capacity at batch 64 is 64 / (5000 + 64 * 100) µs = 5,614 items/s. Open-loop load at several
rates (1 item per request), then one client in flight against the bare executor call.
The server runs on core 0, the load generator on core 1. Policies are switched at run time
through the admin API (PATCH /admin/models/sim-embed/batching).

Usage: python bench/batching_bench.py    (RATES, DURATION to override; writes docs/batching.png)
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import urllib.request
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import Result, build, closed_loop, open_loop, start_infergate_admin

from infergate.engine.executors.sim import SimExecutor

ROOT = Path(__file__).resolve().parent.parent
_RATES = os.environ.get("RATES", "500,1000,2000,3000,4000,5000,6000,8000")
RATES = [int(r) for r in _RATES.split(",")]
DURATION = float(os.environ.get("DURATION", "3"))
BASE_US, PER_ITEM_US, MAX_BATCH = 5000, 100, 64
CAPACITY = MAX_BATCH / ((BASE_US + MAX_BATCH * PER_ITEM_US) / 1e6)
POLICIES = {
    "off": {"policy": "off"},
    "window": {"policy": "window", "max_queue_delay_us": 2000},
    "adaptive": {"policy": "adaptive"},
}
CONFIG = f"""
listen = "127.0.0.1:0"
sub_reactors = 1
[[models]]
name = "sim-embed"
executor = "sim"
dim = 384
base_us = {BASE_US}
per_item_us = {PER_ITEM_US}
instances = 1
[models.batching]
max_batch_size = {MAX_BATCH}
[models.priorities]
levels = 1
queue = [{{ max_queue_size = 512 }}]  # overload answers 429 instead of an endless backlog
"""


def patch(port: int, body: dict[str, object]) -> None:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/admin/models/sim-embed/batching",
        data=json.dumps({"max_batch_size": MAX_BATCH, **body}).encode(), method="PATCH",
    )  # fmt: skip
    with urllib.request.urlopen(req) as r:
        assert r.status == 200


def bare_p50() -> float:
    ex = SimExecutor(1, "embeddings", 384, BASE_US, PER_ITEM_US)
    times = []
    for _ in range(200):
        t = time.perf_counter()
        ex.run(["x"], 0)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    os.sched_setaffinity(0, {1})
    proc, port, admin_port = start_infergate_admin(CONFIG)
    data = build("/v1/embeddings", b'{"model":"sim-embed","input":"hello"}')
    rows: dict[str, list[tuple[int, Result]]] = {}
    single: dict[str, Result] = {}
    try:
        for name, body in POLICIES.items():
            patch(admin_port, body)
            single[name] = uvloop.run(closed_loop(port, data, 1, 300))
            rows[name] = []
            for rate in RATES:
                res = uvloop.run(open_loop(port, data, rate, DURATION))
                rows[name].append((rate, res))
                print(f"{name:8} {rate:6} req/s offered: {res.ok / res.elapsed:8.0f} items/s "
                      f"p50 {res.pct(50) * 1e3:7.2f} ms p99 {res.pct(99) * 1e3:8.2f} ms "
                      f"statuses {res.statuses}", file=sys.stderr)  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(10)
    bare = bare_p50()
    print(f"\nsim-embed: base_us={BASE_US}, per_item_us={PER_ITEM_US}, instances=1, "
          f"max_batch_size={MAX_BATCH}; capacity at batch {MAX_BATCH}: {CAPACITY:,.0f} items/s; "
          f"open loop, {DURATION:.0f} s per rate, 1 item per request\n")  # fmt: skip
    print("| policy | offered req/s | items/s | % of capacity | p50 ms | p99 ms | mean batch "
          "| non-200 |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, runs in rows.items():
        for rate, r in runs:
            thr = r.ok / r.elapsed
            mean_b = statistics.fmean(r.batch_items) if r.batch_items else 0
            bad = sum(n for s, n in r.statuses.items() if s != 200)
            p50, p99 = r.pct(50) * 1e3, r.pct(99) * 1e3
            print(f"| {name} | {rate:,} | {thr:,.0f} | {thr / CAPACITY:.0%} | {p50:.2f} | "
                  f"{p99:.2f} | {mean_b:.1f} | {bad} |")  # fmt: skip
    print(f"\nOne client in flight (closed loop, 300 requests); bare executor call p50 "
          f"{bare * 1e3:.3f} ms:\n")  # fmt: skip
    print("| policy | p50 ms | p50 over bare call (µs) |")
    print("|---|---:|---:|")
    for name, r in single.items():
        print(f"| {name} | {r.pct(50) * 1e3:.3f} | {(r.pct(50) - bare) * 1e6:.0f} |")
    plot(rows)


def plot(rows: dict[str, list[tuple[int, Result]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for name, runs in rows.items():
        rates = [rate for rate, _ in runs]
        a.plot(rates, [r.ok / r.elapsed for _, r in runs], marker="o", label=name)
        b.plot(rates, [r.pct(99) * 1e3 for _, r in runs], marker="o", label=name)
    a.axhline(CAPACITY, color="grey", linestyle="--", label="capacity (batch 64)")
    a.set(xlabel="offered load (req/s, 1 item each)", ylabel="throughput (items/s)")
    b.set(xlabel="offered load (req/s)", ylabel="p99 latency (ms)", yscale="log")
    a.legend()
    b.legend()
    fig.suptitle("sim-embed (5 ms + 0.1 ms/item, 1 slot): batching policies")
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "batching.png", dpi=90)


if __name__ == "__main__":
    main()
