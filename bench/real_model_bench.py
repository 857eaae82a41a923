"""Real model benchmark: MiniLM on ONNX Runtime (1 intra-op thread) behind infergate (adaptive
and off) and behind LitServe (max_batch_size=32, batch_timeout=0.005), plus the in-process
ceiling (embeddings/s at batch 32, no HTTP). Servers on core 0, the closed-loop clients on
core 1; one sentence per request.

Usage: python bench/real_model_bench.py     (CONCURRENCY=1,8,32,64 to override)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import Result, build, closed_loop, free_port, start_infergate_admin

from infergate.engine.executors.onnx import OnnxEmbeddingExecutor
from infergate.engine.models.embeddings import resolve_model_file, resolve_tokenizer_file

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = [int(c) for c in os.environ.get("CONCURRENCY", "1,8,32,64").split(",")]
SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank at dawn."
CONFIG = """
listen = "127.0.0.1:0"
sub_reactors = 1
[[models]]
name = "minilm"
executor = "onnxruntime"
model_file = "builtin:minilm"
tokenizer_file = "builtin:minilm"
intra_op_threads = 1
[models.batching]
policy = "adaptive"
max_batch_size = 32
[models.priorities]
levels = 1
queue = [{ max_queue_size = 4096 }]
"""


def start_litserve() -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    proc = subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, str(ROOT / "bench" / "litserve_app.py"), str(port)],
        cwd=tempfile.mkdtemp(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
        start_new_session=True,  # LitServe forks workers: stop the whole group afterwards
    )  # fmt: skip
    body = json.dumps({"input": "warm up"}).encode()
    for _ in range(600):
        try:
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/predict", body, {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=2):
                return proc, port
        except OSError:
            time.sleep(0.1)  # waiting for LitServe's workers to start
    raise SystemExit("LitServe did not start")


def patch(port: int, policy: str) -> None:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/admin/models/minilm/batching",
        data=json.dumps({"policy": policy}).encode(), method="PATCH",
    )  # fmt: skip
    with urllib.request.urlopen(req) as r:
        assert r.status == 200


def ceiling() -> float:
    """Embeddings/s at batch 32, in-process, on core 0 (where the servers run)."""
    os.sched_setaffinity(0, {0})
    ex = OnnxEmbeddingExecutor(
        1, resolve_model_file("builtin:minilm", "."), resolve_tokenizer_file("builtin:minilm", ".")
    )
    ex.load()
    batch = [SENTENCE] * 32
    for _ in range(5):
        ex.run(batch, 0)
    n = 60
    t = time.perf_counter()
    for _ in range(n):
        ex.run(batch, 0)
    return n * 32 / (time.perf_counter() - t)


def run(port: int, data: bytes, conc: int) -> Result:
    total = {1: 300, 8: 1600, 32: 3200, 64: 4480}.get(conc, conc * 60)
    uvloop.run(closed_loop(port, data, conc, conc * 2))  # warm-up
    return uvloop.run(closed_loop(port, data, conc, total))


def main() -> None:
    top = ceiling()
    os.sched_setaffinity(0, {1})
    ig_data = build(
        "/v1/embeddings",
        json.dumps({"model": "minilm", "input": SENTENCE, "encoding_format": "base64"}).encode(),
    )
    ls_data = build("/predict", json.dumps({"input": SENTENCE}).encode())
    results: dict[tuple[str, int], Result] = {}
    ig, ig_port, ig_admin = start_infergate_admin(CONFIG)
    try:
        for policy in ("adaptive", "off"):
            patch(ig_admin, policy)
            for c in CONCURRENCY:
                results[f"infergate {policy}", c] = r = run(ig_port, ig_data, c)
                print(f"infergate {policy} c={c}: {r.ok / r.elapsed:.0f} req/s", file=sys.stderr)
    finally:
        ig.terminate()
        ig.wait(20)
    ls, ls_port = start_litserve()
    try:
        for c in CONCURRENCY:
            results["LitServe", c] = r = run(ls_port, ls_data, c)
            print(f"LitServe c={c}: {r.ok / r.elapsed:.0f} req/s {r.statuses}", file=sys.stderr)
    finally:
        os.killpg(ls.pid, signal.SIGTERM)
        ls.wait(20)
    print(f"\nMiniLM int8 ONNX, 1 intra-op thread; in-process ceiling at batch 32: {top:,.0f} "
          "embeddings/s. Closed loop, one sentence per request.\n")  # fmt: skip
    print("| server | concurrency | req/s | % of ceiling | p50 ms | p99 ms | mean batch | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for (name, c), r in results.items():
        rps = r.ok / r.elapsed
        mean_b = sum(r.batch_items) / len(r.batch_items) if r.batch_items else float("nan")
        bad = sum(n for s, n in r.statuses.items() if s != 200)
        print(f"| {name} | {c} | {rps:,.0f} | {rps / top:.0%} | {r.pct(50) * 1e3:.2f} | "
              f"{r.pct(99) * 1e3:.2f} | {mean_b:.1f} | {bad} |")  # fmt: skip
    print("\n| concurrency | infergate adaptive / LitServe |")
    print("|---:|---:|")
    for c in CONCURRENCY:
        a, b = results["infergate adaptive", c], results["LitServe", c]
        print(f"| {c} | {(a.ok / a.elapsed) / (b.ok / b.elapsed):.2f}x |")


if __name__ == "__main__":
    main()
