"""The one control interface for runtime changes: the admin API, the dashboard and SIGHUP.

Every change is validated into a frozen struct, bounded by the model's ceiling, applied
atomically between batches by the model's Batcher, counted in metrics, and audited: one record
on logger ``infergate.audit`` per change, whose ``fields`` (emitted by the JSON log format) say
who (``actor``), which model and setting, and the values before and after; the record's time is
when.

Loading, reloading and unloading models run on the registry's loading thread: those methods
return a ``concurrent.futures.Future`` (wait on it off the reactors, or ``asyncio.wrap_future``
on one) and audit the outcome, success or failure, when it is known.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import msgspec

from infergate.engine.config import BatchingConfig
from infergate.engine.models.registry import READY, ModelLoadError, ModelRegistry, ModelState
from infergate.engine.scheduler.batcher import Batcher

audit_log = logging.getLogger("infergate.audit")


class ControlError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Control:
    """Thread-safe: reads snapshots, batching changes go through each Batcher's lock, and
    model loads and unloads through the registry's loading thread."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def models(self) -> list[dict[str, Any]]:
        out = []
        for b in self.registry:
            st = b.stats
            out.append(
                {
                    "name": b.name,
                    "task": b.config.task,
                    **b.executor.describe_admin(),
                    "batching": msgspec.to_builtins(b.batching),
                    "priorities": msgspec.to_builtins(b.config.priorities),
                    "queue_depth": b.snapshot_depths(),
                    "stats": {
                        "submitted": st.submitted,
                        "succeeded": st.succeeded,
                        "failed": st.failed,
                        "batches": st.batches,
                        "items": st.items,
                        "rejected": dict(st.rejected),
                        "config_changes": st.config_changes,
                    },
                }
            )
        return out

    def _batcher(self, name: str) -> Batcher:
        b = self.registry.get(name)
        if b is None:
            raise ControlError(404, f"model {name!r} does not exist")
        return b

    def check(self, name: str, batching: BatchingConfig | None = None, default: Any = None) -> None:
        """Raise ControlError (404/400) unless model ``name`` would accept these values.

        The checks that a validated config struct cannot express alone: the model's batch
        ceiling (``Batcher.ceiling``), and its number of priority levels. Used before every
        change, and by the SIGHUP reload to refuse a whole file before applying any of it.
        """
        b = self._batcher(name)
        if batching is not None:
            size = batching.max_batch_size
            if size > b.ceiling:
                raise ControlError(
                    400,
                    f"max_batch_size {size} exceeds model {name}'s ceiling {b.ceiling} "
                    "(max_batch_size_limit, fixed at start)",
                )
        if default is not None:
            if not isinstance(default, int) or isinstance(default, bool):
                raise ControlError(400, "default priority must be an integer")
            levels = b.config.priorities.levels
            if not 1 <= default <= levels:
                raise ControlError(400, f"default priority must be 1..{levels}, got {default}")

    def set_default_priority(self, name: str, level: Any, *, actor: str = "admin") -> int:
        """Set the level of requests that name none, on behalf of ``actor`` (audited).

        Raises:
            ControlError: 404 unknown model, 400 invalid level.
        """
        self.check(name, default=level)
        old = self._batcher(name).set_default_priority(level)
        _audit(actor, name, "priorities.default", old, int(level))
        return int(level)

    def update_batching(
        self, name: str, changes: dict[str, Any], *, actor: str = "admin"
    ) -> BatchingConfig:
        """Merge ``changes`` into model ``name``'s batching config, validate, bound by the
        model's ceiling, apply on behalf of ``actor`` (audited: the fields that differ).

        Raises:
            ControlError: 404 unknown model, 400 invalid change (the message names the field).
        """
        b = self._batcher(name)
        if not isinstance(changes, dict) or not changes:
            raise ControlError(400, "send a JSON object with the batching fields to change")
        merged = {**msgspec.to_builtins(b.batching), **changes}
        try:
            cfg = msgspec.convert(merged, BatchingConfig)
        except msgspec.ValidationError as e:
            raise ControlError(400, f"invalid batching change: {e}") from None
        self.check(name, batching=cfg)
        old = msgspec.to_builtins(b.set_batching(cfg))
        new = msgspec.to_builtins(cfg)
        changed = [k for k in new if new[k] != old.get(k)]
        _audit(
            actor, name, "batching", {k: old.get(k) for k in changed}, {k: new[k] for k in changed}
        )
        return cfg

    # ---- the model repository -------------------------------------------------------------

    def index(self) -> list[dict[str, Any]]:
        """Every model and repository folder with its state (Triton's repository index:
        name, version, state, reason). Thread-safe."""
        return [_index_row(s) for s in self.registry.index()]

    def load_model(
        self, name: str, override: dict[str, Any] | None = None, *, actor: str = "admin"
    ) -> concurrent.futures.Future[dict[str, Any]]:
        """Load model ``name`` from its repository folder (``override``: ``[[models]]`` keys
        over its ``model.toml``), or reload it if it serves, on behalf of ``actor`` (audited).
        Thread-safe; returns at once.

        The future's result is the model's index row; its exception a ControlError: 400 a
        model that cannot be served (the old version, if any, keeps serving), 404 no such
        folder, 500 an unexpected error.
        """
        return self._change_model(
            actor, name, "load", lambda: self.registry.load_now(name, override)
        )

    def unload_model(
        self, name: str, *, actor: str = "admin"
    ) -> concurrent.futures.Future[dict[str, Any]]:
        """Unload model ``name`` on behalf of ``actor`` (audited): queued requests get 503
        ``model_unloaded``, then its memory is freed. Thread-safe; returns at once. The
        future's exception is a ControlError 404 when it is not loaded."""
        return self._change_model(actor, name, "unload", lambda: self.registry.unload_now(name))

    def sync_repository(
        self, *, actor: str = "sighup"
    ) -> list[concurrent.futures.Future[dict[str, Any]]]:
        """Make the served models match the repository folder (SIGHUP): new folders loaded,
        changed ones reloaded (``model.toml`` or the model file), removed ones unloaded, each
        audited. Reads the folder on the calling thread. Returns one future per change."""
        futures = []
        for action, name in self.registry.repository_changes():
            if action == "unload":
                futures.append(self.unload_model(name, actor=actor))
            else:
                futures.append(self.load_model(name, actor=actor))
        return futures

    def _change_model(
        self, actor: str, name: str, action: str, change: Callable[[], ModelState]
    ) -> concurrent.futures.Future[dict[str, Any]]:
        def run() -> dict[str, Any]:
            before = self.registry.state(name)
            try:
                after = change()
            except ModelLoadError as e:
                _audit(actor, name, "model", _brief(before), f"{action} failed: {e.message}")
                raise ControlError(e.status, e.message) from None
            _audit(actor, name, "model", _brief(before), _brief(after))
            return _index_row(after)

        return self.registry.submit(run)


def _index_row(s: ModelState) -> dict[str, Any]:
    row = asdict(s)
    row["version"] = str(s.version) if s.version else ""
    return row


def _brief(s: ModelState | None) -> str:
    """A model's state for the audit log: ``READY v2``, ``UNAVAILABLE (unloaded)``."""
    if s is None:
        return "absent"
    version = f" v{s.version}" if s.version else ""
    return f"{s.state}{version}" + (f" ({s.reason})" if s.state != READY and s.reason else "")


def _audit(actor: str, model: str, setting: str, before: Any, after: Any) -> None:
    """One audit record per applied change (always emitted: changes are rare)."""
    audit_log.info(
        "%s changed %s of model %s: %s -> %s",
        actor, setting, model, before, after,
        extra={"fields": {
            "actor": actor, "model": model, "setting": setting, "before": before, "after": after,
        }},
    )  # fmt: skip
