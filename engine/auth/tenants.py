"""What the request path needs to know about tenants: the current :class:`KeyStore`, the
per-key concurrency gate, the rate limiter (local or Redis) and the per-key metrics, bundled
in one :class:`Auth` that the Server builds from ``[auth]`` and every inference API reads
(``engine.api.common.authenticate`` / ``admit``).

A reload (SIGHUP, ``POST /admin/keys/reload``) reads the keys file again, swaps the store in
one reference assignment (requests in flight keep the key they were admitted with, no
connection is touched), forgets the limiter and metric state of removed keys, and writes one
audit line naming who asked and which keys were added, removed or changed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from infergate.engine.auth.keys import KeyChanges, KeysFileError, KeyStore, diff_stores
from infergate.engine.auth.limits import ConcurrencyGate, LocalLimiter, RateLimiter
from infergate.engine.auth.metrics import KeyMetrics
from infergate.engine.config import AuthConfig

log = logging.getLogger("infergate.auth")
audit_log = logging.getLogger("infergate.audit")


class AuthConfigError(Exception):
    """``[auth]`` cannot be used at start-up; the message names the file or URL and the
    problem."""


def check_store_url(url: str) -> None:
    """Refuse a ``rate_limit_store`` that is not a usable Redis URL (a start-up error).

    Raises:
        AuthConfigError: naming the URL and what is wrong with it.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise AuthConfigError(
            f"[auth] rate_limit_store {url!r}: use redis://HOST:PORT/DB, rediss://... or "
            "unix:///path/to/redis.sock"
        )
    try:
        port = parts.port
    except ValueError:
        raise AuthConfigError(
            f"[auth] rate_limit_store {url!r}: the port is not a number"
        ) from None
    if parts.scheme != "unix":
        if not parts.hostname:
            raise AuthConfigError(f"[auth] rate_limit_store {url!r}: no host")
        db = parts.path.lstrip("/")
        if db and not db.isdigit():
            raise AuthConfigError(
                f"[auth] rate_limit_store {url!r}: the database must be a number (/0), got {db!r}"
            )
        del port
    elif not parts.path:
        raise AuthConfigError(f"[auth] rate_limit_store {url!r}: no socket path")


class Auth:
    """API keys, limits and per-key metrics, shared by every reactor thread.

    Thread-safe: ``keys`` is an immutable store swapped by :meth:`reload` (one assignment);
    the gate, limiter and metrics are thread-safe; reloads are serialised by a lock.
    """

    __slots__ = (
        "_reload_lock",
        "clock",
        "enabled",
        "fail_closed",
        "gate",
        "keys",
        "keys_file",
        "limiter",
        "metrics",
        "store_url",
    )

    def __init__(
        self,
        keys: KeyStore | None = None,
        limiter: RateLimiter | None = None,
        *,
        keys_file: str = "",
        store_url: str = "",
        fail_closed: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keys = keys if keys is not None else KeyStore()
        """The current keys (swapped by :meth:`reload`)."""
        self.enabled = self.keys.enabled
        """Whether any key is configured: the request path's one check when none is."""
        self.limiter: RateLimiter = limiter if limiter is not None else LocalLimiter()
        self.gate = ConcurrencyGate()
        self.metrics = KeyMetrics()
        self.keys_file = keys_file
        """Absolute path of the keys file ("" when none is configured)."""
        self.store_url = store_url
        self.fail_closed = fail_closed
        self.clock = clock
        """Monotonic seconds for the token buckets (the Redis limiter uses Redis's clock)."""
        self._reload_lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: AuthConfig, base_dir: str) -> Auth:
        """The keys of ``cfg.keys_file`` (relative to ``base_dir``) and the configured store.

        Raises:
            AuthConfigError: the keys file is missing or malformed (the message names the file
                and, for a bad value, the key path), or the store URL is malformed.
        """
        path = os.path.normpath(os.path.join(base_dir, cfg.keys_file)) if cfg.keys_file else ""
        try:
            keys = KeyStore.load(path) if path else KeyStore()
        except KeysFileError as e:
            raise AuthConfigError(str(e)) from None
        limiter: RateLimiter | None = None
        if cfg.rate_limit_store:
            check_store_url(cfg.rate_limit_store)
            from infergate.engine.auth.redis_limits import RedisLimiter  # noqa: PLC0415 - needs redis-py

            limiter = RedisLimiter(cfg.rate_limit_store, fail_closed=cfg.fail_closed)
        return cls(
            keys,
            limiter,
            keys_file=path,
            store_url=cfg.rate_limit_store,
            fail_closed=cfg.fail_closed,
        )

    def store_errors(self) -> int:
        """Checks that found the shared store unreachable (0 without one)."""
        return int(getattr(self.limiter, "store_errors", 0))

    def check_store(self, timeout_s: float = 1.0) -> bool:
        """At start-up: whether the shared store answers a PING. An unreachable store is not
        an error: it is logged, and checks follow ``fail_closed`` until it answers. True
        without a shared store."""
        if not self.store_url:
            return True
        import redis  # noqa: PLC0415 - only with a shared store

        client = redis.Redis.from_url(
            self.store_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        try:
            client.ping()
        except (redis.RedisError, OSError) as e:
            log.warning(
                "rate-limit store %s unreachable at start (%s); %s until it answers",
                self.store_url,
                e,
                "refusing rate-limited requests (503, fail_closed)"
                if self.fail_closed
                else "using local buckets (fail-open)",
            )
            return False
        finally:
            client.close()
        return True

    def reload(self, actor: str) -> KeyChanges:
        """Read the keys file again and swap the store; audited as ``actor``.

        Thread-safe. A file that does not load leaves the current keys in place.

        Raises:
            KeysFileError: no keys file configured, or it cannot be used (named).
        """
        if not self.keys_file:
            raise KeysFileError("no [auth] keys_file is configured: there are no keys to reload")
        with self._reload_lock:
            new = KeyStore.load(self.keys_file)
            old = self.keys
            changes = diff_stores(old, new)
            self.keys = new
            self.enabled = new.enabled
            self.limiter.retain(new.keys)
            self.metrics.retain(new.names())
        audit_log.info(
            "%s reloaded keys %s: added %s, removed %s, changed %s",
            actor, self.keys_file, list(changes.added), list(changes.removed),
            list(changes.changed),
            extra={"fields": {
                "actor": actor, "setting": "keys", "file": self.keys_file,
                "added": list(changes.added), "removed": list(changes.removed),
                "changed": list(changes.changed), "keys": len(new.keys),
            }},
        )  # fmt: skip
        return changes

    def reload_logged(self, actor: str) -> KeyChanges | None:
        """:meth:`reload` for SIGHUP: nothing without a keys file; a file that does not load
        is logged (the current keys stay) instead of raised."""
        if not self.keys_file:
            return None
        try:
            return self.reload(actor)
        except KeysFileError as e:
            log.error("%s: keys not reloaded (the current keys stay): %s", actor, e)
            return None

    def close(self) -> None:
        self.limiter.close()
