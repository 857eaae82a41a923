"""KServe v2 codec: JSON and binary tensors, and every malformed body refused with a message."""

from __future__ import annotations

import json
import struct

import msgspec
import numpy as np
import pytest

from infergate.engine.api.common import ApiError
from infergate.engine.api.kserve_codec import JSON_CHUNK, decode_input, json_array


def test_json_tensor_decodes_to_the_declared_shape_and_dtype() -> None:
    spec = {"name": "INPUT0", "datatype": "INT32", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]}
    name, dt, arr, off = decode_input(spec, memoryview(b""), 0)
    assert (name, dt, off) == ("INPUT0", "INT32", 0)
    assert arr.dtype == np.int32
    assert arr.tolist() == [[1, 2, 3], [4, 5, 6]]


def test_binary_tensor_is_a_view_over_the_body_without_copy() -> None:
    x = np.arange(6, dtype="<f4")
    body = b"{}" + x.tobytes()
    spec = {"name": "INPUT0", "datatype": "FP32", "shape": [3, 2],
            "parameters": {"binary_data_size": 24}}  # fmt: skip
    _, _, arr, off = decode_input(spec, memoryview(body), 2)
    assert off == 26
    assert arr.tolist() == x.reshape(3, 2).tolist()
    assert not arr.flags.owndata  # a view over the request body


def test_binary_bytes_elements() -> None:
    raw = b"".join(struct.pack("<I", len(s)) + s for s in (b"ab", b"", b"xyz"))
    spec = {"name": "TEXT", "datatype": "BYTES", "shape": [3],
            "parameters": {"binary_data_size": len(raw)}}  # fmt: skip
    _, _, value, _ = decode_input(spec, memoryview(raw), 0)
    assert value == [b"ab", b"", b"xyz"]


@pytest.mark.parametrize(
    ("spec", "body", "fragment"),
    [
        ({"datatype": "FP32", "shape": [1], "data": [1]}, b"", "name"),
        ({"name": "x", "datatype": "FP32", "shape": "1", "data": [1]}, b"", "shape"),
        ({"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}, b"", "shape"),
        ({"name": "x", "datatype": "FP32", "shape": [2]}, b"", "no data"),
        ({"name": "x", "datatype": "FP32", "shape": [2], "data": [1]}, b"", "1 values"),
        ({"name": "x", "datatype": "FP32", "shape": [1], "data": ["a"]}, b"", "must be numbers"),
        ({"name": "x", "datatype": "COMPLEX", "shape": [1], "data": [1]}, b"", "datatype"),
        (
            {"name": "x", "datatype": "FP32", "shape": [1 << 13, 1 << 12], "data": []},
            b"",
            "elements",
        ),
        (
            {"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 4}},
            b"\0" * 4,
            "4 bytes for shape",
        ),
        (
            {"name": "x", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 40}},
            b"\0" * 4,
            "past the end",
        ),
        (
            {"name": "t", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 6}},
            struct.pack("<I", 9) + b"ab",
            "truncated",
        ),
        ({"name": "t", "datatype": "BYTES", "shape": [1], "data": [1]}, b"", "strings"),
    ],
)
def test_malformed_inputs_are_refused_with_a_message(
    spec: dict[str, object], body: bytes, fragment: str
) -> None:
    with pytest.raises(ApiError) as e:
        decode_input(spec, memoryview(body), 0)
    assert e.value.status == 400
    assert fragment in e.value.message


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        # the product wraps around to 1 in int64: must still be refused
        (
            {"name": "x", "datatype": "FP32", "shape": [274177, 67280421310721], "data": [1]},
            "elements",
        ),
        ({"name": "x", "datatype": "INT8", "shape": [4096], "data": [0] * 4096}, "rows"),
        ({"name": "x", "datatype": "UINT8", "shape": [1], "data": [300]}, "outside UINT8"),
        ({"name": "x", "datatype": "INT32", "shape": [1], "data": [1e300]}, "outside INT32"),
    ],
)
def test_oversized_or_out_of_range_inputs_are_400_not_500(
    spec: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ApiError) as e:
        decode_input(spec, memoryview(b""), 0)
    assert e.value.status == 400
    assert fragment in e.value.message


@pytest.mark.parametrize("n", [0, 1, JSON_CHUNK - 1, JSON_CHUNK, 2 * JSON_CHUNK + 5])
def test_json_answer_encoded_in_slices_equals_one_encode(n: int) -> None:
    arr = (np.arange(n, dtype=np.float32) / 3).reshape(-1, 1)
    assert json.loads(json_array(arr)) == arr.reshape(-1).tolist()


@pytest.mark.parametrize(
    ("dtype", "text"),
    [
        ("float32", b"[0.0,0.3333333432674408,-1.5,null,null]"),
        ("float64", b"[0.0,0.3333333333333333,-1.5,null,null]"),
        ("float16", b"[0.0,0.333251953125,-1.5,null,null]"),
        ("int64", b"[0,3,-1]"),
        ("bool", b"[true,false]"),
    ],
)
def test_json_answer_numbers_from_the_buffer(dtype: str, text: bytes) -> None:
    floats = [0, 1 / 3, -1.5, float("nan"), float("inf")]
    values = {"int64": [0, 3, -1], "bool": [True, False]}.get(dtype, floats)
    arr = np.array(values, dtype=dtype)
    assert json_array(arr) == text == msgspec.json.encode(arr.tolist())  # as before orjson
    assert json_array(np.stack([arr, arr], axis=1)[:, 0]) == text  # a strided view too
