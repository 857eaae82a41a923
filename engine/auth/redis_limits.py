"""Rate limits shared across boxes: the same two buckets per key as
:class:`engine.auth.limits.LocalLimiter`, kept in Redis (``[auth] rate_limit_store``).

Each check is one Lua script (one round trip, atomic in Redis) running the generic cell rate
algorithm (GCRA) on both of the key's limits: a limit is a *theoretical arrival time* (TAT)
per key; a request of ``n`` at ``now`` passes when ``max(TAT, now) + n·T - burst·T <= now``
(``T`` = 1/rate), which is exactly a token bucket of ``burst`` tokens that starts full. Either
both limits take the request or neither does, and a refusal returns the exact microseconds
until it would pass (→ ``Retry-After``). Keys live under ``{prefix}{name}`` with a TTL equal to
the time their bucket needs to refill, so idle tenants cost nothing. By default the script
reads Redis's own clock (``TIME``), so boxes with skewed clocks still share one limit.

If Redis is unreachable, checks fall back to local buckets (fail-open, the default) or are
refused with :data:`~engine.auth.limits.STORE_UNAVAILABLE` (``fail_closed``); Redis is tried
again after ``retry_interval_s``; the outage is logged once and counted in
:attr:`RedisLimiter.store_errors`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from infergate.engine.auth.keys import Key
from infergate.engine.auth.limits import (
    ALLOWED,
    ITEMS,
    ITEMS_OVER_BURST,
    REQUESTS,
    STORE_UNAVAILABLE,
    Decision,
    LocalLimiter,
)

log = logging.getLogger("infergate.auth")

GCRA_SCRIPT = """
-- KEYS[1], KEYS[2]: TAT of the request and item limits (µs)
-- ARGV: now_us (< 0: Redis's TIME), then per limit: interval_us (0 = off), burst, n
local now = tonumber(ARGV[1])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function probe(key, interval, burst, n)
  if interval <= 0 or n <= 0 then return nil, 0 end
  if n > burst then return nil, -1 end
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local new_tat = tat + n * interval
  local allow_at = new_tat - burst * interval
  if allow_at > now then return nil, allow_at - now end
  return new_tat, 0
end
local rt, rw = probe(KEYS[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
if rw ~= 0 then return {1, math.ceil(rw)} end
local it, iw = probe(KEYS[2], tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]))
if iw ~= 0 then return {2, math.ceil(iw)} end
if rt then
  redis.call('SET', KEYS[1], string.format('%.0f', rt), 'PX', math.ceil((rt - now) / 1000) + 1)
end
if it then
  redis.call('SET', KEYS[2], string.format('%.0f', it), 'PX', math.ceil((it - now) / 1000) + 1)
end
return {0, 0}
"""
"""Returns ``{0, 0}`` (allowed), ``{1, wait_us}`` (requests) or ``{2, wait_us}`` (items);
``wait_us`` = -1: the request exceeds the burst and can never pass."""


class RedisLimiter:
    """Token buckets (GCRA) in Redis, shared by every box that uses the same store.

    Thread-safe: each event loop (reactor) gets its own Redis client, created on that loop's
    first check and used only from it (a redis-py asyncio client is bound to its loop); the
    outage state is guarded by a lock; the local fallback is itself thread-safe.

    Args:
        url: ``redis://host:6379/0`` (``rediss://`` for TLS).
        fail_closed: refuse checks while Redis is unreachable instead of using local buckets.
        prefix: Redis key prefix; the key name goes in a hash tag (``{name}``) so both limits
            of a key sit in one cluster slot.
        server_time: use Redis's clock; False uses the caller's ``now`` (then every box must
            pass the same wall clock; tests use it to be exact).
        retry_interval_s: after a failure, how long checks skip Redis before trying again.
        timeout_s: connect and command timeout of one check.
    """

    def __init__(
        self,
        url: str,
        *,
        fail_closed: bool = False,
        prefix: str = "infergate:rl:",
        server_time: bool = True,
        retry_interval_s: float = 1.0,
        timeout_s: float = 0.25,
    ) -> None:
        # config
        self.url = url
        self.fail_closed = fail_closed
        self.prefix = prefix
        self.server_time = server_time
        self.retry_interval_s = retry_interval_s
        self.timeout_s = timeout_s
        # per-loop clients, each written and used by its own loop's thread
        self._clients: dict[asyncio.AbstractEventLoop, tuple[aioredis.Redis, Any]] = {}
        # outage state, shared by all loops
        self._lock = threading.Lock()
        self._down_until: float | None = None
        self.store_errors = 0
        """Checks that found Redis unreachable or failing (the metric)."""
        self.fallback = LocalLimiter()
        """Buckets used while Redis is down (fail-open)."""

    # -- the check ----------------------------------------------------------------------------

    def _client(self) -> tuple[aioredis.Redis, Any]:
        loop = asyncio.get_running_loop()
        entry = self._clients.get(loop)
        if entry is None:
            pool = aioredis.ConnectionPool.from_url(
                self.url,
                socket_timeout=self.timeout_s,
                socket_connect_timeout=self.timeout_s,
                retry_on_timeout=False,
            )
            client = aioredis.Redis.from_pool(pool)  # closing the client closes the pool
            entry = (client, client.register_script(GCRA_SCRIPT))
            self._clients[loop] = entry
        return entry

    def _args(self, key: Key, requests: int, items: int, now: float) -> list[float | int]:
        req_interval = 1e6 / key.requests_per_second if key.requests_per_second > 0 else 0
        item_interval = 60e6 / key.items_per_minute if key.items_per_minute > 0 else 0
        now_us = -1 if self.server_time else round(now * 1e6)
        return [
            now_us,
            req_interval,
            key.requests_burst,
            requests,
            item_interval,
            key.items_burst,
            items,
        ]

    async def check(self, key: Key, requests: int, items: int, now: float) -> Decision:
        """See :class:`engine.auth.limits.RateLimiter`. Thread-safe; one round trip."""
        if key.requests_per_second <= 0 and key.items_per_minute <= 0:
            return ALLOWED
        down_until = self._down_until
        if down_until is not None and now < down_until:
            return self._unavailable(key, requests, items, now, down_until)
        _, script = self._client()
        keys = [f"{self.prefix}{{{key.name}}}:r", f"{self.prefix}{{{key.name}}}:i"]
        try:
            code, wait_us = await script(keys=keys, args=self._args(key, requests, items, now))
        except (RedisError, OSError) as e:  # TimeoutError is an OSError
            return self._failed(e, key, requests, items, now)
        if down_until is not None:
            self._recovered()
        return _decision(int(code), int(wait_us))

    def _failed(
        self, e: BaseException, key: Key, requests: int, items: int, now: float
    ) -> Decision:
        with self._lock:
            self.store_errors += 1
            first = self._down_until is None
            self._down_until = now + self.retry_interval_s
            down_until = self._down_until
        if first:
            log.warning(
                "rate-limit store %s unreachable (%s: %s); %s until it returns",
                self.url,
                type(e).__name__,
                e,
                "refusing limited requests" if self.fail_closed else "using local buckets",
            )
        return self._unavailable(key, requests, items, now, down_until)

    def _recovered(self) -> None:
        with self._lock:
            was_down = self._down_until is not None
            self._down_until = None
        if was_down:
            log.warning("rate-limit store %s is reachable again", self.url)

    def _unavailable(
        self, key: Key, requests: int, items: int, now: float, down_until: float
    ) -> Decision:
        if self.fail_closed:
            return Decision(False, max(down_until - now, 0.0), STORE_UNAVAILABLE)
        return self.fallback.check_now(key, requests, items, now)

    @property
    def available(self) -> bool:
        """False while checks skip Redis after a failure."""
        return self._down_until is None

    # -- lifecycle ----------------------------------------------------------------------------

    def retain(self, keys: Iterable[Key]) -> None:
        """After a reload: drop local fallback state of removed keys (Redis state expires by
        itself). Thread-safe."""
        self.fallback.retain(keys)

    async def aclose_loop(self) -> None:
        """Close this loop's client; call on each reactor's loop before it stops."""
        entry = self._clients.pop(asyncio.get_running_loop(), None)
        if entry is not None:
            await entry[0].aclose()

    def close(self) -> None:
        """Forget every client (their loops are closing); prefer :meth:`aclose_loop`."""
        self._clients.clear()


def _decision(code: int, wait_us: int) -> Decision:
    if code == 0:
        return ALLOWED
    reason = REQUESTS if code == 1 else ITEMS
    if wait_us < 0:
        return Decision(False, math.inf, ITEMS_OVER_BURST if code == 2 else REQUESTS)
    return Decision(False, wait_us / 1e6, reason)
