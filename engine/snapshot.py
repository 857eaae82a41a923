"""Point-in-time copies of the engine's counters for dashboards (the TUI).

Reading a snapshot takes no lock that the request path holds: per-reactor and per-model
counters are plain attributes read under the GIL, queue depths are ``len`` of deques; the
models are those of one published registry dict (a reload or unload swaps the dict, never
changes it under the loop). Values of different models may be a request apart; each value is
whole.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from infergate.engine.config import BatchingConfig
from infergate.engine.executors.upstream.executor import UpstreamExecutor
from infergate.engine.executors.upstream.replicas import ReplicaStats
from infergate.engine.stats import HttpSnapshot, snapshot

if TYPE_CHECKING:
    from infergate.engine.server import Server


@dataclass(frozen=True, slots=True)
class ModelSnapshot:
    name: str
    task: str
    executor: str
    simulated: bool
    instances: int
    batching: BatchingConfig
    default_priority: int
    levels: int
    depths: tuple[int, ...]
    max_queue_sizes: tuple[int, ...]
    submitted: int
    succeeded: int
    failed: int
    items: int
    batches: int
    busy_s: float
    rejected: dict[str, int]
    batch_items: tuple[int, ...]
    """Histogram counts (bounds: engine.stats.BATCH_BUCKETS + inf)."""
    latency: tuple[int, ...]
    """Histogram counts (bounds: engine.stats.DURATION_BUCKETS + inf)."""
    queue_wait: tuple[int, ...]
    """Histogram counts (bounds: engine.stats.WAIT_BUCKETS + inf)."""
    replicas: tuple[ReplicaStats, ...] = ()
    """A gateway model's upstream replicas (``ReplicaSet.stats_nowait``); empty otherwise."""


@dataclass(frozen=True, slots=True)
class EngineSnapshot:
    at: float
    """``time.monotonic()`` when taken."""
    http: HttpSnapshot
    models: tuple[ModelSnapshot, ...]


def take(server: Server) -> EngineSnapshot:
    """Copy the engine's counters. Thread-safe, lock-free."""
    models = []
    for b in server.models:  # a snapshot: each load or unload publishes a new dict
        st = b.stats
        prios = b.config.priorities
        models.append(
            ModelSnapshot(
                name=b.name,
                task=b.config.task,
                executor=b.executor.kind,
                simulated=b.executor.simulated,
                instances=b.executor.instances,
                batching=b.batching,
                default_priority=prios.default,
                levels=prios.levels,
                depths=tuple(b.depths_nowait()),
                max_queue_sizes=tuple(
                    prios.level(i).max_queue_size for i in range(1, prios.levels + 1)
                ),
                submitted=st.submitted,
                succeeded=st.succeeded,
                failed=st.failed,
                items=st.items,
                batches=st.batches,
                busy_s=st.busy_s,
                rejected=dict(st.rejected),
                batch_items=tuple(st.batch_items.counts),
                latency=tuple(st.latency_s.counts),
                queue_wait=tuple(st.queue_wait_s.counts),
                replicas=tuple(b.executor.replica_stats_nowait())
                if isinstance(b.executor, UpstreamExecutor)
                else (),
            )
        )
    return EngineSnapshot(time.monotonic(), snapshot(s.stats for s in server.subs), tuple(models))
