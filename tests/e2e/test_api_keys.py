"""API keys end to end (issue 11): 401/403/429/400/priority lowering on every inference API in
its own error shape, exact Retry-After, concurrency caps, per-key metrics, reloads through the
admin API and SIGHUP without dropping a connection (audited), start-up errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from infergate.engine.auth.keys import add_key, remove_key
from tests.support.client import RawConnection, build_request, metric
from tests.support.server import REPO_ROOT, ServerProcess
from tests.support.wait import wait_until

STATE_TIMEOUT_S = 10.0

CONFIG = """
listen = "127.0.0.1:0"
sub_reactors = 1

[auth]
keys_file = "keys.toml"

[[models]]
name = "sim"
executor = "sim"
dim = 4
base_us = 500
per_item_us = 0
[models.priorities]
levels = 3

[[models]]
name = "slow"
executor = "sim"
dim = 4
base_us = 2000000
per_item_us = 0
"""

EMBED = b'{"model": "sim", "input": "hello"}'
KSERVE = b'{"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]}'


class Box:
    def __init__(self, server: ServerProcess, keys: Path, secrets: dict[str, str]) -> None:
        self.server = server
        self.keys = keys
        self.secrets = secrets

    def bearer(self, name: str) -> list[tuple[str, str]]:
        return [("Authorization", f"Bearer {self.secrets[name]}")]


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    folder = tmp_path_factory.mktemp("keys")
    keys = folder / "keys.toml"
    secrets = {
        "full": add_key(str(keys), "full"),
        "low": add_key(str(keys), "low", max_priority=2),
        "other": add_key(str(keys), "other", models=["slow"]),
        "limited": add_key(str(keys), "limited", requests_per_second=0.1, requests_burst=1),
        "items": add_key(str(keys), "items", items_per_minute=60.0, items_burst=4),
        "one": add_key(str(keys), "one", max_concurrency=1),
    }
    cfg = folder / "c.toml"
    cfg.write_text(CONFIG, encoding="utf-8")
    with ServerProcess(cfg) as s:
        yield Box(s, keys, secrets)


def test_missing_and_wrong_keys_are_401_in_each_api_shape(box: Box) -> None:
    with RawConnection(box.server.port) as c:
        for headers in ([], [("Authorization", "Bearer ig-wrong")], [("X-Api-Key", "nope")]):
            r = c.request("POST", "/v1/embeddings", headers=headers, body=EMBED)
            assert r.status == 401
            err = json.loads(r.body)["error"]
            assert set(err) == {"message", "type", "code"}
            assert err["code"] == "invalid_api_key"
            assert r.header("www-authenticate") == 'Bearer realm="infergate"'
        r = c.request("POST", "/v2/models/sim/infer", body=KSERVE)
        assert r.status == 401
        assert set(r.json()) == {"error"}
        assert isinstance(r.json()["error"], str)
        assert r.header("www-authenticate") == 'Bearer realm="infergate"'
        for path in ("/v1/rerank", "/v1/classify", "/v1/chat/completions"):
            r = c.request("POST", path, body=b'{"model": "sim"}')
            assert r.status == 401, path
            assert r.json()["error"]["code"] == "invalid_api_key"
        # the connection survives every refusal
        r = c.request("POST", "/v1/embeddings", headers=box.bearer("full"), body=EMBED)
        assert r.status == 200, r.body


def test_bearer_and_x_api_key_both_authenticate(box: Box) -> None:
    with RawConnection(box.server.port) as c:
        r = c.request("POST", "/v1/embeddings", headers=box.bearer("full"), body=EMBED)
        assert r.status == 200, r.body
        r = c.request(
            "POST", "/v1/embeddings", headers=[("X-Api-Key", box.secrets["full"])], body=EMBED
        )
        assert r.status == 200, r.body
        r = c.request("POST", "/v2/models/sim/infer", headers=box.bearer("full"), body=KSERVE)
        assert r.status == 200, r.body


def test_a_model_the_key_may_not_use_is_403(box: Box) -> None:
    with RawConnection(box.server.port) as c:
        r = c.request("POST", "/v1/embeddings", headers=box.bearer("other"), body=EMBED)
        assert r.status == 403
        assert r.json()["error"]["code"] == "model_not_allowed"
        r = c.request("POST", "/v2/models/sim/infer", headers=box.bearer("other"), body=KSERVE)
        assert r.status == 403
        assert "may not use model sim" in r.json()["error"]


def test_priority_above_the_ceiling_is_lowered_and_says_so(box: Box) -> None:
    with RawConnection(box.server.port) as c:
        r = c.request(
            "POST", "/v1/embeddings", headers=[*box.bearer("low"), ("X-Priority", "1")], body=EMBED
        )
        assert r.status == 200, r.body
        assert r.header("x-infergate-priority-lowered") == "1->2"
        r = c.request(
            "POST", "/v1/embeddings", headers=[*box.bearer("low"), ("X-Priority", "3")], body=EMBED
        )
        assert r.status == 200
        assert r.header("x-infergate-priority-lowered") is None


def test_rate_limit_is_429_with_the_buckets_retry_after(box: Box) -> None:
    with RawConnection(box.server.port) as c:
        r = c.request("POST", "/v1/embeddings", headers=box.bearer("limited"), body=EMBED)
        assert r.status == 200, r.body
        r = c.request("POST", "/v1/embeddings", headers=box.bearer("limited"), body=EMBED)
        assert r.status == 429
        assert r.json()["error"]["code"] == "rate_limit_requests"
        # 0.1 request/s, bucket of 1 just emptied: 10 s minus the moments since, rounded up
        assert r.header("retry-after") == "10"
        r = c.request("POST", "/v2/models/sim/infer", headers=box.bearer("limited"), body=KSERVE)
        assert r.status == 429
        assert r.header("retry-after") == "10"
        assert "rate limit" in r.json()["error"]


def test_items_over_the_burst_is_400_asking_to_split(box: Box) -> None:
    body = b'{"model": "sim", "input": ["a", "b", "c", "d", "e"]}'
    with RawConnection(box.server.port) as c:
        r = c.request("POST", "/v1/embeddings", headers=box.bearer("items"), body=body)
        assert r.status == 400
        err = r.json()["error"]
        assert err["code"] == "items_exceed_burst"
        assert "split" in err["message"]
        assert r.header("retry-after") is None
        r = c.request(
            "POST",
            "/v1/embeddings",
            headers=box.bearer("items"),
            body=b'{"model": "sim", "input": ["a", "b", "c", "d"]}',
        )
        assert r.status == 200, r.body
        r = c.request("POST", "/v1/embeddings", headers=box.bearer("items"), body=EMBED)
        assert r.status == 429
        assert r.json()["error"]["code"] == "rate_limit_items"
        assert r.header("retry-after") == "1"  # one item at 1/s


def test_concurrency_cap_refuses_the_second_request_in_flight(box: Box) -> None:
    slow = b'{"model": "slow", "input": "x"}'
    with RawConnection(box.server.port) as first, RawConnection(box.server.port) as second:
        first.send(build_request("POST", "/v1/embeddings", box.bearer("one"), slow))
        admin = box.server.admin_port
        assert admin is not None

        def in_flight() -> bool:
            with RawConnection(admin) as a:
                keys = a.request("GET", "/admin/keys").json()["keys"]
            return any(k["name"] == "one" and k["in_flight"] == 1 for k in keys)

        wait_until(in_flight, STATE_TIMEOUT_S, "the first request holds the key's slot")
        r = second.request("POST", "/v1/embeddings", headers=box.bearer("one"), body=slow)
        assert r.status == 429
        assert r.json()["error"]["code"] == "concurrency_limit"
        assert r.header("retry-after") == "1"
        assert first.read_response().status == 200
        # released in a finally: the key may send again
        r = second.request("POST", "/v1/embeddings", headers=box.bearer("one"), body=EMBED)
        assert r.status == 200, r.body


def test_per_key_metrics(box: Box) -> None:
    with RawConnection(box.server.port) as c:
        assert c.request("POST", "/v1/embeddings", headers=box.bearer("full"), body=EMBED).status
        c.request("POST", "/v1/embeddings", headers=box.bearer("other"), body=EMBED)
        text = c.request("GET", "/metrics").body.decode()
    assert metric(text, "infergate_key_requests_total", key="full") >= 1
    assert metric(text, "infergate_key_rejections_total", key="other", reason="model_not_allowed")
    assert metric(text, "infergate_key_queue_wait_seconds_count", key="full") >= 1
    assert 'key="ig-' not in text  # names only, never secrets


def test_keys_reload_through_the_admin_api_and_sighup(box: Box) -> None:
    admin = box.server.admin_port
    assert admin is not None
    with RawConnection(box.server.port) as c, RawConnection(admin) as a:
        assert c.request("POST", "/v1/embeddings", headers=box.bearer("full"), body=EMBED).status
        secret = add_key(str(box.keys), "late")
        late = [("Authorization", f"Bearer {secret}")]
        assert c.request("POST", "/v1/embeddings", headers=late, body=EMBED).status == 401
        r = a.request("POST", "/admin/keys/reload")
        assert r.status == 200, r.body
        assert r.json()["added"] == ["late"]
        assert c.request("POST", "/v1/embeddings", headers=late, body=EMBED).status == 200
        remove_key(str(box.keys), "late")
        box.server.signal(signal.SIGHUP)

        def refused() -> bool:
            r = c.request("POST", "/v1/embeddings", headers=late, body=EMBED)
            return r.status == 401

        wait_until(refused, STATE_TIMEOUT_S, "SIGHUP removes the key")
        # the same connections served throughout
        assert c.request("POST", "/v1/embeddings", headers=box.bearer("full"), body=EMBED).status
    log = box.server.log_text()
    assert "admin reloaded keys" in log
    assert "added ['late']" in log
    assert "sighup reloaded keys" in log
    assert "removed ['late']" in log


def test_keys_routes_are_absent_from_the_public_listener(box: Box) -> None:
    with RawConnection(box.server.port) as c:
        assert c.request("POST", "/admin/keys/reload").status == 404


def _start(tmp_path: Path, auth: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'listen = "127.0.0.1:0"\n[auth]\n{auth}\n', encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "infergate.app", "--config", str(cfg), "--headless"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_malformed_keys_file_is_a_start_up_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "keys.toml").write_text('[[keys]]\nname = "a"\nsha256 = "short"\n')
    done = _start(tmp_path, 'keys_file = "keys.toml"')
    assert done.returncode == 2
    assert str(tmp_path / "keys.toml") in done.stderr
    assert "sha256" in done.stderr
    done = _start(tmp_path, 'keys_file = "absent.toml"')
    assert done.returncode == 2
    assert "absent.toml" in done.stderr
    assert "no such file" in done.stderr


def test_a_malformed_store_url_is_a_start_up_error(tmp_path: Path) -> None:
    done = _start(tmp_path, 'rate_limit_store = "http://localhost:6379"')
    assert done.returncode == 2
    assert "rate_limit_store 'http://localhost:6379'" in done.stderr
