"""Per-key rate limits and concurrency caps, kept in this process.

Each key may have two token buckets — requests (``requests_per_second``/``requests_burst``)
and items (``items_per_minute``/``items_burst``; tokens for text models) — and a concurrency
cap. A bucket starts full; taking ``n`` either succeeds now or says exactly how long until
``n`` tokens are there, which the API sends as ``Retry-After``.

:class:`RateLimiter` is the seam the request path calls; :class:`LocalLimiter` keeps the
buckets in memory, ``engine.auth.redis_limits.RedisLimiter`` keeps them in Redis so several
boxes enforce one limit. Concurrency is always per box (:class:`ConcurrencyGate`).

Clocks are injected (``now``, seconds on any monotonic scale, e.g. ``loop.time()``), so every
decision is a pure function of state and time and is unit-tested without sleeping.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from infergate.engine.auth.keys import Key

REQUESTS = "rate_limit_requests"
"""Reason: the key's request bucket is empty (429, Retry-After)."""
ITEMS = "rate_limit_items"
"""Reason: the key's item (token) bucket is empty (429, Retry-After)."""
ITEMS_OVER_BURST = "items_exceed_burst"
"""Reason: one request carries more items than the key's ``items_burst``; it can never pass,
so retrying is pointless (the API answers 400 and asks to split the request)."""
CONCURRENCY = "concurrency_limit"
"""Reason: the key already has ``max_concurrency`` requests in flight (429)."""
STORE_UNAVAILABLE = "rate_limit_store_unavailable"
"""Reason: the shared store is unreachable and ``fail_closed`` is set (503)."""

CONCURRENCY_RETRY_S = 1.0
"""Retry-After hint for a full concurrency gate: when a slot frees is unknowable."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one rate-limit check."""

    allowed: bool
    retry_after_s: float
    """0.0 when allowed; else seconds until the request could pass (``math.inf``: never)."""
    reason: str
    """"" when allowed; else one of the reason constants of this module."""


ALLOWED = Decision(True, 0.0, "")


class RateLimiter(Protocol):
    """What the request path calls once per request, after authentication.

    ``check`` is a coroutine so that a shared store (one network round trip) never blocks a
    reactor; the local limiter answers without suspending.
    """

    async def check(self, key: Key, requests: int, items: int, now: float) -> Decision:
        """Take ``requests`` from the key's request bucket and ``items`` from its item bucket,
        both or neither. Thread-safe: called from every reactor thread."""
        ...

    def retain(self, keys: Iterable[Key]) -> None:
        """After a key reload: forget the state of keys not in ``keys``, so state stays
        bounded by the configured keys. Thread-safe."""
        ...

    def close(self) -> None:
        """Release connections; checks after close fall back or fail as configured."""
        ...


class TokenBucket:
    """A token bucket: ``burst`` tokens at most, refilled at ``rate_per_s``; starts full.

    Thread-safe: one lock per bucket guards its two floats (held for a few arithmetic
    operations, never across a call out).
    """

    __slots__ = ("_last", "_lock", "_tokens", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: float, tokens: float | None = None) -> None:
        if not rate_per_s > 0 or not math.isfinite(rate_per_s):
            raise ValueError(f"rate_per_s must be a positive number, got {rate_per_s}")
        if not burst >= 1 or not math.isfinite(burst):
            raise ValueError(f"burst must be at least 1, got {burst}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._lock = threading.Lock()
        self._tokens = burst if tokens is None else min(max(tokens, 0.0), burst)
        self._last: float | None = None

    def _refill(self, now: float) -> None:
        """Add what accrued since the last call; a clock that steps back adds nothing."""
        last = self._last
        if last is None or now > last:
            if last is not None:
                self._tokens = min(self.burst, self._tokens + (now - last) * self.rate_per_s)
            self._last = now

    def take(self, n: float, now: float) -> float:
        """Take ``n`` tokens if they are there: 0.0. Otherwise take nothing and return the
        seconds until ``n`` tokens will be there (``math.inf`` when ``n`` exceeds the burst).
        """
        with self._lock:
            self._refill(now)
            if n <= self._tokens:
                self._tokens -= n
                return 0.0
            if n > self.burst:
                return math.inf
            return (n - self._tokens) / self.rate_per_s

    def refund(self, n: float) -> None:
        """Give back ``n`` tokens taken by a check that another limit then refused."""
        with self._lock:
            self._tokens = min(self.burst, self._tokens + n)

    def tokens(self, now: float) -> float:
        """Tokens available at ``now`` (for tests, metrics and the dashboard)."""
        with self._lock:
            self._refill(now)
            return self._tokens


class _KeyBuckets:
    """The buckets of one key, built from its limits (None = that limit is off)."""

    __slots__ = ("items", "limits", "requests")

    def __init__(self, key: Key, previous: _KeyBuckets | None, now: float | None) -> None:
        self.limits = _limits_of(key)
        self.requests = _bucket(key.requests_per_second, key.requests_burst)
        self.items = _bucket(key.items_per_minute / 60.0, key.items_burst)
        # A changed limit keeps the tokens the key had (clipped to the new burst), so a
        # reload that edits one key neither refills nor empties it.
        if previous is not None and now is not None:
            for old, new in ((previous.requests, self.requests), (previous.items, self.items)):
                if old is not None and new is not None:
                    new._tokens = min(old.tokens(now), new.burst)
                    new._last = now


def _limits_of(key: Key) -> tuple[float, int, float, int]:
    return (key.requests_per_second, key.requests_burst, key.items_per_minute, key.items_burst)


def _bucket(rate_per_s: float, burst: int) -> TokenBucket | None:
    return TokenBucket(rate_per_s, burst) if rate_per_s > 0 else None


class LocalLimiter:
    """Token buckets in memory, one pair per key name, created on a key's first request.

    State is keyed by the key's name, and only keys that authenticated reach it, so its size
    (and any metric labels derived from it) is bounded by the configured keys; :meth:`retain`
    drops removed keys after a reload.

    Thread-safe: the hot path reads the name → buckets dict without a lock (dict reads are
    atomic under the GIL) and each bucket has its own lock; creating or replacing an entry
    takes the limiter's lock.
    """

    __slots__ = ("_buckets", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[str, _KeyBuckets] = {}

    def _buckets_for(self, key: Key, now: float) -> _KeyBuckets:
        kb = self._buckets.get(key.name)
        if kb is not None and kb.limits == _limits_of(key):
            return kb
        with self._lock:  # first request of this key, or its limits changed on reload
            kb = self._buckets.get(key.name)
            if kb is None or kb.limits != _limits_of(key):
                kb = _KeyBuckets(key, kb, now)
                self._buckets[key.name] = kb
            return kb

    def check_now(self, key: Key, requests: int, items: int, now: float) -> Decision:
        """:meth:`check` without the coroutine (the Redis limiter's local fallback).

        Both buckets or neither: when the item bucket refuses, the request token is given
        back. A denied request takes nothing.
        """
        if key.requests_per_second <= 0 and key.items_per_minute <= 0:
            return ALLOWED
        kb = self._buckets_for(key, now)
        if kb.requests is not None and requests > 0:
            wait = kb.requests.take(requests, now)
            if wait:
                return Decision(False, wait, REQUESTS)
        if kb.items is not None and items > 0:
            wait = kb.items.take(items, now)
            if wait:
                if kb.requests is not None and requests > 0:
                    kb.requests.refund(requests)
                return Decision(False, wait, ITEMS_OVER_BURST if wait == math.inf else ITEMS)
        return ALLOWED

    async def check(self, key: Key, requests: int, items: int, now: float) -> Decision:
        """See :meth:`RateLimiter.check`. Thread-safe; never suspends."""
        return self.check_now(key, requests, items, now)

    def retain(self, keys: Iterable[Key]) -> None:
        """Forget the buckets of keys not in ``keys``. Thread-safe."""
        names = {k.name for k in keys}
        with self._lock:
            for name in [n for n in self._buckets if n not in names]:
                del self._buckets[name]

    def tracked(self) -> tuple[str, ...]:
        """Names of the keys that have buckets (for tests and metrics)."""
        return tuple(self._buckets)

    def tokens(self, name: str, now: float) -> tuple[float | None, float | None]:
        """(request tokens, item tokens) of key ``name``; None for a limit that is off or a
        key without buckets yet."""
        kb = self._buckets.get(name)
        if kb is None:
            return None, None
        return (
            None if kb.requests is None else kb.requests.tokens(now),
            None if kb.items is None else kb.items.tokens(now),
        )

    def close(self) -> None:
        pass


class ConcurrencyGate:
    """Requests in flight per key, capped by ``max_concurrency`` (0 = unlimited). Per box.

    Use: ``if not gate.acquire(key): answer 429`` then ``try: ... finally: gate.release(key)``.

    Thread-safe: one lock guards the counters; keys without a cap never touch it. Counters
    of keys removed by a reload go away when their last request is released.
    """

    __slots__ = ("_in_flight", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = {}

    def acquire(self, key: Key) -> bool:
        """Count one more request of ``key`` in flight; False (and nothing counted) when the
        key is at its cap."""
        cap = key.max_concurrency
        if cap <= 0:
            return True
        with self._lock:
            n = self._in_flight.get(key.name, 0)
            if n >= cap:
                return False
            self._in_flight[key.name] = n + 1
            return True

    def release(self, key: Key) -> None:
        """One request of ``key`` is done; call exactly once per successful :meth:`acquire`."""
        if key.max_concurrency <= 0:
            return
        with self._lock:
            n = self._in_flight.get(key.name, 0) - 1
            if n > 0:
                self._in_flight[key.name] = n
            else:
                self._in_flight.pop(key.name, None)

    def in_flight(self, name: str) -> int:
        return self._in_flight.get(name, 0)

    def denied(self) -> Decision:
        """The decision to answer when :meth:`acquire` refused."""
        return Decision(False, CONCURRENCY_RETRY_S, CONCURRENCY)
