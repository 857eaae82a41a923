"""Counters and histograms with one writer each, read as snapshots by anyone.

Every sub-reactor owns one :class:`ReactorStats` and is its only writer, so the request path
never takes a lock: an increment is a plain attribute update on an object no other thread writes.
Readers (``/metrics`` on any reactor, the TUI later) sum the per-reactor objects; a reader may see
one reactor's counters a request apart from another's, never a torn value (ints are replaced
atomically under the GIL).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

# Request duration buckets (seconds), from 50 µs (a cached static file) to 10 s.
DURATION_BUCKETS: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class ReactorStats:
    """Counters of one sub-reactor. Not thread-safe for writing: only the owning loop writes."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "connections_open",
        "connections_refused",
        "connections_total",
        "duration_buckets",
        "duration_count",
        "duration_sum",
        "responses_by_class",
        "slow_readers_cut",
    )

    def __init__(self) -> None:
        self.connections_open = 0
        self.connections_total = 0
        self.connections_refused = 0
        """Closed at once because ``max_connections`` was reached."""
        self.slow_readers_cut = 0
        """Aborted by ``send_timeout_ms`` or ``max_unsent_bytes``."""
        self.bytes_in = 0
        self.bytes_out = 0
        # index = status // 100 (1xx..5xx); index 0 unused
        self.responses_by_class = [0, 0, 0, 0, 0, 0]
        # one slot per bucket plus +Inf
        self.duration_buckets = [0] * (len(DURATION_BUCKETS) + 1)
        self.duration_sum = 0.0
        self.duration_count = 0

    def observe_response(self, status: int, seconds: float) -> None:
        """Count one final response. Owning loop only."""
        self.responses_by_class[status // 100] += 1
        self.duration_buckets[bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.duration_sum += seconds
        self.duration_count += 1


BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
WAIT_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
)  # fmt: skip


class Histogram:
    """Fixed-bucket histogram. One writer (the owner's lock or thread); readers copy."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        return cumulative_buckets(self.bounds, list(self.counts))


def cumulative_buckets(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    """Prometheus histogram buckets (``le`` label, running count) from per-bucket counts."""
    out: list[tuple[str, float]] = []
    running = 0
    for bound, n in zip((*bounds, float("inf")), counts, strict=True):
        running += n
        out.append(("+Inf" if bound == float("inf") else repr(bound), running))
    return out


class ModelStats:
    """Counters of one model. Written under its Batcher's lock (which the scheduling already
    holds, so no extra lock); read without it by /metrics and the TUI."""

    def __init__(self, levels: int) -> None:
        self.levels = levels
        self.submitted = 0
        self.succeeded = 0
        self.failed = 0
        self.rejected: dict[str, int] = defaultdict(int)
        self.config_changes = 0
        self.batches = 0
        self.batch_errors = 0
        self.items = 0
        self.busy_s = 0.0
        self.batch_items = Histogram(BATCH_BUCKETS)
        self.batch_requests = Histogram(BATCH_BUCKETS)
        self.compute_s = Histogram(DURATION_BUCKETS)
        self.queue_wait_s = Histogram(WAIT_BUCKETS)
        self.latency_s = Histogram(DURATION_BUCKETS)
        """Enqueue to all outputs ready (queue wait + compute of every part)."""

    def observe_batch(self, items: int, requests: int, seconds: float, failed: bool) -> None:
        self.batches += 1
        self.items += items
        self.busy_s += seconds
        self.batch_errors += failed
        self.batch_items.observe(items)
        self.batch_requests.observe(requests)
        self.compute_s.observe(seconds)

    def observe_request(self, req: Any, now: float, ok: bool) -> None:
        if ok:
            self.succeeded += 1
        else:
            self.failed += 1
        self.queue_wait_s.observe(max(0.0, req.dispatched_at - req.enqueued))
        self.latency_s.observe(max(0.0, now - req.enqueued))


@dataclass(frozen=True, slots=True)
class HttpSnapshot:
    """Totals over all reactors at one moment."""

    connections_open: int
    connections_total: int
    bytes_in: int
    bytes_out: int
    responses_by_class: tuple[int, ...]
    duration_buckets: tuple[int, ...]
    duration_sum: float
    duration_count: int
    connections_refused: int = 0
    slow_readers_cut: int = 0


def snapshot(reactors: Iterable[ReactorStats]) -> HttpSnapshot:
    """Sum the counters of several reactors. Thread-safe: only reads."""
    conn_open = conn_total = b_in = b_out = count = refused = cut = 0
    total = 0.0
    classes = [0] * 6
    buckets = [0] * (len(DURATION_BUCKETS) + 1)
    for r in reactors:
        conn_open += r.connections_open
        conn_total += r.connections_total
        b_in += r.bytes_in
        b_out += r.bytes_out
        count += r.duration_count
        refused += r.connections_refused
        cut += r.slow_readers_cut
        total += r.duration_sum
        for i, v in enumerate(r.responses_by_class):
            classes[i] += v
        for i, v in enumerate(r.duration_buckets):
            buckets[i] += v
    return HttpSnapshot(
        conn_open,
        conn_total,
        b_in,
        b_out,
        tuple(classes),
        tuple(buckets),
        total,
        count,
        refused,
        cut,
    )


class HttpCollector(Collector):
    """Prometheus collector that renders the per-reactor counters at scrape time."""

    def __init__(self, reactors: Sequence[ReactorStats]) -> None:
        self._reactors = reactors

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        snap = snapshot(self._reactors)
        yield GaugeMetricFamily(
            "infergate_http_connections_open", "Open client connections.", snap.connections_open
        )
        per_reactor = CounterMetricFamily(
            "infergate_http_connections",
            "Client connections accepted, by the sub-reactor that owns them.",
            labels=["reactor"],
        )
        for i, r in enumerate(self._reactors):
            per_reactor.add_metric([str(i)], r.connections_total)
        yield per_reactor
        yield CounterMetricFamily(
            "infergate_connections_refused",
            "Connections closed at once because limits.max_connections was reached.",
            snap.connections_refused,
        )
        yield CounterMetricFamily(
            "infergate_http_slow_readers_cut",
            "Connections aborted because their client read nothing for limits.send_timeout_ms "
            "or held the most unsent bytes when limits.max_unsent_bytes was reached.",
            snap.slow_readers_cut,
        )
        yield CounterMetricFamily(
            "infergate_http_received_bytes", "Bytes read from clients.", snap.bytes_in
        )
        yield CounterMetricFamily(
            "infergate_http_sent_bytes", "Bytes sent to clients.", snap.bytes_out
        )
        by_class = CounterMetricFamily(
            "infergate_http_responses", "Final responses by status class.", labels=["code"]
        )
        for cls in range(1, 6):
            by_class.add_metric([f"{cls}xx"], snap.responses_by_class[cls])
        yield by_class
        yield HistogramMetricFamily(
            "infergate_http_request_duration_seconds",
            "Time from the first byte of a request to its response being queued for sending.",
            buckets=cumulative_buckets(DURATION_BUCKETS, snap.duration_buckets),
            sum_value=snap.duration_sum,
        )
