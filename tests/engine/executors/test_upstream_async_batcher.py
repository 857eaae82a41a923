"""The Batcher with an executor that runs batches on a loop of its own (``RunsAsync``, the
gateway's embeddings and tensor executors): no slot threads; a batch starts on the thread that
finds work and a free slot, finishes in its future's callback, and its slot then takes the
next batch; a window's end is started by the deadline thread."""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from infergate.engine.config import BatchingConfig, ModelConfig
from infergate.engine.executors.base import Executor, Outputs, RunsAsync, UpstreamCall
from infergate.engine.executors.upstream.errors import UPSTREAM_UNAVAILABLE, unavailable
from infergate.engine.scheduler.batcher import Batcher
from infergate.engine.scheduler.queues import SHUTTING_DOWN, InferRequest, Rejection

WAIT_S = 10.0


class FakeAsyncUpstream(Executor):
    """Hands every started batch to the test (``started``), which completes its future."""

    kind = "fake-async"

    def __init__(self, instances: int = 1) -> None:
        super().__init__(instances)
        self.started: queue.Queue[tuple[list[Any], int, Future[Outputs]]] = queue.Queue()
        self.fail_next: Exception | None = None
        self.failing: Exception | None = None
        """Every start raises this (a closed client), while set."""

    def run(self, items: list[Any], slot: int) -> Sequence[Any]:
        raise AssertionError("an async executor's batches never run on a slot thread")

    def run_async(self, items: list[Any], slot: int) -> Future[Outputs]:
        if self.failing is not None:
            raise self.failing
        if self.fail_next is not None:
            e, self.fail_next = self.fail_next, None
            raise e
        fut: Future[Outputs] = Future()
        self.started.put((items, slot, fut))
        return fut

    def last_call(self, slot: int) -> UpstreamCall | None:
        return UpstreamCall(f"http://replica:{slot}", 0.002)

    def next_started(self) -> tuple[list[Any], int, Future[Outputs]]:
        return self.started.get(timeout=WAIT_S)


def make(ex: FakeAsyncUpstream, batching: BatchingConfig) -> Batcher:
    b = Batcher(ModelConfig(name="m", executor="openai", batching=batching), ex)
    b.start()
    return b


def request(items: list[Any], done: threading.Event) -> InferRequest:
    return InferRequest(items, ("k",), 1, lambda r: done.set())


def complete_elsewhere(fut: Future[Outputs], outputs: list[Any]) -> None:
    """Complete ``fut`` on another thread, as the executor's loop does."""
    t = threading.Thread(target=fut.set_result, args=(outputs,))
    t.start()
    t.join(WAIT_S)


def test_a_busy_slot_holds_the_next_batch_until_its_future_is_done() -> None:
    ex = FakeAsyncUpstream(instances=1)
    assert isinstance(ex, RunsAsync)
    b = make(ex, BatchingConfig(policy="off"))
    try:
        assert not [t for t in threading.enumerate() if t.name.startswith("exec-m-")]
        done_a, done_b = threading.Event(), threading.Event()
        a, second = request(["a"], done_a), request(["b1", "b2"], done_b)
        b.submit(a)
        items, slot, fut_a = ex.next_started()  # started by submit itself
        assert (items, slot) == (["a"], 0)
        b.submit(second)
        assert ex.started.empty()  # the only slot is busy: b waits in the queue
        assert b.snapshot_depths() == [1, 0]
        complete_elsewhere(fut_a, ["A"])
        assert done_a.wait(WAIT_S)
        assert (a.error, a.outputs, a.upstream) == (
            None,
            ["A"],
            UpstreamCall("http://replica:0", 0.002),
        )
        items, slot, fut_b = ex.next_started()  # the freed slot took it at once
        assert (items, slot) == (["b1", "b2"], 0)
        assert not done_b.is_set()
        complete_elsewhere(fut_b, ["B1", "B2"])
        assert done_b.wait(WAIT_S)
        assert second.outputs == ["B1", "B2"]
        assert b.stats.batches == 2
    finally:
        b.close()


def test_an_adaptive_batch_takes_what_queued_while_every_slot_was_busy() -> None:
    ex = FakeAsyncUpstream(instances=1)
    b = make(ex, BatchingConfig(policy="adaptive", max_batch_size=8))
    try:
        events = [threading.Event() for _ in range(4)]
        reqs = [request([i], e) for i, e in enumerate(events)]
        b.submit(reqs[0])
        _, _, first = ex.next_started()
        for r in reqs[1:]:
            b.submit(r)
        complete_elsewhere(first, ["r0"])
        items, _, merged = ex.next_started()
        assert items == [1, 2, 3]  # one upstream call for the three queued requests
        complete_elsewhere(merged, ["r1", "r2", "r3"])
        for e in events:
            assert e.wait(WAIT_S)
        assert [r.outputs for r in reqs] == [["r0"], ["r1"], ["r2"], ["r3"]]
        assert all(r.batch_requests == 3 for r in reqs[1:])
    finally:
        b.close()


def test_a_window_is_closed_by_the_deadline_thread() -> None:
    """Nothing else arrives: the batch must still start when its window ends, with no slot
    thread waiting for it."""
    ex = FakeAsyncUpstream(instances=2)
    b = make(ex, BatchingConfig(policy="window", max_batch_size=8, max_queue_delay_us=20_000))
    try:
        done = threading.Event()
        b.submit(request(["w"], done))
        items, _, fut = ex.next_started()
        assert items == ["w"]
        complete_elsewhere(fut, ["W"])
        assert done.wait(WAIT_S)
    finally:
        b.close()


def test_a_start_that_raises_fails_its_batch_and_returns_the_slot() -> None:
    ex = FakeAsyncUpstream(instances=1)
    b = make(ex, BatchingConfig(policy="off"))
    try:
        ex.fail_next = unavailable("no healthy replica: http://r:1 ejected")
        done_a, done_b = threading.Event(), threading.Event()
        a = request(["a"], done_a)
        b.submit(a)
        assert done_a.wait(WAIT_S)
        assert a.error is not None
        assert (a.error.status, a.error.reason) == (502, UPSTREAM_UNAVAILABLE)
        second = request(["b"], done_b)
        b.submit(second)
        _, slot, fut = ex.next_started()
        assert slot == 0
        complete_elsewhere(fut, ["B"])
        assert done_b.wait(WAIT_S)
        assert second.error is None
    finally:
        b.close()


def test_a_thousand_starts_that_fail_at_once_fail_in_a_loop_not_by_recursion() -> None:
    ex = FakeAsyncUpstream(instances=1)
    b = make(ex, BatchingConfig(policy="off"))
    try:
        first = request(["a"], threading.Event())
        b.submit(first)
        _, _, fut = ex.next_started()
        done = threading.Semaphore(0)
        queued = [InferRequest([i], ("k",), 1, lambda r: done.release()) for i in range(1000)]
        for r in queued:
            b.submit(r)
        ex.failing = unavailable("model m: the upstream client is not running")
        complete_elsewhere(fut, ["A"])  # its slot now starts (and fails) every queued batch
        for _ in queued:
            assert done.acquire(timeout=WAIT_S)
        assert {(r.error.status, r.error.reason) for r in queued if r.error} == {
            (502, UPSTREAM_UNAVAILABLE)
        }
        assert all(r.error is not None for r in queued)
    finally:
        b.close()


def test_a_batch_running_at_close_is_delivered() -> None:
    ex = FakeAsyncUpstream(instances=1)
    b = make(ex, BatchingConfig(policy="off"))
    done = threading.Event()
    req = request(["a"], done)
    b.submit(req)
    _, _, fut = ex.next_started()
    closer = threading.Thread(target=b.close)
    closer.start()
    fut.set_result(["A"])
    closer.join(WAIT_S)
    assert not closer.is_alive()
    assert done.is_set()
    assert req.outputs == ["A"]


def test_a_cancelled_call_answers_its_requests_503_shutting_down() -> None:
    ex = FakeAsyncUpstream(instances=1)
    b = make(ex, BatchingConfig(policy="off"))
    try:
        done = threading.Event()
        req = request(["a"], done)
        b.submit(req)
        _, _, fut = ex.next_started()
        assert fut.cancel()  # what a stopping reactor does to a call it gives up
        assert done.wait(WAIT_S)
        assert isinstance(req.error, Rejection)
        assert (req.error.status, req.error.reason) == (503, SHUTTING_DOWN)
        assert req.error.retry_after == 1.0
    finally:
        b.close()
