"""Fair sharing: deficit round robin across tenants inside a level, Longest Queue Drop when a
level is full, and ``min_share`` between levels (pure functions and the queues, no clock)."""

from __future__ import annotations

import pytest

from infergate.engine.config import LevelConfig, ModelConfig, PrioritiesConfig
from infergate.engine.executors.sim import SimExecutor
from infergate.engine.scheduler.batcher import Batcher
from infergate.engine.scheduler.policy import charge_levels, pick_level
from infergate.engine.scheduler.queues import InferRequest, PriorityQueues, Rejection


def req(
    n: int = 1,
    tenant: str = "",
    level: int = 1,
    weight: float = 1.0,
    key: str = "k",
    lengths: list[int] | None = None,
) -> InferRequest:
    r = InferRequest(list(range(n)), key, level, lambda r: None, None, None, lengths)
    r.tenant = tenant
    r.weight = weight
    return r


def queues(*levels: LevelConfig) -> PriorityQueues:
    return PriorityQueues(PrioritiesConfig(levels=len(levels), default=1, queue=list(levels)))


def batch_of(parts: list[tuple[InferRequest, int, int]], r: InferRequest) -> bool:
    return any(p[0] is r for p in parts)


def first_batch_with(q: PriorityQueues, r: InferRequest, cap: int, limit: int = 100) -> int:
    for i in range(1, limit + 1):
        if batch_of(q.take("k", cap), r):
            return i
    raise AssertionError("never served")


def test_a_small_request_does_not_wait_behind_another_tenants_big_ones() -> None:
    q = queues(LevelConfig())
    for _ in range(10):
        q.push(req(8, "a"), 0.0)
    small = req(1, "b")
    q.push(small, 0.0)
    assert first_batch_with(q, small, 8) == 2  # a's turn (one full batch), then b's


def test_one_tenant_a_small_request_rides_the_next_batch_behind_big_ones() -> None:
    # the anonymous client is one tenant: inside it, each queued request gets a share of the
    # batch (before: the small one waited one batch per big request ahead of it, 11)
    q = queues(LevelConfig())
    for _ in range(10):
        q.push(req(8), 0.0)
    small = req(1)
    q.push(small, 0.0)
    assert first_batch_with(q, small, 8) == 2


def test_weights_share_items_in_proportion() -> None:
    q = queues(LevelConfig())
    for _ in range(100):
        q.push(req(1, "a", weight=3.0), 0.0)
        q.push(req(1, "b", weight=1.0), 0.0)
    got = {"a": 0, "b": 0}
    for _ in range(8):
        for r, start, end in q.take("k", 4):
            got[r.tenant] += end - start
    assert got == {"a": 24, "b": 8}


def test_a_tenant_alone_fills_every_batch_and_a_newcomer_gets_the_next_turn() -> None:
    q = queues(LevelConfig())
    big = req(20, "a")
    q.push(big, 0.0)
    assert q.take("k", 4) == [(big, 0, 4)]
    newcomer = req(2, "b")
    q.push(newcomer, 0.0)
    assert q.head() is newcomer  # a spent its quantum
    assert q.take("k", 4) == [(newcomer, 0, 2), (big, 4, 6)]


def test_tenants_only_merge_under_the_same_batch_key() -> None:
    q = queues(LevelConfig())
    a1, b1, a2 = req(1, "t1", key="x"), req(1, "t2", key="y"), req(1, "t3", key="x")
    for r in (a1, b1, a2):
        q.push(r, 0.0)
    assert [p[0] for p in q.take("x", 10)] == [a1, a2]
    assert q.head() is b1
    assert q.take("y", 10) == [(b1, 0, 1)]
    assert len(q) == 0
    assert q.levels[0].ring == type(q.levels[0].ring)()


def test_cancel_and_deadlines_keep_the_ring_consistent() -> None:
    q = queues(LevelConfig(timeout_us=1_000_000), LevelConfig())
    a, b = req(4, "a"), req(1, "b")
    q.push(a, 0.0)
    q.push(b, 0.0)
    assert q.remove(a)
    assert list(q.levels[0].ring) == ["b"]
    assert q.expire(2.0) == [b]
    assert len(q) == 0
    assert not q.levels[0].ring
    assert q.items == 0


def test_a_full_level_pushes_out_the_heaviest_tenants_newest_request() -> None:
    q = queues(LevelConfig(max_queue_size=4))
    flood = [req(1, "a") for _ in range(4)]
    for r in flood:
        assert q.push(r, 0.0) is None
    assert q.push(req(1, "b"), 0.0) is flood[3]
    assert q.push(req(1, "b"), 0.0) is flood[2]  # b holds 2, a 2: even now
    for tenant in ("a", "b"):  # neither is lighter than the other: the newcomer is refused
        with pytest.raises(Rejection) as e:
            q.push(req(1, tenant), 0.0)
        assert e.value.status == 429
    assert q.push(req(1, "c"), 0.0) is flood[1]  # a newcomer is the lightest
    assert q.pushed_out == 3
    assert (len(q), q.items) == (4, 4)


def test_token_budget_batches_share_tokens_between_tenants() -> None:
    q = queues(LevelConfig())
    for _ in range(10):
        q.push(req(4, "a", lengths=[10, 10, 10, 10]), 0.0)
    small = req(1, "b", lengths=[10])
    q.push(small, 0.0)
    served = [batch_of(q.take_tokens("k", 64, 40), small) for _ in range(3)]
    assert served == [False, True, False]  # a's 40-token quantum is one batch; then b's turn


def test_pick_level_is_strict_without_shares() -> None:
    assert pick_level([True, True], [0.0, 0.0], [0.0, 0.0]) == 0
    assert pick_level([False, True], [0.0, 0.0], [0.0, 0.0]) == 1
    assert pick_level([False, False], [0.0, 0.0], [0.0, 0.0]) == -1


def test_pick_level_serves_a_level_owed_its_share() -> None:
    assert pick_level([True, True], [0.0, 0.0], [0.0, 0.1]) == 1
    assert pick_level([True, True], [0.0, -0.5], [0.0, 0.1]) == 0


def test_charge_levels_banks_nothing_while_alone_or_idle() -> None:
    # alone: nobody pays
    assert charge_levels([0.0, 0.0], [0.0, 0.1], [False, True], [0.0, 1.0]) == [0.0, 0.0]
    # an idle level keeps a debt but no credit
    assert charge_levels([0.0, 0.5], [0.0, 0.1], [True, False], [1.0, 0.0]) == [0.0, 0.0]
    assert charge_levels([0.0, -0.5], [0.0, 0.1], [True, False], [1.0, 0.0]) == [0.0, -0.5]


@pytest.mark.parametrize("share", [0.1, 0.25])
def test_min_share_gives_a_flooded_lower_level_its_share_of_executor_time(share: float) -> None:
    q = queues(LevelConfig(max_queue_size=10_000), LevelConfig(min_share=share))
    for _ in range(1000):
        q.push(req(1, level=1), 0.0)
        q.push(req(1, level=2), 0.0)
    used = [0.0, 0.0]
    for _ in range(200):  # every batch takes one (fake) second of executor time
        parts = q.take("k", 1)
        level = parts[0][0].level
        seconds = [1.0 if level == i + 1 else 0.0 for i in range(2)]
        used[level - 1] += 1.0
        q.charge(seconds)
    assert used[1] / sum(used) == pytest.approx(share, abs=0.01)
    assert used[1] / sum(used) >= share


def test_strict_priority_starves_the_lower_level_without_a_share() -> None:
    q = queues(LevelConfig(max_queue_size=10_000), LevelConfig())
    for _ in range(100):
        q.push(req(1, level=1), 0.0)
        q.push(req(1, level=2), 0.0)
    levels = [q.take("k", 1)[0][0].level for _ in range(100)]
    assert set(levels) == {1}


def test_the_batcher_answers_a_pushed_out_request_429() -> None:
    prios = PrioritiesConfig(levels=1, queue=[LevelConfig(max_queue_size=2)])
    b = Batcher(ModelConfig(name="m", priorities=prios), SimExecutor(1, "embeddings", 4, 0, 0))
    answered: list[InferRequest] = []  # not started: everything stays queued
    flood = [req(1, "a") for _ in range(2)]
    for r in flood:
        r.deliver = answered.append
        b.submit(r)
    b.submit(req(1, "b"))
    assert answered == [flood[1]]
    assert flood[1].error is not None
    assert (flood[1].error.status, flood[1].error.reason) == (429, "queue_full")
    assert b.stats.rejected["queue_full"] == 1
