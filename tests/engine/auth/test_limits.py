"""Token buckets, the local limiter and the concurrency gate, on an injected clock."""

from __future__ import annotations

import asyncio
import math
import sys
import threading
from collections.abc import Iterator

import msgspec
import pytest

from infergate.engine.auth.keys import Key, hash_secret
from infergate.engine.auth.limits import (
    ALLOWED,
    CONCURRENCY,
    ITEMS,
    ITEMS_OVER_BURST,
    REQUESTS,
    ConcurrencyGate,
    Decision,
    LocalLimiter,
    RateLimiter,
    TokenBucket,
)

T0 = 1000.0


@pytest.fixture
def switch_often() -> Iterator[None]:
    """Make the interpreter switch threads every microsecond so hammers really interleave."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def _key(name: str = "a", **kw: object) -> Key:
    return msgspec.convert({"name": name, "sha256": hash_secret(name), **kw}, Key)


# -- TokenBucket ------------------------------------------------------------------------------


def test_bucket_starts_full_and_allows_the_burst_at_once() -> None:
    b = TokenBucket(rate_per_s=2.0, burst=4)
    assert [b.take(1, T0) for _ in range(4)] == [0.0] * 4
    # empty: the next token comes after 1/rate seconds
    assert b.take(1, T0) == 0.5
    assert b.take(3, T0) == 1.5
    assert b.tokens(T0) == 0.0  # refusals take nothing


def test_bucket_retry_after_is_exact_and_honoured() -> None:
    b = TokenBucket(rate_per_s=4.0, burst=8)
    assert b.take(6, T0) == 0.0  # 2 left
    wait = b.take(5, T0)
    assert wait == 0.75  # 3 missing at 4/s
    assert b.take(5, T0 + wait - 0.125) == 0.125  # 0.125 s early: half a token short
    assert b.take(5, T0 + wait) == 0.0  # exactly on time it passes
    assert b.tokens(T0 + wait) == 0.0


def test_bucket_refills_to_burst_and_no_further() -> None:
    b = TokenBucket(rate_per_s=1.0, burst=3)
    assert b.take(3, T0) == 0.0
    assert b.tokens(T0 + 1.0) == 1.0
    assert b.tokens(T0 + 2.5) == 2.5
    assert b.tokens(T0 + 3600) == 3.0
    assert b.take(3, T0 + 3600) == 0.0
    assert b.take(1, T0 + 3600) == 1.0


def test_bucket_request_larger_than_burst_never_passes() -> None:
    b = TokenBucket(rate_per_s=1.0, burst=3)
    assert b.take(4, T0) == math.inf
    assert b.tokens(T0) == 3.0


def test_bucket_ignores_a_clock_that_steps_back() -> None:
    b = TokenBucket(rate_per_s=1.0, burst=2)
    assert b.take(2, T0) == 0.0
    assert b.take(1, T0 - 100) == 1.0  # no refill from going back, no negative refill
    assert b.take(1, T0 + 1) == 0.0


def test_bucket_refund_caps_at_burst() -> None:
    b = TokenBucket(rate_per_s=1.0, burst=2)
    assert b.take(1, T0) == 0.0
    b.refund(5)
    assert b.tokens(T0) == 2.0


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (math.inf, 1), (1.0, 0.5)])
def test_bucket_rejects_bad_parameters(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        TokenBucket(rate, burst)


@pytest.mark.usefixtures("switch_often")
def test_bucket_under_a_thread_hammer_grants_exactly_its_tokens() -> None:
    # 8 threads x 500 takes on a frozen clock: exactly `burst` succeed, whatever the
    # interleaving. Then one refill step on the same clock grants exactly `rate` more.
    b = TokenBucket(rate_per_s=100.0, burst=1000)
    granted = [0] * 8
    start = threading.Barrier(8)

    def hammer(i: int, now: float) -> None:
        start.wait()
        for _ in range(500):
            if b.take(1, now) == 0.0:
                granted[i] += 1

    for now in (T0, T0 + 1.0):
        threads = [threading.Thread(target=hammer, args=(i, now)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sum(granted) == 1000 + 100


# -- LocalLimiter -----------------------------------------------------------------------------


def test_limiter_is_a_rate_limiter() -> None:
    limiter: RateLimiter = LocalLimiter()
    assert asyncio.run(limiter.check(_key(), 1, 1, T0)) is ALLOWED


def test_unlimited_key_is_always_allowed_and_not_tracked() -> None:
    lim = LocalLimiter()
    for _ in range(1000):
        assert lim.check_now(_key(), 1, 100, T0) is ALLOWED
    assert lim.tracked() == ()


def test_request_limit() -> None:
    lim = LocalLimiter()
    k = _key(requests_per_second=10, requests_burst=2)
    assert lim.check_now(k, 1, 0, T0) is ALLOWED
    assert lim.check_now(k, 1, 0, T0) is ALLOWED
    assert lim.check_now(k, 1, 0, T0) == Decision(False, 0.1, REQUESTS)
    assert lim.check_now(k, 1, 0, T0 + 0.1) is ALLOWED


def test_item_limit_per_minute() -> None:
    lim = LocalLimiter()
    k = _key(items_per_minute=120, items_burst=10)  # 2 items/s
    assert lim.check_now(k, 1, 10, T0) is ALLOWED
    d = lim.check_now(k, 1, 3, T0)
    assert (d.allowed, d.reason) == (False, ITEMS)
    assert d.retry_after_s == pytest.approx(1.5, rel=1e-12)
    assert lim.check_now(k, 1, 3, T0 + 1.5) is ALLOWED
    over = lim.check_now(k, 1, 11, T0 + 3600)
    assert (over.allowed, over.retry_after_s, over.reason) == (False, math.inf, ITEMS_OVER_BURST)


def test_both_limits_take_both_or_neither() -> None:
    lim = LocalLimiter()
    k = _key(requests_per_second=1, requests_burst=2, items_per_minute=60, items_burst=5)
    assert lim.check_now(k, 1, 5, T0) is ALLOWED
    # items refuse: the request token taken first is given back
    assert lim.check_now(k, 1, 1, T0) == Decision(False, 1.0, ITEMS)
    assert lim.tokens("a", T0) == (1.0, 0.0)
    # requests refuse: items are not touched
    assert lim.check_now(k, 1, 0, T0) is ALLOWED
    assert lim.check_now(k, 1, 0, T0) == Decision(False, 1.0, REQUESTS)
    assert lim.tokens("a", T0) == (0.0, 0.0)
    assert lim.check_now(k, 1, 1, T0 + 1.0) is ALLOWED


def test_keys_have_separate_buckets() -> None:
    lim = LocalLimiter()
    a = _key("a", requests_per_second=1, requests_burst=1)
    b = _key("b", requests_per_second=1, requests_burst=1)
    assert lim.check_now(a, 1, 0, T0) is ALLOWED
    assert not lim.check_now(a, 1, 0, T0).allowed
    assert lim.check_now(b, 1, 0, T0) is ALLOWED
    assert sorted(lim.tracked()) == ["a", "b"]


def test_reload_keeps_tokens_of_changed_keys_and_drops_removed_ones() -> None:
    lim = LocalLimiter()
    a = _key("a", requests_per_second=1, requests_burst=10)
    b = _key("b", requests_per_second=1, requests_burst=10)
    for _ in range(8):
        assert lim.check_now(a, 1, 0, T0) is ALLOWED
    assert lim.check_now(b, 1, 0, T0) is ALLOWED
    # reload: a gets a smaller burst and a faster rate, b is removed
    a2 = _key("a", requests_per_second=4, requests_burst=5)
    lim.retain([a2])
    assert lim.tracked() == ("a",)
    assert lim.check_now(a2, 2, 0, T0) is ALLOWED  # the 2 tokens it had, not a full bucket
    assert lim.check_now(a2, 1, 0, T0) == Decision(False, 0.25, REQUESTS)  # new rate
    assert lim.tokens("a", T0 + 100) == (5.0, None)  # new burst


@pytest.mark.usefixtures("switch_often")
def test_limiter_under_a_thread_hammer_counts_exact_totals() -> None:
    lim = LocalLimiter()
    keys = [
        _key(f"k{i}", requests_per_second=10, requests_burst=50, items_per_minute=60,
             items_burst=120)
        for i in range(4)
    ]  # fmt: skip
    allowed = [0] * 8
    start = threading.Barrier(8)

    def hammer(t: int) -> None:
        start.wait()
        for j in range(400):
            if lim.check_now(keys[(t + j) % 4], 1, 2, T0).allowed:
                allowed[t] += 1

    threads = [threading.Thread(target=hammer, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    # each key: 50 request tokens but only 120 items = 60 requests of 2 -> 50 pass
    assert sum(allowed) == 4 * 50
    for k in keys:
        req, items = lim.tokens(k.name, T0)
        assert req == 0.0
        assert items == 120 - 2 * 50


# -- ConcurrencyGate --------------------------------------------------------------------------


def test_concurrency_gate() -> None:
    gate = ConcurrencyGate()
    k = _key(max_concurrency=2)
    assert gate.acquire(k)
    assert gate.acquire(k)
    assert not gate.acquire(k)
    assert gate.in_flight("a") == 2
    assert gate.denied() == Decision(False, 1.0, CONCURRENCY)
    gate.release(k)
    assert gate.acquire(k)
    gate.release(k)
    gate.release(k)
    assert gate.in_flight("a") == 0
    assert gate._in_flight == {}  # no state left for idle keys


def test_concurrency_gate_unlimited_key() -> None:
    gate = ConcurrencyGate()
    k = _key()
    assert all(gate.acquire(k) for _ in range(10_000))
    gate.release(k)
    assert gate.in_flight("a") == 0


@pytest.mark.usefixtures("switch_often")
def test_concurrency_gate_under_a_thread_hammer() -> None:
    gate = ConcurrencyGate()
    k = _key(max_concurrency=3)
    peak = [0]
    inside = [0]
    count_lock = threading.Lock()
    start = threading.Barrier(8)
    denied = [0] * 8

    def worker(t: int) -> None:
        start.wait()
        for _ in range(2000):
            if not gate.acquire(k):
                denied[t] += 1
                continue
            with count_lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            with count_lock:
                inside[0] -= 1
            gate.release(k)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert peak[0] <= 3
    assert gate.in_flight("a") == 0
    assert sum(denied) < 8 * 2000
