"""The output side of a connection: writes, flow control, streamed bodies, and the bounds on
what a client can pin in memory (request bodies, computed-but-unsent responses).

``HttpProtocol`` inherits this; the state here is per connection and owned by its loop. The
process-wide counters live in ``engine.http.bounds`` (thread-safe).

A client that does not read: once the transport's buffer passes its high-water mark
(``pause_writing``), reading pauses and requests already parsed are held in ``deferred``
instead of being dispatched, so no further responses are computed for it; they run when the
buffer drains below the low-water mark. While bytes wait, the reactor's sweep checks that the
client reads something every ``send_timeout_ms``, and the buffer sizes count towards
``max_unsent_bytes``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque

from infergate.engine.http.context import HttpContext
from infergate.engine.http.errors import HttpError
from infergate.engine.http.request import Request
from infergate.engine.http.response import (
    LAST_CHUNK,
    NO_BODY_STATUSES,
    AnyResponse,
    FileResponse,
    StreamResponse,
    chunk,
    encode_head,
)
from infergate.engine.logutil import RateLimitedLog

log = logging.getLogger("infergate.http")
limited_log = RateLimitedLog(log)
"""Unexpected errors a client can trigger at will: one traceback per kind per 10 s."""

FILE_CHUNK = 256 * 1024
CONN_CLOSE = b"Connection: close\r\n"
RETRY_AFTER_BODY_MEMORY = [(b"Retry-After", b"1")]
_INF = float("inf")
# Why reading is paused (bit flags).
PAUSE_WRITE, PAUSE_PIPELINE, PAUSE_CLOSING = 1, 2, 4


class Slot:
    """A response waiting for its turn (pipelining) or for its handler to finish."""

    __slots__ = ("req", "resp")

    def __init__(self, req: Request | None, resp: AnyResponse | None) -> None:
        self.req = req
        self.resp = resp


class ConnectionFlow:
    """Output, flow control and bounds of one connection. Owning loop only, except
    ``cut_slow_reader``."""

    __slots__ = (
        "admitted",
        "body_held",
        "ctx",
        "cut",
        "deferred",
        "drain_waiter",
        "inflight",
        "loop",
        "out",
        "out_len",
        "pause_reasons",
        "pending",
        "send_deadline",
        "send_mark",
        "streaming",
        "transport",
        "watched",
    )

    def __init__(self, ctx: HttpContext) -> None:
        self.ctx = ctx
        self.loop = ctx.loop
        self.transport: asyncio.Transport | None = None
        self.admitted = False
        """Counted in ``max_connections`` (connection_made accepted it)."""
        self.out: list[bytes] | None = None
        """Responses produced during one ``data_received``, written together at its end."""
        self.out_len = 0
        self.inflight = 0
        self.streaming = False
        self.pause_reasons = 0
        self.drain_waiter: asyncio.Future[None] | None = None
        self.pending: deque[Slot] = deque()
        """Responses in request order: waiting for their handler, or for those ahead."""
        self.deferred: deque[Request] = deque()
        """Parsed requests held back while the client is not reading (see the module doc)."""
        self.body_held = 0
        """Request-body bytes this connection reserved in the process-wide budget."""
        self.watched = False
        """In ``ctx.backlog``: unsent bytes whose progress the sweep checks."""
        self.send_mark = 0
        self.send_deadline = _INF
        self.cut = False
        """Aborted as a slow reader (counted once)."""

    # Provided by HttpProtocol.
    def _dispatch(self, req: Request) -> None:
        raise NotImplementedError

    def _done(self, req: Request | None, status: int, keep_alive: bool) -> None:
        raise NotImplementedError

    def _flush_pending(self) -> None:
        raise NotImplementedError

    # ---- asyncio flow-control callbacks ------------------------------------------------------

    def pause_writing(self) -> None:
        self._pause(PAUSE_WRITE)
        self._watch_send()

    def resume_writing(self) -> None:
        self._resume(PAUSE_WRITE)
        self._wake_drain()
        if self.watched:
            self._report_unsent(self.transport.get_write_buffer_size())  # type: ignore[union-attr]
        if self.deferred:
            self.loop.call_soon(self._run_deferred)

    async def _stream(
        self,
        req: Request | None,
        resp: FileResponse | StreamResponse,
        connection: bytes,
        head_only: bool,
        keep_alive: bool,
    ) -> None:
        ok = True
        try:
            if isinstance(resp, FileResponse):
                head = encode_head(
                    resp.status, self.ctx.date_line, resp.content_type, resp.count, resp.headers,
                    connection,
                )  # fmt: skip
                self._write(head)
                if not head_only:
                    ok = await self._stream_file(resp)
            elif resp.status in NO_BODY_STATUSES:
                # 204/304 end with their head (RFC 9110 §15.3.5): no framing, no chunks
                head = encode_head(
                    resp.status, self.ctx.date_line, resp.content_type, None, resp.headers,
                    connection,
                )  # fmt: skip
                self._write(head)
            else:
                chunked = req is not None and req.version == "1.1"
                if not chunked:
                    keep_alive = False  # HTTP/1.0: the end of the body is the end of the connection
                    connection = CONN_CLOSE
                head = encode_head(
                    resp.status, self.ctx.date_line, resp.content_type, None if chunked else -1,
                    resp.headers, connection,
                )  # fmt: skip
                self._write(head)
                if not head_only:
                    ok = await self._stream_chunks(resp, chunked)
        except Exception as e:
            limited_log.exception(f"stream {type(e).__name__}", "streaming a response failed")
            ok = False
        finally:
            if isinstance(resp, FileResponse):
                resp.file.close()
            elif not head_only:
                await _aclose(resp)
        self.streaming = False
        if not ok:
            if self.transport is not None:
                self.transport.abort()  # the promised length cannot be delivered
            return
        self._done(req, resp.status, keep_alive)
        self._flush_pending()

    async def _stream_file(self, resp: FileResponse) -> bool:
        fd = resp.file.fileno()
        offset, remaining = resp.offset, resp.count
        executor = self.ctx.file_executor
        while remaining > 0:
            n = min(FILE_CHUNK, remaining)
            data = await self.loop.run_in_executor(executor, os.pread, fd, n, offset)
            if not data or self.transport is None or self.transport.is_closing():
                return False  # file shrank, or the client went away
            self._write(data)
            offset += len(data)
            remaining -= len(data)
            if self.pause_reasons & PAUSE_WRITE:
                await self._drain()
        return True

    async def _stream_chunks(self, resp: StreamResponse, chunked: bool) -> bool:
        async for piece in resp.chunks:
            if self.transport is None or self.transport.is_closing():
                return False
            if piece:
                self._write(chunk(piece) if chunked else piece)
            if self.pause_reasons & PAUSE_WRITE:
                await self._drain()
        if chunked:
            self._write(LAST_CHUNK)
        return True

    # ---- output and flow control ------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        self.ctx.stats.bytes_out += len(data)
        out = self.out
        if out is not None:
            out.append(data)
        else:
            assert self.transport is not None
            watched = self.watched  # a write that starts the watch (pause_writing) is in it
            self.transport.write(data)
            if watched:
                self._wrote_while_watched(len(data))

    def _flush_out(self, out: list[bytes]) -> None:
        """Hand what one read's burst produced to the transport in one write."""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self.out_len = 0
        assert self.transport is not None
        watched = self.watched
        self.transport.write(data)
        if watched:
            self._wrote_while_watched(len(data))

    async def _drain(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        waiter = self.loop.create_future()
        self.drain_waiter = waiter
        await waiter

    def _wake_drain(self) -> None:
        waiter = self.drain_waiter
        if waiter is not None:
            self.drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _pause(self, reason: int) -> None:
        if not self.pause_reasons and self.transport is not None:
            self.transport.pause_reading()
        self.pause_reasons |= reason

    def _resume(self, reason: int) -> None:
        was = self.pause_reasons
        self.pause_reasons &= ~reason
        transport = self.transport
        if was and not self.pause_reasons and transport is not None and not transport.is_closing():
            transport.resume_reading()

    # ---- bounds: body memory, unsent bytes, requests held back ---------------------------------

    def _reserve_body(self, n: int) -> None:
        if not self.ctx.bounds.reserve_body(n):
            raise HttpError(
                503,
                "the server is receiving too many request bodies right now; retry later",
                RETRY_AFTER_BODY_MEMORY,
            )
        self.body_held += n

    def _release_body(self, n: int) -> None:
        """A request's response was sent: its body no longer counts (at most what is held)."""
        held = self.body_held
        n = min(n, held)
        if n:
            self.body_held = held - n
            self.ctx.bounds.release_body(n)

    def _run_deferred(self) -> None:
        """Dispatch the requests held back, until the client falls behind again."""
        deferred = self.deferred
        transport = self.transport
        out: list[bytes] = []
        self.out = out
        try:
            while deferred and not self.pause_reasons & PAUSE_WRITE:
                if transport is None or transport.is_closing():
                    return
                req = deferred.popleft()
                self.inflight -= 1  # _dispatch counts it again if it stays in flight
                self._dispatch(req)
        finally:
            self.out = None
            if out and transport is not None and not transport.is_closing():
                self._flush_out(out)
        if self.pause_reasons & PAUSE_PIPELINE and self.inflight < self.ctx.max_pipelined:
            self._resume(PAUSE_PIPELINE)

    def _watch_send(self) -> None:
        """Unsent bytes wait for the client: start the send timeout and report them."""
        transport = self.transport
        if transport is None:
            return
        ctx = self.ctx
        size = transport.get_write_buffer_size()
        if not self.watched:
            self.watched = True
            ctx.backlog.add(self)
            self.send_deadline = ctx.now + ctx.send_timeout_s
        self.send_mark = size
        self._report_unsent(size)

    def _wrote_while_watched(self, n: int) -> None:
        # The mark is what the buffer would hold had the client read nothing since the last
        # check; a buffer below it at the next sweep means the client read.
        self.send_mark += n
        self._report_unsent(self.transport.get_write_buffer_size())  # type: ignore[union-attr]

    def _report_unsent(self, n: int) -> None:
        victim = self.ctx.bounds.report_unsent(self, n)
        if victim is not None:
            self.ctx.bounds.limited_log.warning(
                "max_unsent_bytes",
                "unsent response bytes over limits.max_unsent_bytes: cutting the connection "
                "that holds the most",
            )
            victim.cut_slow_reader()

    def check_send_progress(self, now: float) -> None:
        """Sweep: close the connection if its client read nothing for ``send_timeout_ms``."""
        transport = self.transport
        ctx = self.ctx
        size = transport.get_write_buffer_size() if transport is not None else 0
        if size == 0 and not self.pause_reasons & PAUSE_WRITE:
            self.watched = False
            ctx.backlog.discard(self)
            ctx.bounds.report_unsent(self, 0)
        elif size < self.send_mark:
            self.send_mark = size
            self.send_deadline = now + ctx.send_timeout_s
            self._report_unsent(size)
        elif now >= self.send_deadline:
            ctx.bounds.limited_log.warning(
                "send_timeout",
                "closing a connection whose client read nothing for %.1f s (%d bytes unsent)",
                ctx.send_timeout_s,
                size,
            )
            self._cut()
        else:
            self.send_mark = size

    def cut_slow_reader(self) -> None:
        """Abort this connection on its own loop. Thread-safe."""
        try:
            self.loop.call_soon_threadsafe(self._cut)
        except RuntimeError:
            pass  # the loop is closed: so is the connection

    def _cut(self) -> None:
        transport = self.transport
        if transport is not None and self.admitted and not self.cut:
            self.cut = True  # a victim may be chosen again before its abort is processed
            self.ctx.stats.slow_readers_cut += 1
            transport.abort()


async def _aclose(resp: StreamResponse) -> None:
    aclose = getattr(resp.chunks, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception as e:
            limited_log.exception(f"aclose {type(e).__name__}", "closing a response stream failed")
