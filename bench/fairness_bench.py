"""Fair sharing on the simulator, in process (``bench/fairness.sh``).

One Batcher over a simulated executor (one slot, ``BASE_US`` + ``PER_ITEM_US`` per item,
batches of at most ``MAX_BATCH`` items, so a full batch takes 28 ms and capacity is ~570
one-item requests/s). Open-loop clients submit one-item requests at fixed rates:

- tenants: B sends at 20% of capacity, alone and then while A floods at 5x capacity, with
  fair sharing (A and B are two keys) and with today's FIFO (one anonymous tenant);
- priorities: a saturating priority-1 flood (5x) and a priority-2 stream (1x), with strict
  priority and with ``min_share = 0.1`` on level 2: each level's share of executor time.

No HTTP: the scheduler is what is measured. Prints a Markdown table (``--json`` writes the
figures too).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from infergate.engine.config import BatchingConfig, LevelConfig, ModelConfig, PrioritiesConfig
from infergate.engine.executors.sim import SimExecutor
from infergate.engine.scheduler.batcher import Batcher
from infergate.engine.scheduler.queues import InferRequest, Rejection

BASE_US = 20_000
PER_ITEM_US = 500
MAX_BATCH = 16
CAPACITY = MAX_BATCH / ((BASE_US + PER_ITEM_US * MAX_BATCH) / 1e6)
"""One-item requests per second that full batches serve."""


@dataclass
class Client:
    tenant: str
    rate: float
    level: int = 1
    latencies: list[float] = field(default_factory=list)
    refused: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Result:
    run: str
    scheduler: str
    b_p50_ms: float | None = None
    b_p99_ms: float | None = None
    b_429: int = 0
    b_served: int = 0
    a_429: int = 0
    level2_share: float | None = None


def _percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] * 1e3


def _drive(b: Batcher, c: Client, stop: threading.Event) -> None:
    """Open loop: one request every 1/rate seconds, whatever the answers."""
    period = 1.0 / c.rate
    next_at = time.perf_counter()
    while not stop.is_set():
        now = time.perf_counter()
        while next_at <= now:
            sent = next_at
            next_at += period

            def done(r: InferRequest, sent: float = sent) -> None:
                with c.lock:
                    if r.error is None:
                        c.latencies.append(time.perf_counter() - sent)
                    elif r.error.status == 429:
                        c.refused += 1

            req = InferRequest(["x"], ("k",), c.level, done)
            req.tenant = c.tenant
            try:
                b.submit(req)
            except Rejection as e:
                if e.status == 429:
                    with c.lock:
                        c.refused += 1
        time.sleep(max(0.0, min(next_at - time.perf_counter(), 0.005)))


def run(clients: list[Client], seconds: float, min_share: float = 0.0) -> list[float]:
    """Drive ``clients`` for ``seconds``; returns executor seconds per level."""
    prios = PrioritiesConfig(
        levels=2,
        queue=[
            LevelConfig(max_queue_size=1024),
            LevelConfig(max_queue_size=1024, min_share=min_share),
        ],
    )
    cfg = ModelConfig(
        name="sim",
        executor="sim",
        priorities=prios,
        batching=BatchingConfig(policy="adaptive", max_batch_size=MAX_BATCH),
    )
    b = Batcher(cfg, SimExecutor(1, "embeddings", 4, BASE_US, PER_ITEM_US))
    used = [0.0, 0.0]
    charge = b.queues.charge

    def counted(u: Sequence[float]) -> None:  # executor time per level, as the scheduler sees it
        used[0] += u[0]
        used[1] += u[1]
        charge(u)

    b.queues.charge = counted  # type: ignore[method-assign,assignment]
    b.start()
    stop = threading.Event()
    threads = [threading.Thread(target=_drive, args=(b, c, stop), daemon=True) for c in clients]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    b.close(timeout=5)
    return used


def tenants(seconds: float) -> list[Result]:
    out = []
    alone = Client("b", 0.2 * CAPACITY)
    run([alone], seconds)
    out.append(_tenant_result("B alone", "fair (DRR)", alone, None))
    for sched, a_name, b_name in (("fair (DRR)", "a", "b"), ("FIFO (one tenant)", "", "")):
        a = Client(a_name, 5 * CAPACITY)
        b = Client(b_name, 0.2 * CAPACITY)
        run([a, b], seconds)
        out.append(_tenant_result("A floods 5x, B 20%", sched, b, a))
    return out


def _tenant_result(name: str, sched: str, b: Client, a: Client | None) -> Result:
    return Result(
        name,
        sched,
        b_p50_ms=_percentile(b.latencies, 0.5),
        b_p99_ms=_percentile(b.latencies, 0.99),
        b_429=b.refused,
        b_served=len(b.latencies),
        a_429=a.refused if a else 0,
    )


def priorities(seconds: float) -> list[Result]:
    out = []
    for share, sched in ((0.0, "strict priority"), (0.1, "min_share = 0.1")):
        high = Client("", 5 * CAPACITY, level=1)
        low = Client("", 1 * CAPACITY, level=2)
        used = run([high, low], seconds, share)
        out.append(
            Result(
                "P1 floods 5x, P2 1x",
                sched,
                b_p50_ms=_percentile(low.latencies, 0.5),
                b_p99_ms=_percentile(low.latencies, 0.99),
                b_served=len(low.latencies),
                b_429=low.refused,
                a_429=high.refused,
                level2_share=used[1] / max(sum(used), 1e-9),
            )
        )
    return out


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0, help="per run (default 10)")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()
    results = tenants(args.seconds) + priorities(args.seconds)
    print(
        f"capacity {CAPACITY:.0f} one-item requests/s (sim {BASE_US} us + {PER_ITEM_US} us/item, "
        f"batches of {MAX_BATCH}); {args.seconds:g} s per run\n"
    )
    cols = (
        "B (or P2) p50 ms | p99 ms | served | B (P2) 429s | A (P1) 429s | P2 share of executor time"
    )
    print(f"| run | scheduler | {cols} |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r.run} | {r.scheduler} | {_fmt(r.b_p50_ms)} | {_fmt(r.b_p99_ms)} | {r.b_served} | "
            f"{r.b_429} | {r.a_429} | {_fmt(r.level2_share, '.1%')} |"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump([asdict(r) for r in results], f, indent=2)


if __name__ == "__main__":
    main()
