"""Headless operation: status line, JSON access logs, SIGHUP reload of batching."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from tests.support.client import RawConnection
from tests.support.server import ServerProcess
from tests.support.wait import wait_until

RELOAD_TIMEOUT_S = 10.0
"""A SIGHUP reload reads a small file and swaps a reference: far less than this."""

MODEL = """
[[models]]
name = "sim"
executor = "sim"
dim = 4
base_us = 200
per_item_us = 1
[models.batching]
policy = "adaptive"
max_batch_size = {batch}
[models.priorities]
levels = 2
default = {default}
"""


def write(path: Path, batch: int, default: int = 1, extra: str = "") -> None:
    path.write_text(
        f'listen = "127.0.0.1:0"\nsub_reactors = 1\n{extra}\n'
        + MODEL.format(batch=batch, default=default)
    )


def batching(server: ServerProcess) -> dict[str, Any]:
    assert server.admin_port is not None  # /admin/* lives on the admin listener
    with RawConnection(server.admin_port) as c:
        models = c.request("GET", "/admin/models").json()["models"]
    return next(m for m in models if m["name"] == "sim")


def test_status_line_names_address_models_and_executors(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    write(cfg, 8)
    with ServerProcess(cfg) as s:
        assert f"http://127.0.0.1:{s.port}" in s.ready_line
        assert "sim (sim)" in s.ready_line
        assert "reuseport" in s.ready_line


def test_sighup_reloads_batching_without_dropping_connections(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    write(cfg, 8)
    with ServerProcess(cfg) as s, RawConnection(s.port) as kept:
        assert kept.request("GET", "/healthz").status == 200
        write(cfg, 4, default=2)
        s.signal(signal.SIGHUP)

        def reloaded() -> bool:
            m = batching(s)
            return bool(m["batching"]["max_batch_size"] == 4 and m["priorities"]["default"] == 2)

        wait_until(reloaded, RELOAD_TIMEOUT_S, "SIGHUP has reloaded the batching config")
        # the connection opened before the reload still works
        body = b'{"model": "sim", "input": "x"}'
        assert kept.request("POST", "/v1/embeddings", body=body).status == 200
        # a file that does not validate changes nothing and the server keeps running
        cfg.write_text(cfg.read_text().replace("max_batch_size = 4", "max_batch_size = 0"))
        s.signal(signal.SIGHUP)
        wait_until(  # the main reactor logs it
            lambda: "config not reloaded" in s.log_text(),
            RELOAD_TIMEOUT_S,
            "the invalid reload has been reported in the log",
        )
        # ...after which the old settings are still in force and the server still serves
        assert kept.request("POST", "/v1/embeddings", body=body).status == 200
        assert batching(s)["batching"]["max_batch_size"] == 4
        assert s.proc.poll() is None


def test_access_log_is_json_lines_with_model_and_batch(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    write(cfg, 8, extra="access_log = true")
    with ServerProcess(cfg) as s, RawConnection(s.port) as c:
        r = c.request(
            "POST", "/v1/embeddings", body=b'{"model": "sim", "input": ["a", "b"]}',
            headers=[("X-Request-Id", "req-42")],
        )  # fmt: skip
        assert r.status == 200
        # the reactor writes the log line after the response; a second request on the same
        # connection is only answered after that
        assert c.request("GET", "/healthz").status == 200
        lines = [json.loads(x) for x in s.log_text().splitlines() if x.startswith("{")]
    entry = next(x for x in lines if x.get("request_id") == "req-42")
    assert entry["logger"] == "infergate.access"
    assert entry["model"] == "sim"
    assert entry["status"] == 200
    assert entry["items"] == 2
    assert entry["batch_items"] >= 2
    assert entry["queue_us"] >= 0
    assert isinstance(entry["duration_ms"], float)
