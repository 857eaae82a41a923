"""Responses and their encoding to bytes.

Status lines and common headers are precomputed; a fixed-length response is encoded with one
``%`` format into one ``bytes`` object so the protocol can send it with a single write.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from http import HTTPStatus
from typing import Any

import msgspec
import orjson

STATUS_LINES: dict[int, bytes] = {
    s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode("latin-1") for s in HTTPStatus
}

SERVER_HEADER = b"Server: infergate\r\n"
CONTENT_TYPE_JSON = b"application/json"
CONTENT_TYPE_TEXT = b"text/plain; charset=utf-8"

# Statuses that never carry a body (RFC 9110 §6.4.1).
NO_BODY_STATUSES = frozenset({204, 304}) | frozenset(range(100, 200))

_json_encoder = msgspec.json.Encoder()

Headers = list[tuple[bytes, bytes]]


def status_line(status: int) -> bytes:
    line = STATUS_LINES.get(status)
    if line is None:
        line = f"HTTP/1.1 {status} Unknown\r\n".encode("latin-1")
    return line


class Response:
    """A complete response whose body is in memory."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        body: bytes = b"",
        status: int = 200,
        content_type: bytes = CONTENT_TYPE_TEXT,
        headers: Headers | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers


class FileResponse:
    """A response whose body is ``count`` bytes of an open file from ``offset``.

    The protocol streams it in chunks read off the reactor thread and closes the file.
    """

    __slots__ = ("content_type", "count", "file", "headers", "offset", "status")

    def __init__(
        self,
        file: Any,
        offset: int,
        count: int,
        status: int = 200,
        content_type: bytes = b"application/octet-stream",
        headers: Headers | None = None,
    ) -> None:
        self.file = file
        self.offset = offset
        self.count = count
        self.status = status
        self.content_type = content_type
        self.headers = headers


class StreamResponse:
    """A response sent with chunked transfer coding from an async iterator of byte chunks.

    Used for Server-Sent Events and other bodies of unknown length. Each chunk is written as it
    comes; the protocol waits while the client's unsent output is above the high-water mark.
    """

    __slots__ = ("chunks", "content_type", "headers", "status")

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        status: int = 200,
        content_type: bytes = b"application/octet-stream",
        headers: Headers | None = None,
    ) -> None:
        self.chunks = chunks
        self.status = status
        self.content_type = content_type
        self.headers = headers


AnyResponse = Response | FileResponse | StreamResponse


def _fallback(obj: Any) -> Any:
    tolist = getattr(obj, "tolist", None)  # a numpy array orjson does not take (not contiguous)
    if tolist is None:
        raise TypeError(f"cannot encode {type(obj).__name__} as JSON")
    return tolist()


def numpy_json(obj: Any) -> bytes:
    """JSON of ``obj``, whose numpy arrays orjson writes from their buffers. Non-finite floats
    become null, as with msgspec. Pass float arrays as float64: float32's shortest text does
    not always survive a float64 parser (see engine.api.openai.embeddings_response)."""
    return orjson.dumps(obj, default=_fallback, option=orjson.OPT_SERIALIZE_NUMPY)


def json_response(obj: Any, status: int = 200, headers: Headers | None = None) -> Response:
    return Response(_json_encoder.encode(obj), status, CONTENT_TYPE_JSON, headers)


def error_response(
    status: int,
    message: str,
    *,
    err_type: str | None = None,
    code: str | int | None = None,
    headers: Headers | None = None,
) -> Response:
    """JSON error in the shape every infergate API uses (OpenAI's):
    ``{"error": {"message", "type", "code"}}``; ``code`` defaults to the status."""
    if err_type is None:
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "error"
        err_type = phrase.lower().replace(" ", "_").replace("-", "_")
    body = {
        "error": {"message": message, "type": err_type, "code": status if code is None else code}
    }
    return json_response(body, status, headers)


def encode_head(
    status: int,
    date: bytes,
    content_type: bytes,
    length: int | None,
    headers: Headers | None,
    connection: bytes,
) -> bytes:
    """Status line and header block, ending with the blank line.

    ``date`` is the precomputed ``Date: ...\\r\\n`` line of the owning reactor; ``connection`` is
    ``b""`` or a full ``Connection: ...\\r\\n`` line; ``length`` None means chunked and a
    negative length means no framing header (the body ends when the connection closes). A
    1xx, 204 or 304 status never gets a framing header (it has no body, RFC 9112 §6.1).
    """
    extra = b"".join(b"%s: %s\r\n" % kv for kv in headers) if headers else b""
    if status in NO_BODY_STATUSES or (length is not None and length < 0):
        framing = b""
    elif length is None:
        framing = b"Transfer-Encoding: chunked\r\n"
    else:
        framing = b"Content-Length: %d\r\n" % length
    ctype = b"Content-Type: %s\r\n" % content_type if content_type else b""
    return b"%s%s%s%s%s%s%s\r\n" % (
        status_line(status),
        SERVER_HEADER,
        date,
        ctype,
        framing,
        extra,
        connection,
    )


def encode_response(resp: Response, date: bytes, connection: bytes, head_only: bool) -> bytes:
    """One ``bytes`` holding the whole response (the body omitted for HEAD and 1xx/204/304)."""
    status = resp.status
    body = resp.body
    if resp.headers is None and status == 200:
        # Hot path: no extra headers. One format, measured ~0.35 µs.
        return b"HTTP/1.1 200 OK\r\n%s%sContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n%s" % (
            SERVER_HEADER,
            date,
            resp.content_type,
            len(body),
            connection,
            b"" if head_only else body,
        )
    head = encode_head(status, date, resp.content_type, len(body), resp.headers, connection)
    if head_only or status in NO_BODY_STATUSES:
        return head
    return head + body


def chunk(data: bytes) -> bytes:
    """Frame one chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"

DateProvider = Callable[[], bytes]
