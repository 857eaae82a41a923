"""HTTP/1.1 server protocol over httptools (llhttp), one instance per connection.

Callbacks never block: bytes are parsed, a request is dispatched to its handler, and the
response is queued in request order. Responses produced while one ``data_received`` call is
parsing (a pipelined burst) are joined and sent with one write. Handlers may return a response,
an ``asyncio.Future`` of one (answered by a done callback, no task: the inference APIs' hot
path) or another awaitable (run as one task per request); responses still leave in request
order, and a lost connection cancels the futures and tasks of its requests.

llhttp already rejects most request-smuggling vectors (CL with TE, duplicate CL, whitespace
before a colon, obs-fold, bare CR/LF, control bytes, a TE list not ending in chunked). This
module adds: Host count and syntax, TE in HTTP/1.0, transfer codings other than chunked (501),
major versions other than 1 (505; 1.2 and up are served as 1.1), methods outside the supported
set (501), trailer fields kept out of the header fields, and every size limit, including the
per-route body limits (checked when the head arrives, before any body byte is read).

Reading requests (the httptools callbacks, the request being parsed) is in
``engine.http.intake``, the checks on a request head in ``engine.http.head``. The output side
(writes, flow control, streamed bodies) and the bounds on what one client can pin (held-back
pipelined requests, send timeout, body memory, unsent bytes) are in ``engine.http.flow``; the
process-wide counters in ``engine.http.bounds``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import httptools

from infergate.engine.http.answers import log_access, no_handler
from infergate.engine.http.context import HttpContext
from infergate.engine.http.errors import HttpError
from infergate.engine.http.flow import CONN_CLOSE, PAUSE_CLOSING, PAUSE_PIPELINE, Slot, limited_log
from infergate.engine.http.head import invalid_method
from infergate.engine.http.intake import (
    CONTINUE,
    DL_BODY,
    DL_HEAD,
    DL_IDLE,
    DL_LINGER,
    RequestIntake,
    RouteRefusal,
    StopParsing,
)
from infergate.engine.http.request import Request
from infergate.engine.http.response import (
    AnyResponse,
    FileResponse,
    Response,
    StreamResponse,
    encode_response,
    error_response,
)
from infergate.engine.http.router import Handler, Route

__all__ = ["CONTINUE", "HttpContext", "HttpError", "HttpProtocol"]

CONN_KEEP_ALIVE = b"Connection: keep-alive\r\n"
LINGER_SECONDS = 2.0
_INF = float("inf")


class HttpProtocol(RequestIntake, asyncio.Protocol):
    """One client connection. Lives on one sub-reactor's loop; not thread-safe (except the
    inherited ``cut_slow_reader``)."""

    __slots__ = ("eof_callbacks", "eof_seen", "lingering", "tasks")

    def __init__(self, ctx: HttpContext) -> None:
        # the parser and the request being read: see RequestIntake; the output: ConnectionFlow
        RequestIntake.__init__(self, ctx)
        # per connection
        self.lingering = False
        self.tasks: set[asyncio.Future[Any]] = set()
        """Tasks and handler futures of this connection's requests: cancelled when it is lost."""
        self.eof_callbacks: set[Callable[[], None]] = set()
        self.eof_seen = False

    # ---- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ctx = self.ctx
        if ctx.wrap_transport is not None:
            transport = ctx.wrap_transport(transport)
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport
        if not ctx.bounds.open_connection():
            self._refuse()
            return
        self.admitted = True
        lim = ctx.limits
        transport.set_write_buffer_limits(  # type: ignore[attr-defined]
            high=lim.write_high_water, low=lim.write_low_water
        )
        ctx.connections.add(self)
        stats = ctx.stats
        stats.connections_open += 1
        stats.connections_total += 1
        self._set_deadline(DL_HEAD, self.ctx.header_timeout_s)
        if self.ctx.shutting_down:
            self.begin_shutdown()

    def _refuse(self) -> None:
        """Over ``max_connections``: close at once, log (rate-limited) and count."""
        ctx = self.ctx
        ctx.stats.connections_refused += 1
        ctx.bounds.note_refused()
        self.closing = True
        assert self.transport is not None
        self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.deadline = _INF
        if not self.admitted:
            return
        self.admitted = False
        ctx = self.ctx
        ctx.connections.discard(self)
        ctx.stats.connections_open -= 1
        ctx.bounds.close_connection()
        if self.body_held:
            ctx.bounds.release_body(self.body_held)
            self.body_held = 0
        if self.watched:
            self.watched = False
            ctx.backlog.discard(self)
            ctx.bounds.report_unsent(self, 0)
        self.deferred.clear()
        for task in self.tasks:
            task.cancel()
        for slot in self.pending:
            if isinstance(slot.resp, FileResponse):
                slot.resp.file.close()
        self.pending.clear()
        self._wake_drain()
        ctx.connection_closed()

    def eof_received(self) -> bool | None:
        # The client finished sending. Work that is merely waiting for shared capacity (queued
        # inference) is withdrawn through the callbacks; what already runs is answered, then
        # the connection closes (return False closes it now).
        self.closing = True
        self.eof_seen = True
        for cb in list(self.eof_callbacks):
            cb()
        return bool(self.inflight or self.pending or self.streaming)

    def on_client_eof(self, cb: Callable[[], None]) -> None:
        """Call ``cb`` when the client half-closes (FIN), or now if it already has (a FIN in the
        same read as the request arrives before the handler registers)."""
        if self.eof_seen:
            cb()
        else:
            self.eof_callbacks.add(cb)

    def discard_client_eof(self, cb: Callable[[], None]) -> None:
        self.eof_callbacks.discard(cb)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return  # after an error or Connection: close, further bytes are discarded
        ctx = self.ctx
        ctx.stats.bytes_in += len(data)
        if self.deadline_kind == DL_BODY:
            # the gap allowed between body bytes, within the total body deadline
            gap = ctx.now + ctx.idle_timeout_s
            self.deadline = gap if gap < self.body_deadline else self.body_deadline
        messages = self.messages
        head_before = messages if self.in_head else -1
        chunk_mark = self.body_len if self.in_chunked else -1
        out: list[bytes] = []
        self.out = out
        try:
            self.parser.feed_data(data)
            if head_before == self.messages and self.in_head:
                # The whole read was inside one unfinished request head. httptools buffers an
                # unfinished header line itself, so bound that memory here (exact limits are
                # enforced per field in on_url/on_header).
                self.head_raw += len(data)
                if self.head_raw > ctx.max_header + ctx.max_uri:
                    self._fail(431, "request header fields too large")
            elif self.in_chunked:
                self._bound_chunk_framing(len(data), messages, chunk_mark)
        except StopParsing:
            pass
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, StopParsing):
                pass
            elif isinstance(cause, RouteRefusal):
                self._stop_reading()
                self.lingering = True
                self._respond(None, cause.answer)
            elif isinstance(cause, HttpError):
                self._fail(cause.status, cause.message, cause.headers)
            else:
                limited_log.log(
                    logging.ERROR,
                    f"parse {type(cause).__name__}",
                    "request parsing failed",
                    exc_info=cause,
                )
                self._fail(500, "internal error while parsing the request")
        except httptools.HttpParserUpgrade:
            # The request was answered; this server speaks no other protocol on this connection.
            self._stop_reading()
            self._close_when_sent()
        except httptools.HttpParserInvalidMethodError:
            self._fail(*invalid_method(data))
        except httptools.HttpParserError as e:
            if not self.closing:  # llhttp also refuses data after a Connection: close request
                msg = str(e) or "malformed request"
                self._fail(505 if msg == "Invalid HTTP version" else 400, msg)
        finally:
            self.out = None
            if out:
                self._flush_out(out)

    def _bound_chunk_framing(self, n: int, messages: int, chunk_mark: int) -> None:
        """A chunked body is being read: bound what llhttp buffers between body bytes (an
        unfinished chunk line or trailer field), as head_raw does for the head."""
        if messages != self.messages or chunk_mark != self.body_len:
            self.frame_raw = 0  # a new message, or body bytes arrived in this read
            return
        self.frame_raw += n
        ctx = self.ctx
        if self.frame_raw > ctx.max_header + ctx.max_uri:
            self._fail(431, "chunk line or trailer fields too large")

    # ---- request handling --------------------------------------------------------------------

    def _dispatch(self, req: Request) -> None:
        """Run a request held back (``deferred``): routed again, off the hot path."""
        self._run(req, *self.ctx.router.resolve(req.method, req.path))

    def _run(self, req: Request, handler: Handler | None, route: Route | None) -> None:
        ctx = self.ctx
        method = req.method
        result: AnyResponse | Awaitable[AnyResponse]
        if handler is None:
            result = no_handler(req, route)
        else:
            try:
                result = handler(req)
            except Exception as e:
                _log_handler_failure(req, e)
                result = error_response(500, "internal error")
        if type(result) is Response and not self.pending and not self.streaming:
            # Fast path, the common case: a finished response with nothing ahead of it; _send
            # and _done inlined, with no pending-slot or inflight bookkeeping.
            keep_alive = req.keep_alive
            if keep_alive:
                connection = CONN_KEEP_ALIVE if req.version == "1.0" else b""
            else:
                connection = CONN_CLOSE
            data = encode_response(result, ctx.date_line, connection, method == "HEAD")
            n = len(data)
            out = self.out
            if out is not None:
                out.append(data)
                # Bound what one read's pipelined burst computes before the transport sees it,
                # so its flow control (pause_writing, then deferral) can act within the burst.
                # An int add and compare: bench/proto_micro.py showed no change beyond noise
                # (best of 15 runs, 2 loaded cores: 5.5 µs before, 5.2 µs after).
                self.out_len += n
                if self.out_len > ctx.write_high:
                    self._flush_out(out)
            else:
                self.transport.write(data)  # type: ignore[union-attr]
            if req.body:
                self._release_body(len(req.body))
            stats = ctx.stats
            stats.bytes_out += n
            stats.observe_response(result.status, time.perf_counter() - req.t0)
            if ctx.access_log:
                log_access(req, result.status)
            self._after_response(keep_alive)
            return
        self.inflight += 1
        if self.inflight >= ctx.max_pipelined:
            self._pause(PAUSE_PIPELINE)
        if isinstance(result, FileResponse | StreamResponse | Response):
            self._respond(req, result)
        elif isinstance(result, asyncio.Future):
            slot = Slot(req, None)
            self.pending.append(slot)
            self.tasks.add(result)
            result.add_done_callback(partial(self._handler_done, slot))
        else:
            slot = Slot(req, None)
            self.pending.append(slot)
            task = self.loop.create_task(self._await_handler(slot, result))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _await_handler(self, slot: Slot, aw: Awaitable[AnyResponse]) -> None:
        try:
            resp = await aw
        except asyncio.CancelledError:
            raise
        except Exception as e:
            assert slot.req is not None
            _log_handler_failure(slot.req, e)
            resp = error_response(500, "internal error")
        slot.resp = resp
        self._flush_pending()

    def _handler_done(self, slot: Slot, fut: asyncio.Future[AnyResponse]) -> None:
        """A handler's future is done: as ``_await_handler``, without a task."""
        self.tasks.discard(fut)
        if fut.cancelled():
            return  # the connection was lost
        try:
            slot.resp = fut.result()
        except Exception as e:
            assert slot.req is not None
            _log_handler_failure(slot.req, e)
            slot.resp = error_response(500, "internal error")
        self._flush_pending()

    def _respond(self, req: Request | None, resp: AnyResponse) -> None:
        """Send now if nothing is ahead of this response, otherwise queue it in order."""
        if self.pending or self.streaming:
            self.pending.append(Slot(req, resp))
        else:
            self._send(req, resp)

    def _flush_pending(self) -> None:
        pending = self.pending
        while pending and not self.streaming and pending[0].resp is not None:
            slot = pending.popleft()
            assert slot.resp is not None
            self._send(slot.req, slot.resp)

    def _send(self, req: Request | None, resp: AnyResponse) -> None:
        if self.transport is None or self.transport.is_closing():
            if isinstance(resp, FileResponse):
                resp.file.close()
            return
        ctx = self.ctx
        keep_alive = req is not None and req.keep_alive and not ctx.shutting_down
        if keep_alive:
            assert req is not None
            connection = CONN_KEEP_ALIVE if req.version == "1.0" else b""
        else:
            connection = CONN_CLOSE
        head_only = req is not None and req.method == "HEAD"
        if isinstance(resp, Response):
            data = encode_response(resp, ctx.date_line, connection, head_only)
            self._write(data)
            self._done(req, resp.status, keep_alive)
        else:
            self.streaming = True
            task = self.loop.create_task(self._stream(req, resp, connection, head_only, keep_alive))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def _done(self, req: Request | None, status: int, keep_alive: bool) -> None:
        """Bookkeeping after a final response has been handed to the transport."""
        ctx = self.ctx
        t0 = req.t0 if req is not None else self.t0
        ctx.stats.observe_response(status, time.perf_counter() - t0)
        if ctx.access_log and req is not None:
            log_access(req, status)
        if req is not None:
            if req.body:
                self._release_body(len(req.body))
            self.inflight -= 1
            if self.pause_reasons & PAUSE_PIPELINE and self.inflight < ctx.max_pipelined:
                self._resume(PAUSE_PIPELINE)
        self._after_response(keep_alive)

    def _after_response(self, keep_alive: bool) -> None:
        """Close after the last response, or arm the idle deadline once nothing is in flight."""
        if not keep_alive or self.closing:
            self._stop_reading()
            self._close_when_sent()
        elif self.inflight == 0 and not self.in_head:
            self.deadline_kind = DL_IDLE
            self.deadline = self.ctx.now + self.ctx.idle_timeout_s

    def _stop_reading(self) -> None:
        """Read no further requests on this connection."""
        self.closing = True
        self.in_head = False
        self._pause(PAUSE_CLOSING)

    def _fail(
        self, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        """Answer a refused request (after the responses ahead of it) and close the connection."""
        self._stop_reading()
        self.lingering = True
        self._respond(None, error_response(status, message, headers=headers))

    def _close_when_sent(self) -> None:
        if self.transport is None or self.pending or self.streaming:
            return
        if self.out:
            # inside data_received: the final write happens in its finally block first
            self.loop.call_soon(self._close_when_sent)
            return
        if self.lingering and self.transport.can_write_eof():
            # Lingering close: send FIN but keep reading (and discarding) for a moment, so
            # an unread request body does not turn into a RST that destroys our response.
            self.transport.write_eof()
            self._resume(PAUSE_CLOSING)
            self._set_deadline(DL_LINGER, LINGER_SECONDS)
        else:
            self._close()

    def _close(self) -> None:
        """Close after the unsent bytes are written; watch them (send timeout) if any."""
        transport = self.transport
        assert transport is not None
        transport.close()
        if transport.get_write_buffer_size():
            self._watch_send()

    # ---- deadlines and shutdown --------------------------------------------------------------

    def on_deadline(self) -> None:
        """The connection's deadline passed (called by the reactor's sweep)."""
        kind = self.deadline_kind
        self.deadline = _INF
        if self.transport is None or self.transport.is_closing():
            return
        if kind == DL_HEAD and self.in_head:
            self._fail(408, "request head not received in time")
        elif kind == DL_BODY:
            self._fail(408, "request body not received in time")
        else:
            # idle keep-alive connection, nothing received yet, or a finished lingering close
            self._close()

    def begin_shutdown(self) -> None:
        """Finish what is in flight with ``Connection: close``, then close. Owning loop only."""
        if self.inflight == 0 and not self.pending and not self.streaming:
            if self.transport is not None and not self.transport.is_closing():
                self._close()
            return
        self._stop_reading()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _log_handler_failure(req: Request, e: Exception) -> None:
    limited_log.exception(
        f"handler {req.method} {type(e).__name__}", "handler for %s %s failed", req.method, req.path
    )
