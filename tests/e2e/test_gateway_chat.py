"""Gateway mode for generation, end to end on loopback: a gateway infergate in front of two
stand-in OpenAI-compatible servers (``tests/support/stub_upstream.py``, child processes that
stream SSE chunks with timing the test controls and record what they saw).

Chunks are relayed as the upstream sends them (asserted by arrival times around a gate the
upstream waits on), a client that leaves aborts its upstream request (the upstream sees the
connection close) and frees its slot, priority-1 requests are admitted before older
priority-2 ones under ``max_inflight = 1``, upstream errors keep their reason, and a replica
killed mid-stream fails only the streams on it.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.client import RawConnection, metric
from tests.support.server import ServerProcess
from tests.support.stub_upstream import StubUpstream
from tests.support.wait import wait_until

WAIT_S = 10.0
"""Bound on every wait for the gateway or the stubs to reach a state."""

GATEWAY_CONFIG = """
sub_reactors = 2

[[models]]
name = "chat"
executor = "openai"
task = "generate"
upstreams = ["{a}", "{b}"]
upstream_model = "stub-model"
[models.upstream]
max_inflight = 2
connect_timeout_ms = 1000
request_timeout_ms = 20000
health_interval_ms = 100
consecutive_failures = 1
base_ejection_ms = 30000

[[models]]
name = "solo"
executor = "openai"
task = "generate"
upstreams = ["{a}"]
[models.batching]
policy = "off"
[models.upstream]
max_inflight = 1
forward_priority = true
health_interval_ms = 100
[models.priorities]
levels = 2
"""


class Cluster:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.stubs = [StubUpstream(log_path=base / "a.log"), StubUpstream(log_path=base / "b.log")]
        path = base / "gateway.toml"
        path.write_text(GATEWAY_CONFIG.format(a=self.stubs[0].url, b=self.stubs[1].url))
        self.gateway = ServerProcess(path)

    def sdk(self) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"http://127.0.0.1:{self.gateway.port}/v1", api_key="-", max_retries=0
        )

    def events(self, i: int) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.stubs[i].url}/_stub/log", timeout=WAIT_S) as r:
            events: list[dict[str, Any]] = json.load(r)
        return events

    def tagged(self, i: int, tag: str, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events(i) if e["tag"] == tag and e["event"] == event]

    def release(self, i: int, gate: str) -> None:
        req = urllib.request.Request(
            f"{self.stubs[i].url}/_stub/release", data=json.dumps({"gate": gate}).encode()
        )
        with urllib.request.urlopen(req, timeout=WAIT_S) as r:
            assert r.status == 200

    def replicas(self, model: str) -> dict[str, dict[str, Any]]:
        assert self.gateway.admin_port is not None
        with RawConnection(self.gateway.admin_port) as c:
            r = c.request("GET", "/admin/models")
        (m,) = [m for m in r.json()["models"] if m["name"] == model]
        return {s["url"]: s for s in m["replicas"]}

    def queued(self, model: str, level: int) -> float:
        with RawConnection(self.gateway.port) as c:
            text = c.request("GET", "/metrics").body.decode()
        return metric(text, "infergate_model_queue_depth", model=model, priority=str(level))

    def stop(self) -> None:
        self.gateway.stop()
        for s in self.stubs:
            s.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("gateway_chat"))
    try:
        yield c
    finally:
        c.stop()


def stub(**opts: Any) -> dict[str, Any]:
    return {"stub": opts}


MESSAGES: Any = [{"role": "user", "content": "hello"}]


def chat_request(tag: str, *, stream: bool, model: str = "chat", **opts: Any) -> bytes:
    body = {"model": model, "messages": MESSAGES, "stream": stream, "stub": {"tag": tag, **opts}}
    data = json.dumps(body).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(data), data)
    )


def test_stream_chunks_arrive_as_the_upstream_sends_them(cluster: Cluster) -> None:
    """Two chunks reach the client while the upstream is blocked before the third, which
    arrives only after the gate opens: nothing is buffered in the gateway."""
    raw = cluster.sdk().chat.completions.with_raw_response.create(
        model="chat", messages=MESSAGES, stream=True,
        extra_body=stub(tag="incr", chunks=4, gate="incr", gate_at=2),
    )  # fmt: skip
    replica = raw.headers["x-infergate-upstream-replica"]
    i = [s.url for s in cluster.stubs].index(replica)
    chunks = iter(raw.parse())
    texts: list[str] = []
    arrived: list[float] = []
    for _ in range(2):
        texts.append(next(chunks).choices[0].delta.content or "")
        arrived.append(time.monotonic())
    assert cluster.tagged(i, "incr", "wait")  # the upstream is holding the third chunk back
    released = time.monotonic()
    cluster.release(i, "incr")
    for c in chunks:
        texts.append(c.choices[0].delta.content or "")
        arrived.append(time.monotonic())
    assert texts == ["tok0 ", "tok1 ", "tok2 ", "tok3 "]
    assert arrived[1] < released < arrived[2]
    (arrive,) = cluster.tagged(i, "incr", "arrive")
    assert arrive["model"] == "stub-model"  # upstream_model replaces the client's name
    assert arrive["priority"] is None  # forward_priority is off for this model


def test_text_through_the_gateway_equals_the_direct_call(cluster: Cluster) -> None:
    direct = openai.OpenAI(base_url=cluster.stubs[0].url + "/v1", api_key="-", max_retries=0)
    args: dict[str, Any] = {"messages": MESSAGES, "temperature": 0, "seed": 7}
    via = "".join(
        c.choices[0].delta.content or ""
        for c in cluster.sdk().chat.completions.create(
            model="chat", stream=True, extra_body=stub(chunks=6), **args
        )
    )
    ref = "".join(
        c.choices[0].delta.content or ""
        for c in direct.chat.completions.create(
            model="x", stream=True, extra_body=stub(chunks=6), **args
        )
    )
    assert via == ref == "tok0 tok1 tok2 tok3 tok4 tok5 "


def test_non_streamed_chat_and_completions_carry_upstream_telemetry(cluster: Cluster) -> None:
    raw = cluster.sdk().chat.completions.with_raw_response.create(
        model="chat", messages=MESSAGES, extra_body=stub(chunks=2)
    )
    assert raw.parse().choices[0].message.content == "tok0 tok1 "
    assert raw.headers["x-infergate-upstream-replica"] in {s.url for s in cluster.stubs}
    assert int(raw.headers["x-infergate-upstream-us"]) > 0
    assert int(raw.headers["x-infergate-batch-requests"]) == 1  # never merged
    text = "".join(
        c.choices[0].text
        for c in cluster.sdk().completions.create(
            model="chat", prompt="x", stream=True, extra_body=stub(chunks=3)
        )
    )
    assert text == "tok0 tok1 tok2 "


def test_upstream_error_keeps_its_reason_and_status(cluster: Cluster) -> None:
    with pytest.raises(openai.APIStatusError) as e:
        cluster.sdk().chat.completions.create(
            model="solo", messages=MESSAGES, stream=True,
            extra_body=stub(status=400, message="bad messages"),
        )  # fmt: skip
    assert e.value.status_code == 502
    assert e.value.response.headers["x-infergate-drop-reason"] == "upstream_error"
    body = e.value.response.json()["error"]
    assert body["code"] == "upstream_error"
    assert "answered 400" in body["message"]
    assert "bad messages" in body["message"]


def test_a_client_that_leaves_aborts_its_upstream_request_and_frees_its_slot(
    cluster: Cluster,
) -> None:
    """``solo`` has one slot: after the client leaves mid-stream, the upstream sees its
    connection close and the next request is served at once."""
    for tag, gate_at in (("leave-mid", 1), ("leave-before", 0)):
        with socket.create_connection(("127.0.0.1", cluster.gateway.port), timeout=WAIT_S) as s:
            s.sendall(chat_request(tag, stream=True, model="solo", gate=tag, gate_at=gate_at,
                                   chunks=3))  # fmt: skip
            wait_until(partial(cluster.tagged, 0, tag, "wait"), WAIT_S, f"{tag} is blocked")
            if gate_at:
                got = b""
                while b"tok0" not in got:
                    piece = s.recv(65536)
                    assert piece, "the gateway closed the stream"
                    got += piece
                assert got.startswith(b"HTTP/1.1 200 OK")
        wait_until(
            partial(cluster.tagged, 0, tag, "closed"), WAIT_S,
            f"the upstream saw {tag}'s connection close",
        )  # fmt: skip
        assert not cluster.tagged(0, tag, "done")
        wait_until(
            lambda: cluster.replicas("solo")[cluster.stubs[0].url]["inflight"] == 0,
            WAIT_S, "the slot is free",
        )  # fmt: skip
    t0 = time.monotonic()
    out = cluster.sdk().chat.completions.create(
        model="solo", messages=MESSAGES, extra_body=stub(chunks=1)
    )
    assert out.choices[0].message.content == "tok0 "
    assert time.monotonic() - t0 < WAIT_S / 2
    assert cluster.replicas("solo")[cluster.stubs[0].url]["state"] == "healthy"  # not its fault


def test_priority_one_is_admitted_before_older_priority_two(cluster: Cluster) -> None:
    """``solo`` has max_inflight = 1: while a call holds it, two priority-2 requests queue,
    then a priority-1 one; the upstream receives the priority-1 request first, with its
    priority forwarded."""
    client = cluster.sdk()

    def call(tag: str, priority: int, **opts: Any) -> str:
        out = client.chat.completions.create(
            model="solo", messages=MESSAGES,
            extra_body={"priority": priority, **stub(tag=tag, chunks=1, **opts)},
        )  # fmt: skip
        return out.choices[0].message.content or ""

    with ThreadPoolExecutor(4) as pool:
        hold = pool.submit(call, "hold", 2, gate="hold")
        wait_until(lambda: cluster.tagged(0, "hold", "wait"), WAIT_S, "the slot is taken")
        low = [pool.submit(call, f"low{k}", 2) for k in range(2)]
        wait_until(lambda: cluster.queued("solo", 2) == 2, WAIT_S, "two priority-2 queued")
        high = pool.submit(call, "high", 1)
        wait_until(lambda: cluster.queued("solo", 1) == 1, WAIT_S, "the priority-1 is queued")
        cluster.release(0, "hold")
        assert [f.result(WAIT_S) for f in (hold, high, *low)] == ["tok0 "] * 4
    order = [e for e in cluster.events(0) if e["event"] == "arrive" and e["tag"] in
             ("hold", "high", "low0", "low1")]  # fmt: skip
    assert [e["tag"] for e in order][:2] == ["hold", "high"]
    assert {e["tag"]: e["priority"] for e in order} == {"hold": 2, "high": 1, "low0": 2, "low1": 2}


def test_a_replica_killed_mid_stream_fails_only_its_streams_and_comes_back(
    cluster: Cluster,
) -> None:
    """Four streams (two per replica, max_inflight = 2) each hold a chunk back; replica b is
    killed: its streams end with an SSE error (never retried after the first byte), a's
    complete, b is ejected, later requests succeed on a, and b serves again after restarting
    on the same port."""
    client = cluster.sdk()
    b_url = cluster.stubs[1].url
    results: dict[str, str] = {}
    lock = threading.Lock()

    def stream(tag: str) -> None:
        text = ""
        try:
            for c in client.chat.completions.create(
                model="chat", messages=MESSAGES, stream=True,
                extra_body=stub(tag=tag, chunks=3, gate="kill", gate_at=1),
            ):  # fmt: skip
                text += c.choices[0].delta.content or ""
            outcome = text
        except openai.APIError as e:
            outcome = f"error {text}: {e.code}"
        with lock:
            results[tag] = outcome

    tags = [f"k{i}" for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(stream, t) for t in tags]
        wait_until(
            lambda: sum(len(cluster.tagged(i, t, "wait")) for i in (0, 1) for t in tags) == 4,
            WAIT_S, "four streams are blocked after their first chunk",
        )  # fmt: skip
        on_b = {t for t in tags if cluster.tagged(1, t, "wait")}
        assert len(on_b) == 2  # least outstanding: two per replica
        cluster.stubs[1].kill()
        wait_until(lambda: len(results) == 2, WAIT_S, "b's streams have ended")
        cluster.release(0, "kill")
        for f in futures:
            f.result(WAIT_S)
    for t in tags:
        if t in on_b:
            assert results[t] == "error tok0 : upstream_unavailable"
        else:
            assert results[t] == "tok0 tok1 tok2 "
    wait_until(lambda: cluster.replicas("chat")[b_url]["state"] == "ejected", WAIT_S,
               "b is ejected")  # fmt: skip
    for _ in range(4):  # all on a now
        out = client.chat.completions.with_raw_response.create(
            model="chat", messages=MESSAGES, extra_body=stub(chunks=1)
        )
        assert out.headers["x-infergate-upstream-replica"] == cluster.stubs[0].url
    cluster.stubs[1] = StubUpstream(port=cluster.stubs[1].port, log_path=cluster.base / "b2.log")
    wait_until(lambda: cluster.replicas("chat")[b_url]["state"] == "healthy", WAIT_S,
               "a passing health check returned b")  # fmt: skip

    def b_serves() -> bool:
        out = client.chat.completions.with_raw_response.create(
            model="chat", messages=MESSAGES, extra_body=stub(chunks=1)
        )
        return bool(out.headers["x-infergate-upstream-replica"] == b_url)

    wait_until(b_serves, WAIT_S, "the restarted replica serves again")


def test_metrics_show_every_replica_and_public_models_hide_them(cluster: Cluster) -> None:
    """Runs after the kill test: b was ejected once and is healthy again."""
    with RawConnection(cluster.gateway.port) as c:
        text = c.request("GET", "/metrics").body.decode()
    a, b = (s.url for s in cluster.stubs)
    for url in (a, b):
        key = {"model": "chat", "replica": url}
        assert metric(text, "infergate_upstream_replica_state", state="healthy", **key) == 1
        assert metric(text, "infergate_upstream_replica_state", state="ejected", **key) == 0
        assert metric(text, "infergate_upstream_replica_inflight", **key) == 0
        assert metric(text, "infergate_upstream_replica_requests_total", **key) > 0
        assert metric(text, "infergate_upstream_replica_latency_seconds_count", **key) > 0
    key = {"model": "chat", "replica": b}
    assert metric(text, "infergate_upstream_replica_ejections_total", **key) >= 1
    assert metric(text, "infergate_upstream_replica_errors_total", **key) >= 2
    models = {m.id: m.model_extra or {} for m in cluster.sdk().models.list().data}
    assert "replicas" not in models["chat"]
    assert models["chat"]["replicas_healthy"] == 2
