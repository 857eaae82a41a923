"""Triton's model repository extension on the admin plane (issue 8): index, load, reload and
unload while serving, a broken reload, SIGHUP re-reading the repository.

The server runs as a child process over a repository folder of ONNX models built by
``tests.support.onnx_models`` (the MLP with different seeds, so each version's outputs are
known); each test uses its own folders so tests do not depend on each other's order.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support import onnx_models as m
from tests.support.client import RawConnection
from tests.support.server import ServerProcess
from tests.support.wait import wait_until

CONFIG = """
listen = "127.0.0.1:0"
sub_reactors = 2
model_repository = "models"
"""
SLOW_TOML = """
task = "embeddings"
executor = "sim"
dim = 4
base_us = 400000
per_item_us = 0
[batching]
policy = "off"
max_batch_size = 1
"""
"""One request at a time, 400 ms each: the next ones stay queued long enough to unload."""
CLIENTS = 4
MAX_REQUESTS = 3000
"""Per client thread, a bound on the continuous-load loops."""
TIMEOUT_S = 30
X = np.array([[0.5, -1.0, 2.0, 0.25]], dtype=np.float32)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    m.write_model(m.mlp(0), root / "models" / "mlp")
    m.write_model(m.mlp(0), root / "models" / "fragile")
    (root / "infergate.toml").write_text(CONFIG)
    return root


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[ServerProcess]:
    with ServerProcess(root / "infergate.toml") as s:
        yield s


def admin(s: ServerProcess, path: str, body: Any = None) -> tuple[int, Any]:
    assert s.admin_port is not None
    with RawConnection(s.admin_port) as c:
        raw = b"" if body is None else json.dumps(body).encode()
        r = c.request("POST", path, body=raw)
        return r.status, json.loads(r.body) if r.body else None


def index(s: ServerProcess) -> dict[str, dict[str, Any]]:
    status, rows = admin(s, "/v2/repository/index")
    assert status == 200
    return {r["name"]: r for r in rows}


def infer_body(x: np.ndarray[Any, Any]) -> bytes:
    doc = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                       "data": x.ravel().tolist()}]}  # fmt: skip
    return json.dumps(doc).encode()


def infer(c: RawConnection, model: str) -> tuple[int, np.ndarray[Any, Any] | None]:
    r = c.request("POST", f"/v2/models/{model}/infer", body=infer_body(X))
    if r.status != 200:
        return r.status, None
    out = json.loads(r.body)["outputs"][0]
    return 200, np.array(out["data"], dtype=np.float32).reshape(out["shape"])


def version_of(y: np.ndarray[Any, Any] | None, seeds: tuple[int, ...]) -> int | None:
    """Which MLP seed produced ``y``, or None."""
    for seed in seeds:
        if y is not None and np.allclose(y, m.mlp_reference(X, seed), rtol=1e-5, atol=1e-5):
            return seed
    return None


def test_index_lists_every_model_with_its_state(server: ServerProcess, root: Path) -> None:
    m.write_model(m.mlp(1), root / "models" / "idle")
    rows = index(server)
    assert rows["mlp"] == {"name": "mlp", "version": "1", "state": "READY", "reason": "",
                           "origin": "repository"}  # fmt: skip
    assert rows["idle"]["state"] == "UNAVAILABLE"
    assert rows["idle"]["reason"] == "not loaded"
    status, ready = admin(server, "/v2/repository/index", {"ready": True})
    assert status == 200
    assert "idle" not in {r["name"] for r in ready}


def test_repository_routes_answer_404_on_the_public_port(server: ServerProcess) -> None:
    with RawConnection(server.port) as c:
        for path in ("/v2/repository/index", "/v2/repository/models/mlp/unload", "/v2/repository"):
            assert c.request("POST", path).status == 404
        assert infer(c, "mlp")[0] == 200  # still served


def test_load_a_new_folder_while_serving(server: ServerProcess, root: Path) -> None:
    m.write_model(m.mlp(3), root / "models" / "fresh")
    with RawConnection(server.port) as c:
        assert infer(c, "fresh")[0] == 404
        override = {"parameters": {"config": json.dumps({"batching": {"max_batch_size": 2}})}}
        status, row = admin(server, "/v2/repository/models/fresh/load", override)
        assert status == 200, row
        assert (row["state"], row["version"]) == ("READY", "1")
        assert version_of(infer(c, "fresh")[1], (3,)) == 3
    assert server.admin_port is not None
    with RawConnection(server.admin_port) as c:
        models = {x["name"]: x for x in c.request("GET", "/admin/models").json()["models"]}
    assert models["fresh"]["batching"]["max_batch_size"] == 2  # the override applied


def test_reload_under_continuous_load_drops_nothing_and_switches_outputs(
    server: ServerProcess, root: Path
) -> None:
    stop = threading.Event()
    seen: list[list[tuple[int, int | None]]] = [[] for _ in range(CLIENTS)]

    def client(k: int) -> None:
        with RawConnection(server.port) as c:
            for _ in range(MAX_REQUESTS):
                status, y = infer(c, "mlp")
                seen[k].append((status, version_of(y, (0, 1, 2))))
                if stop.is_set():
                    return

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: all(len(s) >= 5 for s in seen), TIMEOUT_S, "every client is served")
        for seed, version in ((1, "2"), (2, "3")):
            m.write_model(m.mlp(seed), root / "models" / "mlp")
            status, row = admin(server, "/v2/repository/models/mlp/load")
            assert status == 200, row
            assert row["version"] == version
            marks = [len(s) for s in seen]
            wait_until(
                lambda seed=seed, marks=marks: all(  # type: ignore[misc]
                    s[-1][1] == seed and len(s) > n for s, n in zip(seen, marks, strict=True)
                ),
                TIMEOUT_S, f"every client gets version {version}'s outputs",
            )  # fmt: skip
    finally:
        stop.set()
        for t in threads:
            t.join(TIMEOUT_S)
    answers = [a for s in seen for a in s]
    assert all(status == 200 for status, _ in answers), "a request failed during a reload"
    assert all(v is not None for _, v in answers), "an answer matched no version"
    for s in seen:  # each client moves forward only: 0 ... 1 ... 2
        versions = [v for _, v in s]
        assert versions == sorted(versions)  # type: ignore[type-var]


def test_unload_answers_queued_requests_503_then_404(server: ServerProcess, root: Path) -> None:
    (root / "models" / "slow").mkdir()
    (root / "models" / "slow" / "model.toml").write_text(SLOW_TOML)
    assert admin(server, "/v2/repository/models/slow/load")[0] == 200
    answers: list[tuple[int, str | None]] = []

    def client(i: int) -> None:
        with RawConnection(server.port) as c:
            body = json.dumps({"model": "slow", "input": [f"x{i}"]}).encode()
            r = c.request("POST", "/v1/embeddings", body=body)
            answers.append((r.status, r.header("x-infergate-drop-reason")))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    assert server.admin_port is not None

    def queued() -> int:
        with RawConnection(server.admin_port) as c:  # type: ignore[arg-type]
            models = c.request("GET", "/admin/models").json()["models"]
        return sum(next(x for x in models if x["name"] == "slow")["queue_depth"])

    wait_until(lambda: queued() >= 2, TIMEOUT_S, "two requests are queued behind the running one")
    status, row = admin(server, "/v2/repository/models/slow/unload")
    assert status == 200, row
    assert (row["state"], row["reason"]) == ("UNAVAILABLE", "unloaded")
    for t in threads:
        t.join(TIMEOUT_S)
    assert sorted(answers) == [(200, None), (503, "model_unloaded"), (503, "model_unloaded")]
    with RawConnection(server.port) as c:
        body = json.dumps({"model": "slow", "input": ["later"]}).encode()
        assert c.request("POST", "/v1/embeddings", body=body).status == 404
    assert index(server)["slow"]["state"] == "UNAVAILABLE"


def test_a_broken_model_file_leaves_the_old_version_serving(
    server: ServerProcess, root: Path
) -> None:
    (root / "models" / "fragile" / "model.onnx").write_bytes(b"not an onnx file")
    status, doc = admin(server, "/v2/repository/models/fragile/load")
    assert status == 400
    assert "fragile" in doc["error"]
    row = index(server)["fragile"]
    assert (row["state"], row["version"]) == ("READY", "1")
    assert "version 2 failed to load" in row["reason"]
    with RawConnection(server.port) as c:
        assert version_of(infer(c, "fragile")[1], (0,)) == 0


def test_sighup_loads_a_new_folder(server: ServerProcess, root: Path) -> None:
    m.write_model(m.mlp(4), root / "models" / "hup")
    server.signal(signal.SIGHUP)
    wait_until(
        lambda: index(server)["hup"]["state"] == "READY", TIMEOUT_S, "SIGHUP loaded the folder"
    )
    with RawConnection(server.port) as c:
        assert version_of(infer(c, "hup")[1], (4,)) == 4
