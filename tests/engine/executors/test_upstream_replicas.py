"""Upstream routing and Envoy-style ejection: a fake clock, a seeded rng, no sockets."""

from __future__ import annotations

import asyncio
import base64
import json
import random
from collections import Counter
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any

import numpy as np
import pytest

from infergate.engine.config import UpstreamConfig
from infergate.engine.executors.base import ExecutorError
from infergate.engine.executors.upstream.client import UpstreamReply
from infergate.engine.executors.upstream.errors import UPSTREAM_UNAVAILABLE, UpstreamError
from infergate.engine.executors.upstream.executor import check_upstream_url
from infergate.engine.executors.upstream.openai import (
    OpenAIEmbeddingsExecutor,
    apportion,
    decode_reply,
)
from infergate.engine.executors.upstream.replicas import ReplicaSet

URLS = ["http://a:1", "http://b:2", "http://c:3"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(
    urls: list[str] = URLS, max_inflight: int = 2, failures: int = 3, seed: int = 7
) -> tuple[ReplicaSet, FakeClock]:
    clock = FakeClock()
    rs = ReplicaSet(urls, max_inflight, failures, 5.0, 12.0, clock=clock, rng=random.Random(seed))
    return rs, clock


def state(rs: ReplicaSet) -> dict[str, str]:
    return {s.url: s.state for s in rs.stats()}


def fail(rs: ReplicaSet, url: str, times: int) -> None:
    r = next(r for r in rs.replicas if r.url == url)
    for _ in range(times):
        r.inflight += 1  # as acquire would
        rs.release(r, failure="connect: refused")


# ---- routing ---------------------------------------------------------------------------------


def test_least_outstanding_replica_is_chosen() -> None:
    rs, _ = make()
    a, b, c = rs.replicas
    a.inflight, b.inflight, c.inflight = 2, 0, 1
    assert rs.acquire() is b
    assert b.inflight == 1


def test_ties_are_broken_at_random_with_the_seeded_rng() -> None:
    picks: Counter[str] = Counter()
    rs, _ = make(max_inflight=1)
    for _ in range(300):
        r = rs.acquire()
        picks[r.url] += 1
        rs.release(r, latency_s=0.001)
    assert set(picks) == set(URLS)
    assert min(picks.values()) > 60  # roughly uniform, not always the first
    # the same seed gives the same sequence
    seq = []
    for _ in range(2):
        rs2, _ = make(seed=42)
        order = []
        for _ in range(6):
            r = rs2.acquire()
            order.append(r.url)
            rs2.release(r, latency_s=0.001)
        seq.append(order)
    assert seq[0] == seq[1]


def test_max_inflight_is_never_exceeded() -> None:
    rs, _ = make(max_inflight=2)
    held = [rs.acquire() for _ in range(6)]
    assert Counter(r.url for r in held) == dict.fromkeys(URLS, 2)
    with pytest.raises(UpstreamError) as e:
        rs.acquire(wait_s=0)
    assert e.value.status == 502
    assert e.value.reason == UPSTREAM_UNAVAILABLE
    assert "2 calls in flight" in e.value.message
    rs.release(held[0], latency_s=0.01)
    assert rs.acquire() is held[0]


def test_acquire_skips_excluded_replicas_and_says_why_none_is_left() -> None:
    rs, _ = make(urls=URLS[:2])
    a, b = rs.replicas
    assert rs.acquire(exclude=[a]) is b
    with pytest.raises(UpstreamError) as e:
        rs.acquire(exclude=[a, b])
    assert "no healthy replica" in e.value.message
    assert "failed just now" in e.value.message


# ---- ejection --------------------------------------------------------------------------------


def test_consecutive_failures_eject_and_a_success_resets_the_count() -> None:
    rs, _ = make(failures=3)
    fail(rs, "http://a:1", 2)
    a = rs.replicas[0]
    a.inflight += 1
    rs.release(a, latency_s=0.01)  # success: the run is broken
    fail(rs, "http://a:1", 2)
    assert state(rs)["http://a:1"] == "healthy"
    fail(rs, "http://a:1", 1)
    assert state(rs)["http://a:1"] == "ejected"
    stats = {s.url: s for s in rs.stats()}["http://a:1"]
    assert stats.ejections == 1
    assert stats.errors == 5
    assert stats.ejection_cause == "consecutive_failures"
    assert stats.ejected_for_s == 5.0
    # an ejected replica is never chosen
    for _ in range(20):
        r = rs.acquire()
        assert r.url != "http://a:1"
        rs.release(r, latency_s=0.001)


def test_an_answer_that_is_not_a_failure_resets_the_count() -> None:
    rs, _ = make(failures=2)
    fail(rs, "http://a:1", 1)
    a = rs.replicas[0]
    a.inflight += 1
    rs.release(a)  # a 4xx: the replica answered
    fail(rs, "http://a:1", 1)
    assert state(rs)["http://a:1"] == "healthy"


def test_ejection_time_grows_with_each_ejection_and_is_capped() -> None:
    rs, clock = make(failures=1)  # base 5 s, max 12 s
    durations = []
    for _ in range(4):
        fail(rs, "http://a:1", 1)
        s = {s.url: s for s in rs.stats()}["http://a:1"]
        assert s.state == "ejected"
        assert s.ejected_for_s is not None
        durations.append(s.ejected_for_s)
        clock.now += s.ejected_for_s - 0.001
        assert state(rs)["http://a:1"] == "ejected"  # not a moment early
        clock.now += 0.001
        assert state(rs)["http://a:1"] == "healthy"  # the time passed: back in rotation
    assert durations == [5.0, 10.0, 12.0, 12.0]


def ejected_for(rs: ReplicaSet, url: str) -> float | None:
    return {s.url: s for s in rs.stats()}[url].ejected_for_s


def test_the_multiplier_decays_by_one_per_base_ejection_time_in_rotation() -> None:
    rs, clock = make(failures=1)  # base 5 s, max 12 s
    fail(rs, "http://a:1", 1)
    clock.now += 5.0  # the first ejection (5 s) is over
    assert state(rs)["http://a:1"] == "healthy"  # as acquire, which hands it out again
    fail(rs, "http://a:1", 1)
    assert ejected_for(rs, "http://a:1") == 10.0  # failed again at once: x2
    clock.now += 10.0
    assert rs.stats()[0].ejection_multiplier == 2  # back in rotation (stats expire it)
    clock.now += 4.999  # not quite one base time in rotation: no decay yet
    assert rs.stats()[0].ejection_multiplier == 2
    clock.now += 0.001
    assert rs.stats()[0].ejection_multiplier == 1
    fail(rs, "http://a:1", 1)
    assert ejected_for(rs, "http://a:1") == 10.0  # x2 again, not x3
    clock.now += 10.0 + 2 * 5.0  # over, then two base times in rotation: back to zero
    assert rs.stats()[0].ejection_multiplier == 0
    clock.now += 60.0  # it never goes below zero
    fail(rs, "http://a:1", 1)
    assert ejected_for(rs, "http://a:1") == 5.0  # a first ejection's time again
    assert rs.stats()[0].ejections == 4  # the counter of ejections does not decay


def test_no_decay_while_ejected_and_a_passing_check_starts_it() -> None:
    rs, clock = make()
    a = rs.replicas[0]
    rs.health_result(a, False, "refused")  # ejected until a check passes: multiplier 1
    clock.now += 100.0  # time ejected does not count
    assert rs.stats()[0].ejection_multiplier == 1
    rs.health_result(a, True)
    clock.now += 5.0
    assert rs.stats()[0].ejection_multiplier == 0


def test_a_passing_check_returns_an_ejected_replica_at_once() -> None:
    rs, _ = make(failures=1)
    fail(rs, "http://a:1", 1)
    a = rs.replicas[0]
    assert state(rs)["http://a:1"] == "ejected"
    rs.health_result(a, True)
    assert state(rs)["http://a:1"] == "healthy"
    rs.replicas[1].inflight = rs.replicas[2].inflight = 1
    assert rs.acquire() is a  # used again at once, least loaded


def test_a_failing_check_ejects_until_a_check_passes() -> None:
    rs, clock = make()
    a = rs.replicas[0]
    rs.health_result(a, False, "GET /v1/models: refused")
    s = rs.stats()[0]
    assert (s.state, s.ejection_cause, s.ejected_for_s) == ("ejected", "health_check", None)
    clock.now += 10_000  # no timer returns it
    assert state(rs)["http://a:1"] == "ejected"
    rs.health_result(a, False, "still down")  # a second failure does not count again
    assert rs.stats()[0].ejections == 1
    rs.health_result(a, True)
    assert state(rs)["http://a:1"] == "healthy"


def test_every_replica_ejected_is_unavailable_at_once() -> None:
    rs, _ = make(urls=URLS[:2], failures=1)
    fail(rs, "http://a:1", 1)
    fail(rs, "http://b:2", 1)
    with pytest.raises(UpstreamError) as e:
        rs.acquire(wait_s=30.0)  # no waiting when nothing is healthy
    assert e.value.reason == UPSTREAM_UNAVAILABLE
    assert "ejected" in e.value.message


def test_latency_is_averaged_and_counted() -> None:
    rs, _ = make(urls=URLS[:1])
    for latency in (0.010, 0.020):
        r = rs.acquire()
        rs.release(r, latency_s=latency)
    s = rs.stats()[0]
    assert s.requests == 2
    assert sum(s.latency_buckets) == 2
    assert s.latency_ewma_ms == pytest.approx(12.0)  # 10 + 0.2 * (20 - 10)
    assert s.as_dict()["latency_ms"] == 12.0


# ---- URLs, answers, usage --------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8000", "https://api.example.com", "http://h:1/prefix/"]
)
def test_valid_upstream_urls(url: str) -> None:
    assert check_upstream_url(url) == url.rstrip("/")


@pytest.mark.parametrize(
    "url", ["127.0.0.1:8000", "http://host", "ftp://h:1", "http://h:99999", "http://u:p@h:1",
            "http://h:1/?q=1", "http://:80"],
)  # fmt: skip
def test_invalid_upstream_urls_fail_start_up(url: str) -> None:
    with pytest.raises(ExecutorError, match="invalid upstream URL"):
        check_upstream_url(url)


def test_apportioned_tokens_add_up_exactly() -> None:
    assert apportion(10, [1, 1, 1]) == [4, 3, 3]
    assert apportion(0, [5, 5]) == [0, 0]
    shares = apportion(1000, [3, 70, 12, 40, 1])
    assert sum(shares) == 1000
    assert shares[1] == max(shares)
    assert sum(apportion(7, [10**9, 1, 1])) == 7


def test_decode_reply_orders_by_index_and_reads_base64_or_floats() -> None:
    v0 = np.array([1.0, 2.0], dtype="<f4")
    body = (
        b'{"data":[{"index":1,"embedding":[3.0,4.0]},'
        b'{"index":0,"embedding":"' + base64.b64encode(v0.tobytes()) + b'"}],'
        b'"usage":{"prompt_tokens":9,"total_tokens":9}}'
    )
    vectors, tokens = decode_reply(body, 2)
    assert vectors.dtype == np.float32
    assert tokens == 9
    assert vectors.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    with pytest.raises(ValueError, match="3 inputs"):
        decode_reply(body, 3)
    with pytest.raises(ValueError, match="repeated"):
        decode_reply(b'{"data":[{"index":0,"embedding":[1]},{"index":0,"embedding":[1]}]}', 2)


def test_decode_reply_reads_all_base64_rows_as_one_buffer_and_checks_their_sizes() -> None:
    def body(*rows: bytes) -> bytes:
        data = ",".join(
            f'{{"index":{i},"embedding":"{base64.b64encode(r).decode()}"}}'
            for i, r in reversed(list(enumerate(rows)))
        )
        return f'{{"data":[{data}]}}'.encode()

    v = np.arange(6, dtype="<f4")
    vectors, tokens = decode_reply(body(v[:3].tobytes(), v[3:].tobytes()), 2)
    assert vectors.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert vectors.dtype == np.float32
    assert vectors.flags.writeable  # a copy, not a view of the answer
    assert tokens == 0  # no usage in the answer
    with pytest.raises(ValueError, match="different or empty lengths"):
        decode_reply(body(v[:3].tobytes(), v[:2].tobytes()), 2)
    with pytest.raises(ValueError, match="not float32"):
        decode_reply(body(b"12345"), 1)
    with pytest.raises(ValueError, match="invalid embeddings answer"):
        decode_reply(b'{"data":[{"index":0,"embedding":"not base64!"}]}', 1)


# ---- the executor's run, over a fake client (no sockets) -------------------------------------


class FakeClient:
    """Answers ``apost`` like an OpenAI upstream would: one vector per input, 3 tokens each;
    ``submit`` runs the coroutine to its end on a loop of its own."""

    def __init__(self, body: bytes | None = None) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.body = body

    def submit(self, coro: Coroutine[Any, Any, Any]) -> Future[Any]:
        fut: Future[Any] = Future()
        try:
            fut.set_result(asyncio.run(coro))
        except Exception as e:
            fut.set_exception(e)
        return fut

    async def apost(self, path: str, body: bytes) -> UpstreamReply:
        assert path == "/v1/embeddings"
        doc = json.loads(body)
        self.bodies.append(doc)
        data = [{"index": i, "embedding": [float(len(x)), 1.0]} for i, x in enumerate(doc["input"])]
        payload = (
            self.body
            or json.dumps({"data": data[::-1], "usage": {"prompt_tokens": 3 * len(data)}}).encode()
        )
        return UpstreamReply("http://a:1", 200, payload, 0.004)


def make_executor(client: FakeClient) -> OpenAIEmbeddingsExecutor:
    ex = OpenAIEmbeddingsExecutor("m", ["http://a:1"], "remote-m", UpstreamConfig(max_inflight=3))
    ex.client = client  # type: ignore[assignment]
    return ex


def test_a_batch_is_one_upstream_call_split_back_in_order() -> None:
    client = FakeClient()
    ex = make_executor(client)
    assert ex.instances == 3  # replicas x max_inflight
    out = ex.run(["ab", "abcd", "abcdef"], 1)
    assert client.bodies == [
        {"model": "remote-m", "input": ["ab", "abcd", "abcdef"], "encoding_format": "base64"}
    ]
    assert [v.tolist() for v, _ in out] == [[2.0, 1.0], [4.0, 1.0], [6.0, 1.0]]
    assert all(v.dtype == np.float32 for v, _ in out)
    assert sum(n for _, n in out) == 9  # usage apportioned, the sum exact
    assert ex.dim == 2
    last = ex.last_call(1)
    assert last is not None
    assert last.replica == "http://a:1"
    assert ex.last_call(0) is None


def test_texts_and_token_arrays_go_in_separate_calls() -> None:
    client = FakeClient()
    out = make_executor(client).run(["abc", [1, 2], "d"], 0)
    assert [b["input"] for b in client.bodies] == [["abc", "d"], [[1, 2]]]
    assert [v[0] for v, _ in out] == [3.0, 2.0, 1.0]


def test_an_answer_that_does_not_fit_the_batch_is_an_upstream_error() -> None:
    ex = make_executor(FakeClient(body=b'{"data": [{"index": 0, "embedding": [1.0]}]}'))
    with pytest.raises(UpstreamError) as e:
        ex.run(["a", "b"], 0)
    assert (e.value.status, e.value.reason) == (502, "upstream_error")
    assert "1 embeddings for 2 inputs" in e.value.message
