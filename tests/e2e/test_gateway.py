"""Gateway mode end to end: a gateway infergate in front of two infergate replicas serving the
real MiniLM with batching off, driven by the official openai SDK, on loopback.

The gateway merges its clients' requests into one upstream call per batch, spreads calls over
both replicas, and survives one replica dying and coming back on the same port.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from tests.support.client import RawConnection, metric
from tests.support.server import ServerProcess
from tests.support.wait import wait_until

STATE_TIMEOUT_S = 10.0
"""Bound on waits for a replica's state to change (health checks run every 100 ms)."""
MAX_BATCH = 32
MAX_INFLIGHT = 1
"""Per replica: with two replicas the gateway has two slots, so concurrent requests merge."""

REPLICA_CONFIG = """
sub_reactors = 1

[[models]]
name = "minilm"
executor = "onnxruntime"
model_file = "builtin:minilm"
tokenizer_file = "builtin:minilm"
[models.batching]
policy = "off"
"""

GATEWAY_CONFIG = """
sub_reactors = 2

[[models]]
name = "minilm"
executor = "openai"
upstreams = [{upstreams}]
[models.batching]
policy = "adaptive"
max_batch_size = {max_batch}
[models.upstream]
max_inflight = {max_inflight}
connect_timeout_ms = 1000
request_timeout_ms = 20000
health_interval_ms = 100
health_timeout_ms = 1000
consecutive_failures = 2
base_ejection_ms = 30000
"""

SENTENCES = [f"sentence number {i} about {topic}" for i, topic in enumerate(
    ["cats", "dogs", "markets", "rain", "music", "code", "tea", "trains"] * 8
)]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Cluster:
    """Two replicas on fixed ports (so one can restart on the same port) and the gateway."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.ports = [free_port(), free_port()]
        self.replicas: list[ServerProcess | None] = [None, None]
        for i in range(2):
            self.start_replica(i)
        urls = ", ".join(f'"http://127.0.0.1:{p}"' for p in self.ports)
        path = base / "gateway.toml"
        path.write_text(
            GATEWAY_CONFIG.format(upstreams=urls, max_batch=MAX_BATCH, max_inflight=MAX_INFLIGHT)
        )
        self.gateway = ServerProcess(path)

    def start_replica(self, i: int) -> ServerProcess:
        path = self.base / f"replica{i}.toml"
        path.write_text(REPLICA_CONFIG)
        proc = ServerProcess(path, extra_args=["--listen", f"127.0.0.1:{self.ports[i]}"])
        assert proc.port == self.ports[i]
        self.replicas[i] = proc
        return proc

    def replica(self, i: int) -> ServerProcess:
        proc = self.replicas[i]
        assert proc is not None
        return proc

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i]}"

    def replica_stats(self) -> dict[str, dict[str, Any]]:
        """The gateway's view of its replicas, from ``/admin/models``."""
        assert self.gateway.admin_port is not None
        with RawConnection(self.gateway.admin_port) as c:
            r = c.request("GET", "/admin/models")
        assert r.status == 200, r.body
        (model,) = [m for m in r.json()["models"] if m["name"] == "minilm"]
        return {s["url"]: s for s in model["replicas"]}

    def stop(self) -> None:
        self.gateway.stop()
        for proc in self.replicas:
            if proc is not None:
                proc.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("gateway"))
    try:
        yield c
    finally:
        c.stop()


def sdk(port: int) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)


def post_embeddings(port: int, text: str) -> tuple[int, dict[str, str], dict[str, Any]]:
    body = json.dumps({"model": "minilm", "input": text}).encode()
    with RawConnection(port, timeout=30.0) as c:
        r = c.request(
            "POST", "/v1/embeddings", body=body, headers=[("Content-Type", "application/json")]
        )
    return r.status, {k.lower(): v for k, v in r.headers}, json.loads(r.body)


def batched_calls(port: int) -> tuple[float, float]:
    """(executor calls, calls of one item) of ``minilm`` on a replica, from ``/metrics``."""
    with RawConnection(port) as c:
        text = c.request("GET", "/metrics").body.decode()
    count = metric(text, "infergate_model_batch_items_count", model="minilm")
    single = metric(text, "infergate_model_batch_items_bucket", model="minilm", le="1")
    return count, single


def is_upstream_failure(status: int, body: dict[str, Any]) -> bool:
    """A request that failed because its replica died under it: 502 ``upstream_unavailable``
    (connection refused or lost) or 504 ``upstream_timeout``."""
    code = body.get("error", {}).get("code")
    return (status, code) in ((502, "upstream_unavailable"), (504, "upstream_timeout"))


def test_sdk_gets_the_same_vectors_through_the_gateway_as_directly(cluster: Cluster) -> None:
    texts = SENTENCES[:5]
    via = sdk(cluster.gateway.port).embeddings.create(model="minilm", input=texts)
    direct = sdk(cluster.replica(0).port).embeddings.create(model="minilm", input=texts)
    assert [d.index for d in via.data] == list(range(5))
    for a, b in zip(via.data, direct.data, strict=True):
        va, vb = np.asarray(a.embedding), np.asarray(b.embedding)
        assert va.shape == (384,)
        assert float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb))) >= 0.9999
    # one request alone is one upstream call: its usage is exactly the upstream's
    assert via.usage.prompt_tokens == direct.usage.prompt_tokens
    # float lists too (the SDK asks for base64 by default)
    raw = sdk(cluster.gateway.port).embeddings.create(
        model="minilm", input=texts[0], encoding_format="float"
    )
    assert np.allclose(raw.data[0].embedding, direct.data[0].embedding, atol=1e-5)


def test_admin_lists_the_replicas_and_the_public_models_do_not(cluster: Cluster) -> None:
    (model,) = sdk(cluster.gateway.port).models.list().data
    extra = model.model_extra or {}
    assert extra["executor"] == "openai"
    assert extra["instances"] == 2 * MAX_INFLIGHT
    assert extra["replicas_healthy"] == 2
    assert "replicas" not in extra  # internal addresses stay on the admin plane
    stats = cluster.replica_stats()
    assert set(stats) == {cluster.url(0), cluster.url(1)}
    assert {r["state"] for r in stats.values()} == {"healthy"}


def test_concurrent_requests_reach_the_replicas_as_merged_batches(cluster: Cluster) -> None:
    before = [batched_calls(cluster.replica(i).port) for i in range(2)]
    client = sdk(cluster.gateway.port)

    def one(text: str) -> int:
        raw = client.embeddings.with_raw_response.create(model="minilm", input=text)
        assert len(raw.parse().data) == 1
        return int(raw.headers["x-infergate-batch-requests"])

    with ThreadPoolExecutor(16) as pool:
        merged = list(pool.map(one, SENTENCES))
    assert len(merged) == 64
    assert max(merged) > 1  # the gateway merged its clients' requests
    after = [batched_calls(cluster.replica(i).port) for i in range(2)]
    calls = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
    multi = sum((a[0] - a[1]) - (b[0] - b[1]) for a, b in zip(after, before, strict=True))
    assert calls < 64  # fewer upstream calls than client requests
    assert multi >= 1  # and the replicas saw calls of several inputs
    stats = cluster.replica_stats()
    assert all(s["requests"] > 0 for s in stats.values())  # both replicas used
    assert all(s["inflight"] == 0 for s in stats.values())


def test_a_replica_killed_under_load_is_ejected_and_used_again_after_restart(
    cluster: Cluster,
) -> None:
    victim = cluster.url(1)
    results: list[tuple[int, dict[str, Any]]] = []
    lock = threading.Lock()
    started = threading.Event()

    def client(k: int) -> None:
        for j in range(8):
            status, _, body = post_embeddings(cluster.gateway.port, SENTENCES[(k * 8 + j) % 64])
            with lock:
                results.append((status, body))
            started.set()

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(client, k) for k in range(8)]
        assert started.wait(STATE_TIMEOUT_S)
        cluster.replica(1).signal(signal.SIGKILL)
        for f in futures:
            f.result(timeout=60)
    cluster.replica(1).stop()
    assert len(results) == 64
    failures = [(s, b) for s, b in results if s != 200]
    # only what was in flight on the dead replica failed (one call of at most MAX_BATCH)
    assert all(is_upstream_failure(s, b) for s, b in failures), failures
    assert len(failures) <= MAX_INFLIGHT * MAX_BATCH
    wait_until(
        lambda: cluster.replica_stats()[victim]["state"] == "ejected",
        STATE_TIMEOUT_S,
        "the gateway has ejected the killed replica",
    )
    # while it is down, every request succeeds on the other replica
    for text in SENTENCES[:4]:
        assert post_embeddings(cluster.gateway.port, text)[0] == 200

    cluster.start_replica(1)
    wait_until(
        lambda: cluster.replica_stats()[victim]["state"] == "healthy",
        STATE_TIMEOUT_S,
        "a passing health check has returned the restarted replica",
    )
    served = cluster.replica_stats()[victim]["requests"]

    def victim_served_again() -> bool:
        assert post_embeddings(cluster.gateway.port, SENTENCES[0])[0] == 200
        return bool(cluster.replica_stats()[victim]["requests"] > served)

    # ties are broken at random: each sequential call has an even chance of the restarted one
    wait_until(victim_served_again, STATE_TIMEOUT_S, "the restarted replica serves calls again")
