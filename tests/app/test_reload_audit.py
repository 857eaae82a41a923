"""A SIGHUP reload names itself in the audit log."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from infergate.app.config import load_config
from infergate.app.runtime import reload_batching
from infergate.engine.server import Server

CONFIG = """
listen = "127.0.0.1:0"
admin_listen = ""
sub_reactors = 1
[[models]]
name = "sim"
executor = "sim"
[models.batching]
max_batch_size = {batch}
"""


def test_sighup_changes_are_audited_as_sighup(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(CONFIG.format(batch=8), encoding="utf-8")
    server = Server(load_config(str(path)).server)
    path.write_text(CONFIG.format(batch=4), encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="infergate.audit"):
        reload_batching(server, str(path), {})
    [audit] = [r for r in caplog.records if r.name == "infergate.audit"]
    fields = audit.fields  # type: ignore[attr-defined]
    assert fields["actor"] == "sighup"
    assert fields["model"] == "sim"
    assert fields["before"] == {"max_batch_size": 8}
    assert fields["after"] == {"max_batch_size": 4}
