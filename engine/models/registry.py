"""The served models: one executor and one Batcher each, built from the config."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from engine.config import ModelConfig
from engine.executors.base import Executor, ExecutorError, batch_ceiling
from engine.executors.onnx import OnnxEmbeddingExecutor
from engine.executors.sim import SimExecutor
from engine.executors.tensorrt import TensorRTEmbeddingExecutor
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
    if cfg.executor in ("openai", "kserve"):
        raise ExecutorError(
            f"model {cfg.name}: executor {cfg.executor!r} with task {cfg.task!r} is not "
            "supported yet (gateway mode serves embeddings through openai upstreams)"
        )
    raise ExecutorError(f"model {cfg.name}: unknown executor {cfg.executor!r}")


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
        for name, b in self._batchers.items():
            try:
                b.executor.load()
            except ExecutorError as e:
                raise ExecutorError(f"model {name}: {e}") from e
            b.ceiling = batch_ceiling(b.config.max_batch_size_limit, b.executor)
            check_ceiling(b.config, b.ceiling)
            b.start()
            log.info("model %s ready: %s", name, b.executor.describe())

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
