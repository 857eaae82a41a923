"""The one control interface for runtime changes (admin API now, the TUI later).

Every change is validated into a frozen struct, bounded by the model's ceiling, applied
atomically between batches by the model's Batcher, counted in metrics, and audited: one record
on logger ``infergate.audit`` per change, whose ``fields`` (emitted by the JSON log format) say
who (``actor``), which model and setting, and the values before and after; the record's time is
when.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from engine.config import BatchingConfig
from engine.models.registry import ModelRegistry
from engine.scheduler.batcher import Batcher

audit_log = logging.getLogger("infergate.audit")


class ControlError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Control:
    """Thread-safe: reads snapshots, and changes go through each Batcher's lock."""

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


def _audit(actor: str, model: str, setting: str, before: Any, after: Any) -> None:
    """One audit record per applied change (always emitted: changes are rare)."""
    audit_log.info(
        "%s changed %s of model %s: %s -> %s",
        actor, setting, model, before, after,
        extra={"fields": {
            "actor": actor, "model": model, "setting": setting, "before": before, "after": after,
        }},
    )  # fmt: skip
