"""Batched upstream calls run on the loop of the reactor that starts them (no thread
hand-off), with that loop's keep-alive pool; the pool's connections end with whichever ends
first, the reactor or the model (``executors/upstream/pools.py``, ``engine/net/lent.py``).

A real SubReactor thread, a real UpstreamClient and a replica that is an asyncio server on
127.0.0.1 counting the connections it sees open and close."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from infergate.engine.config import Limits, UpstreamConfig
from infergate.engine.executors.upstream.client import UpstreamClient
from infergate.engine.executors.upstream.errors import UpstreamError
from infergate.engine.executors.upstream.lean import LeanPool, PoolClosed
from infergate.engine.executors.upstream.replicas import ReplicaSet
from infergate.engine.http.bounds import ProcessBounds
from infergate.engine.http.router import Router
from infergate.engine.net import lent
from infergate.engine.net.reactor import SubReactor
from tests.support.wait import wait_until

WAIT_S = 10.0
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"


class Replica:
    """An HTTP/1.1 server on its own loop thread: answers each request ``{}`` on a kept-alive
    connection, or never (``hang``); counts connections opened and closed."""

    def __init__(self) -> None:
        self.hang = False
        self.opened = 0
        self.closed = 0
        self.requests = 0
        self._open: set[asyncio.BaseTransport] = set()
        self._all_closed: asyncio.Event | None = None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(WAIT_S)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _listen(self) -> asyncio.Server:
        replica = self

        class Conn(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport
                self.buf = b""
                replica.opened += 1
                replica._open.add(transport)

            def data_received(self, data: bytes) -> None:
                self.buf += data
                while b"\r\n\r\n" in self.buf:
                    head, _, rest = self.buf.partition(b"\r\n\r\n")
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    if len(rest) < length:
                        return
                    self.buf = rest[length:]
                    replica.requests += 1
                    if not replica.hang:
                        self.transport.write(ANSWER)  # type: ignore[attr-defined]

            def connection_lost(self, exc: Exception | None) -> None:
                replica.closed += 1
                replica._open.discard(self.transport)
                if not replica._open and replica._all_closed is not None:
                    replica._all_closed.set()

        return await asyncio.get_running_loop().create_server(Conn, "127.0.0.1", 0)

    async def _shutdown(self) -> None:
        """Stop listening, close what is still open, and wait until it has closed."""
        self._server.close()
        self._all_closed = asyncio.Event()
        for transport in list(self._open):
            transport.close()
        if self._open:
            await asyncio.wait_for(self._all_closed.wait(), WAIT_S)
        await self._server.wait_closed()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(WAIT_S + 1)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(WAIT_S)
        self.loop.close()


@pytest.fixture
def replica() -> Iterator[Replica]:
    r = Replica()
    yield r
    r.stop()


def make_client(url: str) -> UpstreamClient:
    cfg = UpstreamConfig(max_inflight=2, request_timeout_ms=30_000, health_interval_ms=60_000)
    replicas = ReplicaSet([url], cfg.max_inflight, 3, 5.0, 60.0)
    client = UpstreamClient("m", replicas, cfg, "/")
    client.start()
    return client


@pytest.fixture
def reactor() -> Iterator[SubReactor]:
    limits = Limits()
    files = ThreadPoolExecutor(1)
    sub = SubReactor(0, Router(), limits, files, bounds=ProcessBounds(limits))
    sub.start()
    yield sub
    sub.stop()
    files.shutdown()


async def _call(client: UpstreamClient) -> tuple[str, int]:
    """A call through ``client``: the thread that ran it, and the answer's status."""
    reply = await client.apost("/", b"{}")
    return threading.current_thread().name, reply.status


def begin_on(sub: SubReactor, client: UpstreamClient) -> Future[Any]:
    """``client.begin`` called on ``sub``'s thread (as the Batcher does from a reactor);
    the call's outcome, wherever it runs."""
    out: Future[Any] = Future()

    def start() -> None:
        fut = client.begin(_call(client))

        def done(f: Any) -> None:
            try:
                out.set_result(f.result())
            except BaseException as e:
                out.set_exception(e)

        fut.add_done_callback(done)

    sub.loop.call_soon_threadsafe(start)
    return out


def test_a_call_begun_on_a_reactor_runs_on_its_thread_and_reuses_its_connection(
    replica: Replica, reactor: SubReactor
) -> None:
    client = make_client(replica.url)
    try:
        for _ in range(3):
            assert begin_on(reactor, client).result(WAIT_S) == ("infergate-sub-0", 200)
        assert replica.opened == 1  # the reactor's pool kept it alive
    finally:
        client.close()


def test_a_call_begun_off_the_reactors_runs_on_the_model_loop(replica: Replica) -> None:
    client = make_client(replica.url)
    try:
        # a thread with no loop (the deadline thread), and a loop no reactor lent
        assert client.begin(_call(client)).result(WAIT_S) == ("upstream-m", 200)

        async def on_a_foreign_loop() -> Any:
            return await asyncio.wrap_future(client.begin(_call(client)))  # type: ignore[arg-type]

        assert asyncio.run(on_a_foreign_loop()) == ("upstream-m", 200)
    finally:
        client.close()


def test_a_stopping_reactor_closes_its_pool_and_fails_the_call_in_flight(
    replica: Replica, reactor: SubReactor
) -> None:
    client = make_client(replica.url)
    try:
        assert begin_on(reactor, client).result(WAIT_S)[1] == 200
        replica.hang = True
        pending = begin_on(reactor, client)
        wait_until(lambda: replica.requests == 2, WAIT_S, "the second call reaches the replica")
        reactor.stop()  # returns once the loop has closed what it lent
        with pytest.raises(UpstreamError) as info:
            pending.result(0)  # already answered: the batch is not left hanging
        assert info.value.status == 502
        wait_until(lambda: replica.closed == 1, WAIT_S, "the replica sees the connection end")
        assert not lent.is_lent(reactor.loop)
    finally:
        client.close()


def test_a_closing_model_closes_its_pool_on_a_running_reactor(
    replica: Replica, reactor: SubReactor
) -> None:
    client = make_client(replica.url)
    assert begin_on(reactor, client).result(WAIT_S)[1] == 200
    assert replica.opened == 1
    client.close()
    wait_until(lambda: replica.closed == 1, WAIT_S, "the replica sees the connection end")
    assert lent.is_lent(reactor.loop)  # the reactor serves on
    assert not lent.forget(reactor.loop, client.pools)  # nothing left registered there


def test_only_a_lent_loop_takes_registrations() -> None:
    loop = asyncio.new_event_loop()
    closed: list[str] = []

    async def closer() -> None:
        closed.append("owner")

    try:
        assert not lent.register(loop, "owner", closer)
        lent.lend(loop)
        assert lent.register(loop, "owner", closer)
        assert lent.forget(loop, "owner")
        assert not lent.forget(loop, "owner")
        assert lent.register(loop, "owner", closer)
        loop.run_until_complete(lent.reclaim(loop))
        assert closed == ["owner"]
        assert not lent.register(loop, "other", closer)  # reclaimed: no more
        assert not lent.forget(loop, "owner")
    finally:
        loop.close()


def test_a_model_closing_while_a_reactor_reclaims_its_loop_still_closes_its_pool(
    replica: Replica, reactor: SubReactor
) -> None:
    reclaiming = threading.Event()
    release: asyncio.Future[None] = reactor.loop.create_future()

    async def earlier_owner() -> None:  # another model's pool, still closing
        reclaiming.set()
        await release

    assert lent.register(reactor.loop, "earlier", earlier_owner)
    client = make_client(replica.url)
    stopper = threading.Thread(target=reactor.stop)
    try:
        assert begin_on(reactor, client).result(WAIT_S)[1] == 200
        stopper.start()
        assert reclaiming.wait(WAIT_S)
        client.close()  # the reactor already holds this model's closer: close leaves it
        reactor.loop.call_soon_threadsafe(release.set_result, None)
        stopper.join(WAIT_S)
        wait_until(lambda: replica.closed == 1, WAIT_S, "the replica sees the connection end")
    finally:
        if not release.done():
            reactor.loop.call_soon_threadsafe(release.set_result, None)
        if stopper.is_alive():
            stopper.join(WAIT_S)
        client.close()  # a no-op once closed


def test_a_stopping_reactor_cancels_a_call_that_waits_for_a_replica(
    replica: Replica, reactor: SubReactor
) -> None:
    cfg = UpstreamConfig(max_inflight=1, request_timeout_ms=30_000, health_interval_ms=60_000)
    client = UpstreamClient("m", ReplicaSet([replica.url], 1, 3, 5.0, 60.0), cfg, "/")
    client.start()
    replica.hang = True
    try:
        holding = client.begin(_call(client))  # on the model's loop: the only slot, unanswered
        wait_until(lambda: replica.requests == 1, WAIT_S, "the first call reaches the replica")
        waiting = begin_on(reactor, client)  # on the reactor: waits for the slot on a thread
        reactor.stop()
        with pytest.raises(asyncio.CancelledError):
            waiting.result(0)  # answered before the reactor's loop closed
        assert not holding.done()
    finally:
        client.close()  # fails the first call; the wait then takes the slot and gives it back
    wait_until(
        lambda: client.replicas.replicas[0].inflight == 0, WAIT_S, "no slot kept by the wait"
    )


async def test_a_pool_closed_while_connecting_closes_the_new_connection(
    replica: Replica,
) -> None:
    pool = LeanPool(5.0, 1024)
    call = asyncio.create_task(pool.request(replica.url, "POST", "/", b"{}", {}, 5.0))
    await asyncio.sleep(0)  # the call is connecting
    pool.close()
    with pytest.raises(PoolClosed):
        await call
    await asyncio.to_thread(
        wait_until, lambda: replica.closed == 1, WAIT_S, "the replica sees the connection end"
    )
    assert replica.requests == 0


def test_a_call_that_must_wait_after_the_model_closed_is_refused(replica: Replica) -> None:
    cfg = UpstreamConfig(max_inflight=1, health_interval_ms=60_000)
    client = UpstreamClient("m", ReplicaSet([replica.url], 1, 3, 5.0, 60.0), cfg, "/")
    client.start()
    assert client.replicas.try_acquire() is not None  # the replica is full
    client.close()
    with pytest.raises(UpstreamError) as info:
        asyncio.run(client.apost("/", b"{}"))
    assert (info.value.status, info.value.message) == (502, "model m is closing")


def test_a_closing_model_ends_the_calls_on_its_own_loop_and_frees_their_slots(
    replica: Replica,
) -> None:
    cfg = UpstreamConfig(max_inflight=1, request_timeout_ms=30_000, health_interval_ms=60_000)
    client = UpstreamClient("m", ReplicaSet([replica.url], 1, 3, 5.0, 60.0), cfg, "/")
    client.start()
    taken = client.replicas.try_acquire()  # the only slot, held elsewhere
    assert taken is not None
    # begun off the reactors (as by the deadline thread): on the model's loop, waiting
    waiting = client.begin(_call(client))
    wait_until(
        lambda: any(t.name.startswith("upstream-wait-m") for t in threading.enumerate()),
        WAIT_S,
        "the call waits for the slot on a thread",
    )
    client.close()
    assert waiting.done()  # answered (cancelled), not left pending on a stopped loop
    with pytest.raises(concurrent.futures.CancelledError):
        waiting.result(0)
    client.replicas.release(taken, counted=False)  # the wait takes it now, and gives it back
    wait_until(lambda: client.replicas.replicas[0].inflight == 0, WAIT_S, "every slot given back")
