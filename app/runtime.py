"""Wiring the engine to the terminal: logging, the dashboard's view, SIGHUP reloads."""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec

from app.config import ConfigError, load_config
from engine.control import Control, ControlError
from engine.server import Server
from engine.snapshot import EngineSnapshot, take

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


class ServerView:
    """What the dashboard reads and controls (tui.app.EngineView)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.control: Control = server.control

    def snapshot(self) -> EngineSnapshot:
        return take(self.server)


def reload_batching(server: Server, path: str | None, overrides: dict[str, Any]) -> None:
    """Re-read ``path`` and apply each model's ``batching`` and default priority through the
    control interface. Anything else that changed is reported, not applied (needs a restart).
    A file that does not validate changes nothing."""
    if path is None:
        log.warning("SIGHUP: no config file to reload (started without --config)")
        return
    try:
        new = load_config(path, overrides).server
    except ConfigError as e:
        log.error("SIGHUP: config not reloaded: %s", e)
        return
    control = server.control
    current = {m.name: m for m in server.config.models}
    for m in new.models:
        if m.name not in current:
            log.warning("SIGHUP: model %s is new; adding models needs a restart", m.name)
            continue
        try:
            control.update_batching(m.name, msgspec.to_builtins(m.batching))
            control.set_default_priority(m.name, m.priorities.default)
        except ControlError as e:
            log.error("SIGHUP: model %s not changed: %s", m.name, e.message)
    for name in current.keys() - {m.name for m in new.models}:
        log.warning("SIGHUP: model %s was removed from the file; removing needs a restart", name)
    log.info("SIGHUP: batching reloaded from %s", path)
