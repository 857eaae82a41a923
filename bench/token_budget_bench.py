"""Token-budget batching (issue 10): MiniLM on ONNX Runtime (1 intra-op thread), a mixed load of
80% short queries (8-16 tokens) and 20% long passages (200-256 tokens), one input per request.
Item-count batching (``max_batch_size = 32``) vs token-budget batching (``max_batch_tokens =
8192``, rows still capped at 32), one server after the other on core 0, the load on core 1.

1. Saturation: a short closed-loop run per config (CLIENTS connections), items/s.
2. Open loop at LOADS x the item-count config's saturation rate, the same rates for both
   configs; latency from each request's scheduled send time, per request kind.

Usage: python bench/token_budget_bench.py   (DURATION=5 LOADS=0.3,0.5,0.7,0.9,1.1,2,3 CLIENTS=128)
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path

import uvloop
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import Result, _Conn, build, start_infergate
from loadgen import _one as send_one  # one request on a pooled connection, timed

from infergate.engine.models.embeddings import resolve_tokenizer_file

ROOT = Path(__file__).resolve().parent.parent
DURATION = float(os.environ.get("DURATION", "5"))
LOADS = [float(x) for x in os.environ.get("LOADS", "0.3,0.5,0.7,0.9,1.1,2,3").split(",")]
CLIENTS = int(os.environ.get("CLIENTS", "128"))
LONG_SHARE = 0.2
CONFIG = """
listen = "127.0.0.1:0"
sub_reactors = 1
[[models]]
name = "minilm"
executor = "onnxruntime"
model_file = "builtin:minilm"
tokenizer_file = "builtin:minilm"
intra_op_threads = 1
max_batch_tokens = {tokens}
[models.batching]
policy = "adaptive"
max_batch_size = 32
[models.priorities]
levels = 1
queue = [{{ max_queue_size = 8192 }}]
"""
CONFIGS = {"item-count (32)": 0, "token budget (8192)": 8192}
WORDS = [
    "the",
    "river",
    "bank",
    "near",
    "old",
    "house",
    "green",
    "tree",
    "water",
    "light",
    "city",
    "road",
    "small",
    "large",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "morning",
    "evening",
    "people",
    "work",
    "time",
    "year",
    "day",
    "world",
    "life",
    "hand",
    "part",
    "child",
    "eye",
    "woman",
    "place",
    "week",
    "case",
    "point",
    "number",
    "group",
    "problem",
    "fact",
]


def texts(tok: Tokenizer, lo: int, hi: int, n: int, rng: random.Random) -> list[str]:
    """``n`` texts of ``lo``..``hi`` tokens each ([CLS] and [SEP] included)."""
    out = []
    for _ in range(n):
        want = rng.randint(lo, hi)
        words = [rng.choice(WORDS) for _ in range(want - 2)]
        text = " ".join(words)
        assert lo <= len(tok.encode(text).ids) <= hi, text
        out.append(text)
    return out


def bodies() -> tuple[list[bytes], list[bytes]]:
    tok = Tokenizer.from_file(str(resolve_tokenizer_file("builtin:minilm", str(ROOT))))
    tok.no_padding()
    tok.no_truncation()
    rng = random.Random(10)

    def req(t: str) -> bytes:
        body = {"model": "minilm", "input": t, "encoding_format": "base64"}
        return build("/v1/embeddings", json.dumps(body).encode())

    short = [req(t) for t in texts(tok, 8, 16, 200, rng)]
    long = [req(t) for t in texts(tok, 200, 256, 200, rng)]
    return short, long


def _pick(rng: random.Random, short: list[bytes], long: list[bytes]) -> tuple[str, bytes]:
    if rng.random() < LONG_SHARE:
        return "long", rng.choice(long)
    return "short", rng.choice(short)


async def mixed_closed(port: int, short: list[bytes], long: list[bytes], seconds: float) -> float:
    """CLIENTS connections, each sending its next (random kind) request when the last returns;
    items/s."""
    res = Result()
    rng = random.Random(1)
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        pool: list[_Conn] = []
        while time.perf_counter() < deadline:
            await send_one(pool, port, _pick(rng, short, long)[1], res, time.perf_counter())
        for c in pool:
            if c.transport is not None:
                c.transport.close()

    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(client() for _ in range(CLIENTS))), 120)
    return res.ok / (time.perf_counter() - t0)


async def mixed_open(
    port: int, short: list[bytes], long: list[bytes], rate: float, duration: float
) -> tuple[dict[str, Result], float]:
    """Open loop at ``rate`` requests/s (80% short, 20% long); per-kind results, items/s done."""
    res = {"short": Result(), "long": Result()}
    rng = random.Random(2)
    pool: list[_Conn] = []
    tasks = []
    t0 = time.perf_counter()
    for i in range(int(rate * duration)):
        t_sched = t0 + i / rate
        delay = t_sched - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the offered load, not synchronisation
        kind, data = _pick(rng, short, long)
        tasks.append(asyncio.ensure_future(send_one(pool, port, data, res[kind], t_sched)))
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    elapsed = time.perf_counter() - t0
    for c in pool:
        if c.transport is not None:
            c.transport.close()
    return res, (res["short"].ok + res["long"].ok) / elapsed


def plot(sat: dict[str, float], rows: dict[tuple[str, float], dict[str, Result]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = list(CONFIGS)
    a.bar(names, [sat[n] for n in names], color=["tab:gray", "tab:blue"])
    for i, n in enumerate(names):
        a.text(i, sat[n], f"{sat[n]:.0f}", ha="center", va="bottom")
    a.set_ylabel("items/s at saturation")
    a.set_title("Saturation (closed loop, 80% short / 20% long)")
    for n, color in zip(names, ["tab:gray", "tab:blue"], strict=True):
        xs = [int(load * 100) for load in LOADS]
        p99 = [rows[n, load]["short"].pct(99) * 1e3 for load in LOADS]
        p50 = [rows[n, load]["short"].pct(50) * 1e3 for load in LOADS]
        b.plot(xs, p99, "o-", color=color, label=f"{n} p99")
        b.plot(xs, p50, "s--", color=color, label=f"{n} p50")
    b.set_yscale("log")
    b.set_xlabel("offered load, % of item-count saturation")
    b.set_ylabel("short-query latency, ms")
    b.set_title("Short queries (8-16 tokens), open loop")
    b.legend(fontsize=8)
    fig.suptitle("MiniLM int8, ONNX Runtime 1 thread: item-count vs token-budget batching")
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "token_budget.png", dpi=110)


def main() -> None:
    short, long = bodies()
    os.sched_setaffinity(0, {1})
    sat: dict[str, float] = {}
    rows: dict[tuple[str, float], dict[str, Result]] = {}
    done: dict[tuple[str, float], float] = {}
    base = 0.0
    for name, tokens in CONFIGS.items():
        proc, port = start_infergate(CONFIG.format(tokens=tokens))
        try:
            uvloop.run(mixed_closed(port, short, long, 1.0))  # warm-up
            sat[name] = uvloop.run(mixed_closed(port, short, long, DURATION))
            print(f"{name}: saturation {sat[name]:.0f} items/s", file=sys.stderr)
            base = base or sat[name]  # the rates: item-count's saturation (the first config)
            for load in LOADS:
                rows[name, load], done[name, load] = uvloop.run(
                    mixed_open(port, short, long, load * base, DURATION)
                )
                r = rows[name, load]["short"]
                print(f"  {load:.0%}: short p50 {r.pct(50) * 1e3:.1f} ms p99 "
                      f"{r.pct(99) * 1e3:.1f} ms", file=sys.stderr)  # fmt: skip
        finally:
            proc.terminate()
            proc.wait(20)
    a, b = (sat[n] for n in CONFIGS)
    print("\n| batching | items/s at saturation | vs item-count |")
    print("|---|---:|---:|")
    for n in CONFIGS:
        print(f"| {n} | {sat[n]:,.0f} | {sat[n] / a:.2f}x |")
    print(f"\nOpen-loop rates: {', '.join(f'{x:.0%}' for x in LOADS)} of {a:.0f} items/s.\n")
    print("| load | req/s | batching | items/s done | short p50 ms | short p99 ms | "
          "long p50 ms | long p99 ms | errors |")  # fmt: skip
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for load in LOADS:
        for n in CONFIGS:
            s, lg = rows[n, load]["short"], rows[n, load]["long"]
            bad = sum(c for r in (s, lg) for st, c in r.statuses.items() if st != 200)
            print(f"| {load:.0%} | {load * a:.0f} | {n} | {done[n, load]:.0f} | "
                  f"{s.pct(50) * 1e3:.1f} | {s.pct(99) * 1e3:.1f} | {lg.pct(50) * 1e3:.1f} | "
                  f"{lg.pct(99) * 1e3:.1f} | {bad} |")  # fmt: skip
    i70 = min(range(len(LOADS)), key=lambda i: abs(LOADS[i] - 0.7))
    names = list(CONFIGS)
    p_a = rows[names[0], LOADS[i70]]["short"].pct(99)
    p_b = rows[names[1], LOADS[i70]]["short"].pct(99)
    print(f"\nsaturation ratio {b / a:.2f}x (target >= 1.5x); short p99 at "
          f"{LOADS[i70]:.0%}: {p_b * 1e3:.1f} vs {p_a * 1e3:.1f} ms = {p_b / p_a:.2f} "
          "(target <= 0.5)")  # fmt: skip
    plot(sat, rows)


if __name__ == "__main__":
    main()
