"""The ONNX header reader sees the same inputs and outputs as an ONNX Runtime session."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

from infergate.engine.executors.onnx_tensor import session_spec
from infergate.engine.models.embeddings import resolve_model_file
from infergate.engine.models.onnx_io import OnnxFormatError, read_onnx_io
from tests.support import onnx_models

BUILDERS = {
    "mlp": onnx_models.mlp,
    "two_io": onnx_models.two_io,
    "fixed": onnx_models.fixed_batch,
    "sequence": onnx_models.sequence,
    "identity_all": onnx_models.identity_all,
}


@pytest.mark.parametrize("name", BUILDERS)
def test_header_matches_the_session(tmp_path: Path, name: str) -> None:
    path = str(onnx_models.write_model(BUILDERS[name](), tmp_path))
    spec = session_spec(ort.InferenceSession(path), 8)
    assert read_onnx_io(path) == (spec.inputs, spec.outputs)


def test_the_shipped_minilm_reads_like_its_session() -> None:
    path = resolve_model_file("builtin:minilm", ".")
    spec = session_spec(ort.InferenceSession(path), 8)
    assert read_onnx_io(path) == (spec.inputs, spec.outputs)


def test_initializers_listed_as_inputs_are_not_inputs(tmp_path: Path) -> None:
    """IR version 3 models list their weights among the graph inputs."""
    model = onnx_models.mlp()
    for init in model.graph.initializer:
        model.graph.input.append(
            onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
        )
    path = str(onnx_models.write_model(model, tmp_path))
    inputs, _ = read_onnx_io(path)
    assert [t.name for t in inputs] == ["x"]


@pytest.mark.parametrize("data", [b"", b"\x08\x08garbage", b"\xff" * 12, b"\x3a\x05ab"])
def test_not_a_model_is_a_format_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(data)
    with pytest.raises(OnnxFormatError):
        read_onnx_io(str(path))
