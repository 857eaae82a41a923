"""Small ONNX models with known weights, built with the ``onnx`` package (a dev dependency).

Shared by the executor, repository and end-to-end tests: each builder returns a ``ModelProto``;
``write_model`` saves one as ``<folder>/model.onnx`` (a model repository folder). Opset 17 and IR
version 8 keep the files loadable by any ONNX Runtime this project supports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
Dim = int | str | None
"""A dimension: a size, a symbolic name (dynamic), or ``None`` (dynamic, unnamed)."""


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto] | None = None,
    name: str = "test",
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def _vi(name: str, elem: int, shape: list[Dim]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


MLP_IN, MLP_HIDDEN, MLP_OUT = 4, 8, 3


def mlp_weights(seed: int = 0) -> dict[str, np.ndarray[Any, Any]]:
    """The MLP's known weights (float32, seeded)."""
    rng = np.random.default_rng(seed)
    return {
        "W1": rng.standard_normal((MLP_IN, MLP_HIDDEN)).astype(np.float32),
        "B1": rng.standard_normal(MLP_HIDDEN).astype(np.float32),
        "W2": rng.standard_normal((MLP_HIDDEN, MLP_OUT)).astype(np.float32),
        "B2": rng.standard_normal(MLP_OUT).astype(np.float32),
    }


def mlp(seed: int = 0) -> onnx.ModelProto:
    """``x: FP32[batch, 4] -> y: FP32[batch, 3]`` = relu(x @ W1 + B1) @ W2 + B2."""
    w = mlp_weights(seed)
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h0"]),
        helper.make_node("Add", ["h0", "B1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "W2"], ["h3"]),
        helper.make_node("Add", ["h3", "B2"], ["y"]),
    ]
    return _model(
        nodes,
        [_vi("x", TensorProto.FLOAT, ["batch", MLP_IN])],
        [_vi("y", TensorProto.FLOAT, ["batch", MLP_OUT])],
        [numpy_helper.from_array(v, k) for k, v in w.items()],
        "mlp",
    )


def mlp_reference(x: np.ndarray[Any, Any], seed: int = 0) -> np.ndarray[Any, Any]:
    """The MLP in numpy (float32), to check the builder itself."""
    w = mlp_weights(seed)
    h = np.maximum(x @ w["W1"] + w["B1"], 0)
    return np.asarray(h @ w["W2"] + w["B2"], dtype=np.float32)


def two_io() -> onnx.ModelProto:
    """Two inputs, two outputs, mixed datatypes; each output depends on both inputs' rows.

    ``a: FP16[batch, 3]``, ``b: INT64[batch, 2]`` ->
    ``c: FP16[batch, 3] = a * 2 + sum(b, axis 1)``, ``d: INT64[batch, 2] = b * 3 + argmax(a)``.
    """
    nodes = [
        helper.make_node("Mul", ["a", "two"], ["a2"]),
        helper.make_node("ReduceSum", ["b", "axis1"], ["bsum"], keepdims=1),
        helper.make_node("Cast", ["bsum"], ["bsum16"], to=TensorProto.FLOAT16),
        helper.make_node("Add", ["a2", "bsum16"], ["c"]),
        helper.make_node("Mul", ["b", "three"], ["b3"]),
        helper.make_node("ArgMax", ["a"], ["amax"], axis=1, keepdims=1),
        helper.make_node("Add", ["b3", "amax"], ["d"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(2, dtype=np.float16), "two"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array(3, dtype=np.int64), "three"),
    ]
    return _model(
        nodes,
        [_vi("a", TensorProto.FLOAT16, ["n", 3]), _vi("b", TensorProto.INT64, ["n", 2])],
        [_vi("c", TensorProto.FLOAT16, ["n", 3]), _vi("d", TensorProto.INT64, ["n", 2])],
        inits,
        "two_io",
    )


def fixed_batch(rows: int = 4) -> onnx.ModelProto:
    """``x: FP32[rows, 3] -> y: FP32[rows, 2]`` = x @ W (W = arange(6).reshape(3, 2) / 4);
    the first dimension is fixed, so the model is served unbatched."""
    w = (np.arange(6, dtype=np.float32).reshape(3, 2) / 4).astype(np.float32)
    return _model(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        [_vi("x", TensorProto.FLOAT, [rows, 3])],
        [_vi("y", TensorProto.FLOAT, [rows, 2])],
        [numpy_helper.from_array(w, "W")],
        "fixed",
    )


def sequence() -> onnx.ModelProto:
    """``x: FP32[batch, seq, 4] -> y: FP32[batch, seq, 2]`` (x @ W) and
    ``pooled: FP32[batch, 4]`` (mean over seq); the second dimension is dynamic."""
    w = (np.arange(8, dtype=np.float32).reshape(4, 2) - 3.5).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["y"]),
        helper.make_node("ReduceMean", ["x"], ["pooled"], axes=[1], keepdims=0),
    ]
    return _model(
        nodes,
        [_vi("x", TensorProto.FLOAT, ["batch", "seq", 4])],
        [
            _vi("y", TensorProto.FLOAT, ["batch", "seq", 2]),
            _vi("pooled", TensorProto.FLOAT, ["batch", 4]),
        ],
        [numpy_helper.from_array(w, "W")],
        "sequence",
    )


IDENTITY_TYPES: dict[str, int] = {
    "BOOL": TensorProto.BOOL,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
}
"""KServe datatype -> ONNX element type of each input of ``identity_all``."""


def identity_all(types: dict[str, int] | None = None) -> onnx.ModelProto:
    """One ``in_<T>: T[batch, 2] -> out_<T>`` Identity per datatype: every numeric type."""
    types = IDENTITY_TYPES if types is None else types
    nodes = [helper.make_node("Identity", [f"in_{k}"], [f"out_{k}"]) for k in types]
    return _model(
        nodes,
        [_vi(f"in_{k}", t, [None, 2]) for k, t in types.items()],
        [_vi(f"out_{k}", t, [None, 2]) for k, t in types.items()],
        name="identity_all",
    )


def write_model(model: onnx.ModelProto, folder: Path, filename: str = "model.onnx") -> Path:
    """Save ``model`` as ``folder/filename`` (folders created); returns the file's path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    onnx.save(model, str(path))
    return path
