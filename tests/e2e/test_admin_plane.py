"""The admin plane: state-changing routes live on the admin listener, never on the public one
unless ``admin_on_public`` is set with a token; ``/metrics`` can move there too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.client import RawConnection, assert_json_error
from tests.support.server import REPO_ROOT, ServerProcess

TOKEN = "admin-token-0123456789abcdef"
MODEL = """
[[models]]
name = "sim"
executor = "sim"
dim = 4
base_us = 100
per_item_us = 0
[models.batching]
max_batch_size = 8
"""
PATCH_BODY = b'{"max_batch_size": 4}'


def _config(tmp_path: Path, top: str = "") -> Path:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'listen = "127.0.0.1:0"\nsub_reactors = 1\n{top}\n{MODEL}', encoding="utf-8")
    return cfg


def _auth(token: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {token}")]


def test_admin_routes_answer_404_on_the_public_listener(tmp_path: Path) -> None:
    with ServerProcess(_config(tmp_path)) as s:
        assert s.admin_port is not None
        assert s.admin_port != s.port
        with RawConnection(s.port) as c:
            assert_json_error(c.request("GET", "/admin/models"), 404)
            assert_json_error(
                c.request("PATCH", "/admin/models/sim/batching", body=PATCH_BODY), 404
            )
            assert_json_error(c.request("DELETE", "/admin"), 404)
            assert c.request("GET", "/healthz").status == 200
        with RawConnection(s.admin_port) as c:
            r = c.request("PATCH", "/admin/models/sim/batching", body=PATCH_BODY)
            assert r.status == 200, r.body
            models = c.request("GET", "/admin/models").json()["models"]
            assert models[0]["batching"]["max_batch_size"] == 4
            assert c.request("GET", "/healthz").status == 200
            assert c.request("GET", "/metrics").status == 200


def test_metrics_can_move_to_the_admin_listener(tmp_path: Path) -> None:
    with ServerProcess(_config(tmp_path, "metrics_on_admin = true")) as s:
        assert s.admin_port is not None
        with RawConnection(s.port) as c:
            assert c.request("GET", "/metrics").status == 404
        with RawConnection(s.admin_port) as c:
            r = c.request("GET", "/metrics")
            assert r.status == 200
            assert b"infergate_model_requests" in r.body


def test_admin_on_public_needs_the_bearer_token_on_both_listeners(tmp_path: Path) -> None:
    top = f'admin_on_public = true\nadmin_token = "{TOKEN}"'
    with ServerProcess(_config(tmp_path, top)) as s:
        assert s.admin_port is not None
        for port in (s.port, s.admin_port):
            with RawConnection(port) as c:
                r = c.request("GET", "/admin/models")
                assert_json_error(r, 401)
                assert r.header("www-authenticate") is not None
                assert_json_error(c.request("GET", "/admin/models", headers=_auth("x" * 28)), 401)
                r = c.request("PATCH", "/admin/models/sim/batching", body=PATCH_BODY)
                assert_json_error(r, 401)
                ok = c.request("GET", "/admin/models", headers=_auth(TOKEN))
                assert ok.status == 200
                r = c.request(
                    "PATCH", "/admin/models/sim/batching", body=PATCH_BODY, headers=_auth(TOKEN)
                )
                assert r.status == 200, r.body


def test_admin_listener_can_be_turned_off(tmp_path: Path) -> None:
    with ServerProcess(_config(tmp_path), extra_args=["--admin-listen", ""]) as s:
        assert s.admin_port is None
        assert "admin: off" in s.ready_line
        with RawConnection(s.port) as c:
            assert_json_error(c.request("GET", "/admin/models"), 404)
            assert c.request("GET", "/metrics").status == 200


def test_admin_on_public_without_a_token_is_refused_at_start(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "admin_on_public = true")
    proc = subprocess.run(
        [sys.executable, "-m", "infergate.app", "--config", str(cfg), "--check-config"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "admin_token" in proc.stderr
