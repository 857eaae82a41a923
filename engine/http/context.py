"""State shared by the connections of one sub-reactor."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from infergate.engine.config import Limits
from infergate.engine.http.bounds import ProcessBounds, process_bounds
from infergate.engine.http.router import Router
from infergate.engine.stats import ReactorStats


class Connection(Protocol):
    """What the reactor and its sweep need from a connection (``HttpProtocol``)."""

    deadline: float

    def on_deadline(self) -> None: ...

    def begin_shutdown(self) -> None: ...

    def abort(self) -> None: ...


class SendWatched(Protocol):
    """A connection with unsent bytes, checked by the sweep (``ConnectionFlow``)."""

    def check_send_progress(self, now: float) -> None: ...


class HttpContext:
    """State shared by the connections of one sub-reactor. Owned by that reactor's loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        router: Router,
        limits: Limits,
        stats: ReactorStats,
        file_executor: ThreadPoolExecutor,
        access_log: bool = False,
        bounds: ProcessBounds | None = None,
    ) -> None:
        self.loop = loop
        self.router = router
        self.limits = limits
        self.stats = stats
        self.file_executor = file_executor
        self.access_log = access_log
        self.bounds = process_bounds(limits) if bounds is None else bounds
        """Shared with the other sub-reactors of the process (thread-safe)."""
        self.connections: set[Connection] = set()
        self.backlog: set[SendWatched] = set()
        """Connections holding unsent bytes whose progress the sweep checks (send timeout)."""
        self.all_closed: asyncio.Event | None = None
        """Set by the drain: connections set it when the last one closes."""
        self.shutting_down = False
        self.wrap_transport: Callable[[asyncio.BaseTransport], asyncio.BaseTransport] | None = None
        """Applied to each connection's transport at ``connection_made`` (TLS:
        ``engine.net.tls.SplitWrites``, set by the reactor). A hook, not a protocol subclass:
        ``HttpProtocol`` may be compiled by mypyc, whose classes interpreted code cannot
        subclass (instances of such a subclass fail to be created)."""
        # Limits in the units the hot path compares with (seconds, bytes), read per request.
        self.header_timeout_s = limits.header_timeout_ms / 1000
        self.idle_timeout_s = limits.idle_timeout_ms / 1000
        self.body_timeout_s = limits.body_timeout_ms / 1000
        self.send_timeout_s = limits.send_timeout_ms / 1000
        self.max_uri = limits.max_uri_bytes
        self.max_header = limits.max_header_bytes
        self.max_body = limits.max_body_bytes
        self.max_pipelined = limits.max_pipelined
        self.write_high = limits.write_high_water
        self.now = loop.time()
        """The loop's clock at the last tick. Deadlines are set from it instead of calling
        ``loop.time()`` three times per request (bench/proto_micro.py: 3.5 -> 3.0 µs per
        request); they fire within one tick of their due time, which the tick keeps small."""
        self.date_line = b""
        self.date_second = -1
        self.update_date()

    def update_date(self) -> None:
        """Refresh the cached ``Date:`` header line (called by the reactor's tick)."""
        now = int(time.time())
        if now != self.date_second:
            self.date_second = now
            self.date_line = b"Date: %s\r\n" % time.strftime(
                "%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)
            ).encode("latin-1")

    def sweep(self, now: float) -> None:
        """Advance the cached clock, fire connection deadlines that passed, and close
        connections whose peer has read nothing for ``send_timeout_ms``. Owning loop only."""
        self.now = now
        for conn in [c for c in self.connections if c.deadline <= now]:
            conn.on_deadline()
        if self.backlog:
            for watched in list(self.backlog):
                watched.check_send_progress(now)

    def connection_closed(self) -> None:
        """A connection left ``connections`` (called by it)."""
        if not self.connections and self.all_closed is not None:
            self.all_closed.set()
