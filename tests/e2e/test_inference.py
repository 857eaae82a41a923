"""Inference end to end: the real server process, the real MiniLM model, the real openai SDK."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import pytest

from infergate.engine.executors.onnx import OnnxEmbeddingExecutor
from infergate.engine.executors.sim import sim_vector
from infergate.engine.models.embeddings import resolve_model_file, resolve_tokenizer_file
from tests.support.client import RawConnection, build_request, metric
from tests.support.server import ServerProcess
from tests.support.wait import wait_until

STATE_TIMEOUT_S = 5.0
"""Bound on waits for the server's state to change; what is waited for takes milliseconds."""

CONFIG = """
listen = "127.0.0.1:0"
sub_reactors = 2

[[models]]
name = "minilm"
executor = "onnxruntime"
model_file = "builtin:minilm"
tokenizer_file = "builtin:minilm"
[models.batching]
policy = "adaptive"
max_batch_size = 32

[[models]]
name = "sim-embed"
executor = "sim"
dim = 8
base_us = 2000
per_item_us = 10
[models.batching]
max_batch_size = 64

# one slow slot, tiny queue, short deadline: for overload tests
[[models]]
name = "sim-slow"
executor = "sim"
dim = 4
base_us = 400000
per_item_us = 0
[models.priorities]
levels = 2
queue = [
  { max_queue_size = 2, timeout_us = 0 },
  { max_queue_size = 8, timeout_us = 50000, allow_override = false },
]
"""

SENTENCES = [f"sentence number {i} about {topic}" for i, topic in enumerate(
    ["cats", "dogs", "markets", "rain", "music", "code", "tea", "trains"] * 4
)]  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    path = tmp_path_factory.mktemp("inference") / "infergate.toml"
    path.write_text(CONFIG)
    with ServerProcess(path) as s:
        yield s


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="unused")


@pytest.fixture(scope="module")
def reference() -> OnnxEmbeddingExecutor:
    ex = OnnxEmbeddingExecutor(
        1, resolve_model_file("builtin:minilm", "."), resolve_tokenizer_file("builtin:minilm", ".")
    )
    ex.load()
    return ex


def post(
    port: int, path: str, body: object, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    with RawConnection(port) as c:
        hdrs = list((headers or {}).items())
        r = c.request("POST", path, body=json.dumps(body).encode(), headers=hdrs)
    return r.status, {k.lower(): v for k, v in r.headers}, r.body


def test_models_lists_every_model_and_labels_the_simulator(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {"minilm", "sim-embed", "sim-slow"}
    assert models["sim-embed"].model_extra["simulated"] is True  # type: ignore[index]
    assert models["minilm"].model_extra["simulated"] is False  # type: ignore[index]


def test_concurrent_clients_get_the_in_process_embeddings_from_merged_batches(
    client: openai.OpenAI, reference: OnnxEmbeddingExecutor
) -> None:
    def one(text: str) -> tuple[np.ndarray, int]:
        raw = client.embeddings.with_raw_response.create(model="minilm", input=text)
        emb = raw.parse()
        return np.asarray(emb.data[0].embedding), int(raw.headers["x-infergate-batch-requests"])

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, SENTENCES))
    expected = np.stack([v for v, _ in reference.run(SENTENCES, 0)])
    for (got, _), want in zip(results, expected, strict=True):
        assert got.shape == (384,)
        assert float(got @ want / np.linalg.norm(got)) >= 0.9999
    # while the one slot was busy, requests piled up and were merged
    assert max(n for _, n in results) > 1


def test_list_input_keeps_order_and_reports_usage(
    client: openai.OpenAI, reference: OnnxEmbeddingExecutor
) -> None:
    texts = ["first input", "the second one is longer than the first", "third"]
    resp = client.embeddings.create(model="minilm", input=texts, encoding_format="float")
    assert [d.index for d in resp.data] == [0, 1, 2]
    want = [v for v, _ in reference.run(texts, 0)]
    for d, w in zip(resp.data, want, strict=True):
        assert float(np.asarray(d.embedding) @ w) >= 0.9999
    assert resp.usage.prompt_tokens == sum(n for _, n in reference.run(texts, 0))


def test_unknown_model_is_a_typed_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client.embeddings.create(model="no-such-model", input="x")
    assert e.value.code == "model_not_found"


@pytest.mark.parametrize(
    "bad", [{"input": ""}, {"input": []}, {"input": [[]]}, {"input": 5}, {"dimensions": 12}]
)
def test_bad_input_is_a_typed_400(client: openai.OpenAI, bad: dict[str, object]) -> None:
    args: dict[str, object] = {"model": "minilm", "input": "ok", **bad}
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(**args)  # type: ignore[arg-type]
    assert e.value.code == "invalid_input"


def test_token_ids_outside_the_vocabulary_are_refused(server: ServerProcess) -> None:
    status, headers, body = post(
        server.port, "/v1/embeddings", {"model": "minilm", "input": [[101, 10**6]]}
    )
    assert status == 400
    assert headers["x-infergate-drop-reason"] == "invalid_input"
    assert "token ids" in json.loads(body)["error"]["message"]


def test_full_queue_is_429_with_retry_after(server: ServerProcess) -> None:
    # one slot busy for 400 ms, priority 1 holds 2: of 6 simultaneous requests some must be shed
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(
            lambda i: post(server.port, "/v1/embeddings", {"model": "sim-slow", "input": f"x{i}"}),
            range(6),
        ))  # fmt: skip
    statuses = sorted(s for s, _, _ in results)
    assert 429 in statuses
    assert 200 in statuses
    for status, headers, body in results:
        if status == 429:
            assert headers["x-infergate-drop-reason"] == "queue_full"
            assert int(headers["retry-after"]) >= 1
            assert json.loads(body)["error"]["code"] == "queue_full"


def test_deadline_expires_while_the_executor_is_busy(server: ServerProcess) -> None:
    order: list[str] = []
    lock = threading.Lock()

    def call(name: str, priority: int) -> tuple[int, dict[str, str]]:
        status, headers, _ = post(
            server.port, "/v1/embeddings", {"model": "sim-slow", "input": name},
            headers={"X-Priority": str(priority)},
        )  # fmt: skip
        with lock:
            order.append(name)
        return status, headers

    with ThreadPoolExecutor(2) as pool:
        busy = pool.submit(call, "busy", 1)
        # wait on the server's own state until its batch occupies the only slot
        wait_until(
            lambda: _running(_admin(server), "sim-slow"), STATE_TIMEOUT_S, "the first request runs"
        )
        late = pool.submit(call, "late", 2)  # level 2: 50 ms queue timeout
        status, headers = late.result()
        assert busy.result()[0] == 200
    assert status == 504
    assert headers["x-infergate-drop-reason"] == "deadline_exceeded"
    assert order == ["late", "busy"]  # it expired while the 400 ms batch was still running


@pytest.mark.parametrize("value", ["100000000000000", "0", "-5", "1" + "0" * 400])
def test_client_timeouts_out_of_range_are_400(server: ServerProcess, value: str) -> None:
    status, headers, _ = post(
        server.port, "/v1/embeddings", {"model": "sim-embed", "input": "x"},
        headers={"X-Request-Timeout-Ms": value},
    )  # fmt: skip
    assert status == 400
    assert headers["x-infergate-drop-reason"] == "invalid_input"


def test_level_without_override_refuses_a_client_timeout(server: ServerProcess) -> None:
    status, headers, _ = post(
        server.port, "/v1/embeddings", {"model": "sim-slow", "input": "x"},
        headers={"X-Priority": "2", "X-Request-Timeout-Ms": "10"},
    )  # fmt: skip
    assert status == 400
    assert headers["x-infergate-drop-reason"] == "invalid_input"


def test_admin_patch_under_load_loses_no_request(server: ServerProcess) -> None:
    port = server.port

    def call(i: int) -> int:
        return post(port, "/v1/embeddings", {"model": "sim-embed", "input": [f"a{i}", f"b{i}"]})[0]

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(call, i) for i in range(200)]
        with RawConnection(_admin(server)) as c:
            r = c.request(
                "PATCH", "/admin/models/sim-embed/batching",
                body=b'{"policy": "window", "max_queue_delay_us": 500, "max_batch_size": 8}',
            )  # fmt: skip
            assert r.status == 200
            bad = c.request("PATCH", "/admin/models/sim-embed/batching", body=b'{"policy": "x"}')
            assert bad.status == 400
        statuses = [f.result() for f in futures]
    assert statuses == [200] * 200
    with RawConnection(_admin(server)) as c:
        models = {m["name"]: m for m in c.request("GET", "/admin/models").json()["models"]}
    assert models["sim-embed"]["batching"]["policy"] == "window"
    assert models["sim-embed"]["batching"]["max_batch_size"] == 8
    text = _metrics(port)
    assert metric(text, "infergate_model_config_changes_total", model="sim-embed") >= 1
    assert (
        metric(text, "infergate_model_batching", model="sim-embed", policy="window",
               setting="max_batch_size") == 8
    )  # fmt: skip


def _metrics(port: int) -> str:
    with RawConnection(port) as c:
        return c.request("GET", "/metrics").body.decode()


def _admin(server: ServerProcess) -> int:
    """The admin listener's port (``/admin/*`` is not served on the public one)."""
    assert server.admin_port is not None
    return server.admin_port


def _running(port: int, model: str) -> bool:
    """True while a batch of ``model`` runs and nothing of it is queued."""
    with RawConnection(port) as c:
        models = {m["name"]: m for m in c.request("GET", "/admin/models").json()["models"]}
    m = models[model]
    st = m["stats"]
    # queue_full rejections never entered the queue, so they are not among "submitted"
    dropped = sum(n for reason, n in st["rejected"].items() if reason != "queue_full")
    finished = st["succeeded"] + st["failed"] + dropped
    return st["submitted"] > finished and sum(m["queue_depth"]) == 0


def _queue_depth(port: int, model: str) -> int:
    """Requests of ``model`` waiting in its queues, over every priority level."""
    with RawConnection(port) as c:
        models = {m["name"]: m for m in c.request("GET", "/admin/models").json()["models"]}
    return int(sum(models[model]["queue_depth"]))


def test_a_client_that_disconnects_while_queued_is_removed(server: ServerProcess) -> None:
    port = server.port
    before = _metrics(port)
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(post, port, "/v1/embeddings", {"model": "sim-slow", "input": "busy"})
        wait_until(
            lambda: _running(_admin(server), "sim-slow"), STATE_TIMEOUT_S, "the first request runs"
        )
        c = RawConnection(port)
        c.send(
            build_request("POST", "/v1/embeddings", body=b'{"model": "sim-slow", "input": "bye"}')
        )
        wait_until(
            lambda: _queue_depth(_admin(server), "sim-slow") == 1,
            STATE_TIMEOUT_S,
            "the second is queued",
        )
        c.close()  # the client goes away while its request waits
        dropped_before = metric_or_zero(before, "client_disconnected")
        wait_until(
            lambda: metric_or_zero(_metrics(port), "client_disconnected") > dropped_before,
            STATE_TIMEOUT_S,
            "the queued request of the closed connection is counted as client_disconnected",
        )
        assert busy.result()[0] == 200
    assert _queue_depth(_admin(server), "sim-slow") == 0


def test_pipelined_inference_requests_are_answered_in_order(server: ServerProcess) -> None:
    bodies = [json.dumps({"model": "sim-embed", "input": f"text {i}"}).encode() for i in range(5)]
    with RawConnection(server.port) as c:
        c.send(b"".join(build_request("POST", "/v1/embeddings", body=b) for b in bodies))
        got = [c.read_response() for _ in bodies]
    for i, r in enumerate(got):
        assert r.status == 200
        vec = np.asarray(r.json()["data"][0]["embedding"])
        assert np.allclose(vec, sim_vector(f"text {i}", 8))


def metric_or_zero(text: str, reason: str) -> float:
    """sim-slow's rejections for ``reason`` (0 before the first one creates the series)."""
    for line in text.splitlines():
        if (
            line.startswith("infergate_model_rejections_total{")
            and f'reason="{reason}"' in line
            and 'model="sim-slow"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
