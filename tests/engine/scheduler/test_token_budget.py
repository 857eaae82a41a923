"""Token-budget batching: the pure planner, the queues' ``take_tokens``, and the Batcher."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infergate.engine.config import BatchingConfig, LevelConfig, ModelConfig, PrioritiesConfig
from infergate.engine.executors.base import Executor
from infergate.engine.scheduler.batcher import Batcher
from infergate.engine.scheduler.policy import SIMILAR, Candidate, plan_token_batch
from infergate.engine.scheduler.queues import InferRequest, PriorityQueues


def cands(*lengths: Sequence[int], level: int = 1) -> list[Candidate]:
    return [Candidate(level, list(x), 0) for x in lengths]


# ---- the planner (pure) ----------------------------------------------------------------------


def test_short_head_takes_similar_lengths_and_leaves_long_ones() -> None:
    plan = plan_token_batch(cands([10], [250], [12], [250], [9], [16]), 32, 8192)
    assert plan == [(0, 1), (2, 1), (4, 1), (5, 1)]


def test_long_head_takes_long_ones_and_leaves_short_ones() -> None:
    plan = plan_token_batch(cands([240], [12], [250], [10], [200]), 32, 8192)
    assert plan == [(0, 1), (2, 1), (4, 1)]


def test_budget_bounds_rows_times_longest() -> None:
    # 40 queries of 10 tokens; budget 320 -> 32 rows at 10 tokens
    plan = plan_token_batch(cands(*[[10]] * 40), 64, 320)
    assert sum(k for _, k in plan) == 32
    # max_items still applies
    assert sum(k for _, k in plan_token_batch(cands(*[[10]] * 40), 8, 320)) == 8


def test_an_input_longer_than_the_budget_runs_alone() -> None:
    assert plan_token_batch(cands([600], [600], [10]), 32, 512) == [(0, 1)]
    # and a head that fits exactly still gets no company beyond the budget
    assert plan_token_batch(cands([512], [512]), 32, 512) == [(0, 1)]


def test_a_split_request_takes_what_fits() -> None:
    plan = plan_token_batch([Candidate(1, [10] * 100, 40)], 32, 320)
    assert plan == [(0, 32)]
    # a growing prefix stops where the next item would break the budget
    assert plan_token_batch(cands([10, 10, 10, 100, 10]), 32, 60) == [(0, 3)]


def test_head_level_first_then_lower_levels() -> None:
    level1 = cands([10], [30], level=1)
    level2 = cands([10], level=2)
    plan = plan_token_batch([*level1, *level2], 32, 8192)
    # [30] is not similar to [10] (under SIMILAR), the level-2 [10] is
    assert plan == [(0, 1), (2, 1)]
    level1 = cands([10], [14], level=1)
    plan = plan_token_batch([*level1, *level2], 2, 8192)
    assert plan == [(0, 1), (1, 1)]  # room for one more: the head's level wins over length


def test_fifo_among_similar_lengths() -> None:
    plan = plan_token_batch(cands([10], [11], [10], [12], [10]), 3, 8192)
    assert plan == [(0, 1), (1, 1), (2, 1)]


def test_single_takes_only_from_the_head() -> None:
    assert plan_token_batch(cands([10, 10], [10]), 32, 8192, single=True) == [(0, 2)]


lengths_st = st.lists(st.integers(0, 600), min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(
    reqs=st.lists(st.tuples(st.integers(1, 3), lengths_st), min_size=1, max_size=20),
    max_items=st.integers(1, 64),
    budget=st.integers(1, 4096),
)
def test_plan_invariants(reqs: list[tuple[int, list[int]]], max_items: int, budget: int) -> None:
    candidates = sorted((Candidate(lv, ls, 0) for lv, ls in reqs), key=lambda c: c.level)
    plan = plan_token_batch(candidates, max_items, budget)
    assert plan[0][0] == 0
    assert plan[0][1] >= 1
    taken = [x for i, k in plan for x in candidates[i].lengths[:k]]
    assert len(taken) <= max_items
    assert len({i for i, _ in plan}) == len(plan)
    if len(taken) > 1:
        taken = [max(1, x) for x in taken]  # a length counts at least one token
        assert len(taken) * max(taken) <= budget
        assert min(taken) >= SIMILAR * max(taken)


# ---- the queues --------------------------------------------------------------------------


def req(lengths: list[int] | None, level: int = 1, n: int | None = None) -> InferRequest:
    count = n if n is not None else len(lengths or [])
    return InferRequest(list(range(count)), "k", level, lambda r: None, lengths=lengths)


def queues(levels: int = 1) -> PriorityQueues:
    return PriorityQueues(PrioritiesConfig(levels=levels, queue=[LevelConfig()] * levels))


def test_take_tokens_updates_counts_and_order() -> None:
    q = queues()
    head, long, short = req([10, 10, 10]), req([250]), req([9, 11])
    for r in (head, long, short):
        q.push(r, 0.0)
    parts = q.take_tokens("k", 4, 8192)
    assert parts == [(head, 0, 3), (short, 0, 1)]
    assert (q.items, q.level_items) == (2, [2])
    # the untouched request keeps its place; split ones go to the back
    assert list(q.levels[0]) == [long, short]
    assert q.take_tokens("k", 4, 8192) == [(long, 0, 1)]
    assert q.take_tokens("k", 4, 8192) == [(short, 1, 2)]
    assert q.items == 0
    assert len(q) == 0


def test_unmeasured_requests_count_one_token_per_item() -> None:
    q = queues()
    a, b = req(None, n=5), req(None, n=5)
    q.push(a, 0.0)
    q.push(b, 0.0)
    assert q.take_tokens("k", 32, 8) == [(a, 0, 5), (b, 0, 3)]


def test_every_request_reaches_a_batch_within_its_queue_position() -> None:
    """No starvation: request i is in one of the first i + 1 batches (each batch takes the
    head), however the lengths favour the others."""
    q = queues(2)
    rng = random.Random(7)
    reqs = []
    for _ in range(200):
        lengths = [rng.choice([8, 12, 16, 200, 256]) for _ in range(rng.randint(1, 4))]
        r = req(lengths, level=rng.choice([1, 2]))
        reqs.append(r)
        q.push(r, 0.0)
    order = sorted(reqs, key=lambda r: (r.level, r.seq))
    first_batch: dict[int, int] = {}
    batch = 0
    while len(q):
        for r, _, _ in q.take_tokens("k", 32, 2048):
            first_batch.setdefault(id(r), batch)
        batch += 1
    for position, r in enumerate(order):
        assert first_batch[id(r)] <= position


# ---- the Batcher -------------------------------------------------------------------------


class Measured(Executor):
    """Items are strings whose token length is their length; the first batch blocks until the
    test opens the gate. Records batches."""

    kind = "measured"

    def __init__(self) -> None:
        super().__init__(1)
        self.open = threading.Event()
        self.started = threading.Semaphore(0)
        self.batches: list[list[str]] = []
        self.measured = 0

    def lengths(self, items: Sequence[Any]) -> tuple[list[Any], list[int]]:
        self.measured += len(items)
        return [x.upper() for x in items], [len(x) for x in items]

    def run(self, items: list[Any], slot: int) -> list[Any]:
        self.batches.append(list(items))
        self.started.release()
        assert self.open.wait(10)
        return [len(x) for x in items]


@pytest.fixture
def batcher() -> Iterator[tuple[Batcher, Measured]]:
    ex = Measured()
    batching = BatchingConfig(policy="adaptive", max_batch_size=8)
    b = Batcher(ModelConfig(name="m", batching=batching, max_batch_tokens=64), ex)
    b.start()
    yield b, ex
    ex.open.set()
    b.close()


class Waiter:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.req: InferRequest | None = None

    def __call__(self, r: InferRequest) -> None:
        self.req = r
        self.done.set()

    def result(self) -> InferRequest:
        assert self.done.wait(10)
        assert self.req is not None
        return self.req


def test_batcher_groups_by_length_within_the_budget(batcher: tuple[Batcher, Measured]) -> None:
    b, ex = batcher
    first = Waiter()
    b.submit(InferRequest(["x" * 4], "k", 1, first))
    assert ex.started.acquire(timeout=10)  # the slot is busy: the rest queues up
    texts = ["a" * 4, "b" * 30, "c" * 5, "d" * 32, "e" * 6, "f" * 4, "g" * 70]
    waiters = []
    for t in texts:
        w = Waiter()
        b.submit(InferRequest([t], "k", 1, w))
        waiters.append(w)
    ex.open.set()
    results = [w.result() for w in waiters]
    assert [r.outputs for r in results] == [[len(t)] for t in texts]
    assert ex.measured == 8  # tokenised once each, at submit
    assert ex.batches == [
        ["XXXX"],
        ["AAAA", "CCCCC", "EEEEEE", "FFFF"],  # the short ones together
        ["B" * 30, "D" * 32],  # 2 x 32 = 64 tokens
        ["G" * 70],  # longer than the budget: alone
    ]


def test_lengths_given_by_the_api_are_not_measured_again(
    batcher: tuple[Batcher, Measured],
) -> None:
    b, ex = batcher
    ex.open.set()
    w = Waiter()
    b.submit(InferRequest(["ab", "cd"], "k", 1, w, lengths=[2, 2]))
    assert w.result().outputs == [2, 2]
    assert ex.measured == 0
    assert ex.batches == [["ab", "cd"]]
