"""How exactly do queue deadlines fire while every executor slot is busy?

A Batcher whose only slot is blocked; requests with queue timeouts of 2..50 ms are submitted
and the lateness of each 504 (delivery time - deadline) is recorded.

Usage: python bench/deadline_precision.py
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from typing import Any

from infergate.engine.config import LevelConfig, ModelConfig, PrioritiesConfig
from infergate.engine.executors.base import Executor, Outputs
from infergate.engine.scheduler.batcher import Batcher
from infergate.engine.scheduler.queues import InferRequest


class Blocked(Executor):
    kind = "blocked"

    def __init__(self) -> None:
        super().__init__(1)
        self.release = threading.Event()
        self.started = threading.Event()

    def run(self, items: list[Any], slot: int) -> Outputs:
        self.started.set()
        self.release.wait(60)
        return items


def main() -> None:
    ex = Blocked()
    prios = PrioritiesConfig(levels=1, queue=[LevelConfig(max_queue_size=10_000)])
    b = Batcher(ModelConfig(name="m", priorities=prios), ex)
    b.start()
    lateness: list[float] = []
    done = threading.Semaphore(0)

    def deliver(r: InferRequest) -> None:
        assert r.error is not None
        assert r.error.reason == "deadline_exceeded"
        lateness.append(time.monotonic() - r.enqueued - r.timeout_s)  # type: ignore[operator]
        done.release()

    b.submit(InferRequest([0], "k", 1, lambda r: None))  # occupies the only slot
    assert ex.started.wait(10)
    rng = random.Random(1)
    n = 500
    for _ in range(n):
        b.submit(InferRequest([1], "k", 1, deliver, timeout_s=rng.uniform(0.002, 0.05)))
        time.sleep(rng.uniform(0, 0.002))  # spread the arrivals
    for _ in range(n):
        assert done.acquire(timeout=10)
    ex.release.set()
    b.close()
    ms = sorted(x * 1e3 for x in lateness)
    print(f"{n} deadlines while the slot was busy: lateness p50 {statistics.median(ms):.3f} ms, "
          f"p99 {ms[int(0.99 * n)]:.3f} ms, max {ms[-1]:.3f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
