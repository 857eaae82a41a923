"""The KServe upstream executor's pure parts: the spec from an upstream's metadata, the binary
request it sends, and the answers it accepts (binary or JSON) or refuses (never misaligned)."""

from __future__ import annotations

import json
import struct
from typing import Any

import msgspec
import numpy as np
import pytest

from infergate.engine.executors.spec import SpecError
from infergate.engine.executors.upstream.kserve import (
    _metadata,
    decode_answer,
    encode_request,
    metadata_spec,
)

META = {
    "name": "two_io",
    "inputs": [
        {"name": "a", "datatype": "FP16", "shape": [-1, 3]},
        {"name": "b", "datatype": "INT64", "shape": [-1, 2]},
    ],
    "outputs": [
        {"name": "c", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "s", "datatype": "BYTES", "shape": [-1]},
    ],
}


def spec_of(meta: dict[str, Any], rows: int = 8) -> Any:
    return metadata_spec(_metadata.decode(json.dumps(meta)), rows)


def test_a_dynamic_dim_0_everywhere_is_a_batched_spec() -> None:
    spec = spec_of(META)
    assert spec.batched
    assert spec.max_batch_size == 8
    assert [t.shape for t in spec.inputs] == [(-1, 3), (-1, 2)]
    fixed = {**META, "inputs": [{"name": "a", "datatype": "FP32", "shape": [4, 3]}]}
    assert not spec_of(fixed).batched


@pytest.mark.parametrize("datatype", ["BF16", "COMPLEX64"])
def test_a_datatype_we_cannot_carry_is_refused(datatype: str) -> None:
    bad = {**META, "inputs": [{"name": "a", "datatype": datatype, "shape": [-1]}]}
    with pytest.raises(SpecError):
        spec_of(bad)


def test_the_request_is_binary_in_the_spec_order() -> None:
    spec = spec_of(META)
    a = np.arange(6, dtype=np.float16).reshape(2, 3)
    b = np.array([[1, 2], [3, 4]], dtype=np.int64)
    body, hlen = encode_request(spec, [a, b])
    header = json.loads(body[:hlen])
    assert [(i["name"], i["shape"]) for i in header["inputs"]] == [("a", [2, 3]), ("b", [2, 2])]
    assert header["outputs"] == [
        {"name": "c", "parameters": {"binary_data": True}},
        {"name": "s", "parameters": {"binary_data": True}},
    ]
    assert body[hlen:] == a.tobytes() + b.tobytes()


def _binary_answer(c: np.ndarray, s: list[bytes]) -> tuple[bytes, int]:
    raw_s = b"".join(struct.pack("<I", len(x)) + x for x in s)
    header = json.dumps({"outputs": [
        {"name": "s", "datatype": "BYTES", "shape": [len(s)],
         "parameters": {"binary_data_size": len(raw_s)}},
        {"name": "c", "datatype": "FP32", "shape": list(c.shape),
         "parameters": {"binary_data_size": c.nbytes}},
    ]}).encode()  # fmt: skip
    return header + raw_s + c.tobytes(), len(header)


def test_a_binary_answer_is_read_in_the_spec_order() -> None:
    spec = spec_of(META)
    c = np.arange(6, dtype=np.float32).reshape(2, 3)
    body, hlen = _binary_answer(c, [b"x", "é".encode()])
    got_c, got_s = decode_answer(spec, body, hlen, rows=2)
    assert np.array_equal(got_c, c)
    assert got_s.tolist() == ["x", "é"]


def test_a_json_answer_is_accepted() -> None:
    spec = spec_of(META)
    body = msgspec.json.encode({"outputs": [
        {"name": "c", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]},
        {"name": "s", "datatype": "BYTES", "shape": [1], "data": ["ok"]},
    ]})  # fmt: skip
    c, s = decode_answer(spec, body, None, rows=1)
    assert c.dtype == np.float32
    assert c.tolist() == [[1, 2, 3]]
    assert s.tolist() == ["ok"]


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda b, h: (b, h, 3), "for 3 rows"),
        (lambda b, h: (b + b"x", h, 2), "bytes after the last output"),
        (lambda b, h: (b[:-1], h, 2), "runs past the answer"),
        (lambda b, h: (b, len(b) + 1, 2), "outside the answer"),
    ],
)
def test_an_answer_that_does_not_fit_is_refused(mangle: Any, message: str) -> None:
    spec = spec_of(META)
    body, hlen = _binary_answer(np.zeros((2, 3), np.float32), [b"a", b"b"])
    body, hlen, rows = mangle(body, hlen)
    with pytest.raises(ValueError, match=message):
        decode_answer(spec, body, hlen, rows)


def test_a_missing_output_is_refused() -> None:
    spec = spec_of(META)
    body = msgspec.json.encode(
        {"outputs": [{"name": "c", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
    )
    with pytest.raises(ValueError, match="output s is missing"):
        decode_answer(spec, body, None, rows=1)
