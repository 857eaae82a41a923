"""Real MainReactor and SubReactor objects on 127.0.0.1: listener conflicts and the shutdown
sequence (grace, drain, cut-off) at the reactor seam (issue 7: 7.4, 7.7)."""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from infergate.engine.config import Limits
from infergate.engine.http.bounds import ProcessBounds
from infergate.engine.http.request import Request
from infergate.engine.http.response import Response, error_response
from infergate.engine.http.router import Router
from infergate.engine.net.reactor import MainReactor, SubReactor, open_listeners
from tests.support.client import ConnectionClosedError, RawConnection, assert_json_error
from tests.support.wait import wait_until

JOIN_S = 10.0

# ---- 7.4: a second instance on the same port ---------------------------------------------------


@pytest.mark.parametrize("reuseport", [True, False])
def test_a_taken_port_fails_naming_it(reuseport: bool) -> None:
    first = open_listeners("127.0.0.1", 0, 2, reuseport=True)
    port = first[0].getsockname()[1]
    try:
        with pytest.raises(OSError, match="address already in use") as info:
            open_listeners("127.0.0.1", port, 2, reuseport)
        assert info.value.errno == errno.EADDRINUSE
        assert info.value.strerror == f"address already in use: 127.0.0.1:{port}"
    finally:
        for s in first:
            s.close()


def test_reuseport_group_still_shares_one_port() -> None:
    socks = open_listeners("127.0.0.1", 0, 3, reuseport=True)
    try:
        assert len({s.getsockname()[1] for s in socks}) == 1
    finally:
        for s in socks:
            s.close()


def test_a_freed_port_can_be_bound_again() -> None:
    first = open_listeners("127.0.0.1", 0, 1, reuseport=True)
    port = first[0].getsockname()[1]
    first[0].close()
    again = open_listeners("127.0.0.1", port, 2, reuseport=True)
    for s in again:
        s.close()


# ---- 7.7: shutdown -----------------------------------------------------------------------------


@dataclass
class Queue:
    """``GET /queued`` waits on a future, like a request queued in a batcher."""

    loop: asyncio.AbstractEventLoop | None = None
    waiting: list[asyncio.Future[Response]] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)

    async def handler(self, _req: Request) -> Response:
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self.waiting.append(fut)
        self.arrived.set()
        return await fut

    def answer_all(self) -> None:
        """What the Server's cut-off does through the batchers. Thread-safe."""
        assert self.loop is not None
        shutting = error_response(503, "shutting down", err_type="shutting_down")
        for fut in list(self.waiting):
            self.loop.call_soon_threadsafe(fut.set_result, shutting)


class Running:
    """A MainReactor with one SubReactor (handoff) serving on its own thread."""

    def __init__(self, limits: Limits, queue: Queue, executor: ThreadPoolExecutor) -> None:
        router = Router()
        router.add(["GET"], "/hello", lambda _r: Response(b"hello"))
        router.add(["GET"], "/queued", queue.handler)
        self.sub = SubReactor(0, router, limits, executor, bounds=ProcessBounds(limits))
        queue.loop = self.sub.loop
        listeners = open_listeners("127.0.0.1", 0, 1, reuseport=False)
        self.port = listeners[0].getsockname()[1]
        self.sub.start()
        self.main = MainReactor([self.sub], listeners, "handoff", limits.drain_timeout_ms / 1000)
        self.result: list[int] = []
        ready = threading.Event()
        self.thread = threading.Thread(
            target=lambda: self.result.append(self.main.run(False, ready.set)), daemon=True
        )
        self.thread.start()
        assert ready.wait(JOIN_S)

    def join(self) -> int:
        self.thread.join(JOIN_S)
        assert not self.thread.is_alive(), "the main reactor did not stop"
        return self.result[0]


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    ex = ThreadPoolExecutor(max_workers=1)
    yield ex
    ex.shutdown(wait=True)


def test_queued_work_is_answered_503_at_the_cutoff(executor: ThreadPoolExecutor) -> None:
    queue = Queue()
    srv = Running(Limits(drain_timeout_ms=200), queue, executor)
    srv.main.on_cutoff = queue.answer_all
    with RawConnection(srv.port) as conn:
        conn.send(b"GET /queued HTTP/1.1\r\nHost: x\r\n\r\n")
        assert queue.arrived.wait(JOIN_S)
        srv.main.request_stop()
        r = conn.read_response()
        err = assert_json_error(r, 503)
        assert err["type"] == "shutting_down"
        assert r.header("connection") == "close"
    assert srv.join() == 0  # the answer was written: nothing left to abort


def test_without_a_cutoff_callback_the_drain_timeout_aborts(
    executor: ThreadPoolExecutor,
) -> None:
    queue = Queue()
    srv = Running(Limits(drain_timeout_ms=200), queue, executor)
    with RawConnection(srv.port) as conn:
        conn.send(b"GET /queued HTTP/1.1\r\nHost: x\r\n\r\n")
        assert queue.arrived.wait(JOIN_S)
        srv.main.request_stop()
        with pytest.raises(ConnectionClosedError):
            conn.read_response()
    assert srv.join() == 1


def test_grace_keeps_serving_while_draining(executor: ThreadPoolExecutor) -> None:
    queue = Queue()
    srv = Running(Limits(drain_grace_ms=600_000), queue, executor)
    assert not srv.main.draining
    srv.main.request_stop()
    wait_until(lambda: srv.main.draining, JOIN_S, "draining to turn True")
    with RawConnection(srv.port) as conn:  # new connections are still accepted and served
        r = conn.request("GET", "/hello")
        assert r.status == 200
        assert r.header("connection") is None  # normally: keep-alive
    srv.main.request_stop()  # a second stop skips the rest of the grace
    assert srv.join() == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=JOIN_S).close()


# ---- SIGHUP: the reload runs off the main reactor's loop ----------------------------------------


def test_a_slow_reload_runs_off_the_loop_and_never_delays_a_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SIGHUP runs ``on_sighup`` on the reload thread, one at a time: while a reload hangs, a
    second SIGHUP is queued (logged), a third ignored (logged), and SIGTERM still stops the
    reactor at once. Signal handlers need the main thread: the reactor runs on it here."""
    release = threading.Event()
    started = threading.Event()
    threads: list[str] = []

    def slow_reload() -> None:
        threads.append(threading.current_thread().name)
        started.set()
        assert release.wait(JOIN_S), "the test never released the reload"

    main = MainReactor([], [], "reuseport", drain_timeout_s=1.0, drain_grace_s=0.0)
    main.on_sighup = slow_reload

    def drive() -> None:  # on a helper thread while run() holds the main one
        try:
            signal.raise_signal(signal.SIGHUP)
            assert started.wait(JOIN_S), "the reload did not start"
            for _ in range(2):
                signal.raise_signal(signal.SIGHUP)
            wait_until(
                lambda: "ignoring this one" in caplog.text, JOIN_S, "the third SIGHUP is logged"
            )
        finally:
            signal.raise_signal(signal.SIGTERM)  # whatever happened, run() must return

    helper = threading.Thread(target=drive, daemon=True)
    with caplog.at_level(logging.WARNING, logger="infergate.net"):
        try:
            assert main.run(True, helper.start) == 0  # returns while the reload still hangs
            assert not release.is_set()
            assert threads == ["infergate-reload_0"]  # not the main thread
            assert "a reload is still running; this one runs after it" in caplog.text
        finally:
            release.set()
            helper.join(JOIN_S)
    assert main._reloader is not None
    main._reloader.shutdown(wait=True)
    assert threads == ["infergate-reload_0"]  # the queued reload was dropped at the stop
