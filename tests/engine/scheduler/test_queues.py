"""Queue policy: priority order, FIFO, bounds, shedding, deadlines, cancellation (fake time)."""

from __future__ import annotations

import random

import pytest

from infergate.engine.config import LevelConfig, PrioritiesConfig
from infergate.engine.scheduler.queues import InferRequest, PriorityQueues, Rejection


def req(n: int = 1, level: int = 1, key: str = "k", timeout_s: float | None = None) -> InferRequest:
    return InferRequest(list(range(n)), key, level, lambda r: None, timeout_s)


def queues(*levels: LevelConfig) -> PriorityQueues:
    return PriorityQueues(PrioritiesConfig(levels=len(levels), default=1, queue=list(levels)))


def test_highest_priority_first_then_fifo() -> None:
    q = queues(LevelConfig(), LevelConfig())
    low1, high1, low2, high2 = req(level=2), req(level=1), req(level=2), req(level=1)
    for r in (low1, high1, low2, high2):
        q.push(r, 0.0)
    parts = q.take("k", 10)
    assert [p[0] for p in parts] == [high1, high2, low1, low2]


def test_take_counts_items_and_splits_large_requests_in_order() -> None:
    q = queues(LevelConfig())
    big, small = req(n=5), req(n=2)
    q.push(big, 0.0)
    q.push(small, 0.0)
    # each queued request gets an equal share of the batch per pass; a split request's rest
    # goes to the back of the queue
    assert q.take("k", 3) == [(big, 0, 2), (small, 0, 1)]
    assert q.head() is big
    assert q.take("k", 3) == [(big, 2, 4), (small, 1, 2)]
    assert q.take("k", 3) == [(big, 4, 5)]
    assert q.items == 0
    assert q.level_items == [0]
    assert len(q) == 0


def test_only_requests_with_the_same_batch_key_merge() -> None:
    q = queues(LevelConfig())
    a1, b1, a2 = req(key="a"), req(key="b"), req(key="a")
    for r in (a1, b1, a2):
        q.push(r, 0.0)
    assert [p[0] for p in q.take("a", 10)] == [a1, a2]
    assert q.head() is b1


def test_full_level_rejects_with_429() -> None:
    q = queues(LevelConfig(max_queue_size=2))
    q.push(req(), 0.0)
    q.push(req(), 0.0)
    with pytest.raises(Rejection) as e:
        q.push(req(), 0.0)
    assert (e.value.status, e.value.reason) == (429, "queue_full")
    assert len(q) == 2


def test_each_level_is_bounded_by_its_own_size() -> None:
    q = queues(LevelConfig(max_queue_size=1), LevelConfig(max_queue_size=2))
    q.push(req(level=1), 0.0)
    q.push(req(level=2), 0.0)
    q.push(req(level=2), 0.0)
    with pytest.raises(Rejection):
        q.push(req(level=1), 0.0)  # lower levels are not evicted to make room
    with pytest.raises(Rejection):
        q.push(req(level=2), 0.0)
    assert q.depths() == [1, 2]


def test_items_ahead_counts_only_the_same_and_higher_levels() -> None:
    q = queues(LevelConfig(), LevelConfig())
    q.push(req(n=3, level=1), 0.0)
    q.push(req(n=5, level=2), 0.0)
    assert q.items_ahead(1) == 3
    assert q.items_ahead(2) == 8


def test_demotion_into_a_full_lowest_level_expires_instead() -> None:
    q = queues(LevelConfig(timeout_us=1000, on_timeout="delay"), LevelConfig(max_queue_size=1))
    q.push(req(level=2), 0.0)
    r = req(level=1)
    q.push(r, 0.0)
    assert q.expire(0.002) == [r]
    assert q.depths() == [0, 1]


def test_deadline_rejects_when_it_passes_while_queued() -> None:
    q = queues(LevelConfig(timeout_us=5000))
    r = req()
    q.push(r, 10.0)
    assert q.next_deadline() == pytest.approx(10.005)
    assert q.expire(10.004) == []
    assert q.expire(10.005) == [r]
    assert len(q) == 0
    assert q.next_deadline() is None


def test_client_timeout_shortens_but_never_lengthens_the_level_timeout() -> None:
    q = queues(LevelConfig(timeout_us=5000))
    shorter, longer = req(timeout_s=0.001), req(timeout_s=1.0)
    q.push(shorter, 0.0)
    q.push(longer, 0.0)
    assert shorter.deadline == pytest.approx(0.001)
    assert longer.deadline == pytest.approx(0.005)


def test_delay_policy_demotes_instead_of_rejecting() -> None:
    q = queues(LevelConfig(timeout_us=1000, on_timeout="delay"), LevelConfig())
    r = req(level=1)
    q.push(r, 0.0)
    assert q.expire(0.002) == []
    assert r.level == 2
    assert q.depths() == [0, 1]
    assert q.level_items == [0, 1]
    assert q.next_deadline() is None


def test_fully_dispatched_requests_do_not_expire() -> None:
    q = queues(LevelConfig(timeout_us=1000))
    r = req(n=4)
    q.push(r, 0.0)
    q.take("k", 4)  # all of it is running
    assert q.expire(1.0) == []
    assert q.next_deadline() is None


def test_a_deadline_covers_the_whole_of_a_split_request() -> None:
    q = queues(LevelConfig(timeout_us=1000))
    r, other = req(n=4), req(n=1)
    q.push(r, 0.0)
    q.take("k", 2)  # half of it is running, the rest is queued
    q.push(other, 0.0005)
    assert q.expire(0.001) == [r]  # the queued rest is dropped; the running half finishes
    assert q.take("k", 8) == [(other, 0, 1)]
    assert (q.items, q.level_items, len(q)) == (0, [0], 0)


def test_the_parts_of_a_split_request_interleave_with_later_requests() -> None:
    q = queues(LevelConfig())
    big = req(n=6)
    q.push(big, 0.0)
    smalls = [req(n=1) for _ in range(3)]
    for s in smalls:
        q.push(s, 0.0)
    batches = [q.take("k", 2) for _ in range(5)]
    assert batches == [
        [(big, 0, 1), (smalls[0], 0, 1)],  # a share each: the big one does not fill it
        [(smalls[1], 0, 1), (smalls[2], 0, 1)],
        [(big, 1, 3)],  # alone in the queue: the batch is full
        [(big, 3, 5)],
        [(big, 5, 6)],
    ]


def test_a_request_queued_alone_fills_every_batch() -> None:
    q = queues(LevelConfig())
    big = req(n=7)
    q.push(big, 0.0)
    assert [q.take("k", 3) for _ in range(3)] == [[(big, 0, 3)], [(big, 3, 6)], [(big, 6, 7)]]


def test_single_take_round_robins_between_split_requests() -> None:
    q = queues(LevelConfig())
    a, b = req(n=3), req(n=3)
    q.push(a, 0.0)
    q.push(b, 0.0)
    got = [q.take("k", 2, single=True) for _ in range(4)]
    assert got == [[(a, 0, 2)], [(b, 0, 2)], [(a, 2, 3)], [(b, 2, 3)]]


def test_cancel_drops_the_parts_not_yet_started() -> None:
    q = queues(LevelConfig())
    a, b = req(n=3), req(n=1)
    q.push(a, 0.0)
    q.push(b, 0.0)
    assert q.remove(b)
    q.take("k", 1)
    assert q.remove(a)  # one part runs; the two queued items are dropped
    assert (q.items, q.level_items, len(q)) == (0, [0], 0)
    assert q.take("k", 8) == []


def test_cancel_of_a_fully_running_request_removes_nothing() -> None:
    q = queues(LevelConfig())
    a = req(n=2)
    q.push(a, 0.0)
    q.take("k", 2)
    assert not q.remove(a)


def test_remove_all_empties_every_level() -> None:
    q = queues(LevelConfig(timeout_us=1000), LevelConfig())
    split, low = req(n=4, level=1), req(level=2)
    q.push(split, 0.0)
    q.push(low, 0.0)
    q.take("k", 2)
    assert set(q.remove_all()) == {split, low}
    assert (q.items, q.level_items, len(q)) == (0, [0, 0], 0)
    assert q.next_deadline() is None


def test_item_counts_stay_exact_under_random_operations() -> None:
    rng = random.Random(7)
    q = queues(
        LevelConfig(max_queue_size=20, timeout_us=3000, on_timeout="delay"),
        LevelConfig(max_queue_size=20, timeout_us=5000),
    )
    live: list[InferRequest] = []
    now = 0.0
    for _ in range(3000):
        now += rng.uniform(0, 0.001)
        op = rng.random()
        if op < 0.4:
            r = req(n=rng.randint(1, 6), level=rng.randint(1, 2), key=rng.choice("ab"))
            try:
                q.push(r, now)
                live.append(r)
            except Rejection:
                pass
        elif op < 0.6:
            q.take(rng.choice("ab"), rng.randint(1, 8))
        elif op < 0.75 and live:
            q.remove(rng.choice(live))
        elif op < 0.85 and live:
            q.remove_rest(rng.choice(live))
        elif op < 0.87:
            q.remove_all()
        else:
            q.expire(now)
        queued = [r for level in q.levels for r in level]
        assert q.items == sum(r.n - r.taken for r in queued)
        assert q.level_items == [sum(r.n - r.taken for r in level) for level in q.levels]
        assert all(len(level) <= 20 for level in q.levels)
