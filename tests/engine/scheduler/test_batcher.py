"""The Batcher with the simulated executor: results, merging, splitting, errors, control."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest

from infergate.engine.config import BatchingConfig, LevelConfig, ModelConfig, PrioritiesConfig
from infergate.engine.executors.base import Executor
from infergate.engine.executors.sim import SimExecutor, sim_vector
from infergate.engine.scheduler.batcher import Batcher
from infergate.engine.scheduler.queues import InferRequest, Rejection


class Gate(Executor):
    """Blocks every batch until the test opens the gate; records batch sizes."""

    kind = "gate"

    def __init__(self, instances: int = 1, fail: bool = False) -> None:
        super().__init__(instances)
        self.open = threading.Event()
        self.started = threading.Semaphore(0)
        self.batches: list[list[Any]] = []
        self.fail = fail

    def run(self, items: list[Any], slot: int) -> Sequence[Any]:
        self.batches.append(list(items))
        self.started.release()
        assert self.open.wait(10)
        if self.fail:
            raise RuntimeError("injected failure")
        return [x * 10 for x in items]


class Waiter:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.req: InferRequest | None = None

    def __call__(self, req: InferRequest) -> None:
        self.req = req
        self.done.set()

    def result(self) -> InferRequest:
        assert self.done.wait(10), "request never finished"
        assert self.req is not None
        return self.req


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def poke(b: Batcher) -> None:
    """Wake the deadline thread after the fake clock moved (a real clock needs no poke)."""
    with b._cond:
        b._timer.notify()


def submit(b: Batcher, items: list[Any], level: int = 1, key: str = "k") -> Waiter:
    w = Waiter()
    b.submit(InferRequest(items, key, level, w))
    return w


@pytest.fixture
def make() -> Iterator[Any]:
    made: list[tuple[Batcher, Executor]] = []

    def factory(executor: Executor, **kw: Any) -> Batcher:
        clock = kw.pop("clock", time.monotonic)
        cfg = ModelConfig(name="m", **kw)
        b = Batcher(cfg, executor, clock)
        b.start()
        made.append((b, executor))
        return b

    yield factory
    for b, ex in made:
        if isinstance(ex, Gate):
            ex.open.set()
        b.close()


def test_sim_embeddings_are_deterministic_unit_vectors(make: Any) -> None:
    b = make(SimExecutor(1, "embeddings", 16, 0, 0))
    r = submit(b, ["a", "b", "a"]).result()
    assert r.error is None
    out = np.stack([vec for vec, _ in r.outputs])
    assert [n for _, n in r.outputs] == [1, 1, 1]
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0)
    assert np.array_equal(out[0], out[2])
    assert np.array_equal(out[1], sim_vector("b", 16))


def test_requests_queued_while_the_slot_is_busy_merge_into_one_batch(make: Any) -> None:
    gate = Gate()
    b = make(gate, batching=BatchingConfig(policy="adaptive", max_batch_size=8))
    first = submit(b, [1])
    assert gate.started.acquire(timeout=10)  # the slot is now busy with [1]
    waiters = [submit(b, [i, i + 100]) for i in range(2, 5)]
    gate.open.set()
    assert first.result().outputs == [10]
    for i, w in enumerate(waiters, start=2):
        r = w.result()
        assert r.outputs == [i * 10, (i + 100) * 10]
        assert (r.batch_items, r.batch_requests) == (6, 3)
    assert gate.batches == [[1], [2, 102, 3, 103, 4, 104]]


def test_off_policy_never_merges(make: Any) -> None:
    gate = Gate()
    b = make(gate, batching=BatchingConfig(policy="off", max_batch_size=8))
    submit(b, [0])
    assert gate.started.acquire(timeout=10)
    waiters = [submit(b, [i]) for i in range(1, 4)]
    gate.open.set()
    for w in waiters:
        assert w.result().batch_requests == 1
    assert gate.batches == [[0], [1], [2], [3]]


def test_request_larger_than_max_batch_is_split_and_reassembled_in_order(make: Any) -> None:
    gate = Gate()
    gate.open.set()
    b = make(gate, batching=BatchingConfig(policy="adaptive", max_batch_size=4))
    r = submit(b, list(range(10))).result()
    assert r.error is None
    assert r.outputs == [i * 10 for i in range(10)]
    assert [len(x) for x in gate.batches] == [4, 4, 2]


def test_executor_error_fails_every_request_of_the_batch(make: Any) -> None:
    gate = Gate(fail=True)
    b = make(gate, batching=BatchingConfig(policy="adaptive", max_batch_size=8))
    first = submit(b, [1])
    assert gate.started.acquire(timeout=10)
    others = [submit(b, [2]), submit(b, [3])]
    gate.open.set()
    for w in [first, *others]:
        err = w.result().error
        assert err is not None
        assert (err.status, err.reason) == (500, "executor_error")
        assert "injected failure" in err.message


def test_deadline_expires_while_every_slot_is_busy(make: Any) -> None:
    gate = Gate()
    prios = PrioritiesConfig(levels=1, queue=[LevelConfig(timeout_us=20_000)])
    b = make(gate, priorities=prios)
    submit(b, [1])
    assert gate.started.acquire(timeout=10)
    late = submit(b, [2])
    err = late.result().error  # the gate is still closed: the slot never freed
    assert err is not None
    assert (err.status, err.reason) == (504, "deadline_exceeded")
    assert b.stats.rejected["deadline_exceeded"] == 1


def test_queue_full_is_429_with_retry_after(make: Any) -> None:
    gate = Gate()
    prios = PrioritiesConfig(levels=1, queue=[LevelConfig(max_queue_size=2)])
    b = make(gate, priorities=prios)
    submit(b, [0])
    assert gate.started.acquire(timeout=10)
    submit(b, [1])
    submit(b, [2])
    with pytest.raises(Rejection) as e:
        submit(b, [3])
    assert (e.value.status, e.value.reason) == (429, "queue_full")
    assert e.value.retry_after is not None
    assert e.value.retry_after >= 1


def test_cancel_removes_a_queued_request(make: Any) -> None:
    gate = Gate()
    b = make(gate)
    submit(b, [0])
    assert gate.started.acquire(timeout=10)
    w = Waiter()
    r = InferRequest([1], "k", 1, w)
    b.submit(r)
    assert b.cancel(r)
    after = submit(b, [2])  # FIFO: it runs after where the cancelled one was
    gate.open.set()
    assert after.result().error is None
    assert not w.done.is_set()  # the cancelled request never ran nor was delivered
    assert gate.batches == [[0], [2]]
    assert b.snapshot_depths() == [0, 0]


def test_set_batching_applies_to_the_next_batch(make: Any) -> None:
    gate = Gate()
    b = make(gate, batching=BatchingConfig(policy="adaptive", max_batch_size=8))
    submit(b, [0])
    assert gate.started.acquire(timeout=10)
    waiters = [submit(b, [i]) for i in range(1, 5)]
    old = b.set_batching(BatchingConfig(policy="adaptive", max_batch_size=2))
    assert old.max_batch_size == 8
    gate.open.set()
    for w in waiters:
        assert w.result().error is None
    assert [len(x) for x in gate.batches] == [1, 2, 2]
    assert b.stats.config_changes == 1


def test_max_queue_size_holds_under_a_concurrent_burst(make: Any) -> None:
    gate = Gate()
    prios = PrioritiesConfig(levels=1, queue=[LevelConfig(max_queue_size=10)])
    b = make(gate, priorities=prios)
    submit(b, [0])
    assert gate.started.acquire(timeout=10)  # the slot is busy: everything else queues
    accepted: list[Waiter] = []
    rejected = []
    lock = threading.Lock()
    start = threading.Barrier(16)

    def burst() -> None:
        start.wait()
        for i in range(20):
            try:
                w = submit(b, [i])
                with lock:
                    accepted.append(w)
            except Rejection as e:
                with lock:
                    rejected.append(e.reason)

    threads = [threading.Thread(target=burst) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert b.snapshot_depths() == [10]
    assert len(accepted) == 10
    assert len(rejected) == 16 * 20 - 10
    assert set(rejected) == {"queue_full"}
    gate.open.set()
    for w in accepted:
        assert w.result().error is None


def test_close_sheds_queued_work_and_waits_only_for_the_running_batch(make: Any) -> None:
    gate = Gate()
    b = make(gate)
    running = submit(b, [0])
    assert gate.started.acquire(timeout=10)
    waiters = [submit(b, [i]) for i in range(1, 4)]
    closer = threading.Thread(target=b.close, kwargs={"timeout": 10})
    closer.start()
    for w in waiters:  # answered while the batch still runs: close does not compute them
        err = w.result().error
        assert err is not None
        assert (err.status, err.reason) == (503, "shutting_down")
    gate.open.set()
    assert running.result().error is None
    closer.join(10)
    assert not closer.is_alive()
    assert gate.batches == [[0]]
    assert not any(t.is_alive() for t in b._threads)


def test_shed_queued_answers_503_for_queued_work_and_unstarted_parts(make: Any) -> None:
    gate = Gate()
    b = make(gate, batching=BatchingConfig(policy="adaptive", max_batch_size=2))
    split = submit(b, [1, 2, 3])  # [1, 2] runs, [3] is queued
    assert gate.started.acquire(timeout=10)
    queued = submit(b, [4])
    assert b.shed_queued() == 2
    for w in (split, queued):
        err = w.result().error
        assert err is not None
        assert (err.status, err.reason) == (503, "shutting_down")
    with pytest.raises(Rejection) as e:
        submit(b, [5])
    assert (e.value.status, e.value.reason) == (503, "shutting_down")
    assert b.snapshot_depths() == [0, 0]
    gate.open.set()
    b.close(timeout=10)
    assert gate.batches == [[1, 2]]  # the running batch finished; nothing else ran
    assert b.stats.rejected["shutting_down"] == 3


def test_a_split_request_interleaves_with_requests_queued_behind_it(make: Any) -> None:
    gate = Gate()
    b = make(gate, batching=BatchingConfig(policy="adaptive", max_batch_size=2))
    first = submit(b, [0])
    assert gate.started.acquire(timeout=10)  # the slot is busy: the rest queues
    big = submit(b, [1, 2, 3, 4, 5, 6])
    small = [submit(b, [100]), submit(b, [101])]
    gate.open.set()
    for w in (first, big, *small):
        assert w.result().error is None
    assert big.result().outputs == [10, 20, 30, 40, 50, 60]
    # every queued request gets a share of each batch: the small ones ride the first two
    # batches beside the big one's parts, then the big one's rest fills whole batches
    assert gate.batches == [[0], [1, 100], [101, 2], [3, 4], [5, 6]]


def test_a_deadline_drops_the_unstarted_parts_of_a_split_request(make: Any) -> None:
    clock = FakeClock()
    gate = Gate()
    prios = PrioritiesConfig(levels=1, queue=[LevelConfig(timeout_us=1_000_000)])
    batching = BatchingConfig(policy="adaptive", max_batch_size=2)
    b = make(gate, clock=clock, batching=batching, priorities=prios)
    big = submit(b, [1, 2, 3, 4])
    assert gate.started.acquire(timeout=10)  # [1, 2] runs
    clock.now = 2.0  # the 1 s deadline passes while the first part runs
    poke(b)
    err = big.result().error  # answered without waiting for the running part
    assert err is not None
    assert (err.status, err.reason) == (504, "deadline_exceeded")
    gate.open.set()
    after = submit(b, [9])
    assert after.result().error is None
    assert gate.batches == [[1, 2], [9]]
    assert b.stats.rejected["deadline_exceeded"] == 1


def test_cancel_drops_the_unstarted_parts_of_a_running_request(make: Any) -> None:
    gate = Gate()
    b = make(gate, batching=BatchingConfig(policy="adaptive", max_batch_size=2))
    w = Waiter()
    r = InferRequest([1, 2, 3, 4, 5, 6], "k", 1, w)
    b.submit(r)
    assert gate.started.acquire(timeout=10)  # [1, 2] runs
    assert b.cancel(r)
    assert r.finished
    assert b.snapshot_depths() == [0, 0]
    gate.open.set()
    after = submit(b, [9])
    assert after.result().error is None
    assert gate.batches == [[1, 2], [9]]
    assert not w.done.is_set()  # the caller answers a cancelled request, not the batcher
    assert b.stats.rejected["client_disconnected"] == 1
    assert not b.cancel(r)  # already finished


def test_cancel_of_a_request_whose_parts_all_started_lets_it_complete(make: Any) -> None:
    gate = Gate()
    b = make(gate, batching=BatchingConfig(policy="adaptive", max_batch_size=4))
    w = Waiter()
    r = InferRequest([1, 2], "k", 1, w)
    b.submit(r)
    assert gate.started.acquire(timeout=10)
    assert not b.cancel(r)
    gate.open.set()
    assert w.result().outputs == [10, 20]


def test_a_huge_client_timeout_does_not_stop_deadlines(make: Any) -> None:
    gate = Gate()
    prios = PrioritiesConfig(levels=1, queue=[LevelConfig(timeout_us=0)])
    b = make(gate, priorities=prios)
    submit(b, [0])
    assert gate.started.acquire(timeout=10)
    far = Waiter()
    b.submit(InferRequest([1], "k", 1, far, timeout_s=1e11))  # beyond threading.TIMEOUT_MAX
    near = Waiter()
    b.submit(InferRequest([2], "k", 1, near, timeout_s=0.01))
    err = near.result().error
    assert err is not None
    assert err.reason == "deadline_exceeded"
