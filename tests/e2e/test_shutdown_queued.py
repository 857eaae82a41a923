"""Shutdown with inference queued (issue 7.7): at the drain cut-off queued work is answered 503
``shutting_down`` instead of a reset, the process waits only for the running batch, and with
``drain_grace_ms`` the listener keeps accepting while ``/healthz`` answers 503."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.support.client import ConnectionClosedError, RawConnection, build_request
from tests.support.server import ServerProcess
from tests.support.wait import wait_until

BATCH_S = 1.5
CONFIG = f"""
listen = "127.0.0.1:0"
sub_reactors = 1
[limits]
drain_timeout_ms = 300
drain_grace_ms = {{grace}}
[[models]]
name = "slow"
executor = "sim"
dim = 4
base_us = {int(BATCH_S * 1e6)}
per_item_us = 0
[models.batching]
policy = "off"
"""
BODY = json.dumps({"model": "slow", "input": "x"}).encode()


def _start(tmp_path: Path, grace_ms: int = 0) -> ServerProcess:
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG.format(grace=grace_ms), encoding="utf-8")
    return ServerProcess(cfg)


def _stats(server: ServerProcess) -> dict[str, object]:
    assert server.admin_port is not None
    with RawConnection(server.admin_port) as c:
        [model] = c.request("GET", "/admin/models").json()["models"]
    return model  # type: ignore[no-any-return]


def test_queued_work_gets_503_at_the_cut_off_and_the_process_waits_for_one_batch(
    tmp_path: Path,
) -> None:
    with _start(tmp_path) as server:
        conns = [RawConnection(server.port, timeout=15) for _ in range(4)]
        try:
            for c in conns:
                c.send(build_request("POST", "/v1/embeddings", body=BODY))
            # one runs, three wait in the queue
            wait_until(lambda: _stats(server)["queue_depth"] == [3, 0], 10, "three are queued")
            t0 = time.monotonic()
            server.signal()
            answers = []
            for c in conns:
                try:
                    answers.append(c.read_response())
                except (ConnectionClosedError, OSError):
                    answers.append(None)  # the running one is cut at the drain timeout
            code = server.wait(15)
            elapsed = time.monotonic() - t0
        finally:
            for c in conns:
                c.close()
    shed = [r for r in answers if r is not None and r.status == 503]
    assert len(shed) == 3, [(r.status, r.body) if r else None for r in answers]
    for r in shed:
        assert json.loads(r.body)["error"]["code"] == "shutting_down"
        assert r.header("x-infergate-drop-reason") == "shutting_down"
        assert r.header("retry-after") is not None
    assert code in (0, 3), server.log_text()
    # drain timeout + one batch, with slack for a loaded machine; before the fix the three
    # queued batches ran too (4 x 1.5 s) and their clients got a reset
    assert elapsed < 0.3 + BATCH_S + 2.0, elapsed


def test_drain_grace_keeps_accepting_while_healthz_answers_503(tmp_path: Path) -> None:
    with _start(tmp_path, grace_ms=60_000) as server:
        with RawConnection(server.port) as c:
            assert c.request("GET", "/healthz").status == 200
        server.signal()

        def healthz_status() -> int:
            with RawConnection(server.port) as c:  # a new connection: still accepted
                return c.request("GET", "/healthz").status

        wait_until(lambda: healthz_status() == 503, 10, "/healthz answers 503 during the grace")
        with RawConnection(server.port) as c:  # and the box still serves during the grace
            r = c.request("POST", "/v1/embeddings", body=BODY)
            assert r.status == 200
        server.signal()  # a second stop skips the rest of the grace
        assert server.wait(15) == 0, server.log_text()
