"""GPU routes: TensorRT and ONNX Runtime's GPU providers. Without a GPU they must fail loudly."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from infergate.engine.executors.base import ExecutorError
from infergate.engine.executors.onnx import OnnxEmbeddingExecutor
from infergate.engine.executors.onnx_tensor import OnnxTensorExecutor, warmup_items
from infergate.engine.executors.tensorrt import TensorRTEmbeddingExecutor, probe_cuda_driver
from infergate.engine.executors.tensorrt_tensor import (
    DYNAMIC_DIM_MAX,
    DYNAMIC_DIM_OPT,
    TensorRTTensorExecutor,
    _profile,
)
from infergate.engine.models.embeddings import resolve_model_file, resolve_tokenizer_file
from tests.support import onnx_models
from tests.support.onnx_models import write_model

NO_GPU = probe_cuda_driver()
MODEL = resolve_model_file("builtin:minilm", ".")
TOKENIZER = resolve_tokenizer_file("builtin:minilm", ".")


@pytest.mark.skipif(NO_GPU is None, reason="a GPU is present: the no-GPU path cannot be tested")
def test_tensorrt_without_a_gpu_fails_with_the_reason_before_touching_tensorrt() -> None:
    assert NO_GPU is not None
    ex = TensorRTEmbeddingExecutor(1, MODEL, TOKENIZER, max_batch_size=8)
    with pytest.raises(ExecutorError, match="tensorrt executor unavailable") as e:
        ex.load()
    assert NO_GPU in str(e.value)


def test_onnxruntime_refuses_to_fall_back_silently_to_the_cpu() -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers() and NO_GPU is None:
        pytest.skip("CUDA provider and GPU present: there is no fallback to observe")
    ex = OnnxEmbeddingExecutor(1, MODEL, TOKENIZER, providers=("CUDAExecutionProvider",))
    # refused up front when the provider is not in this build, or after loading when it did
    # not activate (ONNX Runtime would otherwise run on the CPU without saying so)
    with pytest.raises(ExecutorError, match=r"has no|silently"):
        ex.load()


@pytest.mark.skipif(NO_GPU is not None, reason=f"no GPU: {NO_GPU}")
@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is None, reason="TensorRT's Python bindings are missing"
)
def test_tensorrt_embeddings_match_the_cpu_executor(tmp_path: object) -> None:
    texts = ["a short one", "a somewhat longer sentence about GPUs and batching", "x"]
    cpu = OnnxEmbeddingExecutor(1, MODEL, TOKENIZER)
    cpu.load()
    gpu = TensorRTEmbeddingExecutor(1, MODEL, TOKENIZER, max_batch_size=8, cache_dir=str(tmp_path))
    gpu.load()
    try:
        for (a, na), (b, nb) in zip(cpu.run(texts, 0), gpu.run(texts, 0), strict=True):
            assert na == nb
            assert float(np.dot(a, b)) >= 0.999
    finally:
        gpu.close()


# ---- generic tensor path (issue 8): any ONNX model on TensorRT ---------------------------------


def test_tensorrt_profile_covers_the_batch_and_dynamic_dimensions() -> None:
    assert _profile((-1, 4), 16) == ((1, 4), (8, 4), (16, 4))
    assert _profile((-1, -1, 4), 8) == ((1, 1, 4), (4, DYNAMIC_DIM_OPT, 4), (8, DYNAMIC_DIM_MAX, 4))
    assert _profile((4, 3), 16) == ((4, 3), (4, 3), (4, 3))


@pytest.mark.skipif(NO_GPU is None, reason="a GPU is present: the no-GPU path cannot be tested")
def test_tensorrt_tensor_without_a_gpu_fails_with_the_reason(tmp_path: Path) -> None:
    assert NO_GPU is not None
    path = write_model(onnx_models.mlp(), tmp_path)
    ex = TensorRTTensorExecutor(1, str(path), 8, str(tmp_path / "cache"))
    with pytest.raises(ExecutorError, match="tensorrt executor unavailable") as e:
        ex.load()
    assert NO_GPU in str(e.value)


@pytest.mark.skipif(NO_GPU is not None, reason=f"no GPU: {NO_GPU}")
@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is None, reason="TensorRT's Python bindings are missing"
)
@pytest.mark.parametrize("build", [onnx_models.mlp, onnx_models.sequence, onnx_models.two_io])
def test_tensorrt_tensor_matches_onnxruntime(tmp_path: Path, build: Any) -> None:
    path = str(write_model(build(), tmp_path))
    cpu = OnnxTensorExecutor(1, path, max_batch_size=8)
    cpu.load()
    gpu = TensorRTTensorExecutor(2, path, 8, str(tmp_path / "cache"))
    gpu.load()
    try:
        assert [(t.name, t.datatype) for t in gpu.spec.inputs] == [
            (t.name, t.datatype) for t in cpu.spec.inputs
        ]
        assert gpu.spec.batched
        assert gpu.spec.max_batch_size == 8
        rng = np.random.default_rng(0)
        items = warmup_items(cpu.spec, 5)
        items = [
            tuple(rng.standard_normal(a.shape).astype(a.dtype) if a.dtype.kind == "f"
                  else rng.integers(0, 5, a.shape).astype(a.dtype) for a in item)
            for item in items
        ]  # fmt: skip
        for want, got in zip(cpu.run(items, 0), gpu.run(items, 1), strict=True):
            for w, g in zip(want, got, strict=True):
                np.testing.assert_allclose(g, w, rtol=1e-2, atol=1e-2)
        # a cached engine is reused: the second load builds nothing
        again = TensorRTTensorExecutor(1, path, 8, str(tmp_path / "cache"))
        again.load()
        assert again.load_s < gpu.load_s
        again.close()
    finally:
        gpu.close()
