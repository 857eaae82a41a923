"""How much slower the same Python runs after a pause (not a test): the effect behind
concurrency-1 latency on this machine (docs/benchmarks.md, "Concurrency 1").

A fixed piece of work (a small JSON round trip and one 384-float answer encoded with orjson,
~20 µs back to back) is timed after pauses of 0 to 50 ms, slept or spun, 200 times each, on
core 1. A request at concurrency 1 behind a 12 ms upstream runs all of its Python after such
a pause.

Usage: ``flock /tmp/infergate-bench.lock .venv/bin/python bench/cold_python.py``
"""

from __future__ import annotations

import json
import os
import statistics
import time

import orjson

ANSWER = {
    "object": "list",
    "data": [{"object": "embedding", "index": 0, "embedding": [i / 384 for i in range(384)]}],
    "model": "minilm",
}
ROUNDS = 200


def work() -> int:
    small = json.loads(json.dumps({"a": [1, 2, 3], "b": "x" * 50}))
    return len(orjson.dumps(ANSWER)) + len(small)


def pause(seconds: float, spin: bool) -> None:
    if not spin:
        time.sleep(seconds)
        return
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def main() -> None:
    os.sched_setaffinity(0, {1})
    print(f"load average {os.getloadavg()}; {ROUNDS} rounds each\n")
    print("| pause | how | work p50 µs | p90 µs |")
    print("|---:|---|---:|---:|")
    for spin in (False, True):
        for ms in (0, 1, 5, 12, 50):
            times = []
            for _ in range(ROUNDS):
                if ms:
                    pause(ms / 1000, spin)
                t0 = time.perf_counter_ns()
                work()
                times.append((time.perf_counter_ns() - t0) / 1000)
            times.sort()
            how = "spun" if spin else "slept"
            print(f"| {ms} ms | {how} | {statistics.median(times):.1f} | "
                  f"{times[int(0.9 * len(times))]:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
