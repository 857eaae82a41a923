"""TensorRT executor for sentence embeddings on an NVIDIA GPU (TensorRT 10 API).

Builds an engine from the same ONNX file as the CPU executor, with one optimization profile over
the batch dimension (1 … max_batch_size) and the sequence length (1 … max_input_tokens), and
caches the serialized plan on disk (keyed by the ONNX file's hash, the profile, the TensorRT
version and the GPU). Each slot has its own execution context, CUDA stream and device buffers,
allocated once at the largest shape; a batch is copied in, run with ``execute_async_v3`` and
copied out on the slot's stream. Tokenising and pooling are shared with the ONNX executor.

Safety: ``tensorrt`` is imported lazily, and only after the CUDA driver has been probed
(``libcuda.so.1`` loads and ``cuInit`` succeeds with at least one device): TensorRT 8.6's
``trt.Runtime`` segfaults the interpreter when no driver is present. Every failure raises
ExecutorError with what to do; nothing falls back to the CPU silently.

Requirements at run time (not installed by default): ``tensorrt`` (10.x) and ``cuda-python``.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
from typing import Any

import numpy as np

from infergate.engine.executors.base import ExecutorError, Outputs
from infergate.engine.executors.onnx import OnnxEmbeddingExecutor
from infergate.engine.executors.spec import embedding_spec
from infergate.engine.models.embeddings import mean_pool_normalize

log = logging.getLogger("infergate.tensorrt")


def probe_cuda_driver() -> str | None:
    """None if a CUDA driver with at least one device is usable, else the reason it is not."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as e:
        return f"no CUDA driver (libcuda.so.1 did not load: {e})"
    rc = cuda.cuInit(0)
    if rc != 0:
        return f"the CUDA driver failed to initialise (cuInit returned {rc})"
    count = ctypes.c_int(0)
    rc = cuda.cuDeviceGetCount(ctypes.byref(count))
    if rc != 0 or count.value < 1:
        return "the CUDA driver sees no GPU"
    return None


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime  # noqa: PLC0415 - cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart as runtime  # noqa: PLC0415
        except ImportError as e:
            raise ExecutorError(
                "the tensorrt executor needs cuda-python: pip install cuda-python"
            ) from e
    return runtime


def _check(result: Any) -> Any:
    """cuda-python calls return (err, *values); raise on error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise ExecutorError(f"CUDA call failed: {err}")
    return values[0] if len(values) == 1 else values


class TensorRTEmbeddingExecutor(OnnxEmbeddingExecutor):
    """Outputs per item: ``(unit vector float32[dim], token count)``, like the CPU executor."""

    kind = "tensorrt"

    def __init__(
        self,
        instances: int,
        model_path: str,
        tokenizer_path: str,
        max_batch_size: int,
        max_tokens: int = 256,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(instances, model_path, tokenizer_path, 1, max_tokens)
        self.max_batch_size = max_batch_size
        self.cache_dir = cache_dir or os.path.join(
            os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "infergate", "trt"
        )
        self._trt: Any = None
        self._cudart: Any = None
        self._engine: Any = None
        self._slots: list[dict[str, Any]] = []

    def batch_limit(self) -> int:
        """The engine's optimization profile ends at the start-up ``max_batch_size``."""
        return self.max_batch_size

    def load(self) -> None:
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
        self._load_tokenizer()
        self._engine = self._build_or_load(trt)
        for _ in range(self.instances):
            self._slots.append(self._make_slot())
        self.dim = int(self._engine.get_tensor_shape(self._slots[0]["out"])[-1])
        self.max_batch = self.max_batch_size
        self.spec = embedding_spec(self.dim, self.max_batch_size)

    def _load_tokenizer(self) -> None:
        from tokenizers import Tokenizer  # noqa: PLC0415

        tok = Tokenizer.from_file(self.tokenizer_path)
        tok.no_padding()
        tok.enable_truncation(self.max_tokens)
        self.tokenizer = tok
        self.vocab_size = tok.get_vocab_size()

    def _plan_path(self, trt: Any) -> str:
        with open(self.model_path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:16]
        gpu = _check(self._cudart.cudaGetDeviceProperties(0)).name
        gpu_name = gpu.decode() if isinstance(gpu, bytes) else str(gpu)
        key = f"{digest}-b{self.max_batch_size}-t{self.max_tokens}-trt{trt.__version__}-{gpu_name}"
        safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in key)
        return os.path.join(self.cache_dir, safe.rstrip("\x00") + ".plan")

    def _build_or_load(self, trt: Any) -> Any:
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        path = self._plan_path(trt)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                engine = runtime.deserialize_cuda_engine(f.read())
            if engine is not None:
                log.info("loaded TensorRT engine %s", path)
                return engine
            log.warning("cached TensorRT engine %s is unusable; rebuilding", path)
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(self.model_path):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ExecutorError(f"TensorRT cannot parse {self.model_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)
        profile = builder.create_optimization_profile()
        opt = (max(1, self.max_batch_size // 2), min(128, self.max_tokens))
        for i in range(network.num_inputs):
            name = network.get_input(i).name
            profile.set_shape(name, (1, 1), opt, (self.max_batch_size, self.max_tokens))
        config.add_optimization_profile(profile)
        log.info("building TensorRT engine for %s (takes a while, once)", self.model_path)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise ExecutorError(f"TensorRT could not build an engine for {self.model_path}")
        os.makedirs(self.cache_dir, exist_ok=True)
        with open(path, "wb") as f:
            f.write(plan)
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise ExecutorError("TensorRT could not deserialize the engine it built")
        return engine

    def _make_slot(self) -> dict[str, Any]:
        trt, cudart, engine = self._trt, self._cudart, self._engine
        ctx = engine.create_execution_context()
        stream = _check(cudart.cudaStreamCreate())
        buffers: dict[str, tuple[int, int]] = {}
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        for name in names:
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            last = engine.get_tensor_shape(name)[-1]
            per_token = (
                int(last) if int(last) > 0 and len(engine.get_tensor_shape(name)) == 3 else 1
            )
            nbytes = self.max_batch_size * self.max_tokens * per_token * dtype.itemsize
            buffers[name] = (_check(cudart.cudaMalloc(nbytes)), nbytes)
            ctx.set_tensor_address(name, buffers[name][0])
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        return {
            "ctx": ctx,
            "stream": stream,
            "buffers": buffers,
            "inputs": inputs,
            "out": outputs[0],
        }

    def run(self, items: list[Any], slot: int) -> Outputs:
        if len(items) > self.max_batch_size:
            raise ExecutorError(f"batch of {len(items)} exceeds the engine's {self.max_batch_size}")
        cudart, s = self._cudart, self._slots[slot]
        ids = self.encode(items)
        n = len(ids)
        length = max(1, *(len(t) for t in ids))
        host = {
            "input_ids": self._buffer(slot, "input_ids", n, length),
            "attention_mask": self._buffer(slot, "attention_mask", n, length),
            "token_type_ids": self._buffer(slot, "token_type_ids", n, length),
        }
        for row, toks in enumerate(ids):
            host["input_ids"][row, : len(toks)] = toks
            host["attention_mask"][row, : len(toks)] = 1
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        for name in s["inputs"]:
            arr = np.ascontiguousarray(host[name])
            s["ctx"].set_input_shape(name, (n, length))
            _check(
                cudart.cudaMemcpyAsync(
                    s["buffers"][name][0], arr.ctypes.data, arr.nbytes, h2d, s["stream"]
                )
            )
        if not s["ctx"].execute_async_v3(s["stream"]):
            raise ExecutorError("TensorRT execution failed")
        states = np.empty((n, length, self.dim), dtype=np.float32)
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(
            cudart.cudaMemcpyAsync(
                states.ctypes.data, s["buffers"][s["out"]][0], states.nbytes, d2h, s["stream"]
            )
        )
        _check(cudart.cudaStreamSynchronize(s["stream"]))
        vectors = mean_pool_normalize(states, host["attention_mask"])
        return [(vectors[i], len(toks)) for i, toks in enumerate(ids)]

    def close(self) -> None:
        for s in self._slots:
            for ptr, _ in s["buffers"].values():
                self._cudart.cudaFree(ptr)
            self._cudart.cudaStreamDestroy(s["stream"])
        self._slots.clear()
