"""Hostile and malformed inputs against the real server: every one is a 4xx with a message in the
route's error shape, never a 500 (issue 7.5, 7.12, and the per-request limits of 7.1)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from infergate.engine.api.common import MAX_INPUT_CHARS, MAX_REQUEST_CHARS
from infergate.engine.api.kserve_codec import MAX_DIMS, MAX_JSON_BYTES
from infergate.engine.api.openai import MAX_BODY_BYTES
from tests.support.client import HttpResponse, RawConnection
from tests.support.server import ServerProcess

CONFIG = """
listen = "127.0.0.1:0"
sub_reactors = 2

[[models]]
name = "sim-tensor"
task = "tensor"
executor = "sim"
base_us = 200
per_item_us = 1

[[models]]
name = "sim-embed"
executor = "sim"
dim = 8
base_us = 200
per_item_us = 1
"""
EMBED = "/v1/embeddings"
TENSOR = "/v2/models/sim-tensor/infer"
TEXT = "/v2/models/sim-embed/infer"
DEEP = b"[" * 5000 + b"]" * 5000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    path = tmp_path_factory.mktemp("bad-input") / "infergate.toml"
    path.write_text(CONFIG)
    with ServerProcess(path) as s:
        yield s


def post(port: int, target: str, body: bytes, *headers: tuple[str, str]) -> HttpResponse:
    with RawConnection(port) as c:
        return c.request("POST", target, [("Content-Type", "application/json"), *headers], body)


def openai_400(r: HttpResponse) -> str:
    """``r`` is a 400 in OpenAI's error shape with reason invalid_input; its message."""
    assert r.status == 400, r.body[:300]
    assert r.header("x-infergate-drop-reason") == "invalid_input"
    err = json.loads(r.body)["error"]
    assert err["code"] == "invalid_input"
    assert err["type"] == "invalid_request_error"
    return str(err["message"])


def kserve_400(r: HttpResponse) -> str:
    """``r`` is a 400 in KServe's shape ``{"error": "..."}``; its message."""
    assert r.status == 400, r.body[:300]
    assert r.header("x-infergate-drop-reason") == "invalid_input"
    doc = json.loads(r.body)
    assert set(doc) == {"error"}
    assert isinstance(doc["error"], str)
    return doc["error"]


def tensor(datatype: str, shape: list[int], data: Any, **extra: Any) -> bytes:
    spec = {"name": "INPUT0", "datatype": datatype, "shape": shape, "data": data}
    return json.dumps({"inputs": [spec], **extra}).encode()


# --- 7.5: bodies that were 500s ------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"model": "sim-embed", "input": "a\xff\xfeb"}', "UTF-8"),
        (b'{"model": "sim-embed", "input": ' + DEEP + b"}", "nested too deeply"),
    ],
)
def test_openai_body_that_was_a_500_is_a_400(
    server: ServerProcess, body: bytes, fragment: str
) -> None:
    assert fragment in openai_400(post(server.port, EMBED, body))


@pytest.mark.parametrize(
    ("target", "body", "fragment"),
    [
        (TEXT, b'{"inputs":[{"name":"TEXT","datatype":"BYTES","shape":[1],"data":["\xff"]}]}',
         "UTF-8"),
        (TENSOR, b'{"inputs": ' + DEEP + b"}", "nested too deeply"),
        (TENSOR, tensor("FP32", [1] * 65, [1.0]), f"1 to {MAX_DIMS} dimensions"),
        (TENSOR, tensor("FP32", [1] * (MAX_DIMS + 1), [1.0]), f"1 to {MAX_DIMS} dimensions"),
        (TENSOR, tensor("FP32", [2**62, 2**62, 0], []), "INPUT0"),
        (TENSOR, tensor("FP32", [1, 2**40, 2**40], []), "elements"),
    ],
)  # fmt: skip
def test_kserve_body_that_was_a_500_is_a_400(
    server: ServerProcess, target: str, body: bytes, fragment: str
) -> None:
    assert fragment in kserve_400(post(server.port, target, body))


def test_binary_kserve_header_with_invalid_utf8_is_a_400(server: ServerProcess) -> None:
    head = b'{"id": "\xff", "inputs": []}'
    r = post(server.port, TENSOR, head, ("Inference-Header-Content-Length", str(len(head))))
    assert "UTF-8" in kserve_400(r)


# --- 7.12: loose validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Priority", "+2"),
        ("X-Priority", "0_1"),
        ("X-Priority", "1 2"),
        ("X-Request-Timeout-Ms", "+100"),
        ("X-Request-Timeout-Ms", "1_000"),
        ("X-Request-Timeout-Ms", "9" * 5000),
    ],
)
def test_numeric_headers_take_ascii_digits_only(
    server: ServerProcess, name: str, value: str
) -> None:
    body = b'{"model": "sim-embed", "input": "x"}'
    assert name in openai_400(post(server.port, EMBED, body, (name, value)))
    assert name in kserve_400(post(server.port, TENSOR, tensor("FP32", [1], [1.0]), (name, value)))


@pytest.mark.parametrize("value", ["+2", "0_2", "2_"])
def test_inference_header_content_length_takes_digits_only(
    server: ServerProcess, value: str
) -> None:
    r = post(server.port, TENSOR, b'{"inputs":[]}', ("Inference-Header-Content-Length", value))
    assert "Inference-Header-Content-Length" in kserve_400(r)


def test_header_digits_are_still_accepted(server: ServerProcess) -> None:
    body = b'{"model": "sim-embed", "input": "x"}'
    r = post(server.port, EMBED, body, ("X-Priority", "2"), ("X-Request-Timeout-Ms", "5000"))
    assert r.status == 200


@pytest.mark.parametrize("timeout", ["0.0001", "0.5", "0", "3600001", "true"])
def test_openai_body_timeout_outside_1ms_to_1h_is_a_400(
    server: ServerProcess, timeout: str
) -> None:
    body = b'{"model": "sim-embed", "input": "x", "timeout": %s}' % timeout.encode()
    assert "timeout" in openai_400(post(server.port, EMBED, body))


@pytest.mark.parametrize("timeout", [True, False, "1000", 0.5, 999, 3_600_000_001])
def test_kserve_timeout_must_be_microseconds_in_range(server: ServerProcess, timeout: Any) -> None:
    body = tensor("FP32", [1], [1.0], parameters={"timeout": timeout})
    assert "parameters.timeout" in kserve_400(post(server.port, TENSOR, body))


def test_kserve_boolean_priority_is_not_the_default(server: ServerProcess) -> None:
    body = tensor("FP32", [1], [1.0], parameters={"priority": False})
    assert "priority" in kserve_400(post(server.port, TENSOR, body))


@pytest.mark.parametrize(
    ("datatype", "data", "fragment"),
    [
        ("FP32", [1e300], "does not fit FP32"),
        ("INT32", [1.5], "must be integers"),
        ("INT8", [128], "outside INT8"),
        ("FP32", [True], "numbers"),
        ("FP32", ["1"], "numbers"),
    ],
)
def test_kserve_values_that_do_not_fit_are_a_400_naming_the_input(
    server: ServerProcess, datatype: str, data: list[Any], fragment: str
) -> None:
    message = kserve_400(post(server.port, TENSOR, tensor(datatype, [1, 1], data)))
    assert message.startswith("input INPUT0:")
    assert fragment in message


def test_kserve_values_that_fit_are_computed(server: ServerProcess) -> None:
    r = post(server.port, TENSOR, tensor("INT8", [1, 2], [50, -60]))
    assert r.status == 200
    assert json.loads(r.body)["outputs"][0]["data"] == [101, -119]  # the sim model: 2x + 1


# --- 7.1: per-request limits ---------------------------------------------------------------


def test_openai_request_over_the_character_budget_is_a_400_naming_it(
    server: ServerProcess,
) -> None:
    n = MAX_REQUEST_CHARS // 1000 + 1
    body = json.dumps({"model": "sim-embed", "input": ["x" * 1000] * n}).encode()
    assert f"at most {MAX_REQUEST_CHARS} per request" in openai_400(post(server.port, EMBED, body))


def test_openai_input_over_the_per_input_limit_is_a_400(server: ServerProcess) -> None:
    body = json.dumps({"model": "sim-embed", "input": "x" * (MAX_INPUT_CHARS + 1)}).encode()
    assert str(MAX_INPUT_CHARS) in openai_400(post(server.port, EMBED, body))


def test_kserve_text_over_the_character_budget_is_a_400(server: ServerProcess) -> None:
    n = MAX_REQUEST_CHARS // 1000 + 1
    spec = {"name": "TEXT", "datatype": "BYTES", "shape": [n], "data": ["x" * 1000] * n}
    body = json.dumps({"inputs": [spec]}).encode()
    assert f"at most {MAX_REQUEST_CHARS} per request" in kserve_400(post(server.port, TEXT, body))


def test_request_at_the_budget_is_served(server: ServerProcess) -> None:
    n = MAX_REQUEST_CHARS // 1000
    body = json.dumps({"model": "sim-embed", "input": ["x" * 1000] * n}).encode()
    r = post(server.port, EMBED, body)
    assert r.status == 200
    assert len(json.loads(r.body)["data"]) == n


# --- 7.9: big JSON bodies ------------------------------------------------------------------


def test_kserve_json_over_the_limit_is_a_413_pointing_at_binary_data(
    server: ServerProcess,
) -> None:
    cols = MAX_JSON_BYTES // (2048 * 4) + 1  # "0.5, " is 5 bytes: comfortably over the limit
    body = tensor("FP32", [2048, cols], [0.5] * (2048 * cols))
    assert len(body) > MAX_JSON_BYTES
    r = post(server.port, TENSOR, body)
    assert r.status == 413
    assert r.header("x-infergate-drop-reason") == "body_too_large"
    assert "binary_data" in json.loads(r.body)["error"]


def test_big_binary_tensor_with_a_json_answer_is_served_whole(server: ServerProcess) -> None:
    # 4 MB binary in; the JSON answer of 1M values is encoded in slices on the codec thread
    x = np.arange(1024 * 1024, dtype="<f4").reshape(1024, 1024) / 7
    head = json.dumps({
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1024, 1024],
                    "parameters": {"binary_data_size": x.nbytes}}],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": False}}],
    }).encode()  # fmt: skip
    r = post(
        server.port, TENSOR, head + x.tobytes(), ("Inference-Header-Content-Length", str(len(head)))
    )
    assert r.status == 200
    out = json.loads(r.body)["outputs"][0]
    assert out["shape"] == [1024, 1024]
    assert np.array_equal(np.asarray(out["data"], dtype="<f4").reshape(1024, 1024), 2 * x + 1)


def test_openai_body_over_the_limit_is_a_413(server: ServerProcess) -> None:
    body = json.dumps({"model": "sim-embed", "input": "x" * (MAX_BODY_BYTES + 1)}).encode()
    r = post(server.port, EMBED, body)
    assert r.status == 413
    assert json.loads(r.body)["error"]["code"] == "body_too_large"


def test_no_bad_input_left_a_traceback_in_the_log(server: ServerProcess) -> None:
    # runs last in this module: every request above was refused without an internal error
    assert "Traceback" not in server.log_text()
