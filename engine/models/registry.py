"""The served models: one executor and one Batcher each, built from the config."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import msgspec

from engine.config import BatchingConfig, ModelConfig
from engine.executors.base import Executor, ExecutorError, batch_ceiling
from engine.executors.onnx import OnnxEmbeddingExecutor
from engine.executors.onnx_tensor import OnnxTensorExecutor
from engine.executors.onnx_text import TEXT_TASKS, build_text_executor
from engine.executors.sim import SimExecutor
from engine.executors.spec import ModelSpec
from engine.executors.tensorrt import TensorRTEmbeddingExecutor
from engine.executors.tensorrt_tensor import TensorRTTensorExecutor
from engine.executors.upstream.generate import GenerateExecutor
from engine.executors.upstream.kserve import KServeTensorExecutor
from engine.executors.upstream.openai import OpenAIEmbeddingsExecutor
from engine.models.embeddings import resolve_model_file, resolve_tokenizer_file
from engine.scheduler.batcher import Batcher

log = logging.getLogger("infergate.models")


def build_executor(cfg: ModelConfig, base_dir: str) -> Executor:
    """The executor a model's config asks for (not yet loaded).

    Raises:
        ExecutorError: the combination is not supported or files are missing.
    """
    if cfg.executor == "sim":
        return SimExecutor(
            cfg.instances, cfg.task, cfg.dim, cfg.base_us, cfg.per_item_us, cfg.error_rate
        )
    if cfg.task == "tensor" and cfg.executor in ("onnxruntime", "tensorrt"):
        return build_tensor_executor(cfg, base_dir)
    if cfg.executor == "onnxruntime" and cfg.task in TEXT_TASKS:
        # any text model (MiniLM included): token lengths known at submit, so token budgets
        # work; the outputs equal the MiniLM-only executor's
        return build_text_executor(cfg, base_dir)
    if cfg.executor in ("onnxruntime", "tensorrt"):
        if cfg.task != "embeddings":
            raise ExecutorError(f"model {cfg.name}: {cfg.executor} serves task 'embeddings' only")
        if not cfg.model_file or not cfg.tokenizer_file:
            raise ExecutorError(f"model {cfg.name}: model_file and tokenizer_file are required")
        model = resolve_model_file(cfg.model_file, base_dir)
        tokenizer = resolve_tokenizer_file(cfg.tokenizer_file, base_dir)
        if cfg.executor == "tensorrt":
            return TensorRTEmbeddingExecutor(
                cfg.instances, model, tokenizer, cfg.batching.max_batch_size,
                cfg.max_input_tokens, cfg.trt_cache_dir or None,
            )  # fmt: skip
        return OnnxEmbeddingExecutor(
            cfg.instances, model, tokenizer, cfg.intra_op_threads, cfg.max_input_tokens,
            tuple(cfg.providers),
        )  # fmt: skip
    if cfg.executor == "openai" and cfg.task == "embeddings":
        try:
            return OpenAIEmbeddingsExecutor(
                cfg.name, cfg.upstreams, cfg.upstream_model, cfg.upstream
            )
        except ExecutorError as e:
            raise ExecutorError(f"model {cfg.name}: {e}") from e
    if cfg.executor == "openai" and cfg.task == "generate":
        if cfg.batching.policy == "window":
            raise ExecutorError(
                f"model {cfg.name}: a generate model is never merged (one request per upstream "
                "call): batching.policy 'window' would only delay it; use 'adaptive' or 'off'"
            )
        try:
            return GenerateExecutor(cfg.name, cfg.upstreams, cfg.upstream_model, cfg.upstream)
        except ExecutorError as e:
            raise ExecutorError(f"model {cfg.name}: {e}") from e
    if cfg.executor == "kserve" and cfg.task == "tensor":
        try:
            return KServeTensorExecutor(
                cfg.name, cfg.upstreams, cfg.upstream_model, cfg.upstream,
                max_batch_size=cfg.batching.max_batch_size,
            )  # fmt: skip
        except ExecutorError as e:
            raise ExecutorError(f"model {cfg.name}: {e}") from e
    if cfg.executor in ("openai", "kserve"):
        raise ExecutorError(
            f"model {cfg.name}: executor {cfg.executor!r} with task {cfg.task!r} is not "
            "supported (gateway mode: openai for embeddings and generate, kserve for tensor)"
        )
    raise ExecutorError(f"model {cfg.name}: unknown executor {cfg.executor!r}")


def build_tensor_executor(cfg: ModelConfig, base_dir: str) -> Executor:
    """Any ONNX model (task ``tensor``): ONNX Runtime, or TensorRT (an engine built from the
    ONNX file, or a prebuilt ``.plan``)."""
    if not cfg.model_file:
        raise ExecutorError(f"model {cfg.name}: task 'tensor' needs a model_file")
    model = resolve_model_file(cfg.model_file, base_dir)
    size = cfg.batching.max_batch_size
    if cfg.executor == "tensorrt":
        return TensorRTTensorExecutor(cfg.instances, model, size, cfg.trt_cache_dir or None)
    return OnnxTensorExecutor(
        cfg.instances, model, cfg.intra_op_threads, tuple(cfg.providers), size
    )


def check_ceiling(cfg: ModelConfig, ceiling: int) -> None:
    """Raise ExecutorError (naming the model) if its start-up ``max_batch_size`` is above
    ``ceiling``."""
    size = cfg.batching.max_batch_size
    if size > ceiling:
        source = (
            "its max_batch_size_limit"
            if cfg.max_batch_size_limit
            else "derived from the executor's memory per item; set max_batch_size_limit to "
            "raise it knowingly, or lower max_input_tokens"
        )
        raise ExecutorError(
            f"model {cfg.name}: batching.max_batch_size {size} exceeds the ceiling {ceiling} "
            f"({source})"
        )


def warmup_sizes(batching: BatchingConfig, configured: list[int]) -> list[int]:
    """Batch sizes to warm up: ``configured`` (capped at ``max_batch_size``), else the sizes
    the policy is likely to produce: powers of two up to ``max_batch_size``, the maximum itself
    and the preferred sizes."""
    cap = batching.max_batch_size
    if configured:
        return sorted({min(s, cap) for s in configured})
    sizes = {1 << k for k in range(cap.bit_length()) if 1 << k <= cap}
    return sorted(sizes | {cap} | {p for p in batching.preferred_batch_sizes if p <= cap})


def reconcile(b: Batcher, spec: ModelSpec) -> None:
    """Make the batching config fit the model before its batcher starts: an unbatched model
    (fixed dimension 0) is served one request per call (policy ``off``, max batch 1), and
    the log says so. Called on the loading thread before ``b.start()``."""
    cfg = b.batching
    if spec.batched or (cfg.policy == "off" and cfg.max_batch_size == 1):
        return
    fixed = msgspec.structs.replace(cfg, policy="off", max_batch_size=1, preferred_batch_sizes=[])
    b.batching = fixed
    b.config = msgspec.structs.replace(b.config, batching=fixed)
    log.warning(
        "model %s: dimension 0 is fixed, so requests cannot be batched: batching policy %s "
        "(max %d) -> off (max 1)", b.name, cfg.policy, cfg.max_batch_size,
    )  # fmt: skip


def load_model(b: Batcher) -> None:
    """Load one model's executor, fit its batching to its spec, warm it up when configured,
    fix its batch ceiling and start its batcher; logs the load and warm-up time. The unit a
    registry that loads models while serving calls on its loading thread.

    Raises:
        ExecutorError: naming the model, when its executor cannot load or its configured
            ``max_batch_size`` exceeds its ceiling.
    """
    t0 = time.perf_counter()
    try:
        b.executor.load()
    except ExecutorError as e:
        raise ExecutorError(f"model {b.name}: {e}") from e
    loaded = time.perf_counter() - t0
    if b.executor.spec is not None:
        reconcile(b, b.executor.spec)
    b.ceiling = batch_ceiling(b.config.max_batch_size_limit, b.executor)
    check_ceiling(b.config, b.ceiling)
    warm = 0.0
    if b.config.warmup:
        sizes = warmup_sizes(b.batching, b.config.warmup_batch_sizes)
        t1 = time.perf_counter()
        try:
            b.executor.warmup([s for s in sizes if s <= b.ceiling])
        except Exception as e:  # any runtime error: the model must not serve
            raise ExecutorError(f"model {b.name}: warm-up failed: {e}") from e
        warm = time.perf_counter() - t1
    b.start()
    log.info(
        "model %s ready in %.3f s (load %.3f s, warm-up %.3f s): %s",
        b.name, loaded + warm, loaded, warm, b.executor.describe(),
    )  # fmt: skip


class ModelRegistry:
    """Name → Batcher. Built and loaded before serving; read-only afterwards."""

    def __init__(self, models: list[ModelConfig], base_dir: str) -> None:
        self._batchers: dict[str, Batcher] = {}
        for cfg in models:
            self._batchers[cfg.name] = Batcher(cfg, build_executor(cfg, base_dir))

    def load(self) -> None:
        """Load every executor, fix each model's batch ceiling, start the batchers.

        Raises:
            ExecutorError: naming the model, when its executor cannot load or its configured
                ``max_batch_size`` exceeds its ceiling.
        """
        for b in self._batchers.values():
            load_model(b)

    def get(self, name: str) -> Batcher | None:
        return self._batchers.get(name)

    def __iter__(self) -> Iterator[Batcher]:
        return iter(self._batchers.values())

    def __len__(self) -> int:
        return len(self._batchers)

    def shed_queued(self) -> int:
        """Answer 503 ``shutting_down`` to every model's queued work (``Batcher.shed_queued``);
        running batches finish. Thread-safe. Returns the number of requests shed."""
        return sum(b.shed_queued() for b in self._batchers.values())

    def close(self) -> None:
        """Shed what is queued, wait for the running batches, stop every model's threads."""
        for b in self._batchers.values():
            b.close()
