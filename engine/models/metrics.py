"""Per-model Prometheus metrics, rendered from the Batchers' stats at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from infergate.engine.executors.upstream.executor import UpstreamExecutor
from infergate.engine.executors.upstream.replicas import EJECTED, HEALTHY
from infergate.engine.models.registry import ModelRegistry
from infergate.engine.scheduler.batcher import Batcher
from infergate.engine.stats import DURATION_BUCKETS, Histogram, cumulative_buckets

Family = CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily


def _hist(name: str, doc: str, per_model: list[tuple[str, Histogram]]) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(name, doc, labels=["model"])
    for model, h in per_model:
        fam.add_metric([model], h.cumulative(), h.sum)
    return fam


class ModelCollector(Collector):
    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Family]:
        models = list(self._registry)
        requests = CounterMetricFamily(
            "infergate_model_requests", "Finished inference requests.", labels=["model", "status"]
        )
        rejections = CounterMetricFamily(
            "infergate_model_rejections", "Requests refused or dropped, by reason.",
            labels=["model", "reason"],
        )  # fmt: skip
        depth = GaugeMetricFamily(
            "infergate_model_queue_depth", "Queued requests.", labels=["model", "priority"]
        )
        busy = CounterMetricFamily(
            "infergate_model_busy_seconds",
            "Executor time spent on batches; rate() / instances is the utilisation.",
            labels=["model"],
        )
        instances = GaugeMetricFamily(
            "infergate_model_instances", "Executor slots.", labels=["model"]
        )
        changes = CounterMetricFamily(
            "infergate_model_config_changes", "Runtime batching changes.", labels=["model"]
        )
        batching = GaugeMetricFamily(
            "infergate_model_batching",
            "Current batching config: max_batch_size and max_queue_delay_us; policy as a label.",
            labels=["model", "policy", "setting"],
        )
        for b in models:
            st = b.stats
            requests.add_metric([b.name, "ok"], st.succeeded)
            requests.add_metric([b.name, "error"], st.failed)
            for reason, n in list(st.rejected.items()):
                rejections.add_metric([b.name, reason], n)
            for level, n in enumerate(b.snapshot_depths(), start=1):
                depth.add_metric([b.name, str(level)], n)
            busy.add_metric([b.name], st.busy_s)
            instances.add_metric([b.name], b.executor.instances)
            changes.add_metric([b.name], st.config_changes)
            cfg = b.batching
            batching.add_metric([b.name, cfg.policy, "max_batch_size"], cfg.max_batch_size)
            batching.add_metric([b.name, cfg.policy, "max_queue_delay_us"], cfg.max_queue_delay_us)
        yield from (requests, rejections, depth, busy, instances, changes, batching)
        yield _hist(
            "infergate_model_queue_wait_seconds", "Time from enqueue to dispatch.",
            [(b.name, b.stats.queue_wait_s) for b in models],
        )  # fmt: skip
        yield _hist(
            "infergate_model_batch_items", "Items per executor call.",
            [(b.name, b.stats.batch_items) for b in models],
        )  # fmt: skip
        yield _hist(
            "infergate_model_batch_requests", "Requests per executor call.",
            [(b.name, b.stats.batch_requests) for b in models],
        )  # fmt: skip
        yield _hist(
            "infergate_model_compute_seconds", "Executor time per batch.",
            [(b.name, b.stats.compute_s) for b in models],
        )  # fmt: skip
        yield from replica_families(models)


def replica_families(models: list[Batcher]) -> list[Family]:
    """Per upstream replica of every gateway model: state, calls in flight, requests, errors,
    ejections and the latency of successful calls (``UpstreamExecutor.replica_stats``)."""
    labels = ["model", "replica"]
    state = GaugeMetricFamily(
        "infergate_upstream_replica_state",
        "1 for the replica's current state (healthy or ejected), 0 for the other.",
        labels=[*labels, "state"],
    )
    inflight = GaugeMetricFamily(
        "infergate_upstream_replica_inflight", "Calls in flight on the replica.", labels=labels
    )
    requests = CounterMetricFamily(
        "infergate_upstream_replica_requests", "Calls the replica answered (any status).",
        labels=labels,
    )  # fmt: skip
    errors = CounterMetricFamily(
        "infergate_upstream_replica_errors",
        "Failed calls (connect, reset, timeout, 5xx, malformed answer).", labels=labels,
    )  # fmt: skip
    ejections = CounterMetricFamily(
        "infergate_upstream_replica_ejections", "Times the replica was ejected.", labels=labels
    )
    latency = HistogramMetricFamily(
        "infergate_upstream_replica_latency_seconds",
        "Duration of successful calls (a streamed call: until its last chunk).", labels=labels,
    )  # fmt: skip
    for b in models:
        if not isinstance(b.executor, UpstreamExecutor):
            continue
        for r in b.executor.replica_stats():
            key = [b.name, r.url]
            for name in (HEALTHY, EJECTED):
                state.add_metric([*key, name], 1.0 if r.state == name else 0.0)
            inflight.add_metric(key, r.inflight)
            requests.add_metric(key, r.requests)
            errors.add_metric(key, r.errors)
            ejections.add_metric(key, r.ejections)
            latency.add_metric(
                key, cumulative_buckets(DURATION_BUCKETS, r.latency_buckets), r.latency_sum_s
            )
    return [state, inflight, requests, errors, ejections, latency]
