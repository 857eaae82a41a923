"""Upstream replicas: least-outstanding-requests routing, Envoy-style ejection, statistics.

A :class:`ReplicaSet` is shared by the executor's slot threads (``acquire``/``release``) and
its client loop thread (``health_result``); one short lock guards it. Decisions use an
injected clock and random generator, so routing and ejection are unit-tested without sockets
or sleeps.

Semantics, named after Envoy's outlier detection and health checks:

- A call goes to the healthy replica with the fewest calls in flight; ties are broken at
  random. No replica ever has more than ``max_inflight`` calls in flight.
- ``consecutive_failures`` failed calls in a row (connect failures, resets, timeouts, 5xx)
  eject a replica for ``base_ejection_s`` times its ejection multiplier, capped at
  ``max_ejection_s``. Any response that is not a 5xx resets the count of failures.
- The multiplier grows by one with each ejection and decays by one for every
  ``base_ejection_s`` the replica then spends in rotation (Envoy decrements it while a host
  stays healthy), so a replica that failed once long ago is not ejected for long again.
- When the ejection time has passed the replica is healthy again (and ejected again, for
  longer, if it keeps failing). An active health check that passes brings it back at once;
  one that fails ejects it until a check passes.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from infergate.engine.executors.upstream.errors import unavailable
from infergate.engine.stats import DURATION_BUCKETS, Histogram

log = logging.getLogger("infergate.upstream")

Clock = Callable[[], float]

HEALTHY = "healthy"
EJECTED = "ejected"
CAUSE_FAILURES = "consecutive_failures"
CAUSE_HEALTH_CHECK = "health_check"
LATENCY_EWMA_ALPHA = 0.2
"""Weight of the newest call in a replica's latency average."""
UNTIL_CHECK_PASSES = math.inf
"""``ejected_until`` of a replica whose active health check failed."""


class Replica:
    """One upstream server. Mutated only under its ReplicaSet's lock."""

    __slots__ = (
        "backoff",
        "backoff_since",
        "consecutive",
        "ejected_until",
        "ejection_cause",
        "ejections",
        "errors",
        "inflight",
        "last_error",
        "latency",
        "latency_ewma_s",
        "requests",
        "url",
    )

    def __init__(self, url: str) -> None:
        self.url = url
        """Base URL without a trailing slash (``http://10.0.0.5:8000``)."""
        # routing
        self.inflight = 0
        self.ejected_until = 0.0
        """Clock time the current ejection ends; 0 = not ejected; inf = until a check passes."""
        self.ejection_cause = ""
        # outlier detection
        self.consecutive = 0
        self.backoff = 0
        """Ejection multiplier: the next ejection lasts ``base x (backoff + 1)``."""
        self.backoff_since = 0.0
        """Clock time from which ``backoff`` decays (the replica's return to rotation)."""
        self.ejections = 0
        # statistics
        self.requests = 0
        self.errors = 0
        self.last_error = ""
        self.latency_ewma_s = 0.0
        self.latency = Histogram(DURATION_BUCKETS)
        """Duration of successful calls (seconds), for Prometheus."""

    @property
    def ejected(self) -> bool:
        return self.ejected_until > 0.0


@dataclass(frozen=True, slots=True)
class ReplicaStats:
    """A copy of one replica's state and counters (for describe, admin, metrics)."""

    url: str
    state: str
    """``healthy`` or ``ejected``."""
    ejection_cause: str
    """``consecutive_failures`` or ``health_check`` while ejected, else ``""``."""
    ejected_for_s: float | None
    """Seconds left of a timed ejection; None while healthy or until a check passes."""
    inflight: int
    requests: int
    """Calls answered (any status)."""
    errors: int
    """Calls failed (connect, reset, timeout, 5xx, malformed answer)."""
    ejections: int
    ejection_multiplier: int
    """What the last ejection's time was multiplied by, after decay (0: none to remember)."""
    consecutive_failures: int
    latency_ewma_ms: float
    latency_buckets: tuple[int, ...]
    """Counts per ``DURATION_BUCKETS`` bucket plus +Inf (not cumulative)."""
    latency_sum_s: float
    last_error: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (no histogram buckets)."""
        return {
            "url": self.url,
            "state": self.state,
            "ejection_cause": self.ejection_cause,
            "ejected_for_s": self.ejected_for_s,
            "inflight": self.inflight,
            "requests": self.requests,
            "errors": self.errors,
            "ejections": self.ejections,
            "ejection_multiplier": self.ejection_multiplier,
            "consecutive_failures": self.consecutive_failures,
            "latency_ms": round(self.latency_ewma_ms, 3),
            "last_error": self.last_error,
        }


class ReplicaSet:
    """Routing and outlier detection over a model's replicas.

    Thread-safe: every public method takes the set's lock; ``acquire`` may wait on its
    Condition (never polls) for a replica to have room.
    """

    def __init__(
        self,
        urls: list[str],
        max_inflight: int,
        consecutive_failures: int,
        base_ejection_s: float,
        max_ejection_s: float,
        *,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if not urls:
            raise ValueError("a replica set needs at least one replica")
        self.replicas = [Replica(u) for u in urls]
        self.max_inflight = max_inflight
        self.consecutive_failures = consecutive_failures
        self.base_ejection_s = base_ejection_s
        self.max_ejection_s = max_ejection_s
        self.clock = clock
        self._rng = rng or random.Random()
        self._cond = threading.Condition(threading.Lock())
        """Slot threads wait here for room on a healthy replica."""

    # ---- routing (slot threads) --------------------------------------------------------------

    def acquire(self, exclude: Collection[Replica] = (), wait_s: float = 0.0) -> Replica:
        """Reserve a call on the healthy replica with the fewest calls in flight (ties at
        random), skipping ``exclude``. Thread-safe.

        When every healthy replica is at ``max_inflight`` (possible only while some are
        ejected, since the executor has one slot per replica and call), waits up to ``wait_s``
        for one to free up or come back.

        Raises:
            UpstreamError: 502 ``upstream_unavailable``: no healthy replica (outside
                ``exclude``), or none had room within ``wait_s``.
        """
        with self._cond:
            deadline = self.clock() + wait_s
            while True:
                now = self.clock()
                pick = self._pick(exclude, now)
                if pick is not None:
                    return pick
                left = deadline - now
                if left <= 0:
                    raise unavailable(
                        f"every healthy replica has {self.max_inflight} calls in flight"
                    )
                self._cond.wait(min(left, self._next_return(now) - now))

    def try_acquire(self, exclude: Collection[Replica] = ()) -> Replica | None:
        """``acquire`` without waiting: None when every healthy replica is at
        ``max_inflight``. Thread-safe; never blocks (the loops making calls use it).

        Raises:
            UpstreamError: 502 ``upstream_unavailable``: no healthy replica.
        """
        with self._cond:
            return self._pick(exclude, self.clock())

    def _pick(self, exclude: Collection[Replica], now: float) -> Replica | None:
        """Under the lock: reserve a call on the least loaded healthy replica with room."""
        self._expire(now)
        healthy = [r for r in self.replicas if not r.ejected and r not in exclude]
        if not healthy:
            raise unavailable(self._none_healthy(exclude))
        free = [r for r in healthy if r.inflight < self.max_inflight]
        if not free:
            return None
        least = min(r.inflight for r in free)
        pick = self._rng.choice([r for r in free if r.inflight == least])
        pick.inflight += 1
        return pick

    def release(
        self,
        replica: Replica,
        *,
        latency_s: float | None = None,
        failure: str | None = None,
        counted: bool = True,
    ) -> None:
        """End a call reserved by ``acquire``. Thread-safe.

        ``failure`` (a short description) counts towards ejection; otherwise ``latency_s``
        (the call succeeded) or neither (the replica answered, e.g. a 4xx, but the call did
        not succeed) resets the replica's consecutive-failure count. Not ``counted``: the
        gateway ended the call itself (shutting down), which says nothing about the replica.
        """
        with self._cond:
            replica.inflight -= 1
            if not counted:
                pass
            elif failure is not None:
                self._record_failure(replica, failure)
            else:
                replica.requests += 1
                replica.consecutive = 0
                if latency_s is not None:
                    replica.latency.observe(latency_s)
                    replica.latency_ewma_s = (
                        latency_s
                        if replica.latency_ewma_s == 0.0
                        else replica.latency_ewma_s
                        + LATENCY_EWMA_ALPHA * (latency_s - replica.latency_ewma_s)
                    )
            self._cond.notify_all()

    # ---- health (the client loop thread) -----------------------------------------------------

    def health_result(self, replica: Replica, ok: bool, detail: str = "") -> None:
        """Apply one active health check. A pass returns an ejected replica at once; a failure
        ejects it until a check passes. Thread-safe."""
        with self._cond:
            if ok:
                if replica.ejected:
                    log.warning(
                        "upstream %s: health check passed, replica back in rotation", replica.url
                    )
                    self._restore(replica, self.clock())
                    self._cond.notify_all()
                return
            replica.last_error = f"health check: {detail}"
            if not replica.ejected:
                self._eject(replica, self.clock(), CAUSE_HEALTH_CHECK, detail)
            replica.ejected_until = UNTIL_CHECK_PASSES
            replica.ejection_cause = CAUSE_HEALTH_CHECK

    # ---- statistics --------------------------------------------------------------------------

    def stats(self) -> list[ReplicaStats]:
        """A copy of every replica's state and counters. Thread-safe."""
        with self._cond:
            now = self.clock()
            self._expire(now)
            return [self._stats(r, now) for r in self.replicas]

    def stats_nowait(self) -> list[ReplicaStats]:
        """``stats`` without the lock, changing nothing (an ejection whose time is over shows
        as healthy): for dashboards that must never wait on the request path. Each value is
        whole; values of one replica may be a call apart."""
        now = self.clock()
        return [self._stats(r, now, changing=False) for r in list(self.replicas)]

    def _stats(self, r: Replica, now: float, changing: bool = True) -> ReplicaStats:
        if changing:
            self._decay(r, now)
        ejected = r.ejected and r.ejected_until > now
        timed = ejected and r.ejected_until != UNTIL_CHECK_PASSES
        return ReplicaStats(
            url=r.url,
            state=EJECTED if ejected else HEALTHY,
            ejection_cause=r.ejection_cause,
            ejected_for_s=round(r.ejected_until - now, 3) if timed else None,
            inflight=r.inflight,
            requests=r.requests,
            errors=r.errors,
            ejections=r.ejections,
            ejection_multiplier=r.backoff if ejected else self._decayed(r, now)[0],
            consecutive_failures=r.consecutive,
            latency_ewma_ms=r.latency_ewma_s * 1000,
            latency_buckets=tuple(r.latency.counts),
            latency_sum_s=r.latency.sum,
            last_error=r.last_error,
        )

    # ---- under the lock ----------------------------------------------------------------------

    def _record_failure(self, r: Replica, failure: str) -> None:
        r.errors += 1
        r.last_error = failure
        r.consecutive += 1
        if r.consecutive >= self.consecutive_failures and not r.ejected:
            self._eject(r, self.clock(), CAUSE_FAILURES, failure)

    def _eject(self, r: Replica, now: float, cause: str, detail: str) -> None:
        self._decay(r, now)
        r.ejections += 1
        r.backoff += 1
        duration = min(self.base_ejection_s * r.backoff, self.max_ejection_s)
        r.ejected_until = now + duration
        r.ejection_cause = cause
        r.consecutive = 0
        log.warning(
            "upstream %s ejected (%s: %s) for %.1f s, ejection %d",
            r.url, cause, detail, duration, r.ejections,
        )  # fmt: skip

    def _restore(self, r: Replica, since: float) -> None:
        """Back in rotation from clock time ``since`` (when the multiplier starts decaying)."""
        r.ejected_until = 0.0
        r.ejection_cause = ""
        r.consecutive = 0
        r.backoff_since = since

    def _decay(self, r: Replica, now: float) -> None:
        """Take one off the multiplier per whole ``base_ejection_s`` spent in rotation."""
        if not r.ejected:
            r.backoff, r.backoff_since = self._decayed(r, now)

    def _decayed(self, r: Replica, now: float) -> tuple[int, float]:
        """``backoff`` and ``backoff_since`` of a replica in rotation, decayed to ``now``."""
        if r.backoff == 0 or self.base_ejection_s <= 0:
            return r.backoff, r.backoff_since
        steps = int((now - r.backoff_since) // self.base_ejection_s)
        if steps <= 0:
            return r.backoff, r.backoff_since
        return max(0, r.backoff - steps), r.backoff_since + steps * self.base_ejection_s

    def _expire(self, now: float) -> None:
        """Return the replicas whose timed ejection has passed."""
        for r in self.replicas:
            if r.ejected and r.ejected_until <= now:
                log.warning("upstream %s: ejection time over, back in rotation", r.url)
                self._restore(r, r.ejected_until)

    def _next_return(self, now: float) -> float:
        """Earliest clock time a timed ejection ends (``now`` + 1 h when none does)."""
        ends = [r.ejected_until for r in self.replicas if r.ejected]
        return min([e for e in ends if e != UNTIL_CHECK_PASSES] + [now + 3600.0])

    def _none_healthy(self, exclude: Collection[Replica]) -> str:
        parts = [
            f"{r.url} {'failed just now' if r in exclude else 'ejected'}"
            + (f" ({r.last_error})" if r.last_error else "")
            for r in self.replicas
        ]
        return "no healthy replica: " + "; ".join(parts)
