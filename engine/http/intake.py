"""Reading requests: the httptools (llhttp) callbacks and the state of the request being parsed.

``HttpProtocol`` inherits this. A callback only checks and records what arrives; at the end of a
message it builds the ``Request`` and hands it to the protocol (``_run``), or holds it back
while the client is not reading (``deferred``, see ``engine.http.flow``). The checks on the
head itself are pure functions in ``engine.http.head``. Owning loop only.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httptools

from infergate.engine.http.context import HttpContext
from infergate.engine.http.errors import HttpError
from infergate.engine.http.flow import PAUSE_PIPELINE, PAUSE_WRITE, ConnectionFlow
from infergate.engine.http.head import (
    KNOWN_HOSTS,
    check_host,
    check_transfer_encoding,
    http_version,
)
from infergate.engine.http.request import Request
from infergate.engine.http.router import SUPPORTED_METHODS, BodyLimit, Handler, Route
from infergate.engine.http.target import decode_path, split_target

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_METHODS = {m.encode(): m for m in SUPPORTED_METHODS}
_INF = float("inf")

# What the connection's deadline means when it passes.
DL_HEAD, DL_BODY, DL_IDLE, DL_BUSY, DL_LINGER = range(5)


class StopParsing(Exception):
    """Raised in a callback to stop reading requests after a ``Connection: close`` one."""


class RouteRefusal(HttpError):
    """A body over its route's limit: answered with the route's own 413."""

    def __init__(self, limit: BodyLimit) -> None:
        super().__init__(413, "request body over the route's limit")
        self.answer = limit.answer


class RequestIntake(ConnectionFlow):
    """The parser of one connection and the request it is reading."""

    __slots__ = (
        "body_cap",
        "body_deadline",
        "body_len",
        "body_limit",
        "body_parts",
        "closing",
        "content_length",
        "deadline",
        "deadline_kind",
        "expect",
        "frame_raw",
        "handler",
        "head_raw",
        "head_size",
        "headers",
        "host_count",
        "in_chunked",
        "in_head",
        "keep_alive_hdr",
        "messages",
        "method",
        "parser",
        "path",
        "query",
        "raw_path",
        "route",
        "t0",
        "te",
        "url",
        "version",
    )

    def __init__(self, ctx: HttpContext) -> None:
        # the output side: see ConnectionFlow
        ConnectionFlow.__init__(self, ctx)
        # per connection
        self.parser = httptools.HttpRequestParser(self)
        # lenient_version: llhttp refuses HTTP/1.2 and up; on_headers_complete serves them as
        # 1.1 (RFC 9110 §2.5). lenient_keep_alive: llhttp would act on a trailer field
        # "Connection: close"; keep-alive is decided here from the header fields alone, and
        # the protocol stops reading after a request that closes (_stop_reading).
        self.parser.set_dangerous_leniencies(lenient_version=True, lenient_keep_alive=True)
        self.closing = False
        """Reading no further requests (after an error or a request that closes)."""
        self.messages = 0
        self.deadline = _INF
        self.deadline_kind = DL_HEAD
        # per request (the one being parsed)
        self.in_head = False
        self.head_raw = 0
        self.head_size = 0
        self.url = b""
        self.raw_path = b""
        self.path = ""
        self.query = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.host_count = 0
        self.content_length = -1
        self.te: bytes | None = None
        self.expect: bytes | None = None
        self.keep_alive_hdr: bytes | None = None
        self.method = "GET"
        self.version = "1.1"
        self.handler: Handler | None = None
        self.route: Route | None = None
        self.body_parts: list[bytes] = []
        self.body_len = 0
        self.body_limit = ctx.max_body
        self.body_cap: BodyLimit | None = None
        self.in_chunked = False
        self.frame_raw = 0
        """Bytes read while a chunked body made no progress (chunk lines, trailer fields)."""
        self.body_deadline = _INF
        self.t0 = 0.0

    # Provided by HttpProtocol.
    def _run(self, req: Request, handler: Handler | None, route: Route | None) -> None:
        raise NotImplementedError

    def _stop_reading(self) -> None:
        raise NotImplementedError

    def on_client_eof(self, cb: Callable[[], None]) -> None:
        raise NotImplementedError

    def discard_client_eof(self, cb: Callable[[], None]) -> None:
        raise NotImplementedError

    # ---- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.closing:
            raise StopParsing
        self.t0 = time.perf_counter()
        self.messages += 1
        self.in_head = True
        self.head_raw = 0
        self.head_size = 0
        self.url = b""
        self.headers = []
        self.host_count = 0
        self.content_length = -1
        self.te = None
        self.expect = None
        self.keep_alive_hdr = None
        self.body_parts = []
        self.body_len = 0
        self.in_chunked = False
        ctx = self.ctx
        self.deadline_kind = DL_HEAD
        self.deadline = ctx.now + ctx.header_timeout_s

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.ctx.max_uri:
            raise HttpError(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value) + 4
        if self.head_size + len(self.url) > self.ctx.max_header:
            raise HttpError(431, "request header fields too large")
        if not self.in_head:
            return  # a trailer field: bounded above, never merged (RFC 9112 §7.1.2)
        value = value.rstrip(b" \t")  # trailing OWS is not part of the value (§5.1)
        name = name.lower()
        if name == b"host":
            self.host_count += 1
            if value not in KNOWN_HOSTS:  # the same value on every request: one set probe
                check_host(value)
        elif name == b"content-length":
            self.content_length = int(value)  # llhttp has validated the digits
        elif name == b"transfer-encoding":
            self.te = value if self.te is None else self.te + b"," + value
        elif name == b"expect":
            self.expect = value
        elif name == b"connection":
            value = value.lower()
            # "Connection: upgrade" makes llhttp stop after this request; no other protocol is
            # spoken here, so answer it as the last one on the connection.
            self.keep_alive_hdr = b"close" if b"upgrade" in value else value
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        p = self.parser
        # httptools builds a new object on every get_* call (~0.1 µs each): ask once, keep.
        version = p.get_http_version()
        if version not in {"1.1", "1.0"}:
            version = http_version(version)
        mb = p.get_method()
        method = _METHODS.get(mb)
        if method is None:
            raise HttpError(501, f"method {mb.decode('latin-1')} not implemented")
        self.method = method
        self.version = version
        if version == "1.1" and self.host_count != 1:
            raise HttpError(400, "exactly one Host header is required")
        if self.host_count > 1:
            raise HttpError(400, "duplicate Host header")
        te = self.te
        if te is not None:
            check_transfer_encoding(te, version)
        url = self.url
        if url[:1] == b"/":  # origin-form, the common case
            raw_path, _, self.query = url.partition(b"?")
        else:
            raw_path, self.query = split_target(url)
        self.raw_path = raw_path
        try:
            self.path = path = decode_path(raw_path)
        except ValueError as e:
            raise HttpError(400, str(e)) from None
        # Routed once, here: the route's body limit applies before the body is read, and
        # on_message_complete dispatches to the handler found now.
        self.handler, route = self.ctx.router.resolve(method, path)
        self.route = route
        length = self.content_length
        if length > 0 or te is not None:
            self._begin_body(length, route)
        if self.expect is not None:
            self._expect_continue(version)

    def _begin_body(self, length: int, route: Route | None) -> None:
        """Limits, memory reservation and deadline of a body about to be read."""
        ctx = self.ctx
        limit = ctx.max_body
        cap = None
        if route is not None and route.body_limits is not None:
            cap = route.body_limits.get(self.method)
            if cap is not None and cap.max_bytes < limit and cap.applies(self.headers):
                limit = cap.max_bytes
            else:
                cap = None
        self.body_cap = cap
        self.body_limit = limit
        if length > limit:
            raise self._too_large()
        if length > 0:
            self._reserve_body(length)
        if self.te is not None:
            self.in_chunked = True
            self.frame_raw = 0
        self.body_deadline = ctx.now + ctx.body_timeout_s
        self._set_deadline(DL_BODY, min(ctx.idle_timeout_s, ctx.body_timeout_s))

    def _too_large(self) -> HttpError:
        if self.body_cap is not None:
            return RouteRefusal(self.body_cap)
        return HttpError(413, f"request body larger than {self.ctx.max_body} bytes")

    def on_body(self, body: bytes) -> None:
        self.body_len += len(body)
        if self.body_len > self.body_limit:
            raise self._too_large()
        if self.content_length < 0:  # chunked: reserve as it grows
            self._reserve_body(len(body))
        self.body_parts.append(body)

    def on_message_complete(self) -> None:
        self.in_chunked = False
        parts = self.body_parts
        body = b"" if not parts else parts[0] if len(parts) == 1 else b"".join(parts)
        ctx = self.ctx
        version = self.version
        conn = self.keep_alive_hdr
        if conn is None:
            keep_alive = version == "1.1"
        elif version == "1.1":
            keep_alive = b"close" not in conn
        else:
            keep_alive = b"keep-alive" in conn
        keep_alive = keep_alive and not ctx.shutting_down
        req = Request(
            self.method,
            self.raw_path,
            self.path,
            self.query,
            version,
            self.headers,
            body,
            keep_alive,
            self,
        )
        req.t0 = self.t0
        self.deadline = _INF
        self.deadline_kind = DL_BUSY
        if not keep_alive:
            self._stop_reading()
        if self.pause_reasons & PAUSE_WRITE or self.deferred:
            # The client is not reading what was already computed for it: hold this request
            # back (it counts against max_pipelined, which pauses reading when full). One
            # flag test per request, no syscall: the transport tells us (pause_writing).
            self.deferred.append(req)
            self.inflight += 1
            if self.inflight >= ctx.max_pipelined:
                self._pause(PAUSE_PIPELINE)
            return
        self._run(req, self.handler, self.route)

    # ---- helpers -----------------------------------------------------------------------------

    def _expect_continue(self, version: str) -> None:
        assert self.expect is not None
        if self.expect.lower() != b"100-continue":
            raise HttpError(417, "only 'Expect: 100-continue' is supported")
        has_body = self.content_length > 0 or self.te is not None
        # 100 goes out only when it cannot overtake an earlier response on this connection.
        if version == "1.1" and has_body and not self.pending and not self.streaming:
            self._write(CONTINUE)

    def _set_deadline(self, kind: int, seconds: float) -> None:
        self.deadline_kind = kind
        self.deadline = self.ctx.now + seconds
