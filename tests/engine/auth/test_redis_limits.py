"""The Redis-backed limiter against a real ``redis-server`` on a free loopback port.

Needs the ``redis-server`` binary (Debian package ``redis-server``) and redis-py; skipped with
the reason otherwise. Exact values use the caller's clock (``server_time=False``); one test
checks Redis's own clock with bounds that no refill during the test can cross.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import redis

from infergate.engine.auth.keys import Key, hash_secret
from infergate.engine.auth.limits import (
    ALLOWED,
    ITEMS,
    ITEMS_OVER_BURST,
    REQUESTS,
    STORE_UNAVAILABLE,
)
from tests.support.wait import wait_until

REDIS_SERVER = shutil.which("redis-server")
# CI installs redis-server (.ci/run), so there a missing binary is a failure, not a skip.
pytestmark = pytest.mark.skipif(
    REDIS_SERVER is None and not os.environ.get("CI"),
    reason="redis-server not installed (apt-get install redis-server)",
)

from infergate.engine.auth.redis_limits import RedisLimiter  # noqa: E402  (needs redis-py)

T0 = 1_700_000_000.0


def _key(name: str = "a", **kw: object) -> Key:
    return msgspec.convert({"name": name, "sha256": hash_secret(name), **kw}, Key)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(self._answers, 10, f"redis-server answers PING on port {self.port}")

    def _answers(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, "redis-server exited"
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path)
    srv.start()
    yield srv
    srv.stop()


async def test_request_limit_with_exact_retry_after(server: RedisServer) -> None:
    lim = RedisLimiter(server.url, server_time=False)
    k = _key(requests_per_second=2, requests_burst=3)
    try:
        for _ in range(3):
            assert await lim.check(k, 1, 0, T0) is ALLOWED
        d = await lim.check(k, 1, 0, T0)
        assert (d.allowed, d.retry_after_s, d.reason) == (False, 0.5, REQUESTS)
        d = await lim.check(k, 1, 0, T0 + 0.25)
        assert d.retry_after_s == 0.25
        assert await lim.check(k, 1, 0, T0 + 0.5) is ALLOWED
        # a full refill after a long pause allows the whole burst again, not more
        assert [(await lim.check(k, 1, 0, T0 + 100)).allowed for _ in range(4)] == [
            True, True, True, False,
        ]  # fmt: skip
    finally:
        await lim.aclose_loop()


async def test_both_limits_take_both_or_neither(server: RedisServer) -> None:
    lim = RedisLimiter(server.url, server_time=False)
    k = _key(requests_per_second=1, requests_burst=2, items_per_minute=60, items_burst=5)
    try:
        assert await lim.check(k, 1, 5, T0) is ALLOWED
        d = await lim.check(k, 1, 1, T0)
        assert (d.allowed, d.retry_after_s, d.reason) == (False, 1.0, ITEMS)
        assert await lim.check(k, 1, 0, T0) is ALLOWED  # the refused check took no request
        d = await lim.check(k, 1, 0, T0)
        assert (d.retry_after_s, d.reason) == (1.0, REQUESTS)
        d = await lim.check(k, 1, 6, T0 + 3600)
        assert (d.retry_after_s, d.reason) == (math.inf, ITEMS_OVER_BURST)
    finally:
        await lim.aclose_loop()


async def test_two_boxes_share_one_limit(server: RedisServer) -> None:
    box1 = RedisLimiter(server.url)  # Redis's clock
    box2 = RedisLimiter(server.url)
    k = _key(requests_per_second=0.001, requests_burst=4)  # one token per 1000 s
    try:
        results = []
        for i in range(8):
            box = box1 if i % 2 else box2
            results.append((await box.check(k, 1, 0, 0.0)).allowed)
        assert results.count(True) == 4
        assert results[:4] == [True] * 4
        d = await box1.check(k, 1, 0, 0.0)
        assert d.reason == REQUESTS
        assert 990 < d.retry_after_s <= 1000
        other = _key("b", requests_per_second=0.001, requests_burst=1)
        assert await box2.check(other, 1, 0, 0.0) is ALLOWED  # keys are separate
        ttl = redis.Redis(port=server.port).pttl("infergate:rl:{a}:r")
        assert 3_990_000 < ttl <= 4_000_001  # expires once the bucket would be full again
    finally:
        await box1.aclose_loop()
        await box2.aclose_loop()


async def test_unlimited_key_never_reaches_redis() -> None:
    lim = RedisLimiter("redis://127.0.0.1:1/0")  # nothing listens there
    assert await lim.check(_key(), 1, 100, T0) is ALLOWED
    assert lim.store_errors == 0


async def test_fail_open_uses_local_buckets_and_recovers(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    lim = RedisLimiter(server.url, server_time=False, retry_interval_s=5)
    k = _key(requests_per_second=1, requests_burst=2)
    try:
        assert await lim.check(k, 1, 0, T0) is ALLOWED
        server.stop()
        # Redis gone: local buckets (full) serve, the outage is counted and logged once
        assert await lim.check(k, 1, 0, T0 + 0.1) is ALLOWED
        assert await lim.check(k, 1, 0, T0 + 0.2) is ALLOWED
        assert not (await lim.check(k, 1, 0, T0 + 0.3)).allowed
        assert not lim.available
        assert lim.store_errors == 1  # later checks skip Redis until the retry interval
        unreachable = [r.message for r in caplog.records if "unreachable" in r.message]
        assert len(unreachable) == 1
        assert unreachable[0].startswith(f"rate-limit store {server.url} unreachable")
        assert unreachable[0].endswith("using local buckets until it returns")
        server.start()
        # still inside the retry interval: local (0.2 tokens at T0 + 0.3, +1/s)
        assert await lim.check(k, 1, 0, T0 + 1.3) is ALLOWED
        assert lim.fallback.tokens("a", T0 + 1.3)[0] == pytest.approx(0.2)
        # past it: Redis again, with the state it had before the outage lost (fresh server)
        for _ in range(2):
            assert await lim.check(k, 1, 0, T0 + 6) is ALLOWED
        assert lim.available
        assert not (await lim.check(k, 1, 0, T0 + 6)).allowed
        assert "is reachable again" in caplog.records[-1].message
    finally:
        await lim.aclose_loop()


async def test_fail_closed_refuses_until_retry(server: RedisServer) -> None:
    lim = RedisLimiter(server.url, server_time=False, fail_closed=True, retry_interval_s=2)
    k = _key(items_per_minute=60, items_burst=10)
    try:
        server.stop()
        d = await lim.check(k, 1, 1, T0)
        assert (d.allowed, d.retry_after_s, d.reason) == (False, 2.0, STORE_UNAVAILABLE)
        d = await lim.check(k, 1, 1, T0 + 1.5)
        assert (d.retry_after_s, d.reason) == (0.5, STORE_UNAVAILABLE)
        assert lim.store_errors == 1
        server.start()
        assert await lim.check(k, 1, 1, T0 + 2) is ALLOWED
        assert lim.available
    finally:
        await lim.aclose_loop()
