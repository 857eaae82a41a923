"""Main and sub reactors: one uvloop loop per thread, connections owned by one loop for life.

``handoff`` mode: the MainReactor accepts on the listening socket and hands each connection,
round robin, to a SubReactor (``call_soon_threadsafe`` + ``connect_accepted_socket``).
``reuseport`` mode: every SubReactor accepts on its own SO_REUSEPORT socket and the kernel
spreads connections; the MainReactor then only waits for the stop signal.

Every accepted connection counts in ``limits.max_connections`` until it closes. Plain HTTP
counts in ``HttpProtocol.connection_made``, called right after accept. With TLS uvloop calls it
only once the handshake is over, so TLS connections are accepted by our own code in both modes
(reuseport: a reader on the SubReactor's socket instead of ``create_server``), reserve their
slot before ``connect_accepted_socket`` (or are closed at once, logged and counted as refused)
and hold it through the handshake (``engine.net.tls.Handshake``).

Shutdown (``MainReactor._shutdown``): ``draining`` turns True at once and, for
``drain_grace_ms``, everything else goes on as usual (load balancers see ``/healthz`` answer 503
and move traffic away); then the listeners close and in-flight requests get
``drain_timeout_ms`` to finish; at that cut-off ``on_cutoff`` answers queued work (503
``shutting_down``), the sub-reactors get up to ``CUTOFF_WRITE_S`` to write those answers, and
what is left is aborted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
import signal
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from typing import Any

import uvloop

from infergate.engine.config import Limits
from infergate.engine.http.bounds import ProcessBounds
from infergate.engine.http.protocol import HttpContext, HttpProtocol
from infergate.engine.http.router import Router
from infergate.engine.logutil import RateLimitedLog
from infergate.engine.net import lent
from infergate.engine.net.tls import TLS_SHUTDOWN_S, Handshake, SplitWrites
from infergate.engine.stats import ReactorStats

log = logging.getLogger("infergate.net")

ACCEPT_BURST = 64
"""Connections accepted per readiness event before returning to the loop."""
ACCEPT_BACKOFF_S = 0.1
"""Pause of the accept loop after EMFILE/ENFILE, so a full fd table does not spin the CPU."""
CANCEL_AT_STOP_S = 1.0
"""How long the tasks left on a stopping sub-reactor's loop get to end once cancelled."""
CUTOFF_WRITE_S = 1.0
"""After ``on_cutoff``, how long the sub-reactors may take to write the answers it produced."""
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
accept_log = RateLimitedLog(log)


def tick_interval(limits: Limits) -> float:
    """How often a sub-reactor checks connection deadlines and refreshes its Date header."""
    shortest = min(limits.header_timeout_ms, limits.idle_timeout_ms) / 1000
    return max(0.01, min(0.5, shortest / 4))


async def _cancel_the_rest(loop: asyncio.AbstractEventLoop) -> None:
    """What ``asyncio.run`` does before closing a loop: cancel the tasks still pending (e.g. a
    gateway call a closing model scheduled here as the reactor stopped) and let them end, so
    that their callbacks run (a batch is answered) instead of being destroyed pending."""
    rest = [t for t in asyncio.all_tasks(loop) if t is not asyncio.current_task()]
    for task in rest:
        task.cancel()
    if rest:
        await asyncio.wait(rest, timeout=CANCEL_AT_STOP_S)


class SubReactor:
    """A uvloop loop in its own thread that owns the connections handed to it."""

    def __init__(
        self,
        index: int,
        router: Router,
        limits: Limits,
        file_executor: concurrent.futures.ThreadPoolExecutor,
        access_log: bool = False,
        bounds: ProcessBounds | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``bounds``: the process-wide caps; by default the one shared by every sub-reactor
        built with equal ``limits`` (``engine.http.bounds.process_bounds``). ``tls``: serve
        HTTPS (``engine.net.tls``); the handshake must finish within ``header_timeout_ms``,
        after which the HTTP layer's own timeouts start (at ``connection_made``)."""
        self.index = index
        self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        self.stats = ReactorStats()
        self.ctx = HttpContext(
            self.loop, router, limits, self.stats, file_executor, access_log, bounds
        )
        self._tick_s = tick_interval(limits)
        self._thread = threading.Thread(
            target=self._run, name=f"infergate-sub-{index}", daemon=True
        )
        self._ready = threading.Event()
        self._server: asyncio.AbstractServer | None = None
        self._listener: socket.socket | None = None
        """TLS in reuseport mode: this reactor's own copy of its listener, accepted here."""
        self._accept_paused = False
        self._tls: dict[str, Any] = {}
        if tls is not None:
            self.ctx.wrap_transport = SplitWrites
            self._tls = {
                "ssl": tls,
                "ssl_handshake_timeout": limits.header_timeout_ms / 1000,
                "ssl_shutdown_timeout": TLS_SHUTDOWN_S,
            }

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        self.loop.call_soon(self._tick)
        lent.lend(self.loop)  # the gateway's upstream calls run here (engine/net/lent.py)
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(lent.reclaim(self.loop))
            self.loop.run_until_complete(_cancel_the_rest(self.loop))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def _tick(self) -> None:
        self.ctx.update_date()
        self.ctx.sweep(self.loop.time())
        self.loop.call_later(self._tick_s, self._tick)

    def _factory(self) -> HttpProtocol:
        return HttpProtocol(self.ctx)

    # ---- entry points from other threads ---------------------------------------------------

    def adopt(self, socks: list[socket.socket]) -> None:
        """Take ownership of accepted sockets. Thread-safe."""
        self.loop.call_soon_threadsafe(self._adopt, socks)

    def _adopt(self, socks: list[socket.socket]) -> None:
        if not self._tls:  # plain HTTP counts in connection_made, called at once
            for sock in socks:
                self.loop.create_task(self._connect(sock, None))
            return
        bounds = self.ctx.bounds
        for sock in socks:
            if bounds.open_connection():
                pending = Handshake(HttpProtocol(self.ctx), bounds.close_connection)
                self.loop.create_task(self._connect(sock, pending))
            else:  # what HttpProtocol._refuse does for plain HTTP
                self.ctx.stats.connections_refused += 1
                bounds.note_refused()
                sock.close()

    async def _connect(self, sock: socket.socket, pending: Handshake | None) -> None:
        """Hand ``sock`` to uvloop; ``pending``: TLS, the handshake holding its slot."""
        try:
            if pending is None:
                await self.loop.connect_accepted_socket(self._factory, sock)
            else:
                await self.loop.connect_accepted_socket(lambda: pending, sock, **self._tls)
        except OSError as e:  # TLS: a failed or timed-out handshake (uvloop closed the socket)
            log.debug("dropping a connection that failed before its first request: %s", e)
            sock.close()
        finally:
            if pending is not None:
                pending.give_back()  # a no-op if the handshake finished

    def _on_acceptable(self) -> None:
        """TLS in reuseport mode: accept on this reactor's listener."""
        listener = self._listener
        if listener is None:
            return
        socks, error = accept_burst(listener)
        if error is not None:
            self.loop.remove_reader(listener.fileno())
            self._accept_paused = True
            self.loop.call_later(ACCEPT_BACKOFF_S, self._resume_accept)
        if socks:
            self._adopt(socks)

    def _resume_accept(self) -> None:
        listener = self._listener
        if self._accept_paused and listener is not None:
            self._accept_paused = False
            self.loop.add_reader(listener.fileno(), self._on_acceptable)

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            if not self._accept_paused:
                self.loop.remove_reader(listener.fileno())
            listener.close()

    def serve_reuseport(self, sock: socket.socket) -> None:
        """Accept on ``sock`` (an SO_REUSEPORT listener) in this reactor. Thread-safe; blocks.

        TLS: accepted by ``_on_acceptable`` on a copy of ``sock`` (closing ``sock`` from another
        thread cannot pull it from under this loop; ``drain`` closes the copy)."""

        async def serve() -> None:
            if self._tls:
                self._listener = sock.dup()
                self._listener.setblocking(False)
                self.loop.add_reader(self._listener.fileno(), self._on_acceptable)
                return
            self._server = await self.loop.create_server(self._factory, sock=sock, backlog=4096)

        asyncio.run_coroutine_threadsafe(serve(), self.loop).result()

    def drain(self, timeout_s: float) -> concurrent.futures.Future[int]:
        """Stop accepting, finish in-flight requests, close idle connections. Thread-safe.

        The future resolves, when every connection has closed or after ``timeout_s``, to the
        number still open; ``cut`` ends them.
        """
        return asyncio.run_coroutine_threadsafe(self._drain(timeout_s), self.loop)

    async def _drain(self, timeout_s: float) -> int:
        ctx = self.ctx
        ctx.shutting_down = True
        if self._server is not None:
            self._server.close()
        self._close_listener()
        ctx.all_closed = asyncio.Event()
        for conn in list(ctx.connections):
            conn.begin_shutdown()
        await self._wait_closed(timeout_s)
        return len(ctx.connections)

    def cut(self, write_s: float) -> concurrent.futures.Future[int]:
        """After ``drain``: give connections up to ``write_s`` to finish writing (answers to
        queued work produced at the cut-off), then abort the rest. Thread-safe.

        The future resolves to the number of connections aborted.
        """
        return asyncio.run_coroutine_threadsafe(self._cut(write_s), self.loop)

    async def _cut(self, write_s: float) -> int:
        ctx = self.ctx
        if write_s > 0:
            await self._wait_closed(write_s)
        cut = len(ctx.connections)
        for conn in list(ctx.connections):
            conn.abort()
        return cut

    async def _wait_closed(self, timeout_s: float) -> None:
        ctx = self.ctx
        if not ctx.connections or ctx.all_closed is None:
            return
        try:
            await asyncio.wait_for(ctx.all_closed.wait(), timeout_s)
        except TimeoutError:
            pass

    def stop(self) -> None:
        """Stop the loop and join the thread. Thread-safe."""
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
        if self._listener is not None:  # stopped without a drain
            self._listener.close()
            self._listener = None


class MainReactor:
    """Accepts connections (handoff mode) and coordinates start-up and graceful shutdown."""

    def __init__(
        self,
        subs: Sequence[SubReactor],
        listeners: Sequence[socket.socket],
        mode: str,
        drain_timeout_s: float,
        drain_grace_s: float | None = None,
    ) -> None:
        """``drain_grace_s``: None takes ``drain_grace_ms`` from the sub-reactors' limits."""
        self.subs = subs
        self.listeners = listeners
        self.mode = mode
        self.drain_timeout_s = drain_timeout_s
        if drain_grace_s is None:
            drain_grace_s = subs[0].ctx.limits.drain_grace_ms / 1000 if subs else 0.0
        self.drain_grace_s = drain_grace_s
        self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._hurry: asyncio.Event | None = None
        self._next = 0
        self._accept_paused = False
        self._started = threading.Event()
        self.on_sighup: Callable[[], None] | None = None
        """Called for SIGHUP (config reload), if set, on the reload thread: never on this loop,
        so a slow reload cannot delay a stop signal. Reloads run one at a time, in order."""
        self._reloader: concurrent.futures.ThreadPoolExecutor | None = None
        self._reloads = 0
        """Reloads submitted and not finished (at most two: one running, one queued)."""
        self.draining = False
        """True from the moment shutdown begins (before the grace period): ``/healthz`` reads
        it to answer 503. Written by the main reactor's loop only; read from any thread."""
        self.on_cutoff: Callable[[], None] | None = None
        """Called on the main reactor's loop at the drain cut-off, before connections are
        aborted, to answer queued work (503 ``shutting_down``); it must not block. The answers
        it produces get up to ``CUTOFF_WRITE_S`` to be written."""

    def run(self, install_signals: bool = True, on_ready: Callable[[], None] | None = None) -> int:
        """Serve until ``request_stop`` or SIGTERM/SIGINT; returns connections cut at drain."""
        asyncio.set_event_loop(self.loop)
        try:
            return self.loop.run_until_complete(self._main(install_signals, on_ready))
        finally:
            self.loop.close()

    async def _main(self, install_signals: bool, on_ready: Callable[[], None] | None) -> int:
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.loop.add_signal_handler(sig, self._on_stop)
            if self.on_sighup is not None:
                self.loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        if self.mode == "handoff":
            self.loop.add_reader(self.listeners[0].fileno(), self._on_acceptable)
        self._started.set()
        if on_ready is not None:
            on_ready()
        await self._stop.wait()
        cut = await self._shutdown()
        for sub in self.subs:
            sub.stop()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                self.loop.remove_signal_handler(sig)
        if self._reloader is not None:
            # a reload still running finishes on its thread; one queued is dropped
            self._reloader.shutdown(wait=False, cancel_futures=True)
        log.info("stopped (%d connection(s) cut at the drain timeout)", cut)
        return cut

    async def _shutdown(self) -> int:
        """Grace, listeners closed, drain, cut-off; returns the connections aborted."""
        self.draining = True
        assert self._hurry is not None
        if self.drain_grace_s > 0:
            log.info(
                "draining: still serving for %.1fs while /healthz answers 503 (stop again to skip)",
                self.drain_grace_s,
            )
            try:
                await asyncio.wait_for(self._hurry.wait(), self.drain_grace_s)
            except TimeoutError:
                pass
        log.info(
            "shutting down: no new connections, draining for up to %.1fs", self.drain_timeout_s
        )
        if self.mode == "handoff" and not self._accept_paused:
            self.loop.remove_reader(self.listeners[0].fileno())
        for sock in self.listeners:
            sock.close()
        drains = [asyncio.wrap_future(s.drain(self.drain_timeout_s)) for s in self.subs]
        left = sum(await asyncio.gather(*drains))
        write_s = 0.0
        if left and self.on_cutoff is not None:
            log.info("drain timeout: answering queued work, then cutting %d connection(s)", left)
            try:
                self.on_cutoff()
                write_s = CUTOFF_WRITE_S
            except Exception:
                log.exception("the drain cut-off callback failed")
        cuts = [asyncio.wrap_future(s.cut(write_s)) for s in self.subs]
        return sum(await asyncio.gather(*cuts))

    def _on_sighup(self) -> None:
        """SIGHUP: hand the reload to the reload thread. A SIGHUP while one runs queues one more
        (the file may have changed again); beyond that it is ignored, with a log line."""
        if self._reloads >= 2:
            log.warning("SIGHUP: a reload is running and another is queued; ignoring this one")
            return
        if self._reloads:
            log.warning("SIGHUP: a reload is still running; this one runs after it")
        if self._reloader is None:
            self._reloader = concurrent.futures.ThreadPoolExecutor(1, "infergate-reload")
        assert self.on_sighup is not None
        self._reloads += 1
        fut = self.loop.run_in_executor(self._reloader, self.on_sighup)
        fut.add_done_callback(self._reload_done)

    def _reload_done(self, fut: asyncio.Future[None]) -> None:
        self._reloads -= 1
        if not fut.cancelled() and fut.exception() is not None:
            log.error("SIGHUP: the reload failed", exc_info=fut.exception())

    def _on_stop(self) -> None:
        """First stop request: begin shutdown; a second one during the grace skips the rest."""
        assert self._stop is not None
        assert self._hurry is not None
        if self._stop.is_set():
            self._hurry.set()
        else:
            self._stop.set()

    def request_stop(self) -> None:
        """Begin graceful shutdown (a second call skips what is left of the grace).
        Thread-safe."""
        self._started.wait()
        self.loop.call_soon_threadsafe(self._on_stop)

    def _on_acceptable(self) -> None:
        listener = self.listeners[0]
        subs = self.subs
        n = len(subs)
        batches: list[list[socket.socket]] = [[] for _ in range(n)]
        socks, error = accept_burst(listener)
        if error is not None:
            self.loop.remove_reader(listener.fileno())
            self._accept_paused = True
            self.loop.call_later(ACCEPT_BACKOFF_S, self._resume_accept)
        for conn in socks:
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


def accept_burst(listener: socket.socket) -> tuple[list[socket.socket], OSError | None]:
    """Accept up to ``ACCEPT_BURST`` connections from ``listener`` (non-blocking) and return
    them (non-blocking, TCP_NODELAY), with the error if descriptors or memory ran out: then it
    is logged (rate-limited) and the caller pauses accepting for ``ACCEPT_BACKOFF_S``."""
    socks: list[socket.socket] = []
    for _ in range(ACCEPT_BURST):
        try:
            conn, _addr = listener.accept()
        except BlockingIOError:
            break
        except OSError as e:
            if e.errno in _RESOURCE_ERRNOS:
                accept_log.warning(
                    "accept",
                    "accept paused for %.1fs: %s (descriptor limit reached? see "
                    "limits.max_connections)",
                    ACCEPT_BACKOFF_S,
                    e.strerror,
                )
                return socks, e
            if e.errno == errno.ECONNABORTED:
                continue
            raise
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(conn)
    return socks, None


def open_listeners(host: str, port: int, count: int, reuseport: bool) -> list[socket.socket]:
    """Bind the listening socket(s). With ``reuseport``, ``count`` sockets share one port.

    Raises:
        OSError: EADDRINUSE with ``address already in use: HOST:PORT`` as its message when
            another socket listens there, in either mode (SO_REUSEPORT alone would let a
            second instance join the first one's port, and requests land on either at random).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if reuseport and port != 0:
        _check_port_free(family, host, port)
    socks: list[socket.socket] = []
    try:
        for _ in range(count if reuseport else 1):
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuseport:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            _bind(sock, host, port)
            port = sock.getsockname()[1]  # later sockets join the port the first one got
            sock.listen(4096)
            sock.setblocking(False)
    except OSError:
        for s in socks:
            s.close()
        raise
    return socks


def _bind(sock: socket.socket, host: str, port: int) -> None:
    try:
        sock.bind((host, port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise OSError(errno.EADDRINUSE, f"address already in use: {host}:{port}") from e
        raise


def _check_port_free(family: socket.AddressFamily, host: str, port: int) -> None:
    """Bind a probe without SO_REUSEPORT: it fails if anything listens on the port (with or
    without SO_REUSEPORT); SO_REUSEADDR lets it pass over connections in TIME_WAIT."""
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        _bind(probe, host, port)
