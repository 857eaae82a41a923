"""Read an ONNX file's graph inputs and outputs without ``onnx`` or an ONNX Runtime session.

The model repository needs a model's inputs and outputs before it is loaded (defaults for a
folder without ``model.toml``, ``--check-config``), but ``onnx`` is a dev dependency only and an
``InferenceSession`` is a full load (graph optimisation, weights in memory). This module walks the
protobuf wire format of ``ModelProto`` over a memory map and decodes only ``graph.input``,
``graph.output`` and the initializer names (to drop inputs that are initializers, as ONNX
Runtime does), skipping everything else by its length: the weights are never read.

Called from whichever thread scans the repository (start-up, the admin plane, SIGHUP).

Field numbers (onnx.proto3): ModelProto.graph = 7; GraphProto.initializer = 5, input = 11,
output = 12, sparse_initializer = 15; ValueInfoProto.name = 1, type = 2; TypeProto.tensor_type
= 1; TypeProto.Tensor.elem_type = 1, shape = 2; TensorShapeProto.dim = 1; Dimension.dim_value
= 1, dim_param = 2; TensorProto.name = 8; SparseTensorProto.values = 1.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator

from infergate.engine.executors.spec import SpecError, TensorSpec, from_onnx_type

Field = tuple[int, int, int | memoryview]
"""(field number, wire type, value): an int for varints and fixed-size fields, else bytes."""


class OnnxFormatError(ValueError):
    """The file is not a well-formed ONNX model (or uses a tensor type KServe cannot name)."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise OnnxFormatError("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview) -> Iterator[Field]:
    """The top-level fields of one protobuf message."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, wire, value
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise OnnxFormatError("a field runs past the end of its message")
            yield number, wire, buf[pos : pos + size]
            pos += size
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > len(buf):
                raise OnnxFormatError("truncated fixed-size field")
            yield number, wire, int.from_bytes(buf[pos : pos + width], "little")
            pos += width
        else:
            raise OnnxFormatError(f"unsupported protobuf wire type {wire}")


def _sub(buf: memoryview, number: int) -> Iterator[memoryview]:
    """Every length-delimited field ``number`` of the message ``buf``."""
    for n, wire, value in _fields(buf):
        if n == number and wire == 2 and isinstance(value, memoryview):
            yield value


def _first_int(buf: memoryview, number: int) -> int | None:
    for n, wire, value in _fields(buf):
        if n == number and wire == 0 and isinstance(value, int):
            return value
    return None


def _text(buf: memoryview, number: int) -> str:
    for value in _sub(buf, number):
        return bytes(value).decode("utf-8", "replace")
    return ""


def _dims(shape: memoryview) -> tuple[int, ...]:
    dims = []
    for dim in _sub(shape, 1):
        value = _first_int(dim, 1)
        if value is not None and value >= 1 << 63:  # int64 carried as a two's complement varint
            value -= 1 << 64
        dims.append(value if value is not None and value > 0 else -1)
    return tuple(dims)


def _value_info(buf: memoryview) -> TensorSpec:
    name = _text(buf, 1)
    for type_proto in _sub(buf, 2):
        for tensor in _sub(type_proto, 1):
            elem = _first_int(tensor, 1)
            try:
                datatype = from_onnx_type(elem if elem is not None else 0, name)
            except SpecError as e:
                raise OnnxFormatError(str(e)) from None
            shapes = list(_sub(tensor, 2))
            return TensorSpec(name, datatype, _dims(shapes[0]) if shapes else ())
    raise OnnxFormatError(f"tensor {name}: not a tensor (a sequence, map or optional)")


def _graph_io(graph: memoryview) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    init_names = {_text(t, 8) for t in _sub(graph, 5)}
    init_names |= {_text(v, 8) for s in _sub(graph, 15) for v in _sub(s, 1)}
    inputs = tuple(t for t in (_value_info(v) for v in _sub(graph, 11)) if t.name not in init_names)
    outputs = tuple(_value_info(v) for v in _sub(graph, 12))
    return inputs, outputs


def read_onnx_io(path: str) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """(inputs, outputs) of the ONNX model at ``path``: names, KServe datatypes, and shapes
    with ``-1`` for dynamic dimensions (``()`` when the file declares no shape).

    Raises:
        OSError: the file cannot be opened or mapped.
        OnnxFormatError: not an ONNX model, no graph, or an unservable tensor type.
    """
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise OnnxFormatError("empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return _model_io(memoryview(mm))


def _model_io(view: memoryview) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Every slice of ``view`` is dropped on return (the map can then close)."""
    with view:
        graphs = list(_sub(view, 7))
        if not graphs:
            raise OnnxFormatError("no graph (is this an ONNX model?)")
        try:
            return _graph_io(graphs[-1])  # protobuf: the last occurrence wins
        finally:
            for g in graphs:
                g.release()
