"""What a model is: its inputs and outputs, their datatypes and shapes, and its batch limits.

An executor publishes a ``ModelSpec`` once it has read the model file; the APIs build metadata,
validate requests, split them into items and merge them into batches from it, and never probe
executors for attributes. Everything here is immutable and thread-safe: specs are built on the
loading thread and read by every sub-reactor and executor thread.

One table (``DATATYPES``) maps a KServe v2 datatype to ONNX Runtime's type string, the ONNX
``TensorProto`` element type and the numpy dtype; every other mapping is derived from it.

Batching follows Triton without ragged batching: for a model whose first dimension is dynamic a
request of ``n`` rows is ``n`` items (one row of every input each), and requests merge only when
every input's datatype and non-batch dimensions agree (``batch_key``). A model with a fixed first
dimension is served unbatched (``max_batch_size == 0``): one request is one item holding whole
tensors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec
import numpy as np

Array = np.ndarray[Any, Any]


class DataType(msgspec.Struct, frozen=True):
    """One datatype under its three names, and its numpy dtype (``None``: not in numpy)."""

    kserve: str
    """KServe v2 name (``FP32``)."""
    ort: str
    """ONNX Runtime's type string (``tensor(float)``)."""
    onnx: int
    """ONNX ``TensorProto.DataType`` element type (``1``)."""
    numpy: np.dtype[Any] | None
    """Little-endian numpy dtype; ``object`` for BYTES, ``None`` for BF16 (numpy has none)."""


DATATYPES: tuple[DataType, ...] = (
    DataType("BOOL", "tensor(bool)", 9, np.dtype("?")),
    DataType("UINT8", "tensor(uint8)", 2, np.dtype("<u1")),
    DataType("UINT16", "tensor(uint16)", 4, np.dtype("<u2")),
    DataType("UINT32", "tensor(uint32)", 12, np.dtype("<u4")),
    DataType("UINT64", "tensor(uint64)", 13, np.dtype("<u8")),
    DataType("INT8", "tensor(int8)", 3, np.dtype("<i1")),
    DataType("INT16", "tensor(int16)", 5, np.dtype("<i2")),
    DataType("INT32", "tensor(int32)", 6, np.dtype("<i4")),
    DataType("INT64", "tensor(int64)", 7, np.dtype("<i8")),
    DataType("FP16", "tensor(float16)", 10, np.dtype("<f2")),
    DataType("FP32", "tensor(float)", 1, np.dtype("<f4")),
    DataType("FP64", "tensor(double)", 11, np.dtype("<f8")),
    # ONNX Runtime's Python API refuses bfloat16 numpy arrays (ml_dtypes): "Numpy_type 256
    # can't be converted to MLDataType" (1.32); the executors reject BF16 models at load.
    DataType("BF16", "tensor(bfloat16)", 16, None),
    DataType("BYTES", "tensor(string)", 8, np.dtype(object)),
)
BY_KSERVE: dict[str, DataType] = {d.kserve: d for d in DATATYPES}
BY_ORT: dict[str, DataType] = {d.ort: d for d in DATATYPES}
BY_ONNX: dict[int, DataType] = {d.onnx: d for d in DATATYPES}
BY_NUMPY: dict[np.dtype[Any], DataType] = {d.numpy: d for d in DATATYPES if d.numpy is not None}


class SpecError(ValueError):
    """A model uses something infergate cannot serve (a type, a shape); names the tensor."""


class InputError(ValueError):
    """A request does not fit the model; ``input`` names the offending tensor. The API maps
    it (and its subclasses) to 400."""

    def __init__(self, input_name: str, message: str) -> None:
        super().__init__(message)
        self.input = input_name


class ShapeError(InputError):
    """A tensor's shape does not fit the model's; the message names the input, the expected
    shape (``-1`` for a dynamic dimension) and the received shape."""

    def __init__(self, input_name: str, expected: Sequence[int], received: Sequence[int]) -> None:
        super().__init__(
            input_name,
            f"input {input_name}: expected shape {list(expected)}, got {list(received)}",
        )
        self.expected = tuple(expected)
        self.received = tuple(received)


def from_ort_type(type_str: str, tensor: str) -> str:
    """The KServe datatype of ONNX Runtime's ``tensor(...)`` string.

    Raises:
        SpecError: the type has no KServe v2 name (sequences, maps, complex, float8).
    """
    d = BY_ORT.get(type_str)
    if d is None:
        raise SpecError(f"tensor {tensor}: type {type_str} has no KServe v2 datatype")
    return d.kserve


def from_onnx_type(elem_type: int, tensor: str) -> str:
    """The KServe datatype of an ONNX ``TensorProto`` element type.

    Raises:
        SpecError: the type has no KServe v2 name.
    """
    d = BY_ONNX.get(elem_type)
    if d is None:
        raise SpecError(f"tensor {tensor}: ONNX element type {elem_type} has no KServe datatype")
    return d.kserve


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """The numpy dtype of a KServe datatype.

    Raises:
        SpecError: unknown datatype, or one numpy cannot hold (BF16).
    """
    d = BY_KSERVE.get(datatype)
    if d is None or d.numpy is None:
        raise SpecError(f"datatype {datatype!r} has no numpy dtype here")
    return d.numpy


def from_numpy(dtype: np.dtype[Any]) -> str:
    """The KServe datatype of a numpy dtype (native or little-endian; str → BYTES).

    Raises:
        SpecError: a dtype KServe v2 cannot carry (complex, datetime, big-endian...).
    """
    dt = np.dtype(dtype)
    if dt.kind in "USO":
        return "BYTES"
    d = BY_NUMPY.get(dt.newbyteorder("<") if dt.byteorder == "=" else dt)
    if d is None:
        raise SpecError(f"numpy dtype {dt} has no KServe v2 datatype")
    return d.kserve


class TensorSpec(msgspec.Struct, frozen=True):
    """One input or output: KServe datatype and shape, ``-1`` for each dynamic dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def metadata(self) -> dict[str, Any]:
        """KServe v2 model-metadata entry (``{"name", "datatype", "shape"}``)."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def dims_from(raw: Iterable[Any]) -> tuple[int, ...]:
    """A shape as ONNX Runtime reports it (ints, symbolic names, ``None``) with ``-1`` for each
    dynamic dimension (a symbol, ``None``, or a non-positive size)."""
    return tuple(d if isinstance(d, int) and d > 0 else -1 for d in raw)


def batch_dynamic(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> bool:
    """Whether dimension 0 of every input and output is dynamic: the model can take batches
    of any size, concatenated along dimension 0."""
    tensors = [*inputs, *outputs]
    return bool(inputs) and all(t.shape and t.shape[0] == -1 for t in tensors)


class ModelSpec(msgspec.Struct, frozen=True):
    """What a model takes and returns, and how its requests batch.

    ``max_batch_size`` is Triton's: ``0`` means unbatched (the shapes are whole tensors, one
    request is one item); ``> 0`` means dimension 0 is the batch (the shapes include it as -1)
    and an executor call takes at most that many rows.
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 0
    batch_dynamic: bool = False
    """Dimension 0 of every input and output is dynamic (batching along it is possible)."""

    def __post_init__(self) -> None:
        if self.max_batch_size < 0:
            raise SpecError(f"max_batch_size must be >= 0, got {self.max_batch_size}")
        if self.max_batch_size and not self.batch_dynamic:
            raise SpecError("a batched model (max_batch_size > 0) needs a dynamic dimension 0")
        for kind, group in (("input", self.inputs), ("output", self.outputs)):
            names = [t.name for t in group]
            if len(set(names)) != len(names):
                raise SpecError(f"{kind} names must be unique: {names}")

    @property
    def batched(self) -> bool:
        """Requests are split into rows and rows of several requests are merged."""
        return self.max_batch_size > 0

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((t for t in self.outputs if t.name == name), None)

    def metadata(self, name: str, platform: str, **parameters: Any) -> dict[str, Any]:
        """The KServe v2 model-metadata document (``GET /v2/models/{name}``)."""
        doc: dict[str, Any] = {
            "name": name,
            "versions": ["1"],
            "platform": platform,
            "inputs": [t.metadata() for t in self.inputs],
            "outputs": [t.metadata() for t in self.outputs],
        }
        if parameters:
            doc["parameters"] = parameters
        return doc


def loaded_facts(spec: ModelSpec, load_s: float, warmup_s: Mapping[int, float]) -> dict[str, Any]:
    """What ``/admin/models`` shows of a loaded tensor model: its shape and load/warm-up
    times (the ONNX Runtime and TensorRT tensor executors describe themselves alike)."""
    return {
        "max_batch_size": spec.max_batch_size,
        "inputs": [t.metadata() for t in spec.inputs],
        "outputs": [t.metadata() for t in spec.outputs],
        "load_s": round(load_s, 6),
        "warmup_s": round(sum(warmup_s.values()), 6),
        "warmup_batch_sizes": sorted(warmup_s),
    }


def embedding_spec(dim: int, max_batch_size: int) -> ModelSpec:
    """The spec of an embeddings model over KServe: ``TEXT`` BYTES ``[-1]`` (one text per row)
    to ``EMBEDDING`` FP32 ``[-1, dim]`` (``dim`` ``<= 0``: not known, published as -1)."""
    return ModelSpec(
        (TensorSpec("TEXT", "BYTES", (-1,)),),
        (TensorSpec("EMBEDDING", "FP32", (-1, dim if dim > 0 else -1)),),
        max(1, max_batch_size),
        True,
    )


def _check_shape(spec: TensorSpec, shape: tuple[int, ...]) -> None:
    """Rank and every fixed dimension must match (a batched model's dimension 0 is -1)."""
    want = spec.shape
    if len(shape) != len(want) or any(w not in (-1, s) for w, s in zip(want, shape, strict=True)):
        raise ShapeError(spec.name, want, shape)


def check_inputs(spec: ModelSpec, tensors: Mapping[str, tuple[str, Any]]) -> tuple[Array, ...]:
    """Validate a request's tensors against ``spec``; return the arrays in the spec's order.

    ``tensors`` maps each input name to ``(datatype, array)`` as decoded by the API. Called on
    a sub-reactor, before anything is queued.

    Raises:
        InputError: a missing or unknown input, or a datatype that differs from the model's.
        ShapeError: a shape that does not fit (rank, a fixed dimension, or, for a batched
            model, inputs whose number of rows differ or a request of zero rows).
    """
    for name in tensors:
        if spec.input(name) is None:
            known = ", ".join(t.name for t in spec.inputs)
            raise InputError(name, f"unknown input {name} (the model takes {known})")
    arrays: list[Array] = []
    rows = -1
    for t in spec.inputs:
        got = tensors.get(t.name)
        if got is None:
            raise InputError(t.name, f"missing input {t.name} ({t.datatype} {list(t.shape)})")
        datatype, arr = got
        if datatype != t.datatype:
            raise InputError(t.name, f"input {t.name}: expected {t.datatype}, got {datatype}")
        shape = tuple(int(d) for d in arr.shape)
        _check_shape(t, shape)
        if spec.batched:
            if rows == -1:
                rows = shape[0]
            if shape[0] != rows or rows == 0:
                want = (rows if rows > 0 else -1, *t.shape[1:])
                raise ShapeError(t.name, want, shape)
        arrays.append(arr)
    return tuple(arrays)


def batch_key(spec: ModelSpec, arrays: Sequence[Array]) -> tuple[Any, ...]:
    """Requests with equal keys may share a batch: for a batched model, every input's datatype
    and non-batch dimensions (Triton without ragged batching); an unbatched model's requests
    never merge, but equal shapes still get equal keys (the scheduler takes one at a time).
    ``arrays`` in the spec's input order, as ``check_inputs`` returns them."""
    return tuple(
        (t.datatype, tuple(a.shape[1:] if spec.batched else a.shape))
        for t, a in zip(spec.inputs, arrays, strict=True)
    )


def to_items(spec: ModelSpec, arrays: Sequence[Array]) -> list[tuple[Array, ...]]:
    """A request's items: for a batched model one per row (a tuple of that row of every input,
    views without copies), else one item holding the whole tensors."""
    if not spec.batched:
        return [tuple(arrays)]
    rows = arrays[0].shape[0]
    return [tuple(a[i] for a in arrays) for i in range(rows)]


def from_items(spec: ModelSpec, outputs: Sequence[Sequence[Array]]) -> tuple[Array, ...]:
    """A request's output tensors (the spec's output order) from its items' outputs: rows
    stacked for a batched model, the single item's tensors otherwise.

    Raises:
        ValueError: the outputs do not match the spec (never a misaligned reply).
    """
    if not spec.batched:
        if len(outputs) != 1 or len(outputs[0]) != len(spec.outputs):
            raise ValueError(f"an unbatched model answered {len(outputs)} items, not 1")
        return tuple(outputs[0])
    n = len(spec.outputs)
    if not outputs or any(len(o) != n for o in outputs):
        raise ValueError(f"each item needs {n} outputs")
    return tuple(np.stack([o[k] for o in outputs]) for k in range(n))
