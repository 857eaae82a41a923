"""Snapshot tests of the dashboard's screens, from fixed engine snapshots (deterministic)."""

from __future__ import annotations

from typing import Any

import pytest

from infergate.engine.config import BatchingConfig
from infergate.engine.snapshot import EngineSnapshot, ModelSnapshot
from infergate.engine.stats import BATCH_BUCKETS, DURATION_BUCKETS, WAIT_BUCKETS, HttpSnapshot
from infergate.tui.app import Dashboard

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def model(name: str, scale: int, **kw: Any) -> ModelSnapshot:
    lat = [0] * (len(DURATION_BUCKETS) + 1)
    lat[6] = 40 * scale  # 5 ms bucket
    lat[8] = 2 * scale
    wait = [0] * (len(WAIT_BUCKETS) + 1)
    wait[3] = 30 * scale
    batch = [0] * (len(BATCH_BUCKETS) + 1)
    batch[4] = 5 * scale
    base: dict[str, Any] = {
        "name": name, "task": "embeddings", "executor": "sim", "simulated": True,
        "instances": 1, "batching": BatchingConfig(), "default_priority": 1, "levels": 2,
        "depths": (0, 0), "max_queue_sizes": (10, 10), "submitted": 42 * scale,
        "succeeded": 42 * scale, "failed": 0, "items": 80 * scale, "batches": 5 * scale,
        "busy_s": 0.6 * scale, "rejected": {}, "batch_items": tuple(batch),
        "latency": tuple(lat), "queue_wait": tuple(wait),
    }  # fmt: skip
    base.update(kw)
    return ModelSnapshot(**base)


def http(scale: int) -> HttpSnapshot:
    dur = [0] * (len(DURATION_BUCKETS) + 1)
    dur[6] = 84 * scale
    classes = (0, 0, 84 * scale, 0, 2 * scale, 0)
    return HttpSnapshot(
        3, 4 * scale, 1000 * scale, 5000 * scale, classes, tuple(dur), 0.4 * scale, 84 * scale
    )


class FixedEngine:
    """Two snapshots two seconds apart: the second one has more traffic and some trouble."""

    control: Any = None

    def __init__(self) -> None:
        self.calls = 0

    def snapshot(self) -> EngineSnapshot:
        self.calls += 1
        if self.calls == 1:
            return EngineSnapshot(100.0, http(1), (model("minilm", 1), model("sim-embed", 1)))
        return EngineSnapshot(
            102.0,
            http(3),
            (
                model("minilm", 3),
                model("sim-embed", 3, depths=(9, 1), rejected={"queue_full": 12},
                      batching=BatchingConfig(policy="window", max_queue_delay_us=500)),
            ),
        )  # fmt: skip


def test_main_screen(snap_compare: Any) -> None:
    assert snap_compare(
        Dashboard(FixedEngine(), refresh_s=3600, clock=False), terminal_size=(150, 34)
    )


def test_help_screen(snap_compare: Any) -> None:
    app = Dashboard(FixedEngine(), refresh_s=3600, clock=False)
    assert snap_compare(app, press=["question_mark"], terminal_size=(150, 34))
