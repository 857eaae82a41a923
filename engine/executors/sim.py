"""A simulated executor for benchmarks and tests: a GPU-like latency model, real outputs.

Latency ``base_us + per_item_us * items`` (``time.sleep`` releases the GIL, like a GPU call),
``instances`` slots, deterministic outputs: embeddings are unit vectors seeded by a hash of the
input; tensors are ``2 * x + 1``. ``error_rate`` fails that fraction of batches.

Its spec (per task): embeddings take ``TEXT`` and return ``EMBEDDING [-1, dim]``; tensors take
``INPUT0`` and return ``OUTPUT0`` of the same datatype and shape. The tensor model is the one
polymorphic model here: it publishes FP32 ``[-1, -1]`` but accepts every numeric datatype and
any rank (``accept``), and requests merge only with the same datatype and row shape.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np

from infergate.engine.executors.base import Executor, Outputs
from infergate.engine.executors.spec import (
    Array,
    InputError,
    ModelSpec,
    ShapeError,
    TensorSpec,
    embedding_spec,
)

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


def _tensor_spec(max_batch_size: int) -> ModelSpec:
    return ModelSpec(
        (TensorSpec("INPUT0", "FP32", (-1, -1)),),
        (TensorSpec("OUTPUT0", "FP32", (-1, -1)),),
        max(1, max_batch_size),
        True,
    )


class SimExecutor(Executor):
    """Embeddings: ``(unit vector, token count)`` per item; tensors: items and outputs are
    one-tuples of a row (``(2 * row + 1,)``), as ``OnnxTensorExecutor``'s."""

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
        max_batch_size: int = 32,
    ) -> None:
        super().__init__(instances)
        self.task = task
        self.dim = dim
        self.base_us = base_us
        self.per_item_us = per_item_us
        self.error_rate = error_rate
        self._rng = random.Random(0)
        self.spec = (
            embedding_spec(dim, max_batch_size)
            if task == "embeddings"
            else _tensor_spec(max_batch_size)
        )

    def accept(self, tensors: Mapping[str, tuple[str, Any]]) -> tuple[tuple[Array, ...], Hashable]:
        """``INPUT0`` of any numeric datatype and rank; the key holds both (see module)."""
        if self.task == "embeddings":
            return super().accept(tensors)
        for name in tensors:
            if name != "INPUT0":
                raise InputError(name, f"unknown input {name} (the model takes INPUT0)")
        got = tensors.get("INPUT0")
        if got is None:
            raise InputError("INPUT0", "missing input INPUT0 (any numeric datatype, [-1, ...])")
        datatype, arr = got
        if datatype in ("BYTES", "BF16"):
            raise InputError("INPUT0", f"input INPUT0: expected a numeric datatype, got {datatype}")
        if arr.ndim < 1 or arr.shape[0] == 0:
            raise ShapeError("INPUT0", (-1,), arr.shape)
        return (arr,), (datatype, arr.shape[1:])

    def run(self, items: list[Any], slot: int) -> Outputs:
        t0 = time.perf_counter()
        out: Outputs
        if self.task == "embeddings":
            # (vector, token count); the simulator counts whitespace-separated words
            out = [(sim_vector(x, self.dim), _tokens(x)) for x in items]
        else:
            out = [(row,) for row in np.stack([item[0] for item in items]) * 2 + 1]
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
