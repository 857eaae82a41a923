"""A lean keep-alive HTTP/1.1 client for the batched upstream calls (embeddings, tensors).

Why not aiohttp here: measured in docs/benchmarks.md ("Gateway", pass-through), aiohttp's
client cost ~0.5 ms of CPU per call on the gateway's loop thread (its request and response
objects, timers, multidicts, payload wrappers), half of the gateway's whole cost per request.
These calls are the simplest HTTP there is: one request with a body, one answer read whole, on
connections kept alive to a few known replicas. This module does just that on asyncio
protocols with httptools' response parser (the same parser the server side uses). aiohttp
still makes the streamed generate calls (relayed chunk by chunk) and the health checks.

A pool belongs to one loop (a reactor's or the model's client loop: ``pools.py``). A
replica's connections in a pool are bounded by the calls the ReplicaSet lets it have in flight
(``max_inflight``): a connection is taken for one call and put back when its answer was read
whole and the server keeps it alive.

What a replica sends is bounded: the status lines and headers of an answer (1xx interim
answers included) by ``MAX_HEAD_BYTES``, the body by the pool's cap, the whole call by its
timeout. HTTP/1.1 as a client must read it: 1xx interim answers are skipped, and an answer
with neither ``Content-Length`` nor chunked coding ends when the replica closes the
connection; bytes after a whole answer retire the connection. A kept-alive connection that
the replica closed while it sat idle (the close and our request crossed) is retried once on a
fresh connection, only when no byte of the answer arrived: the replica closed it without
reading the request, as far as HTTP can tell.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

IDLE_S = 30.0
"""An idle connection older than this is closed instead of reused."""
MAX_HEAD_BYTES = 64 * 1024
"""Largest status lines + headers of one answer (1xx interim answers included)."""
UNWIND_S = 0.1
"""``aclose``: how long failed calls get to unwind before the others are cancelled."""
CANCEL_WAIT_S = 1.0
"""``aclose``: how long cancelled calls get to unwind."""


class ConnectFailed(Exception):
    """The connection could not be opened: no byte of the request was written."""


class TooLarge(Exception):
    """The answer passed the cap."""


class HeadTooLarge(TooLarge):
    """The answer's status lines and headers passed ``MAX_HEAD_BYTES``."""


class ClosedUnanswered(ConnectionResetError):
    """The replica closed the connection before any byte of the answer."""


class PoolClosed(Exception):
    """The pool was closed under the call (its reactor stops, or its model closes): not the
    replica's fault."""


class _Conn(asyncio.Protocol):
    """One connection; one call at a time."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[None] | None = None
        self.parts: list[bytes] = []
        self.size = 0
        self.header_length: int | None = None
        self.closed = False
        self.keep_alive = False
        """The last answer lets the connection be reused."""
        self.idle_since = 0.0
        self.calls = 0
        """Calls started on this connection (a reused one has more than one)."""
        self.received = 0
        """Bytes of the current call's answer received so far."""
        self.head_size = 0
        """Bytes of the current answer's heads (status lines and headers) so far."""
        self.in_head = True
        """The parser is in a status line or headers (not in a body)."""
        self.delimited = False
        """The answer's body has a length (``Content-Length`` or chunked coding)."""

    # ---- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():
            self.close()  # bytes nobody asked for (after a whole answer): never reused
            return
        self.received += len(data)
        if self.in_head:
            self.head_size += len(data)  # may include body bytes: checked once past the head
        try:
            self.parser.feed_data(data)
            if self.in_head and self.head_size > MAX_HEAD_BYTES:
                raise HeadTooLarge(
                    f"answer's status line and headers exceed {MAX_HEAD_BYTES} bytes"
                )
        except httptools.HttpParserUpgrade:
            self._fail(ConnectionError("the replica upgraded the connection"))
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            self._fail(cause if isinstance(cause, TooLarge) else ConnectionError(f"{e!r}"))
        except httptools.HttpParserError as e:
            self._fail(ConnectionError(f"invalid HTTP answer: {e}"))
        except TooLarge as e:
            self._fail(e)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if exc is None and not self.in_head and not self.delimited:
            self.keep_alive = False  # the close ends the body (RFC 9112, 6.3, rule 8)
            self._done()
        elif self.received == 0:
            self._fail(ClosedUnanswered(f"connection closed by the replica: {exc or 'EOF'}"))
        else:
            self._fail(ConnectionResetError(f"connection closed by the replica: {exc or 'EOF'}"))

    # ---- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.waiter is None or self.waiter.done():  # an answer after the answer
            self.close()
            raise ConnectionError("bytes after the answer")  # stops the parser
        self.in_head, self.delimited, self.header_length = True, False, None

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.lower()
        if key == b"inference-header-content-length" and value.isdigit():
            self.header_length = int(value)
        elif key == b"content-length":
            self.delimited = True
            if value.isdigit() and int(value) > self.cap:
                raise TooLarge(f"answer of {int(value)} bytes is larger than {self.cap}")
        elif key == b"transfer-encoding":
            self.delimited = True

    def on_headers_complete(self) -> None:
        self.in_head = False
        if self.parser.get_status_code() in (204, 304):
            self.delimited = True  # no body, whatever the headers say

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.cap:
            raise TooLarge(f"answer larger than {self.cap} bytes")
        self.parts.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self.parser.get_status_code() < 200:
            self.parts, self.size = [], 0  # an interim answer: the final one follows
            self.in_head = True
            return
        self.keep_alive = self.parser.should_keep_alive()
        self._done()

    # ---- calls ---------------------------------------------------------------------------

    def _done(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _fail(self, e: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(e)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self, e: Exception) -> None:
        """Fail the call in flight with ``e`` and close the connection."""
        self._fail(e)
        self.close()

    async def call(self, head: bytes, body: bytes | None) -> tuple[int, bytes, int | None]:
        assert self.transport is not None
        self.calls += 1
        if self.closed:
            raise ClosedUnanswered("connection closed by the replica while idle")
        self.waiter = asyncio.get_running_loop().create_future()
        self.parts, self.size, self.header_length, self.keep_alive = [], 0, None, False
        self.received, self.head_size, self.in_head, self.delimited = 0, 0, True, False
        self.transport.write(head + body if body else head)
        await self.waiter
        status = self.parser.get_status_code()
        return status, b"".join(self.parts), self.header_length


class _Replica:
    """Where to connect for one base URL, and its idle connections."""

    __slots__ = ("host", "host_header", "idle", "port", "prefix", "ssl")

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if https else 80)
        self.host_header = parts.netloc.encode("idna")
        self.prefix = parts.path.rstrip("/").encode()
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if https else None
        self.idle: list[_Conn] = []


class LeanPool:
    """Keep-alive connections to replicas, by base URL. Its loop's thread only."""

    def __init__(self, connect_timeout_s: float, cap: int) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.cap = cap
        self._replicas: dict[str, _Replica] = {}
        self._busy: set[_Conn] = set()
        """Connections with a call in flight."""
        self.calls: set[asyncio.Task[Any]] = set()
        """The calls running on this pool's loop (``track``), ended by ``aclose``."""
        self.closed = False

    async def request(
        self,
        base: str,
        method: str,
        path: str,
        body: bytes | None,
        headers: Mapping[str, str],
        timeout_s: float,
    ) -> tuple[int, bytes, int | None]:
        """``method path`` on the replica at ``base``; its status, whole body and
        ``Inference-Header-Content-Length``.

        Raises:
            ConnectFailed: no connection (nothing was sent).
            PoolClosed: the pool was closed before or during the call.
            TimeoutError: no whole answer within ``timeout_s`` (the connection is closed).
            TooLarge: the answer passed the cap, or its heads ``MAX_HEAD_BYTES``
                (``HeadTooLarge``; the connection is closed).
            OSError: the connection broke or the answer was not HTTP (``ClosedUnanswered``:
                closed before any byte of the answer, after the one retry a reused connection
                gets).
        """
        r = self._replicas.get(base)
        if r is None:
            r = self._replicas[base] = _Replica(base)
        lines = [b"%s %s%s HTTP/1.1\r\nHost: %s\r\n" % (
            method.encode(), r.prefix, path.encode(), r.host_header)]  # fmt: skip
        for k, v in headers.items():
            lines.append(b"%s: %s\r\n" % (k.encode("latin-1"), v.encode("latin-1")))
        lines.append(b"Content-Length: %d\r\n\r\n" % len(body or b""))
        head = b"".join(lines)
        conn = await self._take(r)  # bounded by the connect timeout
        async with asyncio.timeout(timeout_s):
            try:
                return await self._once(r, conn, head, body)
            except ClosedUnanswered:
                if conn.calls < 2:
                    raise  # a fresh connection: the replica may have read the request
            # A kept-alive connection closed with no byte of the answer: the replica closed
            # it while idle, as our request crossed its close. Once more, on a new one.
            return await self._once(r, await self._connect(r), head, body)

    async def _once(
        self, r: _Replica, conn: _Conn, head: bytes, body: bytes | None
    ) -> tuple[int, bytes, int | None]:
        """One call on ``conn``; kept alive after a whole answer if the replica allows."""
        ok = False
        self._busy.add(conn)
        try:
            answer = await conn.call(head, body)
            ok = True
        finally:
            self._busy.discard(conn)
            if ok and not conn.closed and conn.keep_alive and not self.closed:
                conn.idle_since = time.monotonic()
                r.idle.append(conn)
            else:
                conn.close()  # an error, a timeout or a cancel: the replica sees it end
        return answer

    async def _take(self, r: _Replica) -> _Conn:
        if self.closed:
            raise _closed()
        now = time.monotonic()
        while r.idle:
            conn = r.idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_S:
                return conn
            conn.close()
        return await self._connect(r)

    async def _connect(self, r: _Replica) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, proto = await loop.create_connection(
                    lambda: _Conn(self.cap), r.host, r.port, ssl=r.ssl
                )
        except (OSError, TimeoutError) as e:
            raise ConnectFailed(f"cannot connect to {r.host}:{r.port}: {e or 'timed out'}") from e
        if self.closed:  # closed while connecting: never kept
            proto.close()
            raise _closed()
        return proto

    def track(self, call: asyncio.Task[Any]) -> None:
        """Count ``call`` (a task on this pool's loop) among ``calls`` until it ends."""
        self.calls.add(call)
        call.add_done_callback(self.calls.discard)

    def close(self) -> None:
        """Close every connection: idle ones, and busy ones (their calls fail at once with
        ``PoolClosed``); calls that have no connection yet fail when they would get one."""
        self.closed = True
        for r in self._replicas.values():
            for conn in r.idle:
                conn.close()
            r.idle.clear()
        for conn in list(self._busy):
            conn.abort(_closed())

    async def aclose(self) -> None:
        """``close``; the calls on a connection fail at once (``UNWIND_S`` to unwind), those
        with none yet (connecting, or waiting for a replica) are cancelled; both end before
        this returns (bounded by ``CANCEL_WAIT_S``), so that their batches are answered
        before the loop stops."""
        self.close()
        if not self.calls:
            return
        _, pending = await asyncio.wait(list(self.calls), timeout=UNWIND_S)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=CANCEL_WAIT_S)


def _closed() -> PoolClosed:
    return PoolClosed("the gateway closed this call's connections (shutting down)")
