"""Pad-length buckets (issue 10): does ONNX Runtime gain from fewer distinct input shapes enough
to pay for the extra padded compute? Not a test.

all-MiniLM-L6-v2 (int8 ONNX), 1 intra-op thread, CPU, run directly (no server). A sequence of
batches shaped like token-budget batching's output: batches of 32 short queries (the longest
8-32 tokens) alternating with batches of 2 passages (the longest 128-256 tokens), so most
batches have a length the session has not seen. Each scheme pads every batch to its bucket:
``exact`` (its own longest input, what infergate does), multiples of 8, multiples of 16, the
next power of two; one session per scheme. Batch by batch, each scheme runs the batch REPEATS
times (schemes in rotated order, so the box's noise falls on all alike):

- warm: the fastest repeat, summed over the sequence, per item (the padding included);
- first sight: the first run minus the fastest, on batches whose length is new to the session,
  against the same on lengths seen before (the noise floor).

Bounded: BATCHES batches x 4 schemes x REPEATS runs, ~1-2 min on 2 busy cores.

Usage: python bench/pad_buckets_micro.py   (BATCHES=24 REPEATS=3)
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infergate.engine.executors.ort_session import open_session
from infergate.engine.models.embeddings import resolve_model_file

BATCHES = int(os.environ.get("BATCHES", "24"))
REPEATS = int(os.environ.get("REPEATS", "3"))
MAX_LEN = 256


def _up(step: int) -> Callable[[int], int]:
    return lambda n: min(MAX_LEN, -(-n // step) * step)


def _pow2(n: int) -> int:
    return min(MAX_LEN, max(8, 1 << math.ceil(math.log2(n))))


SCHEMES: dict[str, Callable[[int], int]] = {
    "exact": lambda n: n,
    "multiple of 8": _up(8),
    "multiple of 16": _up(16),
    "power of two": _pow2,
}


def workload(rng: random.Random) -> list[list[int]]:
    """Per batch, its inputs' token counts: batches of 32 short queries (the longest 8-32
    tokens) alternating with batches of 2 passages (the longest 128-256 tokens)."""
    out = []
    for i in range(BATCHES):
        rows, lo, hi = (32, 8, 32) if i % 2 == 0 else (2, 128, MAX_LEN)
        longest = rng.randint(lo, hi)
        out.append([longest] + [rng.randint(min(lo, longest), longest) for _ in range(rows - 1)])
    return out


def feeds(lengths: list[int], pad_to: int, names: list[str]) -> dict[str, Any]:
    n = len(lengths)
    ids = np.zeros((n, pad_to), np.int64)
    mask = np.zeros((n, pad_to), np.int64)
    for row, k in enumerate(lengths):
        ids[row, :k] = 1000 + (np.arange(k) % 500)
        ids[row, 0], ids[row, k - 1] = 101, 102  # [CLS] ... [SEP]
        mask[row, :k] = 1
    all_ = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {k: all_[k] for k in names}


def measure(batches: list[list[int]], model: str) -> dict[str, tuple[float, ...]]:
    """Per scheme: (seconds for the sequence with every shape seen, seconds more the first
    sight of its shapes cost, shapes seen for the first time, the same excess on shapes seen
    before, their count). One session per scheme; batch by
    batch, every scheme runs the batch REPEATS times in rotated order (the box's noise falls on
    all schemes alike); the warm time is the fastest repeat, the first-sight cost the first run
    minus that, on batches whose shape was new to the session."""
    sessions = {n: open_session(model, 1, ("CPUExecutionProvider",)) for n in SCHEMES}
    first = next(iter(sessions.values()))
    names = [i.name for i in first.get_inputs()]
    out = first.get_outputs()[0].name
    seen: dict[str, set[int]] = {n: set() for n in SCHEMES}
    res = {n: [0.0, 0.0, 0, 0.0, 0] for n in SCHEMES}
    order = list(SCHEMES)
    for i, b in enumerate(batches):
        for name in order[i % len(order) :] + order[: i % len(order)]:
            pad_to = SCHEMES[name](max(b))
            f = feeds(b, pad_to, names)
            times = []
            for _ in range(REPEATS):
                t0 = time.perf_counter()
                sessions[name].run([out], f)
                times.append(time.perf_counter() - t0)
            r = res[name]
            r[0] += min(times)
            if pad_to not in seen[name]:
                seen[name].add(pad_to)
                r[1] += times[0] - min(times)
                r[2] += 1
            else:
                r[3] += times[0] - min(times)
                r[4] += 1
    return {n: tuple(float(x) for x in r) for n, r in res.items()}


def main() -> None:
    model = resolve_model_file("builtin:minilm", ".")
    batches = workload(random.Random(10))
    items = sum(map(len, batches))
    load0 = os.getloadavg()
    # warm the process (imports, allocator) on a throwaway session
    warm = open_session(model, 1, ("CPUExecutionProvider",))
    names = [i.name for i in warm.get_inputs()]
    warm.run(None, feeds([16] * 4, 16, names))
    t0 = time.perf_counter()
    res = measure(batches, model)
    took = time.perf_counter() - t0
    base = res["exact"][0]
    print(f"{len(batches)} batches, {items} items, {REPEATS} runs each per scheme, {took:.0f} s; "
          f"load average {load0[0]:.2f} before, {os.getloadavg()[0]:.2f} after\n")  # fmt: skip
    print("| pad to | distinct lengths | padded tokens | warm ms/item | vs exact | "
          "first run, new length | first run, seen length |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, bucket in SCHEMES.items():
        warm_s, first_s, new, again_s, again = res[name]
        padded = sum(len(b) * bucket(max(b)) for b in batches)
        seen = f"+{again_s / again * 1e3:.1f} ms" if again else "-"
        first = f"+{first_s / max(new, 1) * 1e3:.1f} ms"
        print(f"| {name} | {new:.0f} | {padded:,} | {warm_s / items * 1e3:.2f} | "
              f"{warm_s / base:.3f}x | {first} | {seen} |")  # fmt: skip


if __name__ == "__main__":
    main()
