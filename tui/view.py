"""What the dashboard shows, computed from two engine snapshots (pure functions, no Textual)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from infergate.engine.executors.upstream.replicas import ReplicaStats
from infergate.engine.snapshot import EngineSnapshot, ModelSnapshot
from infergate.engine.stats import DURATION_BUCKETS, WAIT_BUCKETS

NEAR_FULL = 0.8
"""A queue this full (of its max_queue_size) is shown as trouble."""


def quantile(bounds: Sequence[float], counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile of a fixed-bucket histogram, interpolated inside the bucket."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    running = 0
    lower = 0.0
    for i, n in enumerate(counts):
        upper = bounds[i] if i < len(bounds) else bounds[-1] * 2
        if running + n >= rank and n:
            return lower + (upper - lower) * (rank - running) / n
        running += n
        lower = upper
    return lower


def _delta(a: Sequence[int], b: Sequence[int]) -> list[int]:
    return [max(0, y - x) for x, y in zip(a, b, strict=True)]


@dataclass(frozen=True, slots=True)
class ModelRow:
    name: str
    executor: str
    policy: str
    max_batch_size: int
    max_queue_delay_us: int
    default_priority: int
    req_s: float
    items_s: float
    depths: tuple[int, ...]
    near_full: bool
    p50_ms: float | None
    p99_ms: float | None
    wait_p50_ms: float | None
    wait_p99_ms: float | None
    mean_batch: float | None
    utilisation: float
    rejections_s: dict[str, float]
    replicas: tuple[ReplicaStats, ...] = ()
    """A gateway model's upstream replicas, as of the newer snapshot."""


@dataclass(frozen=True, slots=True)
class HttpRow:
    connections: int
    req_s: float
    by_class_s: tuple[float, ...]
    """Responses/s for 1xx..5xx (index 0 = 1xx)."""
    p50_ms: float | None
    p99_ms: float | None


def model_row(old: ModelSnapshot, new: ModelSnapshot, dt: float) -> ModelRow:
    dt = max(dt, 1e-6)
    finished = (new.succeeded + new.failed) - (old.succeeded + old.failed)
    batches = new.batches - old.batches
    items = new.items - old.items
    lat = _delta(old.latency, new.latency)
    wait = _delta(old.queue_wait, new.queue_wait)
    p50, p99 = quantile(DURATION_BUCKETS, lat, 0.5), quantile(DURATION_BUCKETS, lat, 0.99)
    w50, w99 = quantile(WAIT_BUCKETS, wait, 0.5), quantile(WAIT_BUCKETS, wait, 0.99)
    rej = {
        reason: (n - old.rejected.get(reason, 0)) / dt
        for reason, n in new.rejected.items()
        if n - old.rejected.get(reason, 0) > 0
    }
    near = any(d >= NEAR_FULL * m for d, m in zip(new.depths, new.max_queue_sizes, strict=True))
    return ModelRow(
        name=new.name,
        executor=new.executor + (" (sim)" if new.simulated else ""),
        policy=new.batching.policy,
        max_batch_size=new.batching.max_batch_size,
        max_queue_delay_us=new.batching.max_queue_delay_us,
        default_priority=new.default_priority,
        req_s=finished / dt,
        items_s=items / dt,
        depths=new.depths,
        near_full=near,
        p50_ms=None if p50 is None else p50 * 1e3,
        p99_ms=None if p99 is None else p99 * 1e3,
        wait_p50_ms=None if w50 is None else w50 * 1e3,
        wait_p99_ms=None if w99 is None else w99 * 1e3,
        mean_batch=items / batches if batches else None,
        utilisation=min(1.0, (new.busy_s - old.busy_s) / dt / max(1, new.instances)),
        rejections_s=rej,
        replicas=new.replicas,
    )


def http_row(old: EngineSnapshot, new: EngineSnapshot) -> HttpRow:
    dt = max(new.at - old.at, 1e-6)
    a, b = old.http, new.http
    by_class = tuple(
        (y - x) / dt
        for x, y in zip(a.responses_by_class[1:], b.responses_by_class[1:], strict=True)
    )
    dur = _delta(a.duration_buckets, b.duration_buckets)
    p50, p99 = quantile(DURATION_BUCKETS, dur, 0.5), quantile(DURATION_BUCKETS, dur, 0.99)
    return HttpRow(
        connections=b.connections_open,
        req_s=(b.duration_count - a.duration_count) / dt,
        by_class_s=by_class,
        p50_ms=None if p50 is None else p50 * 1e3,
        p99_ms=None if p99 is None else p99 * 1e3,
    )


def rows(old: EngineSnapshot, new: EngineSnapshot) -> list[ModelRow]:
    by_name = {m.name: m for m in old.models}
    dt = new.at - old.at
    return [model_row(by_name.get(m.name, m), m, dt) for m in new.models]


def fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def replica_lines(replicas: Sequence[ReplicaStats]) -> str:
    """Rich markup: one line per upstream replica (state, in flight, latency, errors,
    ejections), or nothing for a model that runs here."""
    if not replicas:
        return ""
    lines = ["replicas:"]
    for r in replicas:
        state = "[green]healthy[/green]" if r.state == "healthy" else "[bold red]ejected[/]"
        if r.state != "healthy" and r.ejected_for_s is not None:
            state += f" {r.ejected_for_s:.0f}s"
        lines.append(
            f"  {r.url.removeprefix('http://')}  {state}  in flight {r.inflight}  "
            f"{fmt_ms(r.latency_ewma_ms if r.requests else None)} ms  "
            f"errors {r.errors}  ejections {r.ejections}"
        )
    return "\n".join(lines)
