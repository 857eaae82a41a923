"""Per-key counters (requests, items, rejections by reason, queue wait) and their Prometheus
collector.

Series are labelled by key name, and only keys that authenticated ever get a row, so label
cardinality is bounded by the configured keys; a reload drops the rows of removed keys
(:meth:`KeyMetrics.retain`). With no keys configured nothing is counted here (the admission
fast path skips it): the anonymous tenant's figures are the model's own
(``infergate_model_*``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from infergate.engine.stats import WAIT_BUCKETS, Histogram


class KeyCounters:
    """The counters of one key. Written by reactor threads (rejections at admission) and the
    Batcher's slot threads (through the request's delivery, on the reactor); every write
    holds the owning :class:`KeyMetrics` lock, readers copy."""

    __slots__ = ("in_flight", "items", "queue_wait_s", "rejected", "requests")

    def __init__(self) -> None:
        self.requests = 0
        """Requests admitted (authenticated, allowed, queued or not)."""
        self.items = 0
        """Items (tokens for text models) those requests carried: what the item bucket counts."""
        self.rejected: dict[str, int] = {}
        """Requests refused, by reason (admission and scheduler reasons alike)."""
        self.queue_wait_s = Histogram(WAIT_BUCKETS)
        self.in_flight = 0
        """Admitted requests not answered yet."""


@dataclass(frozen=True, slots=True)
class KeyLoad:
    """One key's figures for the dashboard."""

    name: str
    requests: int
    items: int
    rejected: int
    in_flight: int


class KeyMetrics:
    """Counters per key name. Thread-safe: one short lock around each update (a few integer
    operations); the no-keys path never calls it."""

    __slots__ = ("_keys", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, KeyCounters] = {}

    def _get(self, name: str) -> KeyCounters:
        c = self._keys.get(name)
        if c is None:
            c = self._keys[name] = KeyCounters()
        return c

    def admitted(self, name: str, items: int) -> None:
        with self._lock:
            c = self._get(name)
            c.requests += 1
            c.items += items
            c.in_flight += 1

    def finished(self, name: str, queue_wait_s: float | None, reason: str | None) -> None:
        """An admitted request was answered: its queue wait (None if it never reached a
        batch) and, if it failed, the scheduler's reason."""
        with self._lock:
            c = self._get(name)
            c.in_flight = max(0, c.in_flight - 1)
            if queue_wait_s is not None:
                c.queue_wait_s.observe(max(0.0, queue_wait_s))
            if reason:
                c.rejected[reason] = c.rejected.get(reason, 0) + 1

    def rejected(self, name: str, reason: str) -> None:
        """A request of key ``name`` was refused at admission."""
        with self._lock:
            c = self._get(name)
            c.rejected[reason] = c.rejected.get(reason, 0) + 1

    def retain(self, names: Iterable[str]) -> None:
        """Drop the rows of keys not in ``names`` (after a reload)."""
        keep = set(names)
        with self._lock:
            for name in [n for n in self._keys if n not in keep]:
                del self._keys[name]

    def snapshot(self) -> dict[str, KeyCounters]:
        """A copy of every row (for /metrics and tests)."""
        out = {}
        with self._lock:
            for name, c in self._keys.items():
                copy = KeyCounters()
                copy.requests, copy.items, copy.in_flight = c.requests, c.items, c.in_flight
                copy.rejected = dict(c.rejected)
                copy.queue_wait_s.counts = list(c.queue_wait_s.counts)
                copy.queue_wait_s.sum = c.queue_wait_s.sum
                out[name] = copy
        return out

    def top(self, n: int = 5) -> list[KeyLoad]:
        """The ``n`` keys with the most requests (ties: most in flight, then name)."""
        rows = [
            KeyLoad(name, c.requests, c.items, sum(c.rejected.values()), c.in_flight)
            for name, c in self.snapshot().items()
        ]
        rows.sort(key=lambda r: (-r.requests, -r.in_flight, r.name))
        return rows[:n]


class KeyCollector(Collector):
    """``infergate_key_*`` series from a :class:`KeyMetrics` (and the rate-limit store's
    error count, when there is a shared store)."""

    def __init__(self, metrics: KeyMetrics, store_errors: Callable[[], int] | None = None) -> None:
        self._metrics = metrics
        self._store_errors = store_errors

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        rows = self._metrics.snapshot()
        requests = CounterMetricFamily(
            "infergate_key_requests", "Requests admitted per API key.", labels=["key"]
        )
        items = CounterMetricFamily(
            "infergate_key_items",
            "Items (tokens for text models) of admitted requests per API key.",
            labels=["key"],
        )
        rejected = CounterMetricFamily(
            "infergate_key_rejections",
            "Requests refused per API key, by reason.",
            labels=["key", "reason"],
        )
        wait = HistogramMetricFamily(
            "infergate_key_queue_wait_seconds",
            "Time from enqueue to dispatch per API key.",
            labels=["key"],
        )
        for name, c in sorted(rows.items()):
            requests.add_metric([name], c.requests)
            items.add_metric([name], c.items)
            for reason, n in sorted(c.rejected.items()):
                rejected.add_metric([name, reason], n)
            wait.add_metric([name], c.queue_wait_s.cumulative(), c.queue_wait_s.sum)
        yield from (requests, items, rejected, wait)
        if self._store_errors is not None:
            errors = CounterMetricFamily(
                "infergate_rate_limit_store_errors",
                "Rate-limit checks that found the shared store unreachable or failing.",
            )
            errors.add_metric([], self._store_errors())
            yield errors
