"""GPU routes: TensorRT and ONNX Runtime's GPU providers. Without a GPU they must fail loudly."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from engine.executors.base import ExecutorError
from engine.executors.onnx import OnnxEmbeddingExecutor
from engine.executors.tensorrt import TensorRTEmbeddingExecutor, probe_cuda_driver
from engine.models.embeddings import resolve_model_file, resolve_tokenizer_file

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
