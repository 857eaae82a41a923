"""Bounds under abuse at the protocol seam: clients that never read, body tricklers, too many
connections, too much body memory, and repeated handler failures (issue 7: 7.3, 7.5, 7.8)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from infergate.engine.config import Limits
from infergate.engine.http import flow
from infergate.engine.http.bounds import ProcessBounds, derived_max_connections
from infergate.engine.http.request import Request
from infergate.engine.http.response import Response
from infergate.engine.http.router import Router
from infergate.engine.logutil import RateLimitedLog
from infergate.engine.stats import HttpCollector
from tests.support.client import assert_json_error, build_request, chunked, metric
from tests.support.fake_transport import Connection

# A client that reads nothing fills the write buffer past this mark with one /blob response.
FLOW = Limits(write_high_water=65536, write_low_water=16384, send_timeout_ms=1000)


class Counting:
    """``GET /blob?N``: an N-byte response; counts how many responses were computed."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, req: Request) -> Response:
        self.calls += 1
        return Response(b"x" * int(req.query or b"300000"), 200, b"application/octet-stream")


def boom(_req: Request) -> Response:
    raise RuntimeError("handler failure injected by the test")


def echo(req: Request) -> Response:
    return Response(req.body, 200, b"application/octet-stream")


@pytest.fixture(autouse=True)
def _fresh_error_log() -> None:
    """Error logs are rate-limited process-wide: start each test with none recently logged."""
    flow.limited_log.reset()


@pytest.fixture
def blob() -> Counting:
    return Counting()


ConnFactory = Callable[..., Connection]


@pytest.fixture
def connect(
    loop: asyncio.AbstractEventLoop, executor: ThreadPoolExecutor, blob: Counting
) -> ConnFactory:
    router = Router()
    router.add(["GET"], "/blob", blob)
    router.add(["GET"], "/boom", boom)
    router.add(["POST"], "/echo", echo)

    def make(limits: Limits = FLOW, bounds: ProcessBounds | None = None) -> Connection:
        return Connection(loop, router, executor, limits, bounds)

    return make


def get(path: str) -> bytes:
    return build_request("GET", path, host="x")


def post(body: bytes, *, length: int | None = None) -> bytes:
    head = build_request("POST", "/echo", host="x", content_length=False)
    n = len(body) if length is None else length
    return head[:-2] + b"Content-Length: %d\r\n\r\n" % n + body


def run_soon(loop: asyncio.AbstractEventLoop) -> None:
    """Run the callbacks scheduled with call_soon / call_soon_threadsafe."""
    loop.run_until_complete(asyncio.sleep(0))


# ---- 7.3: clients that never read ---------------------------------------------------------------


def test_pipelined_requests_wait_while_the_client_reads_nothing(
    connect: ConnFactory, blob: Counting
) -> None:
    c = connect()
    c.transport.peer_reading = False
    c.feed(get("/blob") * 3)
    # The first response filled the write buffer: the other two are not computed.
    assert blob.calls == 1
    assert c.transport.buffered == 300_000 + len(c.responses()[0].raw_head)
    c.transport.peer_reads()
    run_soon(c.loop)
    assert blob.calls == 2
    c.transport.peer_reads()
    run_soon(c.loop)
    assert blob.calls == 3
    c.transport.peer_reads()
    assert [r.status for r in c.responses()] == [200, 200, 200]
    assert c.protocol.inflight == 0
    assert c.transport.reading


def test_held_back_requests_count_against_max_pipelined(
    connect: ConnFactory, blob: Counting
) -> None:
    c = connect(Limits(write_high_water=65536, write_low_water=16384, max_pipelined=3))
    c.transport.peer_reading = False
    c.feed(get("/blob") * 2)
    c.protocol.resume_writing()  # even if the transport resumed, reading stays paused...
    c.transport.writing_paused = True
    c.feed(get("/blob?10") * 2)  # ...because 3 requests are held back
    assert blob.calls == 1
    assert not c.transport.reading


def test_client_reading_nothing_is_cut_at_the_send_timeout(connect: ConnFactory) -> None:
    c = connect()
    c.transport.peer_reading = False
    c.feed(get("/blob"))
    t0 = c.ctx.now
    c.ctx.sweep(t0 + 0.5)
    assert not c.transport.aborted
    c.ctx.sweep(t0 + 1.1)
    assert c.transport.aborted
    c.settle()
    assert c.ctx.stats.slow_readers_cut == 1
    assert c.protocol not in c.ctx.connections
    assert not c.ctx.backlog


def test_a_client_that_reads_slowly_is_not_cut(connect: ConnFactory) -> None:
    c = connect()
    c.transport.peer_reading = False
    c.feed(get("/blob"))
    t0 = c.ctx.now
    for step in range(1, 6):  # reads 40 KB every 0.9 s: slow, but reading
        c.transport.peer_reads(40_000)
        c.ctx.sweep(t0 + 0.9 * step)
        assert not c.transport.aborted
    c.ctx.sweep(t0 + 0.9 * 5 + 1.1)  # then nothing for longer than the send timeout
    assert c.transport.aborted


def test_idle_connection_with_unread_response_does_not_outlive_the_send_timeout(
    connect: ConnFactory,
) -> None:
    # Below the high-water mark, so writing never paused; the idle deadline closes, and the
    # close must not wait for a client that never reads.
    c = connect(Limits(idle_timeout_ms=2000, send_timeout_ms=1000))
    c.transport.peer_reading = False
    c.feed(get("/blob?1000"))
    t0 = c.ctx.now
    c.ctx.sweep(t0 + 2.1)
    assert c.transport.closed
    assert c.protocol in c.ctx.connections  # the close waits for the unsent bytes...
    c.ctx.sweep(t0 + 3.2)
    assert c.transport.aborted  # ...for at most the send timeout
    c.settle()
    assert c.protocol not in c.ctx.connections


def test_total_unsent_bytes_cut_the_connection_holding_the_most(connect: ConnFactory) -> None:
    limits = Limits(write_high_water=65536, write_low_water=16384, max_unsent_bytes=600_000)
    bounds = ProcessBounds(limits)
    a, b = connect(limits, bounds), connect(limits, bounds)
    a.transport.peer_reading = b.transport.peer_reading = False
    a.feed(get("/blob?400000"))
    assert bounds.unsent_bytes > 400_000
    b.feed(get("/blob?250000"))  # the total passes 600 KB: the larger holder goes
    run_soon(a.loop)
    assert a.transport.aborted
    assert not b.transport.aborted
    assert 250_000 < bounds.unsent_bytes < 300_000
    b.transport.peer_reads()
    b.ctx.sweep(b.ctx.now)
    assert bounds.unsent_bytes == 0


# ---- 7.8: body trickle, body memory, connection cap ---------------------------------------------


def test_body_timeout_is_total_not_per_byte(connect: ConnFactory) -> None:
    c = connect(Limits(body_timeout_ms=1000, idle_timeout_ms=60_000))
    c.feed(post(b"a", length=10))
    t0 = c.ctx.now
    for i in range(1, 4):  # one byte every 0.3 s keeps the idle gap small...
        c.ctx.sweep(t0 + 0.3 * i)
        c.feed(b"b")
    assert c.transport.data == b""
    c.ctx.sweep(t0 + 1.01)  # ...but the whole body is late
    c.settle()
    [r] = c.responses()
    assert_json_error(r, 408)
    assert c.transport.eof_written


def test_body_memory_cap_answers_503_with_retry_after(connect: ConnFactory) -> None:
    limits = Limits(max_body_memory_bytes=1000)
    bounds = ProcessBounds(limits)
    a, b = connect(limits, bounds), connect(limits, bounds)
    a.feed(post(b"x" * 100, length=800))  # 800 bytes reserved while the body arrives
    assert bounds.body_bytes == 800
    b.feed(post(b"y" * 300))
    b.settle()
    [r] = b.responses()
    err = assert_json_error(r, 503)
    assert "retry" in err["message"]
    assert r.header("retry-after") == "1"
    assert b.transport.eof_written  # not reading the body: the connection closes
    a.feed(b"x" * 700)
    [ra] = a.responses()
    assert ra.status == 200
    assert bounds.body_bytes == 0  # released when the response was sent
    c = connect(limits, bounds)
    c.feed(post(b"z" * 300))
    assert c.responses()[0].body == b"z" * 300


def test_chunked_body_growth_counts_against_the_body_memory_cap(connect: ConnFactory) -> None:
    limits = Limits(max_body_memory_bytes=1000)
    c = connect(limits)
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    c.feed(head + chunked(b"a" * 600, b"b" * 600))
    c.settle()
    [r] = c.responses()
    assert_json_error(r, 503)


def test_body_memory_is_released_when_the_connection_dies(connect: ConnFactory) -> None:
    limits = Limits(max_body_memory_bytes=1000)
    bounds = ProcessBounds(limits)
    c = connect(limits, bounds)
    c.feed(post(b"x" * 10, length=900))
    assert bounds.body_bytes == 900
    c.transport.abort()
    run_soon(c.loop)
    assert bounds.body_bytes == 0


def test_body_memory_of_pipelined_requests_is_released_per_response(
    connect: ConnFactory,
) -> None:
    limits = Limits(max_body_memory_bytes=1000)
    bounds = ProcessBounds(limits)
    c = connect(limits, bounds)
    c.feed(post(b"x" * 600) + post(b"y" * 600))  # 1200 in one read, but never 1000 at once
    assert [r.body for r in c.responses()] == [b"x" * 600, b"y" * 600]
    assert bounds.body_bytes == 0


def test_connection_cap_refuses_counts_and_logs(
    connect: ConnFactory, caplog: pytest.LogCaptureFixture
) -> None:
    limits = Limits(max_connections=2)
    bounds = ProcessBounds(limits)
    a, _b = connect(limits, bounds), connect(limits, bounds)
    with caplog.at_level(logging.WARNING, "infergate.http"):
        c = connect(limits, bounds)
        d = connect(limits, bounds)
    assert c.transport.aborted
    assert d.transport.aborted
    assert c.transport.writes == []
    assert [r.getMessage() for r in caplog.records if "max_connections" in r.getMessage()] == [
        "refusing new connections: 2 open, limits.max_connections = 2"
    ]  # rate-limited: one line for two refusals
    run_soon(c.loop)
    assert bounds.connections == 2
    registry = CollectorRegistry()
    registry.register(HttpCollector([c.ctx.stats, d.ctx.stats]))
    text = generate_latest(registry).decode()
    assert metric(text, "infergate_connections_refused_total") == 2
    a.transport.close()
    run_soon(a.loop)
    assert not connect(limits, bounds).transport.aborted


def test_max_connections_zero_is_derived_from_the_descriptor_limit() -> None:
    assert derived_max_connections(1024) == 1024 - 128
    assert derived_max_connections(1_048_576) == 1_048_576 - 1024
    assert ProcessBounds(Limits(), nofile=1024).max_connections == 896
    assert ProcessBounds(Limits(max_connections=10), nofile=1024).max_connections == 10


# ---- 7.5 tail: unexpected errors are rate-limited ----------------------------------------------


def test_repeated_handler_failures_log_one_traceback(
    connect: ConnFactory, caplog: pytest.LogCaptureFixture
) -> None:
    c = connect()
    with caplog.at_level(logging.ERROR, "infergate.http"):
        c.feed(get("/boom") * 20)
    assert [r.status for r in c.responses()] == [500] * 20
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is not None


def test_rate_limited_log_counts_what_it_dropped(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    rl = RateLimitedLog(logging.getLogger("test.ratelimit"), 10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "test.ratelimit"):
        assert rl.warning("a", "first %s", "a")
        assert not rl.warning("a", "again")
        assert not rl.warning("a", "again")
        assert rl.warning("b", "other kind")
        now[0] = 10.0
        assert rl.warning("a", "later %d", 3)
    assert [r.getMessage() for r in caplog.records] == [
        "first a",
        "other kind",
        "later 3 (2 more in the 10 s after the previous report)",
    ]


def test_warnings_when_the_descriptor_limit_is_near(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "infergate.http"):
        ProcessBounds(Limits(max_connections=5000), nofile=1024)
        bounds = ProcessBounds(Limits(max_connections=10), nofile=1024)
        opened = [bounds.open_connection() for _ in range(9)]
    assert all(opened)
    messages = [r.getMessage() for r in caplog.records]
    assert any("max_connections = 5000 but the descriptor limit" in m for m in messages)
    assert any(m.startswith("9 connections open: near the cap of 10") for m in messages)
