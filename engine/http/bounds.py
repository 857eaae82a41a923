"""Process-wide bounds shared by every sub-reactor: open connections, request-body memory and
unsent response bytes.

The sub-reactors are threads, so these counters are shared between loops. Each is guarded by one
``threading.Lock`` taken for a few bytecodes: uncontended it costs ~0.1 µs, and it is taken per
connection (open/close), per request that has a body (reserve/release), and per write that
happens while a connection is above its write high-water mark, never on a bodiless request.
(``x += n`` on a shared int is not atomic under the GIL: it is a read, an add and a store.)
"""

from __future__ import annotations

import logging
import resource
import threading
from typing import Protocol

from infergate.engine.config import Limits
from infergate.engine.logutil import RateLimitedLog

__all__ = ["Backlogged", "ProcessBounds", "derived_max_connections", "process_bounds"]

log = logging.getLogger("infergate.http")

FD_RESERVE_MIN = 64
FD_RESERVE_MAX = 1024
"""Descriptors kept for files, models, listeners and logs when ``max_connections`` is 0: an
eighth of the limit, at least 64 and at most 1024."""
FD_WARN_FRACTION = 0.9
"""Open connections, as a fraction of what the descriptor limit allows, that trigger a warning."""


def fd_limit() -> int:
    """The process's soft descriptor limit (RLIMIT_NOFILE), or a large number if unlimited."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else int(soft)


def derived_max_connections(nofile: int) -> int:
    """``max_connections = 0``: the descriptor limit minus a reserve."""
    reserve = max(FD_RESERVE_MIN, min(FD_RESERVE_MAX, nofile // 8))
    return max(1, nofile - reserve)


class Backlogged(Protocol):
    """A connection that can hold unsent response bytes."""

    def cut_slow_reader(self) -> None:
        """Abort the connection on its own loop. Thread-safe."""


class ProcessBounds:
    """Counters every sub-reactor of a process shares. Thread-safe (one lock each)."""

    def __init__(self, limits: Limits, nofile: int | None = None) -> None:
        nofile = fd_limit() if nofile is None else nofile
        self.fd_limit = nofile
        self.max_connections = limits.max_connections or derived_max_connections(nofile)
        self.warn_connections = int(min(self.max_connections, nofile) * FD_WARN_FRACTION)
        if self.max_connections > nofile - FD_RESERVE_MIN:
            log.warning(
                "limits.max_connections = %d but the descriptor limit (RLIMIT_NOFILE) is %d: "
                "accepting will fail before the cap; raise the limit (ulimit -n, LimitNOFILE=)",
                self.max_connections,
                nofile,
            )
        self.max_body_memory = limits.max_body_memory_bytes or -1
        self.max_unsent = limits.max_unsent_bytes or -1
        self.limited_log = RateLimitedLog(log)
        """Warnings about these bounds: one per kind per 10 s."""
        self._lock = threading.Lock()
        # guarded by _lock
        self.connections = 0
        self.body_bytes = 0
        self.unsent_bytes = 0
        self._unsent: dict[Backlogged, int] = {}

    # ---- connections -------------------------------------------------------------------------

    def open_connection(self) -> bool:
        """Count a new connection; False (nothing counted) if the cap is reached."""
        with self._lock:
            n = self.connections
            if n >= self.max_connections:
                return False
            self.connections = n + 1
        if n + 1 >= self.warn_connections:
            self.limited_log.warning(
                "descriptors",
                "%d connections open: near the cap of %d (descriptor limit %d)",
                n + 1,
                self.max_connections,
                self.fd_limit,
            )
        return True

    def note_refused(self) -> None:
        """Log (rate-limited) that a connection was refused at the cap."""
        self.limited_log.warning(
            "max_connections",
            "refusing new connections: %d open, limits.max_connections = %d",
            self.connections,
            self.max_connections,
        )

    def close_connection(self) -> None:
        with self._lock:
            self.connections -= 1

    # ---- request bodies ----------------------------------------------------------------------

    def reserve_body(self, n: int) -> bool:
        """Reserve ``n`` bytes of body memory; False (nothing reserved) beyond the cap."""
        with self._lock:
            total = self.body_bytes + n
            if total > self.max_body_memory >= 0:
                return False
            self.body_bytes = total
            return True

    def release_body(self, n: int) -> None:
        with self._lock:
            self.body_bytes -= n

    # ---- unsent response bytes ---------------------------------------------------------------

    def report_unsent(self, conn: Backlogged, n: int) -> Backlogged | None:
        """Record that ``conn`` holds ``n`` unsent bytes (0: none worth tracking).

        Returns the connection that holds the most if the total is over ``max_unsent_bytes``;
        it is already forgotten here, and the caller cuts it (``cut_slow_reader``).
        """
        with self._lock:
            table = self._unsent
            total = self.unsent_bytes - table.pop(conn, 0) + n
            if n:
                table[conn] = n
            if total > self.max_unsent >= 0 and table:
                victim = max(table, key=table.__getitem__)
                self.unsent_bytes = total - table.pop(victim)
                return victim
            self.unsent_bytes = total
            return None


_shared: dict[Limits, ProcessBounds] = {}
_shared_lock = threading.Lock()


def process_bounds(limits: Limits) -> ProcessBounds:
    """The process-wide bounds for ``limits`` (one instance per distinct ``Limits`` value), so
    every sub-reactor built from the same config shares them. Thread-safe."""
    with _shared_lock:
        bounds = _shared.get(limits)
        if bounds is None:
            bounds = _shared[limits] = ProcessBounds(limits)
        return bounds
