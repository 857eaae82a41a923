"""Main and sub reactors: one uvloop loop per thread, connections owned by one loop for life.

``handoff`` mode: the MainReactor accepts on the listening socket and hands each connection,
round robin, to a SubReactor (``call_soon_threadsafe`` + ``connect_accepted_socket``).
``reuseport`` mode: every SubReactor accepts on its own SO_REUSEPORT socket and the kernel
spreads connections; the MainReactor then only waits for the stop signal.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
import signal
import socket
import threading
from collections.abc import Callable, Sequence

import uvloop

from engine.config import Limits
from engine.http.protocol import HttpContext, HttpProtocol
from engine.http.router import Router
from engine.stats import ReactorStats

log = logging.getLogger("infergate.net")

ACCEPT_BURST = 64
"""Connections accepted per readiness event before returning to the loop."""
ACCEPT_BACKOFF_S = 0.1
"""Pause of the accept loop after EMFILE/ENFILE, so a full fd table does not spin the CPU."""
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def tick_interval(limits: Limits) -> float:
    """How often a sub-reactor checks connection deadlines and refreshes its Date header."""
    shortest = min(limits.header_timeout_ms, limits.idle_timeout_ms) / 1000
    return max(0.01, min(0.5, shortest / 4))


class SubReactor:
    """A uvloop loop in its own thread that owns the connections handed to it."""

    def __init__(
        self,
        index: int,
        router: Router,
        limits: Limits,
        file_executor: concurrent.futures.ThreadPoolExecutor,
        access_log: bool = False,
    ) -> None:
        self.index = index
        self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        self.stats = ReactorStats()
        self.ctx = HttpContext(self.loop, router, limits, self.stats, file_executor, access_log)
        self._tick_s = tick_interval(limits)
        self._thread = threading.Thread(
            target=self._run, name=f"infergate-sub-{index}", daemon=True
        )
        self._ready = threading.Event()
        self._server: asyncio.AbstractServer | None = None
        self._idle: asyncio.Event | None = None

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        self.loop.call_soon(self._tick)
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def _tick(self) -> None:
        self.ctx.update_date()
        self.ctx.sweep(self.loop.time())
        if self._idle is not None and not self.ctx.connections:
            self._idle.set()
        self.loop.call_later(self._tick_s, self._tick)

    def _factory(self) -> HttpProtocol:
        return HttpProtocol(self.ctx)

    # ---- entry points from other threads ---------------------------------------------------

    def adopt(self, socks: list[socket.socket]) -> None:
        """Take ownership of accepted sockets. Thread-safe."""
        self.loop.call_soon_threadsafe(self._adopt, socks)

    def _adopt(self, socks: list[socket.socket]) -> None:
        for sock in socks:
            self.loop.create_task(self._connect(sock))

    async def _connect(self, sock: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self._factory, sock)
        except OSError as e:
            log.debug("dropping a connection that failed before its first byte: %s", e)
            sock.close()

    def serve_reuseport(self, sock: socket.socket) -> None:
        """Accept on ``sock`` (an SO_REUSEPORT listener) in this reactor. Thread-safe; blocks."""

        async def serve() -> None:
            self._server = await self.loop.create_server(self._factory, sock=sock, backlog=4096)

        asyncio.run_coroutine_threadsafe(serve(), self.loop).result()

    def drain(self, timeout_s: float) -> concurrent.futures.Future[int]:
        """Stop accepting, finish in-flight requests, close idle connections. Thread-safe.

        The future resolves to the number of connections that had to be cut at the timeout.
        """
        return asyncio.run_coroutine_threadsafe(self._drain(timeout_s), self.loop)

    async def _drain(self, timeout_s: float) -> int:
        ctx = self.ctx
        ctx.shutting_down = True
        if self._server is not None:
            self._server.close()
        self._idle = asyncio.Event()
        for conn in list(ctx.connections):
            conn.begin_shutdown()
        if ctx.connections:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout_s)
            except TimeoutError:
                pass
        cut = len(ctx.connections)
        for conn in list(ctx.connections):
            conn.abort()
        return cut

    def stop(self) -> None:
        """Stop the loop and join the thread. Thread-safe."""
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()


class MainReactor:
    """Accepts connections (handoff mode) and coordinates start-up and graceful shutdown."""

    def __init__(
        self,
        subs: Sequence[SubReactor],
        listeners: Sequence[socket.socket],
        mode: str,
        drain_timeout_s: float,
    ) -> None:
        self.subs = subs
        self.listeners = listeners
        self.mode = mode
        self.drain_timeout_s = drain_timeout_s
        self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._next = 0
        self._accept_paused = False
        self._started = threading.Event()
        self.on_sighup: Callable[[], None] | None = None
        """Called on the main reactor's loop for SIGHUP (config reload), if set."""

    def run(self, install_signals: bool = True, on_ready: Callable[[], None] | None = None) -> int:
        """Serve until ``request_stop`` or SIGTERM/SIGINT; returns connections cut at drain."""
        asyncio.set_event_loop(self.loop)
        try:
            return self.loop.run_until_complete(self._main(install_signals, on_ready))
        finally:
            self.loop.close()

    async def _main(self, install_signals: bool, on_ready: Callable[[], None] | None) -> int:
        self._stop = asyncio.Event()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.loop.add_signal_handler(sig, self._stop.set)
            if self.on_sighup is not None:
                self.loop.add_signal_handler(signal.SIGHUP, self.on_sighup)
        if self.mode == "handoff":
            self.loop.add_reader(self.listeners[0].fileno(), self._on_acceptable)
        self._started.set()
        if on_ready is not None:
            on_ready()
        await self._stop.wait()
        log.info(
            "shutting down: no new connections, draining for up to %.1fs", self.drain_timeout_s
        )
        if self.mode == "handoff" and not self._accept_paused:
            self.loop.remove_reader(self.listeners[0].fileno())
        for sock in self.listeners:
            sock.close()
        drains = [asyncio.wrap_future(s.drain(self.drain_timeout_s)) for s in self.subs]
        cut = sum(await asyncio.gather(*drains))
        for sub in self.subs:
            sub.stop()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                self.loop.remove_signal_handler(sig)
        log.info("stopped (%d connection(s) cut at the drain timeout)", cut)
        return cut

    def request_stop(self) -> None:
        """Begin graceful shutdown. Thread-safe."""
        self._started.wait()
        stop = self._stop
        assert stop is not None
        self.loop.call_soon_threadsafe(stop.set)

    def _on_acceptable(self) -> None:
        listener = self.listeners[0]
        subs = self.subs
        n = len(subs)
        batches: list[list[socket.socket]] = [[] for _ in range(n)]
        for _ in range(ACCEPT_BURST):
            try:
                conn, _addr = listener.accept()
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno in _RESOURCE_ERRNOS:
                    log.warning("accept paused for %.1fs: %s", ACCEPT_BACKOFF_S, e.strerror)
                    self.loop.remove_reader(listener.fileno())
                    self._accept_paused = True
                    self.loop.call_later(ACCEPT_BACKOFF_S, self._resume_accept)
                    break
                if e.errno == errno.ECONNABORTED:
                    continue
                raise
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            batches[self._next].append(conn)
            self._next = (self._next + 1) % n
        for sub, batch in zip(subs, batches, strict=True):
            if batch:
                sub.adopt(batch)

    def _resume_accept(self) -> None:
        assert self._stop is not None
        if self._accept_paused and not self._stop.is_set():
            self._accept_paused = False
            self.loop.add_reader(self.listeners[0].fileno(), self._on_acceptable)


def open_listeners(host: str, port: int, count: int, reuseport: bool) -> list[socket.socket]:
    """Bind the listening socket(s). With ``reuseport``, ``count`` sockets share one port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks: list[socket.socket] = []
    try:
        for _ in range(count if reuseport else 1):
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuseport:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]  # later sockets join the port the first one got
            sock.listen(4096)
            sock.setblocking(False)
    except OSError:
        for s in socks:
            s.close()
        raise
    return socks
