"""ONNX Runtime executor for any ONNX model (task ``tensor``): the model says what it takes.

``load`` opens one ``InferenceSession`` and reads the inputs and outputs (names, datatypes,
shapes with dynamic dimensions) into a ``ModelSpec`` (``spec``). When dimension 0 of every input
and output is dynamic the model is batched: an item is one row (a tuple of one row per input,
in the spec's input order), ``run`` stacks the rows of each input into a per-slot buffer, runs
the session once and returns, per item, a tuple of that row of every output (views into the
batch's output arrays: no copy). Otherwise the model is unbatched (``max_batch_size == 0``): an
item is one request's whole tensors and ``run`` runs the session once per item.

One session is shared by every slot. ONNX Runtime's ``run`` is thread-safe; a shared session
holds the weights and the initialised graph once instead of ``instances`` times, loads once, and
one warm-up covers every slot. With ``intra_op_threads = 1`` (the default) each ``run`` computes
on its caller's thread, so concurrent slots do not contend for a thread pool.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from infergate.engine.executors.base import Executor, ExecutorError, Outputs
from infergate.engine.executors.ort_session import open_session
from infergate.engine.executors.spec import (
    Array,
    ModelSpec,
    SpecError,
    TensorSpec,
    batch_dynamic,
    dims_from,
    from_ort_type,
    loaded_facts,
    numpy_dtype,
)

DEFAULT_MAX_BATCH = 32
"""``spec.max_batch_size`` of a batched model when the caller gives none."""


class OnnxTensorExecutor(Executor):
    """Any ONNX model on ONNX Runtime; items and outputs are tuples of arrays (see module)."""

    kind = "onnxruntime"
    spec: ModelSpec
    """Always set (empty until ``load``)."""

    def __init__(
        self,
        instances: int,
        model_path: str,
        intra_op_threads: int = 1,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
        max_batch_size: int = DEFAULT_MAX_BATCH,
    ) -> None:
        """``max_batch_size``: rows per call published in the spec of a batched model (the
        config's ``batching.max_batch_size`` or its ceiling); ignored for an unbatched one."""
        super().__init__(instances)
        # config
        self.model_path = model_path
        self.intra_op_threads = intra_op_threads
        self.providers = providers
        self.requested_max_batch = max_batch_size
        # set by load (the loading thread), read-only afterwards
        self.session: Any = None
        self.spec = ModelSpec((), ())
        self.load_s = 0.0
        self.warmup_s: dict[int, float] = {}
        """Seconds of the warm-up batch at each size (set by ``warmup``)."""
        self._names: tuple[str, ...] = ()
        self._dtypes: tuple[np.dtype[Any], ...] = ()
        # per slot, owned by the slot's thread: input index -> reusable batch buffer
        self._buffers: list[dict[int, Array]] = [{} for _ in range(instances)]

    def load(self) -> None:
        """Open the session and publish ``spec``. Called once, on the loading thread.

        Raises:
            ExecutorError: onnxruntime missing, a provider absent or inactive, an unreadable
                model, or a tensor type infergate cannot carry (BF16, sequences, maps).
        """
        t0 = time.perf_counter()
        session = open_session(self.model_path, self.intra_op_threads, self.providers)
        try:
            self.spec = session_spec(session, self.requested_max_batch)
            self._dtypes = tuple(numpy_dtype(t.datatype) for t in self.spec.inputs)
        except SpecError as e:
            raise ExecutorError(f"{self.model_path}: {e}") from e
        self._names = tuple(t.name for t in self.spec.inputs)
        # ONNX Runtime takes any number of rows; an unbatched model takes one item per call
        self.max_batch = None if self.spec.batched else 1
        self.session = session
        self.load_s = time.perf_counter() - t0

    def _gather(self, slot: int, k: int, rows: Sequence[Array]) -> Array:
        """Input ``k`` of a batch: its rows stacked into slot ``slot``'s buffer (grown, or
        re-made when the row shape changes), so a steady load allocates nothing per call."""
        first = rows[0]
        buf = self._buffers[slot].get(k)
        if buf is None or buf.shape[0] < len(rows) or buf.shape[1:] != first.shape:
            cap = max(len(rows), buf.shape[0] if buf is not None else 0)
            buf = np.empty((cap, *first.shape), dtype=self._dtypes[k])
            self._buffers[slot][k] = buf
        view = buf[: len(rows)]
        np.stack(rows, out=view, casting="same_kind")
        return view

    def run(self, items: list[Any], slot: int) -> Outputs:
        """Outputs per item (tuples of arrays, the spec's output order). Called from slot
        ``slot``'s thread only. Raises ExecutorError when an output's first dimension is not
        the batch's row count (a reply would be misaligned)."""
        if not self.spec.batched:
            return [self._run_whole(item) for item in items]
        n = len(items)
        feeds = {
            name: self._gather(slot, k, [item[k] for item in items])
            for k, name in enumerate(self._names)
        }
        outs = self.session.run(None, feeds)
        for spec, arr in zip(self.spec.outputs, outs, strict=True):
            if arr.ndim == 0 or arr.shape[0] != n:
                raise ExecutorError(
                    f"output {spec.name} has shape {list(arr.shape)} for a batch of {n} rows"
                )
        return [tuple(arr[i] for arr in outs) for i in range(n)]

    def _run_whole(self, item: Sequence[Array]) -> tuple[Array, ...]:
        feeds = dict(zip(self._names, item, strict=True))
        return tuple(self.session.run(None, feeds))

    def warmup(self, batch_sizes: Sequence[int]) -> dict[int, float]:
        """Run one batch of zeros at each size (dynamic non-batch dimensions set to 1) so no
        client pays ONNX Runtime's first-call cost for that shape; an unbatched model runs once
        (reported under size 1). Called on the loading thread after ``load``, before any
        ``run``. Returns (and keeps for ``describe``) the seconds each size took."""
        sizes = sorted({s for s in batch_sizes if s > 0}) if self.spec.batched else [1]
        for size in sizes:
            t0 = time.perf_counter()
            self.run(warmup_items(self.spec, size), 0)
            self.warmup_s[size] = time.perf_counter() - t0
        return dict(self.warmup_s)

    def close(self) -> None:
        """Drop the session and buffers. Called once, after the last ``run``."""
        self.session = None
        self._buffers = [{} for _ in range(self.instances)]

    def describe(self) -> dict[str, Any]:
        """Facts for ``/admin/models``: spec summary, load and warm-up seconds."""
        d = super().describe()
        d.update(
            model_file=self.model_path,
            intra_op_threads=self.intra_op_threads,
            providers=list(self.providers),
            **loaded_facts(self.spec, self.load_s, self.warmup_s),
        )
        return d


def session_spec(session: Any, max_batch_size: int) -> ModelSpec:
    """The ``ModelSpec`` of an ``onnxruntime.InferenceSession``: batched (``max_batch_size``
    rows per call) when dimension 0 of every input and output is dynamic, unbatched otherwise.

    Raises:
        SpecError: a tensor type with no KServe datatype, or BF16 (see ``spec.DATATYPES``).
    """

    def tensors(args: Sequence[Any]) -> tuple[TensorSpec, ...]:
        out = []
        for a in args:
            datatype = from_ort_type(a.type, a.name)
            if datatype == "BF16":
                raise SpecError(f"tensor {a.name}: BF16 cannot pass ONNX Runtime's Python API")
            out.append(TensorSpec(a.name, datatype, dims_from(a.shape)))
        return tuple(out)

    inputs, outputs = tensors(session.get_inputs()), tensors(session.get_outputs())
    dynamic = batch_dynamic(inputs, outputs)
    return ModelSpec(inputs, outputs, max(1, max_batch_size) if dynamic else 0, dynamic)


def warmup_items(spec: ModelSpec, rows: int) -> list[tuple[Array, ...]]:
    """Zero items for a warm-up batch of ``rows`` rows (one whole-tensor item when unbatched);
    dynamic dimensions other than the batch are 1, BYTES tensors hold empty strings."""

    def zeros(t: TensorSpec, shape: tuple[int, ...]) -> Array:
        dims = tuple(1 if d == -1 else d for d in shape)
        if t.datatype == "BYTES":
            return np.full(dims, "", dtype=object)
        return np.zeros(dims, dtype=numpy_dtype(t.datatype))

    if not spec.batched:
        return [tuple(zeros(t, t.shape) for t in spec.inputs)]
    row = tuple(zeros(t, t.shape[1:]) for t in spec.inputs)
    return [row] * rows
