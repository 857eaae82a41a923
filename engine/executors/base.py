"""The executor interface: what the Batcher needs from a model runtime, and what the APIs
need to know about the model (its ``ModelSpec``: inputs, outputs, batch limits)."""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Hashable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from infergate.engine.executors.spec import Array, ModelSpec, batch_key, check_inputs

Outputs = Sequence[Any] | np.ndarray[Any, Any]
"""One output per item, in order: a sequence, or an array whose first axis is the item."""


DEFAULT_BATCH_LIMIT = 1024
"""Batch ceiling of an executor that states no memory estimate nor hard limit."""


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    """Where a gateway model's batch ran: the replica (base URL) and the upstream time."""

    replica: str
    seconds: float


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
    spec: ModelSpec | None = None
    """What the model takes and returns; valid after ``load`` (None: this executor publishes
    none, e.g. a gateway model whose upstream says nothing). Read-only once loaded, by any
    thread; the APIs build metadata and validate requests from it and never probe."""
    vocab_size: int | None = None
    """Token ids an embeddings model accepts (``0..vocab_size-1``), None when unknown."""

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

    def warmup(self, batch_sizes: Sequence[int]) -> dict[int, float]:
        """Run one batch at each size so no client pays the runtime's first-call cost; returns
        the seconds per size. Called on the loading thread after ``load``, before serving.
        The default does nothing (the simulator and tokenizing executors need none)."""
        return {}

    def embedding_dim(self) -> int | None:
        """Length of the vectors an embeddings model returns: the last dimension of its first
        output in ``spec``; None when unknown (no spec, or a dynamic dimension)."""
        if self.spec is None or not self.spec.outputs:
            return None
        shape = self.spec.outputs[0].shape
        return shape[-1] if shape and shape[-1] > 0 else None

    def accept(self, tensors: Mapping[str, tuple[str, Any]]) -> tuple[tuple[Array, ...], Hashable]:
        """A tensor request's arrays (in the spec's input order) and its batch key.

        ``tensors`` maps each input name to ``(datatype, array)`` as the API decoded it. Called
        on a sub-reactor (or the codec thread) before anything is queued; reads only ``spec``.

        Raises:
            InputError: the request does not fit the model (the message names the input).
        """
        if self.spec is None:
            raise ExecutorError(f"{self.kind} executor publishes no model spec")
        arrays = check_inputs(self.spec, tensors)
        return arrays, batch_key(self.spec, arrays)

    def last_call(self, slot: int) -> UpstreamCall | None:
        """The upstream call slot ``slot``'s last batch made (gateway executors); None for a
        model that runs here. Slot ``slot``'s thread, right after ``run``."""
        return None

    def describe(self) -> dict[str, Any]:
        """Facts for ``/v1/models`` and the admin API."""
        return {"executor": self.kind, "instances": self.instances, "simulated": self.simulated}

    def describe_admin(self) -> dict[str, Any]:
        """``describe`` plus what only the admin plane may show (a gateway model's replica
        URLs and states)."""
        return self.describe()


@runtime_checkable
class RunsAsync(Protocol):
    """An executor whose batches run on an event loop (gateway executors): the Batcher starts
    a batch from whichever thread finds work and a free slot, and finishes it in the
    future's callback, with no slot thread blocked in between."""

    instances: int

    def run_async(self, items: list[Any], slot: int) -> asyncio.Future[Outputs] | Future[Outputs]:
        """Start ``run(items, slot)``: on the calling thread's loop if it runs one the
        executor may use (an ``asyncio`` task), else on a loop of the executor's own (a
        ``concurrent.futures`` future); the callbacks run on the loop that runs it.
        Thread-safe; never blocks. Slot ``slot`` is this batch's until the future is done
        (``last_call(slot)`` is read in its callback)."""
        ...


def batch_ceiling(configured: int, executor: Executor) -> int:
    """The ceiling of a model's ``max_batch_size``: ``configured`` (its
    ``max_batch_size_limit``), or when 0 the executor's own ``batch_limit()``; never above
    the executor's hard limit (a TensorRT profile's maximum)."""
    ceiling = configured or executor.batch_limit()
    if executor.max_batch is not None:
        ceiling = min(ceiling, executor.max_batch)
    return max(1, ceiling)
