"""Token-budget batching (issue 10): MiniLM on ONNX Runtime (1 intra-op thread), open-loop load of
80% short queries (8-16 tokens) and 20% long passages (200-256 tokens), one input per request.
Item-count batching (``max_batch_size = 32``) vs token-budget batching (``max_batch_tokens =
8192``, rows still capped at 32), one server after the other on core 0, the load on core 1.

Open loop means Poisson arrivals (seeded), so requests overlap as they would from independent
clients; evenly spaced arrivals at these rates would never overlap and leave the server idle.

1. Saturation, open loop: a rate sweep up a ladder (~20% steps), SWEEP_S seconds a point. A
   config sustains a rate when, within the point plus GRACE_S, it answers >= 95% of the items
   offered and the p99 of all requests (unanswered ones count as infinite) stays <= P99_BOUND_S.
   Its saturation is the highest rate it sustains below the first one it does not; the sweep
   stops there. Token budget's sweep starts above item-count's saturation (the latency points
   cover the rates below).
2. Latency, open loop, at LOADS x item-count's saturation, the same rates for both configs, a
   point POINT_S seconds (at most POINT_REQUESTS requests) on one server per config, restarted
   after a point that left requests unanswered; latency from each request's scheduled send
   time, per kind, plus the server's telemetry headers (queue wait, batch size, batch compute)
   to explain the tail. Each point is also judged by the sustain rule.

Bounded: ~7-8 minutes (the sweep stops at the first rate not sustained; a point waits at most
GRACE_S or 10 s for its answers).

Usage: python bench/token_budget_bench.py
    (SWEEP_S=15 RATES=4,5,6,...,30 LOADS=0.5,0.7,0.9 POINT_S=20,70,20 POINT_REQUESTS=400)
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import _Conn, build, start_infergate

from infergate.engine.models.embeddings import resolve_tokenizer_file

ROOT = Path(__file__).resolve().parent.parent
_LADDER = "4,5,6,7,8,10,13,16,20,25,30"
RATES = [float(x) for x in os.environ.get("RATES", _LADDER).split(",")]
SWEEP_S = float(os.environ.get("SWEEP_S", "15"))
GRACE_S = 1.0
P99_BOUND_S = 1.0
LOADS = [float(x) for x in os.environ.get("LOADS", "0.5,0.7,0.9").split(",")]
POINT_S = [float(x) for x in os.environ.get("POINT_S", "20,70,20").split(",")]
POINT_REQUESTS = int(os.environ.get("POINT_REQUESTS", "400"))
LONG_SHARE = 0.2
PADDED_MS_PER_ITEM = 40.0
"""A short query whose batch computed for more than this per item shared it with a passage: a
short query costs ~5-13 ms a row, a row padded to 200-256 tokens ~120-150 ms."""
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
_WORDS = (
    "the river bank near old house green tree water light city road small large quick brown fox "
    "jumps over lazy dog morning evening people work time year day world life hand part child "
    "eye woman place week case point number group problem fact"
)
WORDS = _WORDS.split()
_HDR = {
    k: re.compile(rb"x-infergate-" + k.encode() + rb":\s*(\d+)", re.I)
    for k in ("queue-us", "compute-us", "batch-items")
}


def texts(tok: Tokenizer, lo: int, hi: int, n: int, rng: random.Random) -> list[str]:
    """``n`` texts of ``lo``..``hi`` tokens each ([CLS] and [SEP] included)."""
    out = []
    for _ in range(n):
        want = rng.randint(lo, hi)
        text = " ".join(rng.choice(WORDS) for _ in range(want - 2))
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

    return [req(t) for t in texts(tok, 8, 16, 200, rng)], [
        req(t) for t in texts(tok, 200, 256, 200, rng)
    ]


@dataclass
class Req:
    kind: str
    t_sched: float
    latency: float = float("inf")
    """Seconds from the scheduled send to the answer; inf when unanswered or not 200."""
    status: int = 0
    queue_s: float = 0.0
    compute_s: float = 0.0
    batch_items: int = 0


@dataclass
class Point:
    rate: float
    reqs: list[Req] = field(default_factory=list)
    start: float = 0.0
    window: float = 0.0
    """When the last request was due to be sent (perf_counter)."""
    load: float = 0.0

    def of(self, kind: str | None = None) -> list[Req]:
        return [r for r in self.reqs if kind is None or r.kind == kind]

    def pct(self, p: float, kind: str | None = None) -> float:
        xs = sorted(r.latency for r in self.of(kind))
        return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")

    def answered(self) -> float:
        """The share of requests answered by the last send plus GRACE_S."""
        end = self.window + GRACE_S
        ok = [r for r in self.reqs if r.status == 200 and r.t_sched + r.latency <= end]
        return len(ok) / max(1, len(self.reqs))

    def done_rate(self) -> float:
        """Items/s answered in time, at the offered rate's scale."""
        return self.answered() * self.rate

    def sustained(self) -> bool:
        return self.answered() >= 0.95 and self.pct(99) <= P99_BOUND_S

    def errors(self) -> int:
        """Answers other than 200."""
        return sum(1 for r in self.reqs if r.status > 0 and r.status != 200)

    def unanswered(self) -> int:
        """Requests still unanswered when the point gave up on them."""
        return sum(1 for r in self.reqs if r.status <= 0)


async def _send(pool: list[_Conn], conns: list[_Conn], port: int, data: bytes, r: Req) -> None:
    conn = pool.pop() if pool else None
    if conn is None or conn.closed:
        _, conn = await asyncio.get_running_loop().create_connection(_Conn, "127.0.0.1", port)
        conns.append(conn)
    try:
        raw = await conn.request(data)
    except ConnectionError:
        r.status = -1
        return
    r.status = int(raw[9:12])
    if r.status == 200:
        r.latency = time.perf_counter() - r.t_sched
        head = raw[: raw.find(b"\r\n\r\n")]
        got = {k: rx.search(head) for k, rx in _HDR.items()}
        r.queue_s = int(got["queue-us"].group(1)) / 1e6 if got["queue-us"] else 0.0
        r.compute_s = int(got["compute-us"].group(1)) / 1e6 if got["compute-us"] else 0.0
        r.batch_items = int(got["batch-items"].group(1)) if got["batch-items"] else 0
    pool.append(conn)


async def open_loop(
    port: int, short: list[bytes], long: list[bytes], rate: float, n: int, wait: float
) -> Point:
    """``n`` requests, Poisson arrivals at ``rate``/s (80% short, 20% long); answers awaited at
    most ``wait`` s after the last send, then the connections are closed (unanswered requests
    stay inf)."""
    pt = Point(rate, load=os.getloadavg()[0])
    rng, arrivals = random.Random(2), random.Random(3)
    pool: list[_Conn] = []
    conns: list[_Conn] = []
    tasks = []
    t0 = t_next = time.perf_counter()
    for _ in range(n):
        t_next += arrivals.expovariate(rate)
        r = Req("long" if rng.random() < LONG_SHARE else "short", t_next)
        delay = r.t_sched - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the offered load, not synchronisation
        data = rng.choice(long if r.kind == "long" else short)
        pt.reqs.append(r)
        tasks.append(asyncio.ensure_future(_send(pool, conns, port, data, r)))
    pt.start, pt.window = t0, t_next
    await asyncio.wait(tasks, timeout=max(0.0, pt.window + wait - time.perf_counter()))
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    await asyncio.gather(*tasks, return_exceptions=True)
    return pt


def warm_up(port: int, short: list[bytes], long: list[bytes]) -> None:
    uvloop.run(open_loop(port, short, long, 5, 10, 10))


def sweep(tokens: int, short: list[bytes], long: list[bytes], rates: list[float]) -> list[Point]:
    proc, port = start_infergate(CONFIG.format(tokens=tokens))
    points: list[Point] = []
    try:
        warm_up(port, short, long)
        for rate in rates:
            pt = uvloop.run(open_loop(port, short, long, rate, round(rate * SWEEP_S), GRACE_S))
            points.append(pt)
            print(f"  sweep {rate:g}/s: done {pt.done_rate():.1f}/s p99 {pt.pct(99) * 1e3:.0f} "
                  f"ms {'ok' if pt.sustained() else 'NOT sustained'}", file=sys.stderr)  # fmt: skip
            if not pt.sustained():
                break
    finally:
        proc.terminate()
        proc.wait(20)
    return points


def latency_points(
    tokens: int, short: list[bytes], long: list[bytes], base: float
) -> dict[float, Point]:
    """LOADS x ``base`` on one server, restarted after a point that left requests unanswered."""
    out: dict[float, Point] = {}
    proc, port = start_infergate(CONFIG.format(tokens=tokens))
    try:
        warm_up(port, short, long)
        for load, seconds in zip(LOADS, POINT_S, strict=True):
            rate = load * base
            n = min(POINT_REQUESTS, round(rate * seconds))
            pt = out[load] = uvloop.run(open_loop(port, short, long, rate, n, 10))
            print(f"  {load:.0%}: short p50 {pt.pct(50, 'short') * 1e3:.1f} p99 "
                  f"{pt.pct(99, 'short') * 1e3:.1f} ms", file=sys.stderr)  # fmt: skip
            if pt.unanswered():
                proc.terminate()
                proc.wait(20)
                proc, port = start_infergate(CONFIG.format(tokens=tokens))
                warm_up(port, short, long)
    finally:
        proc.terminate()
        proc.wait(20)
    return out


def tail(pt: Point) -> dict[str, Any]:
    """The short queries at or above their p95: why they were slow."""
    s = sorted((r for r in pt.of("short") if r.status == 200), key=lambda r: r.latency)
    top = s[int(0.95 * len(s)) :]
    allq = s

    def padded(rs: list[Req]) -> float:
        hit = [r for r in rs if r.compute_s * 1e3 / max(1, r.batch_items) > PADDED_MS_PER_ITEM]
        return 100 * len(hit) / max(1, len(rs))

    def med(xs: list[float]) -> float:
        return sorted(xs)[len(xs) // 2] * 1e3 if xs else float("nan")

    return {
        "n": len(s),
        "alone": 100 * sum(r.batch_items == 1 for r in allq) / max(1, len(allq)),
        "mean_batch": sum(r.batch_items for r in allq) / max(1, len(allq)),
        "padded_all": padded(allq),
        "tail_n": len(top),
        "tail_padded": padded(top),
        "tail_queue": med([r.queue_s for r in top]),
        "tail_compute": med([r.compute_s for r in top]),
    }


def saturation(points: list[Point]) -> float:
    ok = [p.rate for p in points if p.sustained()]
    return max(ok) if ok else 0.0


def plot(sweeps: dict[str, list[Point]], rows: dict[tuple[str, float], Point], base: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = dict(zip(CONFIGS, ["tab:gray", "tab:blue"], strict=True))
    top = max(p.rate for pts in sweeps.values() for p in pts)
    a.plot([0, top], [0, top], ":", color="black", lw=0.8, label="offered")
    for n, pts in sweeps.items():
        a.plot([p.rate for p in pts], [p.done_rate() for p in pts], "-", color=colors[n])
        for p in pts:
            face = colors[n] if p.sustained() else "white"
            a.plot(p.rate, p.done_rate(), "o", color=colors[n], mfc=face)
        a.plot([], [], "o-", color=colors[n], label=f"{n}: {saturation(pts):g}/s")
    a.set_xlabel("offered items/s (open loop)")
    a.set_ylabel("items/s answered within the point")
    a.set_title("Rate sweep (hollow: not sustained)")
    a.legend(fontsize=8)
    xs = [int(load * 100) for load in LOADS]
    for n in CONFIGS:
        b.plot(xs, [rows[n, x].pct(99, "short") * 1e3 for x in LOADS], "o-", color=colors[n],
               label=f"{n} p99")  # fmt: skip
        b.plot(xs, [rows[n, x].pct(50, "short") * 1e3 for x in LOADS], "s--", color=colors[n],
               label=f"{n} p50")  # fmt: skip
    b.set_yscale("log")
    b.set_xticks(xs)
    b.set_xlabel(f"offered load, % of item-count's saturation ({base:g}/s)")
    b.set_ylabel("short-query latency, ms")
    b.set_title("Short queries (8-16 tokens), open loop")
    b.legend(fontsize=8)
    fig.suptitle("MiniLM int8, ONNX Runtime 1 thread: item-count vs token-budget batching")
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "token_budget.png", dpi=110)


def main() -> None:
    short, long = bodies()
    os.sched_setaffinity(0, {1})
    t_start = time.perf_counter()
    print(f"load average at start: {os.getloadavg()}", file=sys.stderr)
    names = list(CONFIGS)
    sweeps: dict[str, list[Point]] = {}
    for n in names:
        ladder = RATES if not sweeps else [r for r in RATES if r > saturation(sweeps[names[0]])]
        print(f"{n}: rate sweep", file=sys.stderr)
        sweeps[n] = sweep(CONFIGS[n], short, long, ladder)
    base = saturation(sweeps[names[0]]) or RATES[0]  # none sustained: the lowest rate
    rows: dict[tuple[str, float], Point] = {}
    for n in names:
        print(f"{n}: latency at {', '.join(f'{x:.0%}' for x in LOADS)}", file=sys.stderr)
        for load, pt in latency_points(CONFIGS[n], short, long, base).items():
            rows[n, load] = pt
    print(f"\n{time.perf_counter() - t_start:.0f} s; load average at the end {os.getloadavg()}\n")
    print("| offered items/s | batching | answered items/s | p99 all ms | sustained | load avg |")
    print("|---:|---|---:|---:|---|---:|")
    for rate in sorted({p.rate for pts in sweeps.values() for p in pts}):
        for n in names:
            for p in (p for p in sweeps[n] if p.rate == rate):
                print(f"| {rate:g} | {n} | {p.done_rate():.1f} | {p.pct(99) * 1e3:,.0f} | "
                      f"{'yes' if p.sustained() else '**no**'} | {p.load:.1f} |")  # fmt: skip
    sat = {n: saturation(sweeps[n]) for n in names}
    print("\n| batching | saturation, items/s | vs item-count |\n|---|---:|---:|")
    for n in names:
        print(f"| {n} | {sat[n]:g} | {sat[n] / base:.2f}x |")
    print("\n| load | items/s | batching | short n | short p50 ms | short p99 ms | long p50 ms | "
          "long p99 ms | shorts alone | shorts in a padded batch | sustained | unanswered | "
          "errors |")  # fmt: skip
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for load in LOADS:
        for n in names:
            p, t = rows[n, load], tail(rows[n, load])
            print(f"| {load:.0%} | {load * base:.1f} | {n} | {t['n']} | "
                  f"{p.pct(50, 'short') * 1e3:.1f} | {p.pct(99, 'short') * 1e3:.1f} | "
                  f"{p.pct(50, 'long') * 1e3:.1f} | {p.pct(99, 'long') * 1e3:.1f} | "
                  f"{t['alone']:.0f}% | {t['padded_all']:.1f}% | "
                  f"{'yes' if p.sustained() else '**no**'} | {p.unanswered()} | "
                  f"{p.errors()} |")  # fmt: skip
    print("\nThe slowest 5% of short queries (at or above their p95), medians:\n")
    print("| load | batching | n | queue wait ms | batch compute ms | in a padded batch |")
    print("|---:|---|---:|---:|---:|---:|")
    for load in LOADS:
        for n in names:
            t = tail(rows[n, load])
            print(f"| {load:.0%} | {n} | {t['tail_n']} | {t['tail_queue']:.1f} | "
                  f"{t['tail_compute']:.1f} | {t['tail_padded']:.0f}% |")  # fmt: skip
    i70 = min(range(len(LOADS)), key=lambda i: abs(LOADS[i] - 0.7))
    p_a = rows[names[0], LOADS[i70]].pct(99, "short")
    p_b = rows[names[1], LOADS[i70]].pct(99, "short")
    print(f"\nsaturation ratio {sat[names[1]] / base:.2f}x (target >= 1.5x); short p99 at "
          f"{LOADS[i70]:.0%}: {p_b * 1e3:.1f} vs {p_a * 1e3:.1f} ms = {p_b / p_a:.2f} "
          "(target <= 0.5)")  # fmt: skip
    plot(sweeps, rows, base)


if __name__ == "__main__":
    main()
