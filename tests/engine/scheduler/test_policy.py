"""Batching policies as pure functions of queue state and time (no clock, no threads)."""

from __future__ import annotations

import pytest

from infergate.engine.config import BatchingConfig
from infergate.engine.scheduler.policy import decide


def cfg(policy: str, **kw: object) -> BatchingConfig:
    return BatchingConfig(policy=policy, **kw)  # type: ignore[arg-type]


def test_nothing_ready_takes_nothing() -> None:
    for policy in ("off", "window", "adaptive"):
        assert decide(cfg(policy), 0, 0, 0.0, 1.0).take == 0


def test_off_takes_only_the_head_request() -> None:
    d = decide(cfg("off", max_batch_size=8), ready_items=20, head_items=3, oldest_enqueued=0, now=0)
    assert d.take == 3


def test_off_splits_a_request_larger_than_max_batch() -> None:
    assert decide(cfg("off", max_batch_size=8), 20, 20, 0.0, 0.0).take == 8


@pytest.mark.parametrize(("ready", "expected"), [(1, 1), (5, 5), (32, 32), (100, 32)])
def test_adaptive_dispatches_at_once_up_to_max(ready: int, expected: int) -> None:
    d = decide(cfg("adaptive", max_batch_size=32), ready, 1, oldest_enqueued=10.0, now=10.0)
    assert d.take == expected
    assert d.wake_at is None


def test_window_waits_for_the_oldest_request_delay() -> None:
    c = cfg("window", max_batch_size=32, max_queue_delay_us=2000)
    d = decide(c, ready_items=5, head_items=1, oldest_enqueued=10.0, now=10.0005)
    assert d.take == 0
    assert d.wake_at == pytest.approx(10.002)


def test_window_dispatches_what_is_there_when_the_delay_has_passed() -> None:
    c = cfg("window", max_batch_size=32, max_queue_delay_us=2000)
    assert decide(c, 5, 1, oldest_enqueued=10.0, now=10.002).take == 5


def test_window_dispatches_a_full_batch_without_waiting() -> None:
    c = cfg("window", max_batch_size=32, max_queue_delay_us=2000)
    assert decide(c, 40, 1, oldest_enqueued=10.0, now=10.0).take == 32


def test_window_takes_the_largest_preferred_size_at_once() -> None:
    c = cfg("window", max_batch_size=32, max_queue_delay_us=2000, preferred_batch_sizes=[4, 8])
    assert decide(c, 5, 1, 10.0, 10.0).take == 4
    assert decide(c, 9, 1, 10.0, 10.0).take == 8
    assert decide(c, 3, 1, 10.0, 10.0).take == 0
