"""The registry's load step (issue 8): warm-up sizes, batching fitted to the model, timings."""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec
import pytest

from infergate.engine.config import BatchingConfig, ModelConfig
from infergate.engine.executors.onnx_tensor import OnnxTensorExecutor
from infergate.engine.models.registry import build_executor, load_model, warmup_sizes
from infergate.engine.scheduler.batcher import Batcher
from tests.support import onnx_models
from tests.support.onnx_models import write_model


def test_warmup_sizes_are_powers_of_two_the_maximum_and_the_preferred_sizes() -> None:
    assert warmup_sizes(BatchingConfig(max_batch_size=12), []) == [1, 2, 4, 8, 12]
    assert warmup_sizes(BatchingConfig(max_batch_size=16), []) == [1, 2, 4, 8, 16]
    window = BatchingConfig(policy="window", max_batch_size=8, preferred_batch_sizes=[3, 6])
    assert warmup_sizes(window, []) == [1, 2, 3, 4, 6, 8]
    assert warmup_sizes(BatchingConfig(max_batch_size=8), [5, 100, 5]) == [5, 8]


def _model(tmp_path: Path, build: object, **keys: object) -> ModelConfig:
    path = write_model(build(), tmp_path)  # type: ignore[operator]
    raw = {"name": "m", "task": "tensor", "executor": "onnxruntime", "model_file": str(path)}
    return msgspec.convert({**raw, **keys}, ModelConfig)


def test_a_tensor_model_gets_the_onnx_executor_warmed_up_at_every_size(tmp_path: Path) -> None:
    cfg = _model(tmp_path, onnx_models.mlp, warmup=True, batching={"max_batch_size": 8})
    ex = build_executor(cfg, str(tmp_path))
    assert isinstance(ex, OnnxTensorExecutor)
    b = Batcher(cfg, ex)
    load_model(b)
    try:
        d = ex.describe()
        assert d["warmup_batch_sizes"] == [1, 2, 4, 8]
        assert d["load_s"] > 0
        assert b.batching.policy == "adaptive"
    finally:
        b.close()


def test_an_unbatched_model_is_served_one_request_per_call_and_the_log_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _model(tmp_path, onnx_models.fixed_batch, batching={"policy": "window"})
    b = Batcher(cfg, build_executor(cfg, str(tmp_path)))
    with caplog.at_level(logging.INFO, "infergate.models"):
        load_model(b)
    try:
        assert (b.batching.policy, b.batching.max_batch_size) == ("off", 1)
        assert b.config.batching == b.batching
        assert b.ceiling == 1
        assert "dimension 0 is fixed" in caplog.text
        assert "window (max 32) -> off (max 1)" in caplog.text
    finally:
        b.close()
