"""Opening an ONNX Runtime session the way every infergate executor does."""

from __future__ import annotations

from typing import Any

from infergate.engine.executors.base import ExecutorError


def open_session(model_file: str, threads: int, providers: tuple[str, ...]) -> Any:
    """An ``onnxruntime.InferenceSession`` with ``threads`` intra-op threads, one inter-op
    thread, sequential execution, and exactly ``providers`` active.

    Raises:
        ExecutorError: onnxruntime missing, a provider absent, the model unreadable, or a
            provider that ONNX Runtime did not enable (it would silently run on the CPU).
    """
    try:
        import onnxruntime as ort  # noqa: PLC0415 - heavy, loaded only when configured
    except ImportError as e:
        raise ExecutorError(
            "onnxruntime executor needs onnxruntime: pip install onnxruntime"
        ) from e
    available = ort.get_available_providers()
    absent = [p for p in providers if p not in available]
    if absent:
        raise ExecutorError(
            f"ONNX Runtime here has no {absent} (available: {available}); for the GPU "
            "install onnxruntime-gpu, or use providers = ['CPUExecutionProvider']"
        )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        session = ort.InferenceSession(model_file, opts, providers=list(providers))
    except Exception as e:
        raise ExecutorError(f"cannot load ONNX model {model_file}: {e}") from e
    active = session.get_providers()
    missing = [p for p in providers if p not in active]
    if missing:
        raise ExecutorError(
            f"ONNX Runtime did not enable {missing} (active: {active}); it would silently "
            "run on the CPU. Install onnxruntime-gpu and check the CUDA/TensorRT libraries."
        )
    return session
