"""Input validation shared by the inference APIs: JSON bodies, numeric headers, timeouts, the
per-request text limits, and KServe values that must fit their datatype (issue 7.5, 7.12)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import msgspec
import numpy as np
import pytest

from infergate.engine.api.common import (
    MAX_INPUT_CHARS,
    MAX_INPUT_TOKENS,
    MAX_INPUTS,
    MAX_REQUEST_CHARS,
    TOKEN_CHARS,
    ApiError,
    check_texts,
    decode_json,
    digits,
    priority_and_timeout,
)
from infergate.engine.api.kserve_codec import (
    DTYPES,
    MAX_DIMS,
    decode_input,
    json_tensor,
    timeout_ms,
)
from infergate.engine.api.openai import parse_inputs
from infergate.engine.config import LevelConfig, PrioritiesConfig
from infergate.engine.http.request import Request
from infergate.engine.scheduler.batcher import Batcher

_any = msgspec.json.Decoder()


def refused(fn: Any, *args: Any) -> str:
    """``fn(*args)`` raises a 400 ApiError; its message."""
    with pytest.raises(ApiError) as e:
        fn(*args)
    assert e.value.status == 400
    return e.value.message


# --- JSON bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"input": "a\xff\xfeb"}', "UTF-8"),  # msgspec raises UnicodeDecodeError
        (b"[" * 5000 + b"]" * 5000, "nested too deeply"),  # msgspec raises RecursionError
        (b'{"a": ', "invalid"),
    ],
)
def test_malformed_json_is_a_400_naming_the_problem(body: bytes, fragment: str) -> None:
    assert fragment in refused(decode_json, _any, body, "request body")


def test_json_nested_within_the_limit_decodes() -> None:
    assert decode_json(_any, b"[" * 200 + b"]" * 200, "body") is not None


# --- numeric headers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw", [b"+2", b"0_1", b" 2 ", b"2 ", b"-1", b"", b"1.0", b"\xef\xbc\x92", b"0x1"]
)
def test_numeric_headers_take_ascii_digits_only(raw: bytes) -> None:
    assert "ASCII digits" in refused(digits, raw, "X-Priority")


def test_numeric_header_of_thousands_of_digits_is_out_of_range() -> None:
    assert "out of range" in refused(digits, b"9" * 5000, "X-Request-Timeout-Ms")


@pytest.mark.parametrize(("raw", "value"), [(b"2", 2), (b"007", 7), (b"0" * 40 + b"5", 5)])
def test_digits_are_read(raw: bytes, value: int) -> None:
    assert digits(raw, "X-Priority") == value


def _batcher(**level: Any) -> Batcher:
    prios = PrioritiesConfig(levels=3, default=2, queue=[LevelConfig(**level)] * 3)
    return cast(Batcher, SimpleNamespace(config=SimpleNamespace(priorities=prios)))


def _req(*headers: tuple[bytes, bytes]) -> Request:
    return Request("POST", b"/", "/", b"", "1.1", list(headers), b"", True, None)


@pytest.mark.parametrize("raw", [b"+2", b"0_1", b" 2 "])
def test_priority_header_with_int_syntax_is_refused(raw: bytes) -> None:
    refused(priority_and_timeout, _req((b"x-priority", raw)), _batcher())


@pytest.mark.parametrize("raw", [b"+100", b"1_000", b" 100"])
def test_timeout_header_with_int_syntax_is_refused(raw: bytes) -> None:
    refused(priority_and_timeout, _req((b"x-request-timeout-ms", raw)), _batcher())


@pytest.mark.parametrize("timeout", [0.0001, 0.999, 0, -1, 3_600_001, float("nan"), True, "5"])
def test_body_timeout_outside_1ms_to_1h_is_refused(timeout: Any) -> None:
    refused(priority_and_timeout, _req(), _batcher(), None, timeout)


@pytest.mark.parametrize(("timeout", "seconds"), [(1, 0.001), (1.5, 0.0015), (3_600_000, 3600)])
def test_body_timeout_inside_the_range_is_kept(timeout: float, seconds: float) -> None:
    assert priority_and_timeout(_req(), _batcher(), None, timeout) == (2, seconds)


@pytest.mark.parametrize("timeout_us", [True, False, "1000", 999, 0.5, 3_600_000_001, [1]])
def test_kserve_timeout_must_be_a_number_of_microseconds(timeout_us: Any) -> None:
    assert "microseconds" in refused(timeout_ms, timeout_us)


@pytest.mark.parametrize(("timeout_us", "ms"), [(None, None), (0, None), (1000, 1.0)])
def test_kserve_timeout_zero_is_none(timeout_us: Any, ms: float | None) -> None:
    assert timeout_ms(timeout_us) == ms


# --- per-request text limits ---------------------------------------------------------------


def test_request_character_budget_is_enforced_across_inputs() -> None:
    per = MAX_INPUT_CHARS // 2
    n = MAX_REQUEST_CHARS // per
    check_texts(["x" * per] * n)  # exactly at the budget
    message = refused(check_texts, ["x" * per] * n + ["y"])
    assert f"at most {MAX_REQUEST_CHARS} per request" in message


def test_input_longer_than_the_per_input_limit_is_named() -> None:
    message = refused(check_texts, ["ok", "x" * (MAX_INPUT_CHARS + 1)], "TEXT")
    assert f"TEXT[1] is longer than {MAX_INPUT_CHARS}" in message


def test_token_arrays_count_towards_the_budget() -> None:
    half = MAX_REQUEST_CHARS // TOKEN_CHARS // 2
    check_texts([[1] * half, [2] * half])  # exactly at the budget
    assert "per request" in refused(check_texts, [[1] * half, [2] * half, "x"])
    assert "token ids" in refused(check_texts, [[1] * (MAX_INPUT_TOKENS + 1)])


def test_openai_inputs_use_the_budget() -> None:
    assert len(parse_inputs(["a"] * MAX_INPUTS, None)) == MAX_INPUTS
    assert "per request" in refused(parse_inputs, ["x" * 1000] * 100, None)
    assert "2048 inputs" in refused(parse_inputs, ["a"] * (MAX_INPUTS + 1), None)


def test_openai_token_arrays_refuse_booleans_and_out_of_vocabulary_ids() -> None:
    assert "token ids" in refused(parse_inputs, [[1, True]], 10)
    assert "token ids" in refused(parse_inputs, [[1, 10]], 10)
    assert parse_inputs([[1, 9]], 10) == [[1, 9]]


# --- KServe shapes -------------------------------------------------------------------------


def _spec(datatype: str, shape: list[int], data: Any) -> dict[str, Any]:
    return {"name": "INPUT0", "datatype": datatype, "shape": shape, "data": data}


@pytest.mark.parametrize("ndim", [MAX_DIMS + 1, 65, 100_000])
def test_shape_with_too_many_dimensions_is_refused(ndim: int) -> None:
    message = refused(decode_input, _spec("FP32", [1] * ndim, [1.0]), memoryview(b""), 0)
    assert f"1 to {MAX_DIMS} dimensions" in message


def test_shape_with_the_most_dimensions_is_accepted() -> None:
    _, _, arr, _ = decode_input(_spec("FP32", [1] * MAX_DIMS, [1.0]), memoryview(b""), 0)
    assert arr.shape == (1,) * MAX_DIMS


@pytest.mark.parametrize("shape", [[2**62, 2**62, 0], [2**63 - 1, 2**63 - 1], [1, 2**40]])
def test_shape_whose_product_overflows_is_refused(shape: list[int]) -> None:
    refused(decode_input, _spec("FP32", shape, []), memoryview(b""), 0)


def test_bytes_input_with_more_elements_than_inputs_is_refused_before_decoding() -> None:
    spec = {"name": "TEXT", "datatype": "BYTES", "shape": [1, MAX_INPUTS + 1],
            "parameters": {"binary_data_size": 4 * (MAX_INPUTS + 1)}}  # fmt: skip
    body = memoryview(b"\0" * 4 * (MAX_INPUTS + 1))
    assert f"at most {MAX_INPUTS} BYTES" in refused(decode_input, spec, body, 0)


def test_bytes_data_nested_past_numpy_dimensions_is_a_400() -> None:
    data: Any = ["a"]
    for _ in range(100):
        data = [data]
    assert "strings" in refused(decode_input, _spec("BYTES", [1], data), memoryview(b""), 0)


def test_data_that_is_not_an_array_is_refused() -> None:
    assert "JSON array" in refused(decode_input, _spec("FP32", [1], "1"), memoryview(b""), 0)


# --- KServe values that must fit their datatype --------------------------------------------


@pytest.mark.parametrize(
    ("datatype", "data", "fragment"),
    [
        ("FP32", [1e300], "does not fit FP32"),
        ("FP16", [70000], "does not fit FP16"),
        ("FP32", [1.0, -1e39], "does not fit FP32"),
        ("INT32", [1.5], "must be integers"),
        ("INT32", [2**31], "outside INT32"),
        ("INT32", [1e10], "outside INT32"),
        ("INT8", [128], "outside INT8"),
        ("INT8", [-129.0], "outside INT8"),
        ("UINT8", [-1], "outside UINT8"),
        ("INT64", [2**63], "outside INT64"),
        ("INT64", [9.3e18], "outside INT64"),
        ("UINT64", [-1, 2**63], "outside UINT64"),
        ("FP32", [True], "numbers"),
        ("INT32", [False, True], "numbers"),
        ("FP32", ["1"], "numbers"),
        ("FP32", [None], "numbers"),
        ("FP32", [{"a": 1}], "numbers"),
        ("FP32", [[1.0], [1.0, 2.0]], "regular array"),
        ("BOOL", [1], "true or false"),
    ],
)
def test_values_that_do_not_fit_their_datatype_are_refused_naming_the_input(
    datatype: str, data: list[Any], fragment: str
) -> None:
    shape = [np.asarray(data, dtype=object).size]
    message = refused(decode_input, _spec(datatype, shape, data), memoryview(b""), 0)
    assert message.startswith("input INPUT0:")
    assert fragment in message


@pytest.mark.parametrize(
    ("datatype", "data", "expected"),
    [
        ("INT8", [100, -128, 127], [100, -128, 127]),
        ("INT32", [2.0, -3.0], [2, -3]),
        ("UINT64", [2**64 - 1, 0], [2**64 - 1, 0]),
        ("UINT64", [2**63 + 1, 1.0], [2**63 + 1, 1]),  # exact past 2**53
        ("INT64", [-(2**63), 2**63 - 1], [-(2**63), 2**63 - 1]),
        ("FP32", [1, 2.5, -3.4e38], [1.0, 2.5, -3.4e38]),
        ("FP16", [65504.0], [65504.0]),
        ("BOOL", [True, False], [True, False]),
        ("FP64", [[1e300], [2.0]], [[1e300], [2.0]]),
    ],
)
def test_values_that_fit_keep_their_value(datatype: str, data: list[Any], expected: Any) -> None:
    shape = list(np.asarray(data).shape)
    _, _, arr, _ = decode_input(_spec(datatype, shape, data), memoryview(b""), 0)
    assert arr.dtype == DTYPES[datatype]
    if datatype.startswith("FP"):
        assert np.allclose(arr.astype(np.float64), expected, rtol=1e-3)
    else:
        assert arr.tolist() == expected


def test_empty_tensor_has_the_declared_dtype() -> None:
    assert json_tensor([], np.dtype("<i4"), 0, "x", "INT32").dtype == np.int32
