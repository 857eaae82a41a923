"""KServe v2 end to end with the real tritonclient[http], JSON and binary, from many threads."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.support.client import RawConnection
from tests.support.server import ServerProcess

CONFIG = """
listen = "127.0.0.1:0"
sub_reactors = 2

[[models]]
name = "sim-tensor"
task = "tensor"
executor = "sim"
base_us = 3000
per_item_us = 10
[models.batching]
max_batch_size = 64

[[models]]
name = "sim-embed"
executor = "sim"
dim = 16
base_us = 1000
per_item_us = 10
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    path = tmp_path_factory.mktemp("kserve") / "infergate.toml"
    path.write_text(CONFIG)
    with ServerProcess(path) as s:
        yield s


@pytest.fixture(scope="module")
def url(server: ServerProcess) -> str:
    return f"127.0.0.1:{server.port}"


def test_health_and_metadata(url: str) -> None:
    c = triton.InferenceServerClient(url)
    assert c.is_server_live()
    assert c.is_server_ready()
    assert c.is_model_ready("sim-tensor")
    meta = c.get_model_metadata("sim-tensor")
    assert meta["name"] == "sim-tensor"
    assert meta["inputs"][0]["name"] == "INPUT0"
    with pytest.raises(InferenceServerException, match="does not exist"):
        c.get_model_metadata("no-such-model")


def _infer(url: str, x: np.ndarray, binary: bool) -> tuple[np.ndarray, int]:
    c = triton.InferenceServerClient(url)
    inp = triton.InferInput("INPUT0", list(x.shape), triton.np_to_triton_dtype(x.dtype))
    inp.set_data_from_numpy(x, binary_data=binary)
    out = triton.InferRequestedOutput("OUTPUT0", binary_data=binary)
    r = c.infer("sim-tensor", [inp], outputs=[out])
    headers = r.get_response()  # JSON header of the response
    assert headers["model_name"] == "sim-tensor"
    return r.as_numpy("OUTPUT0"), x.shape[0]


@pytest.mark.parametrize("binary", [True, False])
def test_tensors_from_many_threads_are_batched_and_returned_to_their_owner(
    url: str, binary: bool
) -> None:
    rng = np.random.default_rng(7)
    inputs = [
        rng.standard_normal((int(rng.integers(1, 5)), 8)).astype(np.float32) for _ in range(48)
    ]
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda x: _infer(url, x, binary), inputs))
    for x, (y, _) in zip(inputs, results, strict=True):
        assert y.shape == x.shape
        assert np.allclose(y, 2 * x + 1)


def test_integer_tensors_keep_their_dtype(url: str) -> None:
    x = np.arange(6, dtype=np.int32).reshape(2, 3)
    y, _ = _infer(url, x, True)
    assert y.dtype == np.int32
    assert y.tolist() == (2 * x + 1).tolist()


def test_text_to_embeddings_over_kserve(url: str) -> None:
    c = triton.InferenceServerClient(url)
    texts = np.array([b"alpha", b"beta", b"alpha"], dtype=object)
    inp = triton.InferInput("TEXT", [3], "BYTES")
    inp.set_data_from_numpy(texts)
    emb = c.infer("sim-embed", [inp]).as_numpy("EMBEDDING")
    assert emb.shape == (3, 16)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0)
    assert np.array_equal(emb[0], emb[2])


def test_bad_requests_are_4xx_with_a_kserve_error(server: ServerProcess) -> None:
    cases = [
        (b"not json", 400),
        (b'{"inputs": []}', 400),
        (b'{"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [2], "data": [1]}]}', 400),
        (b'{"inputs": [{"name": "OTHER", "datatype": "FP32", "shape": [1], "data": [1]}]}', 400),
        (
            b'{"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 1], "data": [1]}],'
            b' "outputs": 1}',
            400,
        ),
        (
            b'{"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 1], "data": [1]}],'
            b' "parameters": {"timeout": 1' + b"0" * 400 + b"}}",
            400,
        ),
    ]
    with RawConnection(server.port) as c:
        for body, status in cases:
            r = c.request("POST", "/v2/models/sim-tensor/infer", body=body)
            assert r.status == status, body
            assert isinstance(r.json()["error"], str)
            assert r.header("x-infergate-drop-reason") == "invalid_input"
        r = c.request("POST", "/v2/models/nope/infer", body=b"{}")
        assert r.status == 404
        assert r.header("x-infergate-drop-reason") == "model_not_found"
