"""``infer_then``: an anonymous request's wait for its outputs as a future, with no task.

Queued in one callback per loop turn (the batches' size depends on it: docs/benchmarks.md,
"The inference front end"), refused, cancelled and abandoned as ``infer`` does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import cast

import pytest

from infergate.engine.api.common import infer_then
from infergate.engine.http.request import Request
from infergate.engine.http.response import Response
from infergate.engine.scheduler.batcher import Batcher
from infergate.engine.scheduler.queues import CANCELLED, InferRequest, Rejection


class FakeBatcher:
    """Records submits; answers on the loop unless told to hold or refuse."""

    name = "fake"

    def __init__(self, hold: bool = False, refuse: bool = False) -> None:
        self.hold = hold
        self.refuse = refuse
        self.submitted: list[InferRequest] = []
        self.cancelled: list[InferRequest] = []

    def submit(self, ireq: InferRequest) -> None:
        if self.refuse:
            raise Rejection(429, "queue_full", "the queue is full")
        self.submitted.append(ireq)
        if not self.hold:
            ireq.outputs = [x.encode() for x in ireq.items]
            ireq.done = ireq.n
            assert ireq.loop is not None
            ireq.loop.call_soon(ireq.deliver, ireq)

    def cancel(self, ireq: InferRequest) -> bool:
        self.cancelled.append(ireq)
        return ireq in self.submitted


class FakeConn:
    def __init__(self) -> None:
        self.eof: set[Callable[[], None]] = set()

    def on_client_eof(self, cb: Callable[[], None]) -> None:
        self.eof.add(cb)

    def discard_client_eof(self, cb: Callable[[], None]) -> None:
        self.eof.discard(cb)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def request(conn: FakeConn | None = None) -> Request:
    return Request("POST", b"/v", "/v", b"", "1.1", [], b"{}", True, conn)


def ok(done: InferRequest) -> Response:
    return Response(b",".join(done.outputs))


def refused(e: Rejection) -> Response:
    return Response(e.reason.encode(), e.status)


def start(
    loop: asyncio.AbstractEventLoop, batcher: FakeBatcher, req: Request, text: str
) -> asyncio.Future[Response]:
    async def call() -> asyncio.Future[Response]:
        return infer_then(req, cast(Batcher, batcher), [text], "k", 1, None, ok, refused)

    return loop.run_until_complete(call())


def test_requests_of_one_turn_are_queued_together_in_the_next_callback(
    loop: asyncio.AbstractEventLoop,
) -> None:
    batcher = FakeBatcher()
    seen: list[int] = []

    async def three() -> list[Response]:
        futs = [
            infer_then(request(), cast(Batcher, batcher), [t], "k", 1, None, ok, refused)
            for t in ("a", "b", "c")
        ]
        assert batcher.submitted == []  # not from inside the handler
        asyncio.get_running_loop().call_soon(lambda: seen.append(len(batcher.submitted)))
        return list(await asyncio.gather(*futs))

    answers = loop.run_until_complete(three())
    assert seen == [3]  # all three queued by the one callback scheduled before this one
    assert [r.body for r in answers] == [b"a", b"b", b"c"]
    assert [r.items for r in batcher.submitted] == [["a"], ["b"], ["c"]]


def test_answered_request_notes_what_the_access_log_needs(
    loop: asyncio.AbstractEventLoop,
) -> None:
    req = request()
    fut = start(loop, FakeBatcher(), req, "x")
    assert loop.run_until_complete(fut).body == b"x"
    assert req.notes is not None
    assert req.notes["model"] == "fake"
    assert req.notes["items"] == 1
    assert "error" not in req.notes


def test_a_refused_request_is_answered_by_fail(loop: asyncio.AbstractEventLoop) -> None:
    fut = start(loop, FakeBatcher(refuse=True), request(), "x")
    resp = loop.run_until_complete(fut)
    assert (resp.status, resp.body) == (429, b"queue_full")


def test_a_connection_lost_before_the_turn_never_queues(loop: asyncio.AbstractEventLoop) -> None:
    batcher = FakeBatcher()

    async def lost() -> None:
        fut = infer_then(request(), cast(Batcher, batcher), ["x"], "k", 1, None, ok, refused)
        fut.cancel()  # what the protocol does when the connection is lost
        for _ in range(3):
            await asyncio.sleep(0)

    loop.run_until_complete(lost())
    assert batcher.submitted == []


def test_a_connection_lost_while_queued_leaves_the_queue(loop: asyncio.AbstractEventLoop) -> None:
    batcher = FakeBatcher(hold=True)
    conn = FakeConn()
    fut = start(loop, batcher, request(conn), "x")
    loop.run_until_complete(asyncio.sleep(0))
    assert len(batcher.submitted) == 1
    assert conn.eof  # watching for the client's FIN while queued
    fut.cancel()
    loop.run_until_complete(asyncio.sleep(0))
    assert batcher.cancelled == batcher.submitted
    assert not conn.eof


def test_a_client_fin_while_queued_is_499_and_leaves_the_queue(
    loop: asyncio.AbstractEventLoop,
) -> None:
    batcher = FakeBatcher(hold=True)
    conn = FakeConn()
    req = request(conn)
    fut = start(loop, batcher, req, "x")
    loop.run_until_complete(asyncio.sleep(0))
    [gone] = conn.eof
    gone()  # the protocol's eof_received
    resp = loop.run_until_complete(fut)
    assert (resp.status, resp.body) == (499, CANCELLED.encode())
    assert batcher.cancelled == batcher.submitted
    assert req.notes is not None
    assert req.notes["error"] == CANCELLED
    assert not conn.eof
