"""Gateway executors behind the Batcher, without sockets: an upstream failure keeps its status
and reason, the batch's requests carry the replica and upstream time, and a generate Relay's
events cross from a producer loop to a consumer loop in order, bounded by credits."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import pytest

from infergate.engine.config import ModelConfig
from infergate.engine.executors.base import Executor, UpstreamCall
from infergate.engine.executors.upstream.errors import UPSTREAM_TIMEOUT, UpstreamError, timeout
from infergate.engine.executors.upstream.relay import CREDITS, End, Head, Relay, RelayClosed
from infergate.engine.scheduler.batcher import Batcher
from infergate.engine.scheduler.queues import InferRequest

WAIT_S = 10.0


class FakeUpstream(Executor):
    """Fails with ``error`` when set, else echoes and remembers a call per slot."""

    kind = "fake-upstream"

    def __init__(self, error: UpstreamError | None = None) -> None:
        super().__init__(1)
        self.error = error

    def run(self, items: list[Any], slot: int) -> Sequence[Any]:
        if self.error is not None:
            raise self.error
        return list(items)

    def last_call(self, slot: int) -> UpstreamCall | None:
        return UpstreamCall("http://replica:1", 0.0125)


def run_one(executor: Executor, items: list[Any]) -> InferRequest:
    b = Batcher(ModelConfig(name="m", executor="openai"), executor)
    b.start()
    done = threading.Event()
    req = InferRequest(items, ("k",), 1, lambda r: done.set())
    try:
        b.submit(req)
        assert done.wait(WAIT_S)
    finally:
        b.close()
    return req


def test_an_upstream_error_keeps_its_status_and_reason() -> None:
    req = run_one(FakeUpstream(timeout("replica http://r:1 did not answer", "http://r:1")), [1])
    assert isinstance(req.error, UpstreamError)
    assert req.error.status == 504
    assert req.error.reason == UPSTREAM_TIMEOUT
    assert req.error.message == "replica http://r:1 did not answer"
    assert req.upstream is None


def test_the_batch_requests_carry_the_replica_and_upstream_time() -> None:
    req = run_one(FakeUpstream(), [1, 2])
    assert req.error is None
    assert req.outputs == [1, 2]
    assert req.upstream == UpstreamCall("http://replica:1", 0.0125)


def test_relay_events_cross_loops_in_order_and_credits_bound_them() -> None:
    """The producer loop (the model's upstream loop) sends more chunks than there are
    credits; it blocks until the consumer (the client's reactor) takes some; every chunk
    arrives once, in order, then the End."""
    producer = asyncio.new_event_loop()
    thread = threading.Thread(target=producer.run_forever, daemon=True)
    thread.start()
    try:

        async def consume() -> list[Any]:
            relay = Relay("/v1/chat/completions", {}, 1, True)
            sent = threading.Event()

            async def produce() -> int:
                relay.open()
                relay.emit(Head(200, b"text/event-stream", "http://r:1"))
                n = 0
                for i in range(CREDITS):
                    await relay.send(b"%d" % i, WAIT_S)
                    n += 1
                sent.set()  # every credit spent: the next send must wait for the consumer
                await relay.send(b"last", WAIT_S)
                return n + 1

            fut = asyncio.run_coroutine_threadsafe(produce(), producer)
            assert await asyncio.to_thread(sent.wait, WAIT_S)
            assert not fut.done()
            got: list[Any] = [await relay.next()]  # the Head
            for _ in range(CREDITS + 1):
                got.append(await relay.next())
            assert await asyncio.wrap_future(fut) == CREDITS + 1
            relay.end(None)
            got.append(await relay.next())
            return got

        got = asyncio.run(consume())
    finally:
        producer.call_soon_threadsafe(producer.stop)
        thread.join(WAIT_S)
        producer.close()
    assert got[0] == Head(200, b"text/event-stream", "http://r:1")
    assert got[1:-1] == [b"%d" % i for i in range(CREDITS)] + [b"last"]
    assert got[-1] == End(None)


def test_a_relay_whose_client_takes_nothing_gives_up() -> None:
    async def stalled() -> None:
        relay = Relay("/v1/completions", {}, 1, True)
        relay.open()
        for i in range(CREDITS):
            await relay.send(b"%d" % i, WAIT_S)
        with pytest.raises(RelayClosed, match="took no chunk"):
            await relay.send(b"one too many", 0.01)

    asyncio.run(stalled())


def test_cancel_before_the_call_starts_is_seen_by_attach() -> None:
    async def scenario() -> None:
        relay = Relay("/v1/completions", {}, 1, True)
        relay.cancel()
        assert relay.cancelled
        fut: Future[None] = Future()
        assert relay.attach(fut) is False  # the slot thread then cancels its upstream task

    asyncio.run(scenario())
