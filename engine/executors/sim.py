"""A simulated executor for benchmarks and tests: a GPU-like latency model, real outputs.

Latency ``base_us + per_item_us * items`` (``time.sleep`` releases the GIL, like a GPU call),
``instances`` slots, deterministic outputs: embeddings are unit vectors seeded by a hash of the
input; tensors are ``2 * x + 1``. ``error_rate`` fails that fraction of batches.
"""

from __future__ import annotations

import hashlib
import random
import time
from typing import Any

import numpy as np

from engine.executors.base import Executor, Outputs

SIM_BATCH_LIMIT = 1024
"""The simulator's batch ceiling (its memory per item is a few KiB)."""


def sim_vector(item: Any, dim: int) -> np.ndarray[Any, Any]:
    """The unit vector the simulator returns for ``item`` (str or token list): ``dim`` int16
    values drawn from SHAKE-128 of the input, normalised (~3 µs, so a batch of 64 costs 0.2 ms
    of the modelled latency instead of 3 ms with a seeded numpy generator per item)."""
    raw = item.encode() if isinstance(item, str) else np.asarray(item, dtype=np.int64).tobytes()
    v = np.frombuffer(hashlib.shake_128(raw).digest(2 * dim), dtype="<i2").astype(np.float32)
    norm = float(np.linalg.norm(v))
    return v / norm if norm else v


def _tokens(item: Any) -> int:
    return len(item.split()) if isinstance(item, str) else len(item)


class SimExecutor(Executor):
    """Embeddings: ``(unit vector, token count)`` per item; tensors: ``2 * row + 1``."""

    kind = "sim"
    simulated = True

    def __init__(
        self,
        instances: int,
        task: str,
        dim: int,
        base_us: int,
        per_item_us: int,
        error_rate: float = 0.0,
    ) -> None:
        super().__init__(instances)
        self.task = task
        self.dim = dim
        self.base_us = base_us
        self.per_item_us = per_item_us
        self.error_rate = error_rate
        self._rng = random.Random(0)

    def run(self, items: list[Any], slot: int) -> Outputs:
        t0 = time.perf_counter()
        out: Outputs
        if self.task == "embeddings":
            # (vector, token count); the simulator counts whitespace-separated words
            out = [(sim_vector(x, self.dim), _tokens(x)) for x in items]
        else:
            out = np.stack(items) * 2 + 1
        # The modelled latency includes producing the outputs, as a GPU call includes its copy.
        left = (self.base_us + self.per_item_us * len(items)) / 1e6 - (time.perf_counter() - t0)
        if left > 0:
            time.sleep(left)
        if self.error_rate and self._rng.random() < self.error_rate:
            raise RuntimeError("simulated executor error")
        return out

    def batch_limit(self) -> int:
        """Outputs are one small vector or row per item: a generous fixed bound."""
        return SIM_BATCH_LIMIT

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(base_us=self.base_us, per_item_us=self.per_item_us, dim=self.dim)
        return d
