"""The executor interface: what the Batcher needs from a model runtime."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import numpy as np

Outputs = Sequence[Any] | np.ndarray[Any, Any]
"""One output per item, in order: a sequence, or an array whose first axis is the item."""


DEFAULT_BATCH_LIMIT = 1024
"""Batch ceiling of an executor that states no memory estimate nor hard limit."""


class ExecutorError(Exception):
    """The executor cannot load or run; the message says what to do."""


class Executor(abc.ABC):
    """Runs batches of items on ``instances`` slots.

    ``run`` is called from the slot's own thread (slot ``k`` always from the same thread), so an
    executor may keep per-slot buffers and sessions without locks. Implementations release the
    GIL while they compute (ONNX Runtime, TensorRT and ``time.sleep`` all do).
    """

    kind: str = "?"
    simulated: bool = False

    def __init__(self, instances: int) -> None:
        self.instances = instances
        self.max_batch: int | None = None
        """Largest batch the executor can run (a TensorRT profile's maximum), if bounded."""

    def load(self) -> None:  # noqa: B027 - optional hook
        """Heavy start-up work (sessions, engines). Called once before the first ``run``."""

    @abc.abstractmethod
    def run(self, items: list[Any], slot: int) -> Outputs:
        """Outputs for ``items``, one per item and in order; raise to fail the whole batch."""

    def batch_limit(self) -> int:
        """The largest batch this executor should ever be given: its hard limit
        (``max_batch``), else what its memory per item allows. The default ceiling of
        ``batching.max_batch_size`` (when the model's ``max_batch_size_limit`` is 0). Exact
        after ``load``; an estimate before."""
        return self.max_batch if self.max_batch is not None else DEFAULT_BATCH_LIMIT

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources. Called once after the last ``run``."""

    def describe(self) -> dict[str, Any]:
        """Facts for ``/v1/models`` and the admin API."""
        return {"executor": self.kind, "instances": self.instances, "simulated": self.simulated}


def batch_ceiling(configured: int, executor: Executor) -> int:
    """The ceiling of a model's ``max_batch_size``: ``configured`` (its
    ``max_batch_size_limit``), or when 0 the executor's own ``batch_limit()``; never above
    the executor's hard limit (a TensorRT profile's maximum)."""
    ceiling = configured or executor.batch_limit()
    if executor.max_batch is not None:
        ceiling = min(ceiling, executor.max_batch)
    return max(1, ceiling)
