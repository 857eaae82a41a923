"""The dynamic registry: reload swaps, lookups during swaps, retire and unload semantics, the
SIGHUP plan and Control's audited load/unload (sim executor, repository folders in tmp)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from infergate.engine.config import BatchingConfig, ModelConfig
from infergate.engine.control import Control, ControlError
from infergate.engine.executors.base import Executor
from infergate.engine.executors.sim import SimExecutor
from infergate.engine.models.registry import (
    READY,
    UNAVAILABLE,
    UNLOADED,
    ModelLoadError,
    ModelRegistry,
)
from infergate.engine.models.repository import scan_folder
from infergate.engine.scheduler.batcher import Batcher
from infergate.engine.scheduler.queues import MODEL_UNLOADED, InferRequest, Rejection
from tests.support.wait import wait_until

TIMEOUT_S = 10


class Gate(Executor):
    """Blocks every batch until the test opens the gate; records whether it was closed."""

    kind = "gate"

    def __init__(self) -> None:
        super().__init__(1)
        self.open = threading.Event()
        self.started = threading.Semaphore(0)
        self.closed = False

    def run(self, items: list[Any], slot: int) -> Sequence[Any]:
        self.started.release()
        assert self.open.wait(TIMEOUT_S)
        return [x * 10 for x in items]

    def close(self) -> None:
        self.closed = True


class Waiter:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.req: InferRequest | None = None

    def __call__(self, req: InferRequest) -> None:
        self.req = req
        self.done.set()

    def result(self) -> InferRequest:
        assert self.done.wait(TIMEOUT_S), "request never finished"
        assert self.req is not None
        return self.req


def submit(b: Batcher, items: list[Any]) -> Waiter:
    w = Waiter()
    b.submit(InferRequest(items, "k", 1, w))
    return w


def write_model(repo: Path, name: str, dim: int, base_us: int = 0) -> Path:
    folder = repo / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.toml").write_text(
        f'task = "embeddings"\nexecutor = "sim"\ndim = {dim}\nbase_us = {base_us}\n'
        'per_item_us = 0\n[batching]\npolicy = "off"\nmax_batch_size = 1\n'
    )
    return folder


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "models"
    write_model(path, "m", dim=4)
    return path


@pytest.fixture
def registry(repo: Path) -> Iterator[ModelRegistry]:
    cfg = scan_folder(str(repo / "m")).config  # as app.config merges it at start-up
    sim = ModelConfig(name="cfg", dim=4)
    r = ModelRegistry([cfg, sim], str(repo.parent), str(repo))
    r.load()
    yield r
    r.close()


def dim_of(b: Batcher) -> int:
    w = submit(b, ["x"])
    req = w.result()
    assert req.error is None
    return len(req.outputs[0][0])  # (vector, tokens)


def test_retire_finishes_queued_work_on_the_old_instance_and_forwards_late_submits() -> None:
    old = Batcher(ModelConfig(name="g", batching=BatchingConfig(policy="off")), gate := Gate())
    new = Batcher(ModelConfig(name="g", dim=4), SimExecutor(1, "embeddings", 4, 0, 0, 0))
    old.start()
    new.start()
    running = submit(old, [1])
    assert gate.started.acquire(timeout=TIMEOUT_S)
    queued = [submit(old, [2]), submit(old, [3])]
    old.retire(new)
    late = submit(old, ["late"])  # looked the model up before the swap
    assert late.result().error is None
    assert len(late.result().outputs[0][0]) == 4  # answered by the new instance
    assert not gate.closed
    gate.open.set()
    assert [w.result().outputs for w in (running, *queued)] == [[10], [20], [30]]
    assert old.wait_retired(TIMEOUT_S)
    assert gate.closed  # the old executor's memory is released once drained
    new.close()


def test_reload_swaps_the_model_and_keeps_the_old_one_until_drained(
    registry: ModelRegistry, repo: Path
) -> None:
    old = registry.get("m")
    assert old is not None
    assert dim_of(old) == 4
    write_model(repo, "m", dim=8)
    state = registry.load_now("m")
    assert (state.state, state.version) == (READY, 2)
    new = registry.get("m")
    assert new is not None
    assert new is not old
    assert dim_of(new) == 8
    assert dim_of(old) == 8  # a stale lookup is served by the new version, not refused
    wait_until(lambda: registry.retiring() == 0, TIMEOUT_S, "the old version has drained")


def test_a_failed_reload_keeps_the_old_version_serving_and_says_why(
    registry: ModelRegistry, repo: Path
) -> None:
    old = registry.get("m")
    (repo / "m" / "model.toml").write_text('executor = "sim"\ndim = "not a number"\n')
    with pytest.raises(ModelLoadError) as e:
        registry.load_now("m")
    assert e.value.status == 400
    assert "dim" in e.value.message
    assert registry.get("m") is old
    assert old is not None
    assert dim_of(old) == 4
    [row] = [s for s in registry.index() if s.name == "m"]
    assert (row.state, row.version) == (READY, 1)
    assert "version 2 failed to load" in row.reason
    assert "dim" in row.reason


def test_a_new_folder_that_fails_is_unavailable_with_the_reason(
    registry: ModelRegistry, repo: Path
) -> None:
    (repo / "broken").mkdir()
    with pytest.raises(ModelLoadError):
        registry.load_now("broken")
    [row] = [s for s in registry.index() if s.name == "broken"]
    assert row.state == UNAVAILABLE
    assert "model.onnx" in row.reason
    assert registry.get("broken") is None
    with pytest.raises(ModelLoadError) as e:
        registry.load_now("nothing-here")
    assert e.value.status == 404


def test_unload_answers_queued_requests_503_and_frees_the_model(
    registry: ModelRegistry, repo: Path
) -> None:
    write_model(repo, "slow", dim=4, base_us=200_000)
    registry.load_now("slow")
    b = registry.get("slow")
    assert b is not None
    waiters = [submit(b, [i]) for i in range(3)]  # one runs (200 ms), two queue
    registry.unload_now("slow")
    assert registry.get("slow") is None
    errors = [w.result().error for w in waiters]
    shed = [e for e in errors if e is not None]
    assert len(shed) >= 2
    assert all(e.status == 503 and e.reason == MODEL_UNLOADED for e in shed)
    with pytest.raises(Rejection) as late:
        submit(b, ["late"])
    assert late.value.reason == MODEL_UNLOADED
    [row] = [s for s in registry.index() if s.name == "slow"]
    assert (row.state, row.reason) == (UNAVAILABLE, UNLOADED)


def test_lookups_never_miss_during_reloads(registry: ModelRegistry, repo: Path) -> None:
    stop = threading.Event()
    misses: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            if registry.get("m") is None:
                misses.append("get")
            if sorted(b.name for b in registry) != ["cfg", "m"]:
                misses.append("iter")

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(5):
            write_model(repo, "m", dim=4 + i)
            registry.load_now("m")
    finally:
        stop.set()
        t.join(TIMEOUT_S)
    assert misses == []
    state = registry.state("m")
    assert state is not None
    assert state.version == 6


def test_sighup_plan_loads_new_reloads_changed_unloads_removed(
    registry: ModelRegistry, repo: Path
) -> None:
    assert registry.repository_changes() == []
    write_model(repo, "fresh", dim=4)
    write_model(repo, "m", dim=16)
    assert registry.repository_changes() == [("load", "fresh"), ("reload", "m")]
    registry.load_now("fresh")
    registry.load_now("m")
    registry.unload_now("fresh")
    assert registry.repository_changes() == []  # unloaded on purpose: stays unloaded
    (repo / "m" / "model.toml").rename(repo.parent / "m.toml")
    (repo / "m").rmdir()
    assert registry.repository_changes() == [("unload", "m")]


def test_control_load_and_unload_are_audited_with_the_actor(
    registry: ModelRegistry, repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    control = Control(registry)
    write_model(repo, "extra", dim=4)
    with caplog.at_level(logging.INFO, logger="infergate.audit"):
        row = control.load_model("extra", actor="tester").result(TIMEOUT_S)
        assert row == {
            "name": "extra", "version": "1", "state": READY, "reason": "", "origin": "repository"
        }  # fmt: skip
        control.unload_model("extra", actor="tester").result(TIMEOUT_S)
        with pytest.raises(ControlError) as e:
            control.unload_model("extra", actor="tester").result(TIMEOUT_S)
        assert e.value.status == 404
    audits = [r.fields for r in caplog.records if r.name == "infergate.audit"]  # type: ignore[attr-defined]
    assert [(a["actor"], a["model"], a["after"]) for a in audits] == [
        ("tester", "extra", "READY v1"),
        ("tester", "extra", "UNAVAILABLE v1 (unloaded)"),
        ("tester", "extra", "unload failed: model 'extra' is not loaded"),
    ]
    states = {r["name"]: r["state"] for r in control.index()}
    assert states == {"cfg": READY, "extra": UNAVAILABLE, "m": READY}
