"""Wiring the engine to the terminal: logging, the dashboard's view, SIGHUP reloads."""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

import msgspec

from infergate.app.config import ConfigError, load_config
from infergate.engine.control import Control, ControlError
from infergate.engine.models.registry import CONFIG
from infergate.engine.server import Server
from infergate.engine.snapshot import EngineSnapshot, take

log = logging.getLogger("infergate")
_json = msgspec.json.Encoder()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, and a record's ``fields`` if any."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return _json.encode(out).decode()


GC_GEN0_THRESHOLD = 50_000
"""Allocations (minus frees) between young-generation collections; CPython's default is 700.
With 64 requests in flight, a few thousand objects live at once, so at 700 young collections
ran every few requests and passed survivors on towards full collections of the whole heap
(docs/benchmarks.md, "The cyclic garbage collector": kept because it won beside the fix of a
per-request cycle, not alone)."""


def tune_gc() -> None:
    """Once, after start-up: move every object allocated so far (modules, config, models,
    routes) to the permanent generation, so that no collection traverses them again, and make
    young-generation collections rarer (``GC_GEN0_THRESHOLD``). Cycles are still collected."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


class ServerView:
    """What the dashboard reads and controls (tui.app.EngineView)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.control: Control = server.control

    def snapshot(self) -> EngineSnapshot:
        return take(self.server)


def reload_batching(server: Server, path: str | None, overrides: dict[str, Any]) -> None:
    """SIGHUP: re-read ``path`` and the model repository.

    ``[[models]]`` entries: each model's ``batching`` and default priority are applied through
    the control interface, all or nothing (the whole file must validate, and every change must
    be acceptable to its model, before any is applied); other differences (new or removed
    entries, queue sizes, executors...) are reported and need a restart.

    The model repository (the folder given at start): new folders are loaded, changed ones
    (``model.toml`` or the model file) reloaded, removed ones unloaded, on the registry's
    loading thread, each audited as actor ``sighup``; a model unloaded on purpose stays
    unloaded. Runs on the main reactor: nothing here waits for a model to load.
    """
    server.auth.reload_logged("sighup")  # the keys file, audited (see engine.auth.tenants)
    server.reload_tls()  # the certificate and key files (see engine.net.tls)
    if path is None:
        log.warning("SIGHUP: no config file to reload (started without --config)")
    else:
        _reload_config(server, path, overrides)
    if server.models.repository is not None:
        server.models.submit(lambda: _sync_repository(server))


def _sync_repository(server: Server) -> None:
    """On the loading thread: queue the repository's changes after this task."""
    futures = server.control.sync_repository(actor="sighup")
    log.info("SIGHUP: model repository %s: %d change(s) queued", server.models.repository,
             len(futures))  # fmt: skip


def _reload_config(server: Server, path: str, overrides: dict[str, Any]) -> None:
    """The ``[[models]]`` part of a SIGHUP (see ``reload_batching``)."""
    try:
        # the repository is re-read model by model (_sync_repository): one broken folder must
        # not hold back the rest of the file
        new = load_config(path, {**overrides, "model_repository": ""}).server
    except ConfigError as e:
        log.error("SIGHUP: config not reloaded: %s", e)
        return
    from_config = {s.name for s in server.models.index() if s.origin == CONFIG}
    current = {m.name: m for m in server.config.models if m.name in from_config}
    plan = []
    for m in new.models:
        old = current.get(m.name)
        b = server.models.get(m.name)
        if old is None or b is None:
            log.warning("SIGHUP: model %s is new (or not loaded); adding [[models]] entries needs "
                        "a restart", m.name)  # fmt: skip
            continue
        try:
            server.control.check(m.name, m.batching, m.priorities.default)
        except ControlError as e:
            log.error("SIGHUP: config not reloaded: model %s: %s", m.name, e.message)
            return
        restart_only = msgspec.structs.replace(
            m, batching=old.batching, priorities=msgspec.structs.replace(
                m.priorities, default=old.priorities.default
            ),
        )  # fmt: skip
        if restart_only != old:
            log.warning(
                "SIGHUP: model %s has changes besides batching; they need a restart", m.name
            )
        plan.append((m.name, b, m.batching, m.priorities.default))
    for name in current.keys() - {m.name for m in new.models}:
        log.warning("SIGHUP: model %s was removed from the file; removing needs a restart", name)
    changed = 0
    for name, b, batching, default in plan:
        if batching != b.batching:
            server.control.update_batching(name, msgspec.to_builtins(batching), actor="sighup")
            changed += 1
        if default != b.config.priorities.default:
            server.control.set_default_priority(name, default, actor="sighup")
            changed += 1
    log.info("SIGHUP: reloaded %s: %d change(s) applied", path, changed)
