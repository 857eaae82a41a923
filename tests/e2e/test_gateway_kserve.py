"""Gateway mode for tensors, end to end on loopback: a gateway infergate whose models are
``executor = "kserve"`` in front of an infergate serving ONNX tensor models with batching off,
called with ``tritonclient`` (JSON and binary).

Answers through the gateway equal the upstream's own; the gateway publishes the upstream's
metadata as its spec; concurrent single-row requests reach the upstream as merged calls of
several rows (binary tensors concatenated along dimension 0, split back per request).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton

from tests.support import onnx_models as m
from tests.support.client import RawConnection, metric
from tests.support.server import ServerProcess

UPSTREAM_CONFIG = """
sub_reactors = 1
model_repository = "models"
"""
OFF = '[batching]\npolicy = "off"\n'

GATEWAY_CONFIG = """
sub_reactors = 2

[[models]]
name = "mlp"
task = "tensor"
executor = "kserve"
upstreams = ["{url}"]
[models.batching]
policy = "window"
max_batch_size = 16
max_queue_delay_us = 30000
[models.upstream]
max_inflight = 1
health_interval_ms = 200

[[models]]
name = "pair"
task = "tensor"
executor = "kserve"
upstreams = ["{url}"]
upstream_model = "two_io"
"""


class Setup:
    def __init__(self, base: Path) -> None:
        repo = base / "models"
        m.write_model(m.mlp(), repo / "mlp")
        (repo / "mlp" / "model.toml").write_text(OFF)
        m.write_model(m.two_io(), repo / "two_io")
        (repo / "two_io" / "model.toml").write_text(OFF)
        (base / "upstream.toml").write_text(UPSTREAM_CONFIG)
        self.upstream = ServerProcess(base / "upstream.toml")
        (base / "gateway.toml").write_text(
            GATEWAY_CONFIG.format(url=f"http://127.0.0.1:{self.upstream.port}")
        )
        try:
            self.gateway = ServerProcess(base / "gateway.toml")
        except BaseException:
            self.upstream.stop()
            raise

    def stop(self) -> None:
        self.gateway.stop()
        self.upstream.stop()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    s = Setup(tmp_path_factory.mktemp("gateway_kserve"))
    try:
        yield s
    finally:
        s.stop()


def infer(port: int, model: str, feeds: dict[str, np.ndarray], binary: bool) -> dict[str, Any]:
    c = triton.InferenceServerClient(f"127.0.0.1:{port}")
    inputs = []
    for name, arr in feeds.items():
        inp = triton.InferInput(name, list(arr.shape), triton.np_to_triton_dtype(arr.dtype))
        inp.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(inp)
    r = c.infer(model, inputs)
    return {o["name"]: r.as_numpy(o["name"]) for o in r.get_response()["outputs"]}


def feeds_for(model: str, rows: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if model == "mlp":
        return {"x": rng.standard_normal((rows, 4)).astype(np.float32)}
    return {
        "a": rng.standard_normal((rows, 3)).astype(np.float16),
        "b": rng.integers(0, 50, (rows, 2)).astype(np.int64),
    }


def test_metadata_is_the_upstream_models(setup: Setup) -> None:
    via = triton.InferenceServerClient(f"127.0.0.1:{setup.gateway.port}")
    direct = triton.InferenceServerClient(f"127.0.0.1:{setup.upstream.port}")
    for model, upstream in (("mlp", "mlp"), ("pair", "two_io")):
        got, want = via.get_model_metadata(model), direct.get_model_metadata(upstream)
        assert got["inputs"] == want["inputs"]
        assert got["outputs"] == want["outputs"]


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize(("model", "upstream"), [("mlp", "mlp"), ("pair", "two_io")])
def test_answers_through_the_gateway_equal_the_upstreams(
    setup: Setup, model: str, upstream: str, binary: bool
) -> None:
    feeds = feeds_for(model, 5, seed=3)
    got = infer(setup.gateway.port, model, feeds, binary)
    want = infer(setup.upstream.port, upstream, feeds, binary)
    assert set(got) == set(want)
    for name, w in want.items():
        assert got[name].dtype == w.dtype
        assert np.array_equal(got[name], w), name


def upstream_calls(port: int) -> tuple[float, float]:
    with RawConnection(port) as c:
        text = c.request("GET", "/metrics").body.decode()
    count = metric(text, "infergate_model_batch_items_count", model="mlp")
    single = metric(text, "infergate_model_batch_items_bucket", model="mlp", le="1")
    return count, single


def test_concurrent_rows_reach_the_upstream_merged_and_come_back_split(setup: Setup) -> None:
    before = upstream_calls(setup.upstream.port)
    feeds = [feeds_for("mlp", 1, seed=k) for k in range(12)]
    want = [infer(setup.upstream.port, "mlp", f, True) for f in feeds]
    mid = upstream_calls(setup.upstream.port)
    with ThreadPoolExecutor(12) as pool:
        got = list(pool.map(lambda f: infer(setup.gateway.port, "mlp", f, True), feeds))
    for g, w in zip(got, want, strict=True):
        for name in w:
            assert np.array_equal(g[name], w[name])  # each client gets its own row back
    after = upstream_calls(setup.upstream.port)
    assert mid[0] - before[0] == 12  # the direct calls: one row each
    calls = after[0] - mid[0]
    multi = (after[0] - after[1]) - (mid[0] - mid[1])
    assert calls < 12  # fewer upstream calls than client requests
    assert multi >= 1  # and calls of several rows


def test_the_answer_names_the_replica_and_the_upstream_time(setup: Setup) -> None:
    x = np.ones((2, 4), np.float32)
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": x.ravel().tolist()}]}
    ).encode()
    with RawConnection(setup.gateway.port) as c:
        r = c.request("POST", "/v2/models/mlp/infer", body=body,
                      headers=[("Content-Type", "application/json")])  # fmt: skip
    assert r.status == 200, r.body
    assert r.header("x-infergate-upstream-replica") == f"http://127.0.0.1:{setup.upstream.port}"
    assert int(r.header("x-infergate-upstream-us") or 0) > 0
    # a request that does not fit the upstream's spec is refused by the gateway itself
    bad = body.replace(b'"shape": [2, 4]', b'"shape": [4, 2]')
    with RawConnection(setup.gateway.port) as c:
        r = c.request("POST", "/v2/models/mlp/infer", body=bad)
    assert r.status == 400
    assert b"expected shape [-1, 4]" in r.body
