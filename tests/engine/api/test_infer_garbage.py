"""``infer`` leaves no cyclic garbage behind a request: each cycle per request made the cyclic
collector 5% of the front end's profile (docs/benchmarks.md, "The inference front end")."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable
from typing import cast

from infergate.engine.api.common import infer, infer_then
from infergate.engine.http.request import Request
from infergate.engine.http.response import Response
from infergate.engine.scheduler.batcher import Batcher
from infergate.engine.scheduler.queues import InferRequest, Rejection


class DeliverOnTheLoop:
    """Answers every request at once, on its loop, as the batcher's delivery does."""

    name = "fake"

    def submit(self, ireq: InferRequest) -> None:
        ireq.outputs = [b"vector" for _ in ireq.items]
        ireq.done = ireq.n
        assert ireq.loop is not None
        ireq.loop.call_soon(ireq.deliver, ireq)

    def cancel(self, _ireq: InferRequest) -> bool:
        return False


async def answer(n: int) -> None:
    batcher = cast(Batcher, DeliverOnTheLoop())
    for i in range(n):
        req = Request("POST", b"/v", "/v", b"", "1.1", [], b"{}", True, None)
        done = await infer(req, batcher, [f"text {i}"], "sim", 1, None)
        assert done.outputs == [b"vector"]
        assert req.notes is not None
        assert req.notes["items"] == 1


def leaked_by(run: Callable[[int], Awaitable[None]]) -> list[object]:
    """The futures and requests that ``run(50)`` left as cyclic garbage (only those: other
    threads of the suite may make garbage meanwhile)."""
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(run(1))  # imports and first-call caches
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)  # keep what a collection finds, to look at it
        try:
            loop.run_until_complete(run(50))
            gc.collect()
            return [o for o in gc.garbage if isinstance(o, InferRequest | asyncio.Future)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    finally:
        loop.close()


def test_an_answered_request_leaves_no_cyclic_garbage() -> None:
    # before: one future and one request per request, in a cycle through the deliver closure
    assert leaked_by(answer) == []


async def answer_then(n: int) -> None:
    batcher = cast(Batcher, DeliverOnTheLoop())
    for i in range(n):
        req = Request("POST", b"/v", "/v", b"", "1.1", [], b"{}", True, None)
        fut = infer_then(req, batcher, [f"text {i}"], "sim", 1, None, _ok, _refused)
        resp = await fut
        assert resp.body == b"vector"
        assert req.notes is not None
        assert req.notes["items"] == 1


def _ok(done: InferRequest) -> Response:
    return Response(done.outputs[0])


def _refused(e: Rejection) -> Response:
    return Response(e.reason.encode(), e.status)


def test_an_answered_request_without_a_task_leaves_no_cyclic_garbage() -> None:
    assert leaked_by(answer_then) == []
