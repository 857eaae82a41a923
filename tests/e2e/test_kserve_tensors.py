"""Bring your own model (issue 8): ONNX models from a model repository served over KServe v2.

The models are built by ``tests.support.onnx_models`` with known weights and written into a
repository folder; the server runs as a child process and is called with ``tritonclient.http``
(requests built from the model metadata alone, JSON and binary tensors, several threads at
once). Every answer is compared with ``onnxruntime.InferenceSession`` run here on the same
inputs, so a misaligned row, a lost datatype or a wrong output order fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from tritonclient.utils import triton_to_np_dtype

from infergate.engine.models.embeddings import resolve_model_file
from tests.support import onnx_models as m
from tests.support.client import RawConnection, metric
from tests.support.server import REPO_ROOT, ServerProcess

MINILM = resolve_model_file("builtin:minilm", ".")
CHILD_TIMEOUT_S = 60
"""Bound on a child ``infergate`` that must exit by itself (--check-config, a failed start)."""

CONFIG = """
listen = "127.0.0.1:0"
sub_reactors = 2
model_repository = "models"

[[models]]
name = "sim-tensor"
task = "tensor"
executor = "sim"
base_us = 1000
per_item_us = 0
"""

MLP_TOML = """
warmup = true
[batching]
policy = "window"
max_batch_size = 16
max_queue_delay_us = 30000
"""
"""The window policy holds a batch open 30 ms, so concurrent clients' rows merge for sure."""


def _build_repository(root: Path) -> Path:
    repo = root / "models"
    m.write_model(m.mlp(), repo / "mlp")
    (repo / "mlp" / "model.toml").write_text(MLP_TOML)
    m.write_model(m.two_io(), repo / "two_io")
    m.write_model(m.fixed_batch(4), repo / "fixed")
    m.write_model(m.fixed_batch(4), repo / "fixed_adaptive")  # batching asked for: refused
    (repo / "fixed_adaptive" / "model.toml").write_text('[batching]\npolicy = "adaptive"\n')
    m.write_model(m.sequence(), repo / "seq")
    (repo / "minilm").mkdir()
    (repo / "minilm" / "model.toml").write_text(f"model_file = {json.dumps(MINILM)}\n")
    return repo


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("byom")
    _build_repository(root)
    (root / "infergate.toml").write_text(CONFIG)
    return root


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[ServerProcess]:
    with ServerProcess(root / "infergate.toml") as s:
        yield s


@pytest.fixture(scope="module")
def url(server: ServerProcess) -> str:
    return f"127.0.0.1:{server.port}"


_sessions: dict[str, ort.InferenceSession] = {}


def reference(root: Path, model: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ONNX Runtime in this process on the model file the server serves."""
    path = MINILM if model == "minilm" else str(root / "models" / model / "model.onnx")
    if path not in _sessions:
        _sessions[path] = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    sess = _sessions[path]
    outs = sess.run(None, feeds)
    return {o.name: v for o, v in zip(sess.get_outputs(), outs, strict=True)}


def from_metadata(
    meta: dict[str, Any], rows: int, seq: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Random inputs built from the KServe metadata alone: -1 in dimension 0 is ``rows``,
    any other -1 is ``seq``."""
    feeds = {}
    for t in meta["inputs"]:
        shape = [(rows if i == 0 else seq) if d == -1 else d for i, d in enumerate(t["shape"])]
        dtype = triton_to_np_dtype(t["datatype"])
        if np.issubdtype(dtype, np.integer):
            feeds[t["name"]] = rng.integers(0, 50, shape).astype(dtype)
        else:
            feeds[t["name"]] = rng.standard_normal(shape).astype(dtype)
    return feeds


def call(
    url: str, model: str, feeds: dict[str, np.ndarray], binary: bool, outputs: list[str] | None
) -> dict[str, np.ndarray]:
    c = triton.InferenceServerClient(url)
    inputs = []
    for name, arr in feeds.items():
        inp = triton.InferInput(name, list(arr.shape), triton.np_to_triton_dtype(arr.dtype))
        inp.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(inp)
    wanted = None
    if outputs is not None:
        wanted = [triton.InferRequestedOutput(n, binary_data=binary) for n in outputs]
    r = c.infer(model, inputs, outputs=wanted)
    names = [o["name"] for o in r.get_response()["outputs"]]
    return {n: r.as_numpy(n) for n in names}


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for name, w in want.items():
        g = got[name]
        assert g.dtype == w.dtype, name
        assert g.shape == w.shape, name
        if np.issubdtype(w.dtype, np.floating):
            tol = 1e-3 if w.dtype == np.float16 else 1e-5
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol, err_msg=name)
        else:
            assert np.array_equal(g, w), name


def test_metadata_and_config_come_from_the_model(url: str) -> None:
    c = triton.InferenceServerClient(url)
    meta = c.get_model_metadata("two_io")
    assert meta["inputs"] == [
        {"name": "a", "datatype": "FP16", "shape": [-1, 3]},
        {"name": "b", "datatype": "INT64", "shape": [-1, 2]},
    ]
    assert [o["name"] for o in meta["outputs"]] == ["c", "d"]
    assert c.get_model_metadata("seq")["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": [-1, -1, 4]}
    ]
    config = c.get_model_config("mlp")
    assert config["max_batch_size"] == 16
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}]
    fixed = c.get_model_config("fixed")
    assert fixed["max_batch_size"] == 0
    assert fixed["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [4, 3]}]
    assert c.is_model_ready("minilm")


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("model", ["mlp", "two_io", "seq"])
def test_requests_built_from_metadata_match_onnxruntime_from_many_threads(
    url: str, root: Path, model: str, binary: bool
) -> None:
    meta = triton.InferenceServerClient(url).get_model_metadata(model)
    rng = np.random.default_rng(3)
    cases = []
    for i in range(24):
        seq = 1 + i % 3 if model != "seq" else 2  # same seq: rows of seq requests merge
        cases.append(from_metadata(meta, int(rng.integers(1, 6)), seq, rng))
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda f: call(url, model, f, binary, None), cases))
    for feeds, answer in zip(cases, got, strict=True):
        assert_same(answer, reference(root, model, feeds))


def test_concurrent_rows_are_merged_into_batches_and_returned_to_their_owner(
    url: str, root: Path, server: ServerProcess
) -> None:
    rng = np.random.default_rng(5)
    cases = [rng.standard_normal((1, m.MLP_IN)).astype(np.float32) for _ in range(32)]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda x: call(url, "mlp", {"x": x}, True, None), cases))
    for x, answer in zip(cases, got, strict=True):
        assert_same(answer, reference(root, "mlp", {"x": x}))
    with RawConnection(server.port) as conn:
        text = conn.request("GET", "/metrics").body.decode()
    batches = metric(text, "infergate_model_batch_requests_count", model="mlp")
    requests = metric(text, "infergate_model_batch_requests_sum", model="mlp")
    assert requests > batches, "no executor call merged two requests"


def test_a_request_over_max_batch_size_is_split_and_reassembled_in_order(
    url: str, root: Path, server: ServerProcess
) -> None:
    x = np.random.default_rng(9).standard_normal((40, m.MLP_IN)).astype(np.float32)
    assert_same(call(url, "mlp", {"x": x}, True, None), reference(root, "mlp", {"x": x}))
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [40, 4], "data": x.tolist()}]}
    ).encode()
    with RawConnection(server.port) as conn:
        r = conn.request("POST", "/v2/models/mlp/infer", body=body)
    assert r.status == 200
    assert int(r.header("x-infergate-batch-items") or 0) <= 16  # the first part's batch


def test_outputs_selection_picks_and_orders_outputs_json_and_binary(url: str, root: Path) -> None:
    rng = np.random.default_rng(11)
    feeds: dict[str, np.ndarray] = {
        "a": rng.standard_normal((3, 3)).astype(np.float16),
        "b": rng.integers(-5, 5, (3, 2)).astype(np.int64),
    }
    want = reference(root, "two_io", feeds)
    only_d = call(url, "two_io", feeds, True, ["d"])
    assert_same(only_d, {"d": want["d"]})
    c = triton.InferenceServerClient(url)
    inputs = []
    for name, arr in feeds.items():
        inp = triton.InferInput(name, list(arr.shape), triton.np_to_triton_dtype(arr.dtype))
        inp.set_data_from_numpy(arr, binary_data=True)
        inputs.append(inp)
    mixed = [
        triton.InferRequestedOutput("d", binary_data=False),
        triton.InferRequestedOutput("c", binary_data=True),
    ]
    r = c.infer("two_io", inputs, outputs=mixed)
    assert [o["name"] for o in r.get_response()["outputs"]] == ["d", "c"]
    assert_same({"c": r.as_numpy("c"), "d": r.as_numpy("d")}, want)


def test_fixed_batch_model_is_served_unbatched_and_checks_the_shape(
    url: str, root: Path, server: ServerProcess
) -> None:
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    for binary in (True, False):
        assert_same(call(url, "fixed", {"x": x}, binary, None), reference(root, "fixed", {"x": x}))
    body = (
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], '
        b'"data": [1, 2, 3, 4, 5, 6]}]}'
    )
    with RawConnection(server.port) as conn:
        r = conn.request("POST", "/v2/models/fixed/infer", body=body)
    assert r.status == 400
    assert r.json()["error"] == "input x: expected shape [4, 3], got [2, 3]"
    log = server.log_text()
    assert "fixed: task tensor, executor onnxruntime, batching off (max 1)" in log
    assert (
        "model fixed_adaptive: dimension 0 is fixed, so requests cannot be batched: "
        "batching policy adaptive (max 32) -> off (max 1)" in log
    )
    config = triton.InferenceServerClient(url).get_model_config("fixed_adaptive")
    assert config["max_batch_size"] == 0


def test_minilm_as_a_plain_tensor_model_gives_onnxruntime_s_token_states(
    url: str, root: Path
) -> None:
    meta = triton.InferenceServerClient(url).get_model_metadata("minilm")
    names = {t["name"] for t in meta["inputs"]}
    assert {"input_ids", "attention_mask"} <= names
    ids = np.array([[101, 7592, 2088, 102, 0], [101, 2307, 3185, 2003, 102]], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int64)}
    if "token_type_ids" in names:
        feeds["token_type_ids"] = np.zeros_like(ids)
    want = reference(root, "minilm", feeds)
    got = call(url, "minilm", feeds, True, None)
    assert set(got) == set(want)
    for name, w in want.items():
        np.testing.assert_allclose(got[name], w, rtol=1e-4, atol=1e-4)


BAD = [
    # (body, the input or output the message must name, a phrase it must hold)
    (
        {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4], "data": [1, 2, 3, 4]}]},
        "x",
        "expected FP32, got FP64",
    ),
    (
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]}]},
        "x",
        "expected shape [-1, 4], got [2, 2]",
    ),
    (
        {"inputs": [{"name": "y", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]},
        "y",
        "unknown input",
    ),
    (
        {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}],
            "outputs": [{"name": "nope"}],
        },
        "nope",
        "unknown output",
    ),
    (
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1 << 25], "data": [1]}]},
        "x",
        "elements",
    ),
]


@pytest.mark.parametrize(("body", "named", "phrase"), BAD)
def test_bad_tensors_are_a_400_naming_the_input(
    server: ServerProcess, body: dict[str, Any], named: str, phrase: str
) -> None:
    with RawConnection(server.port) as conn:
        r = conn.request("POST", "/v2/models/mlp/infer", body=json.dumps(body).encode())
    assert r.status == 400
    assert r.header("x-infergate-drop-reason") == "invalid_input"
    message = r.json()["error"]
    assert phrase in message
    assert f" {named}" in message


def test_missing_input_and_unknown_model(server: ServerProcess) -> None:
    only_a = {"inputs": [{"name": "a", "datatype": "FP16", "shape": [1, 3], "data": [1, 2, 3]}]}
    with RawConnection(server.port) as conn:
        r = conn.request("POST", "/v2/models/two_io/infer", body=json.dumps(only_a).encode())
        assert r.status == 400
        assert r.json()["error"].startswith("missing input b ")
        r = conn.request("POST", "/v2/models/nope/infer", body=json.dumps(only_a).encode())
        assert r.status == 404
        assert r.header("x-infergate-drop-reason") == "model_not_found"
        r = conn.request("GET", "/v2/models/nope")
        assert r.status == 404


def test_admin_models_reports_load_and_warmup(server: ServerProcess) -> None:
    assert server.admin_port is not None
    with RawConnection(server.admin_port) as conn:
        models = {d["name"]: d for d in conn.request("GET", "/admin/models").json()["models"]}
    mlp = models["mlp"]
    assert mlp["warmup_batch_sizes"] == [1, 2, 4, 8, 16]
    assert mlp["load_s"] > 0
    assert mlp["warmup_s"] > 0
    assert models["fixed"]["warmup_batch_sizes"] == []  # warmup not asked for


def test_the_simulated_tensor_model_beside_the_repository_keeps_its_behaviour(url: str) -> None:
    x = np.arange(6, dtype=np.int32).reshape(2, 3)
    got = call(url, "sim-tensor", {"INPUT0": x}, True, ["OUTPUT0"])
    assert got["OUTPUT0"].dtype == np.int32
    assert got["OUTPUT0"].tolist() == (2 * x + 1).tolist()


def _infergate(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infergate.app", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )


def test_a_name_in_config_and_repository_fails_start_up_naming_both(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    m.write_model(m.mlp(), repo / "sim-tensor")
    config = tmp_path / "infergate.toml"
    config.write_text(CONFIG)
    r = _infergate("--config", str(config), "--listen", "127.0.0.1:0", "--headless")
    assert r.returncode == 2
    assert "'sim-tensor' is defined twice" in r.stderr
    assert f"[[models]] of {config}" in r.stderr
    assert str(repo / "sim-tensor") in r.stderr


def test_check_config_validates_the_whole_repository(tmp_path: Path, root: Path) -> None:
    config = tmp_path / "infergate.toml"
    config.write_text('listen = "127.0.0.1:0"\n')
    ok = _infergate("--config", str(config), "--model-repository", "models", "--check-config",
                    cwd=root)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "model mlp: task tensor, executor onnxruntime, batching window" in ok.stdout
    assert "model fixed: task tensor, executor onnxruntime, batching off (max 1)" in ok.stdout
    broken = tmp_path / "broken"
    (broken / "empty").mkdir(parents=True)
    m.write_model(m.mlp(), broken / "typo")
    (broken / "typo" / "model.toml").write_text("instancez = 2\n")
    bad = _infergate("--config", str(config), "--model-repository", str(broken), "--check-config")
    assert bad.returncode == 2
    assert f"{broken / 'empty'}: no model.onnx" in bad.stderr
    assert str(broken / "typo" / "model.toml") in bad.stderr
    assert "instancez" in bad.stderr
