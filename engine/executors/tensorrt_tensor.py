"""TensorRT executor for any ONNX model (task ``tensor``) on an NVIDIA GPU (TensorRT 10 API).

The model is either a prebuilt engine (``model.plan``, loaded as is) or an ONNX file, from which
an engine is built once with one optimization profile over the batch dimension (1 …
``max_batch_size``; dynamic non-batch dimensions 1 … ``DYNAMIC_DIM_MAX``) and cached on disk,
keyed by the ONNX file's hash, the profile, the TensorRT version and the GPU (like
``engine.executors.tensorrt``). The ``ModelSpec`` is read from the engine's I/O tensors; items
and outputs are the same tuples of rows as ``OnnxTensorExecutor``'s, so the KServe API cannot
tell the two apart.

Each slot has its own execution context, CUDA stream and device buffers, grown to the largest
shape it has seen; a batch is stacked on the host, copied in, run with ``execute_async_v3``
and copied out on the slot's stream. ``tensorrt`` is imported only after the CUDA driver probe
(see ``engine.executors.tensorrt``); every failure raises ExecutorError with what to do.

Not run on the development machines (no GPU, no TensorRT): ``tests/engine/executors/test_gpu.py``
compares it with ONNX Runtime where a GPU is present and skips with the reason elsewhere.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from infergate.engine.executors.base import Executor, ExecutorError, Outputs
from infergate.engine.executors.onnx_tensor import warmup_items
from infergate.engine.executors.spec import (
    Array,
    ModelSpec,
    SpecError,
    TensorSpec,
    batch_dynamic,
    dims_from,
    from_numpy,
    loaded_facts,
    numpy_dtype,
)
from infergate.engine.executors.tensorrt import _check, _cudart, probe_cuda_driver

log = logging.getLogger("infergate.tensorrt")

DYNAMIC_DIM_MAX = 512
"""Largest size of a dynamic non-batch dimension (a sequence length) in a built profile."""
DYNAMIC_DIM_OPT = 128
WORKSPACE_BYTES = 1 << 30


class TensorRTTensorExecutor(Executor):
    """Any ONNX model (or TensorRT plan) on TensorRT; items and outputs are tuples of arrays."""

    kind = "tensorrt"
    spec: ModelSpec
    """Always set (empty until ``load``)."""

    def __init__(
        self, instances: int, model_path: str, max_batch_size: int, cache_dir: str | None = None
    ) -> None:
        super().__init__(instances)
        # config
        self.model_path = model_path
        self.max_batch_size = max(1, max_batch_size)
        self.cache_dir = cache_dir or os.path.join(
            os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "infergate", "trt"
        )
        # set by load, read-only afterwards
        self.spec = ModelSpec((), ())
        self.load_s = 0.0
        self.warmup_s: dict[int, float] = {}
        self._trt: Any = None
        self._cudart: Any = None
        self._engine: Any = None
        self._out_dtypes: tuple[np.dtype[Any], ...] = ()
        # per slot, owned by the slot's thread
        self._slots: list[dict[str, Any]] = []

    def batch_limit(self) -> int:
        """The engine's profile ends at the start-up ``max_batch_size``."""
        return self.max_batch_size

    def load(self) -> None:
        """Build or load the engine, publish ``spec``, make one context per slot.

        Raises:
            ExecutorError: no driver or GPU, TensorRT or cuda-python missing, an ONNX file
                TensorRT cannot parse, or a tensor type KServe cannot carry.
        """
        t0 = time.perf_counter()
        reason = probe_cuda_driver()
        if reason is not None:
            raise ExecutorError(f"tensorrt executor unavailable: {reason}")
        try:
            import tensorrt as trt  # noqa: PLC0415 - only after the driver probe
        except ImportError as e:
            raise ExecutorError(
                "the tensorrt executor needs TensorRT 10's Python bindings (pip install tensorrt, "
                "with NVIDIA's libraries); use executor = 'onnxruntime' on machines without it"
            ) from e
        self._trt = trt
        self._cudart = _cudart()
        self._engine = self._load_engine(trt)
        try:
            self.spec = self._engine_spec()
            self._out_dtypes = tuple(numpy_dtype(t.datatype) for t in self.spec.outputs)
        except SpecError as e:
            raise ExecutorError(f"{self.model_path}: {e}") from e
        self.max_batch = self.spec.max_batch_size if self.spec.batched else 1
        self._slots = [self._make_slot() for _ in range(self.instances)]
        self.load_s = time.perf_counter() - t0

    def _load_engine(self, trt: Any) -> Any:
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        path = self.model_path if self.model_path.endswith(".plan") else self._plan_path(trt)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                engine = runtime.deserialize_cuda_engine(f.read())
            if engine is not None:
                log.info("loaded TensorRT engine %s", path)
                return engine
            if path == self.model_path:
                raise ExecutorError(f"{path} is not a TensorRT engine for this GPU and version")
            log.warning("cached TensorRT engine %s is unusable; rebuilding", path)
        plan = self._build(trt)
        os.makedirs(self.cache_dir, exist_ok=True)
        with open(path, "wb") as f:
            f.write(plan)
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise ExecutorError("TensorRT could not deserialize the engine it built")
        return engine

    def _plan_path(self, trt: Any) -> str:
        with open(self.model_path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:16]
        gpu = _check(self._cudart.cudaGetDeviceProperties(0)).name
        gpu_name = gpu.decode() if isinstance(gpu, bytes) else str(gpu)
        key = f"{digest}-tensor-b{self.max_batch_size}-d{DYNAMIC_DIM_MAX}-trt{trt.__version__}"
        safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in f"{key}-{gpu_name}")
        return os.path.join(self.cache_dir, safe.rstrip("\x00") + ".plan")

    def _build(self, trt: Any) -> bytes:
        """A serialized engine for the ONNX file, one profile over every dynamic dimension:
        dimension 0 from 1 to ``max_batch_size``, others from 1 to ``DYNAMIC_DIM_MAX``."""
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(self.model_path):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ExecutorError(f"TensorRT cannot parse {self.model_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            shape = tuple(tensor.shape)
            lo, opt, hi = _profile(shape, self.max_batch_size)
            profile.set_shape(tensor.name, lo, opt, hi)
        config.add_optimization_profile(profile)
        log.info("building TensorRT engine for %s (takes a while, once)", self.model_path)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise ExecutorError(f"TensorRT could not build an engine for {self.model_path}")
        return bytes(plan)

    def _engine_spec(self) -> ModelSpec:
        trt, engine = self._trt, self._engine
        inputs: list[TensorSpec] = []
        outputs: list[TensorSpec] = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            spec = TensorSpec(name, from_numpy(dtype), dims_from(engine.get_tensor_shape(name)))
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (inputs if is_input else outputs).append(spec)
        dynamic = batch_dynamic(inputs, outputs)
        size = self.max_batch_size
        if dynamic:  # a prebuilt plan says its own maximum
            size = min(int(engine.get_tensor_profile_shape(inputs[0].name, 0)[2][0]), size)
        return ModelSpec(tuple(inputs), tuple(outputs), size if dynamic else 0, dynamic)

    def _make_slot(self) -> dict[str, Any]:
        ctx = self._engine.create_execution_context()
        stream = _check(self._cudart.cudaStreamCreate())
        return {"ctx": ctx, "stream": stream, "buffers": {}}

    def _device(self, slot: dict[str, Any], name: str, nbytes: int) -> int:
        """Slot's device buffer for tensor ``name`` of at least ``nbytes`` (grown, never
        shrunk), bound to the slot's context."""
        ptr, size = slot["buffers"].get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _check(self._cudart.cudaFree(ptr))
            ptr = _check(self._cudart.cudaMalloc(max(nbytes, 1)))
            slot["buffers"][name] = (ptr, nbytes)
            slot["ctx"].set_tensor_address(name, ptr)
        return int(ptr)

    def run(self, items: list[Any], slot: int) -> Outputs:
        """Outputs per item (tuples of arrays, the spec's output order); slot ``slot``'s
        thread only."""
        if not self.spec.batched:
            return [self._execute(slot, list(item)) for item in items]
        if len(items) > self.max_batch_size:
            raise ExecutorError(f"batch of {len(items)} exceeds the engine's {self.max_batch_size}")
        feeds = [np.stack([item[k] for item in items]) for k in range(len(self.spec.inputs))]
        outs = self._execute(slot, feeds)
        n = len(items)
        for t, arr in zip(self.spec.outputs, outs, strict=True):
            if arr.ndim == 0 or arr.shape[0] != n:
                raise ExecutorError(
                    f"output {t.name} has shape {list(arr.shape)} for a batch of {n} rows"
                )
        return [tuple(arr[i] for arr in outs) for i in range(n)]

    def _execute(self, slot: int, feeds: Sequence[Array]) -> tuple[Array, ...]:
        cudart, s = self._cudart, self._slots[slot]
        ctx, stream = s["ctx"], s["stream"]
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        hold = []  # host arrays must live until the stream is synchronised
        for t, arr in zip(self.spec.inputs, feeds, strict=True):
            host = np.ascontiguousarray(arr)
            hold.append(host)
            ctx.set_input_shape(t.name, host.shape)
            ptr = self._device(s, t.name, host.nbytes)
            _check(cudart.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, h2d, stream))
        outs = []
        for t, dtype in zip(self.spec.outputs, self._out_dtypes, strict=True):
            shape = tuple(int(d) for d in ctx.get_tensor_shape(t.name))
            host = np.empty(shape, dtype=dtype)
            self._device(s, t.name, host.nbytes)
            outs.append(host)
        if not ctx.execute_async_v3(stream):
            raise ExecutorError("TensorRT execution failed")
        for t, host in zip(self.spec.outputs, outs, strict=True):
            ptr = s["buffers"][t.name][0]
            _check(cudart.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, d2h, stream))
        _check(cudart.cudaStreamSynchronize(stream))
        del hold
        return tuple(outs)

    def warmup(self, batch_sizes: Sequence[int]) -> dict[int, float]:
        """One batch of zeros at each size (see ``OnnxTensorExecutor.warmup``)."""
        sizes = sorted({s for s in batch_sizes if 0 < s <= self.max_batch_size})
        for size in sizes if self.spec.batched else [1]:
            t0 = time.perf_counter()
            self.run(warmup_items(self.spec, size), 0)
            self.warmup_s[size] = time.perf_counter() - t0
        return dict(self.warmup_s)

    def close(self) -> None:
        for s in self._slots:
            for ptr, _ in s["buffers"].values():
                self._cudart.cudaFree(ptr)
            self._cudart.cudaStreamDestroy(s["stream"])
        self._slots.clear()

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(
            model_file=self.model_path,
            **loaded_facts(self.spec, self.load_s, self.warmup_s),
        )
        return d


def _profile(
    shape: tuple[int, ...], max_batch: int
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) shapes of one input: fixed dimensions as they are, a dynamic
    dimension 0 over 1..max_batch, other dynamic dimensions over 1..DYNAMIC_DIM_MAX."""
    lo, opt, hi = [], [], []
    for i, d in enumerate(shape):
        if d > 0:
            lo.append(d)
            opt.append(d)
            hi.append(d)
        elif i == 0:
            lo.append(1)
            opt.append(max(1, max_batch // 2))
            hi.append(max_batch)
        else:
            lo.append(1)
            opt.append(DYNAMIC_DIM_OPT)
            hi.append(DYNAMIC_DIM_MAX)
    return tuple(lo), tuple(opt), tuple(hi)
