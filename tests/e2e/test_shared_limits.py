"""Rate limits shared through Redis (issue 11), end to end: two infergate processes on one real
``redis-server`` enforce one combined limit per key; stopping Redis mid-test follows the
fail-open (local buckets, logged once, counted) or fail-closed (503) rule, and both recover
when Redis returns."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from infergate.engine.auth.keys import add_key
from tests.engine.auth.test_redis_limits import REDIS_SERVER, RedisServer
from tests.support.client import RawConnection, metric
from tests.support.server import ServerProcess
from tests.support.wait import wait_until

pytestmark = pytest.mark.skipif(
    REDIS_SERVER is None and not os.environ.get("CI"),
    reason="redis-server not installed (apt-get install redis-server)",
)

STATE_TIMEOUT_S = 15.0
BODY = b'{"model": "sim", "input": "x"}'
CONFIG = """
listen = "127.0.0.1:0"
sub_reactors = 1

[auth]
keys_file = "keys.toml"
rate_limit_store = "{url}"
fail_closed = {closed}

[[models]]
name = "sim"
executor = "sim"
dim = 4
base_us = 200
per_item_us = 0
"""


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path)
    srv.start()
    yield srv
    srv.stop()


def _post(port: int, secret: str) -> int:
    with RawConnection(port) as c:
        r = c.request("POST", "/v1/embeddings", headers=[("X-Api-Key", secret)], body=BODY)
        return r.status


def test_two_boxes_share_one_limit_and_fail_open_while_redis_is_away(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    keys = str(tmp_path / "keys.toml")
    secret = add_key(keys, "shared", requests_per_second=0.01, requests_burst=3)
    probe = add_key(keys, "probe", requests_per_second=1000.0, requests_burst=1000)
    cfg = tmp_path / "a.toml"
    cfg.write_text(CONFIG.format(url=redis_server.url, closed="false"))
    with ServerProcess(cfg) as a, ServerProcess(cfg, log_path=tmp_path / "b.log") as b:
        # a burst of 3 for the key across both boxes, not 3 each
        alternate = (a.port, b.port, a.port, b.port, a.port)
        assert [_post(p, secret) for p in alternate] == [200, 200, 200, 429, 429]
        redis_server.stop()
        # fail-open: each box serves from its own local bucket (a fresh burst of 3)
        assert [_post(a.port, secret) for _ in range(4)] == [200, 200, 200, 429]
        assert a.log_text().count("rate-limit store") == 1  # logged once, not per request
        assert "unreachable" in a.log_text()
        with RawConnection(a.port) as c:
            text = c.request("GET", "/metrics").body.decode()
        assert metric(text, "infergate_rate_limit_store_errors_total") >= 1
        redis_server.start()  # same port, empty: the shared bucket starts full again
        for box in (a, b):  # another key's requests bring each box back to Redis

            def back(box: ServerProcess = box) -> bool:
                assert _post(box.port, probe) == 200
                with RawConnection(box.port) as c:
                    text = c.request("GET", "/metrics").body.decode()
                errors = metric(text, "infergate_rate_limit_store_errors_total")
                return errors == 0 or "reachable again" in box.log_text()

            wait_until(back, STATE_TIMEOUT_S, f"box {box.port} uses Redis again")
        # one limit across both boxes again
        assert [_post(p, secret) for p in alternate] == [200, 200, 200, 429, 429]


def test_fail_closed_refuses_with_503_until_redis_returns(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    secret = add_key(str(tmp_path / "keys.toml"), "shared", requests_per_second=100.0,
                     requests_burst=100)  # fmt: skip
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG.format(url=redis_server.url, closed="true"))
    with ServerProcess(cfg) as s:
        assert _post(s.port, secret) == 200
        redis_server.stop()
        with RawConnection(s.port) as c:
            r = c.request("POST", "/v1/embeddings", headers=[("X-Api-Key", secret)], body=BODY)
        assert r.status == 503
        assert r.json()["error"]["code"] == "rate_limit_store_unavailable"
        assert r.header("retry-after") == "1"
        redis_server.start()
        wait_until(lambda: _post(s.port, secret) == 200, STATE_TIMEOUT_S, "served again")


def test_an_unreachable_store_at_start_is_logged_not_fatal(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    secret = add_key(str(tmp_path / "keys.toml"), "shared", requests_per_second=100.0,
                     requests_burst=100)  # fmt: skip
    redis_server.stop()
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG.format(url=redis_server.url, closed="false"))
    with ServerProcess(cfg) as s:
        assert "unreachable at start" in s.log_text()
        assert _post(s.port, secret) == 200  # fail-open: local buckets
