"""A raw-socket HTTP/1.1 client: the tests choose every byte sent and see every byte received.

Every read is bounded by the socket timeout (a safety net, never a synchronisation device) and
by ``MAX_BYTES``, so a misbehaving server fails a test instead of hanging it.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

HOST = "127.0.0.1"
DEFAULT_TIMEOUT = 10.0
MAX_BYTES = 64 * 1024 * 1024
NO_BODY_STATUSES = frozenset({204, 304, *range(100, 200)})


class ConnectionClosedError(Exception):
    """The server closed the connection before a complete response arrived."""


@dataclass
class HttpResponse:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    """Header fields in arrival order; names lower-cased, values as sent."""
    body: bytes
    raw_head: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k == name]

    def json(self) -> Any:
        return json.loads(self.body)


def build_request(
    method: str = "GET",
    target: str = "/",
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    *,
    version: str = "HTTP/1.1",
    host: str | None = "test",
    content_length: bool | None = None,
) -> bytes:
    """Encode one request. ``Host`` is added unless ``host`` is None; ``Content-Length`` is
    added when there is a body (or when ``content_length`` is True)."""
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    for k, v in headers or []:
        lines.append(f"{k}: {v}")
    if content_length or (content_length is None and body):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(*pieces: bytes, trailer: bytes = b"") -> bytes:
    """A chunked request body made of ``pieces`` (empty pieces are skipped)."""
    out = [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p]
    return b"".join(out) + b"0\r\n" + trailer + b"\r\n"


class ResponseReader:
    """Parses responses out of a byte stream; ``_recv`` supplies more bytes (b"" at EOF)."""

    def __init__(self, data: bytes = b"") -> None:
        self.buf = bytearray(data)
        self.eof = False

    def _recv(self) -> bytes:
        return b""

    # ---- reading -----------------------------------------------------------------------------

    def _fill(self) -> bool:
        """Append the next bytes to ``buf``; False at EOF."""
        if self.eof:
            return False
        data = self._recv()
        if not data:
            self.eof = True
            return False
        self.buf += data
        if len(self.buf) > MAX_BYTES:
            raise AssertionError("server sent more than MAX_BYTES without completing a response")
        return True

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionClosedError(f"EOF after {len(self.buf)} of {n} bytes")
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def _take_line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                return self._take(i + 2)[:-2]
            if not self._fill():
                raise ConnectionClosedError(f"EOF inside a line: {bytes(self.buf)!r}")

    def read_head(self) -> tuple[str, int, str, list[tuple[str, str]], bytes]:
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                break
            if not self._fill():
                raise ConnectionClosedError(f"EOF before a full response head: {bytes(self.buf)!r}")
        raw = self._take(i + 4)
        status_line, *header_lines = raw[:-4].decode("latin-1").split("\r\n")
        version, status, reason = ([*status_line.split(" ", 2), ""])[:3]
        headers = []
        for line in header_lines:
            name, sep, value = line.partition(":")
            assert sep, f"malformed response header line {line!r}"
            assert name == name.strip(), f"whitespace around header name {line!r}"
            headers.append((name.lower(), value.strip()))
        return version, int(status), reason, headers, raw

    def read_response(self, *, head: bool = False) -> HttpResponse:
        """Read one complete response (an interim 1xx response counts as one).

        ``head``: the request was HEAD, so the response has no body whatever its headers say.
        """
        version, status, reason, headers, raw = self.read_head()
        resp = HttpResponse(version, status, reason, headers, b"", raw)
        te = resp.header("transfer-encoding")
        cl = resp.header("content-length")
        if head or status in NO_BODY_STATUSES:
            return resp
        if te is not None:
            assert te.lower() == "chunked", f"unexpected Transfer-Encoding {te!r}"
            assert cl is None, "response has both Content-Length and Transfer-Encoding"
            resp.body = self._read_chunked()
        elif cl is not None:
            assert len(resp.header_all("content-length")) == 1
            resp.body = self._take(int(cl))
        else:
            resp.body = self.read_until_eof()
        return resp

    def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            size = int(self._take_line().split(b";")[0], 16)
            if size == 0:
                while self._take_line():  # trailer fields, then the blank line
                    pass
                return bytes(body)
            body += self._take(size)
            assert self._take(2) == b"\r\n", "chunk not followed by CRLF"

    def read_until_eof(self) -> bytes:
        """Everything up to the server's EOF (or reset). Raises socket timeout if none comes."""
        while self._fill():
            pass
        data = bytes(self.buf)
        self.buf.clear()
        return data

    def assert_closed(self) -> None:
        """The server closes the connection without sending anything more."""
        rest = self.read_until_eof()
        assert rest == b"", f"expected EOF, got {rest[:200]!r}"


def parse_responses(data: bytes, heads: Sequence[bool] = ()) -> list[HttpResponse]:
    """Every complete response in ``data`` (``heads[i]``: response i answers a HEAD).

    Fails if bytes are left over that do not form a complete response.
    """
    reader = ResponseReader(data)
    out: list[HttpResponse] = []
    while reader.buf:
        head = heads[len(out)] if len(out) < len(heads) else False
        out.append(reader.read_response(head=head))
    return out


class RawConnection(ResponseReader):
    """One TCP connection to the server under test."""

    def __init__(self, port: int, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__()
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _recv(self) -> bytes:
        try:
            return self.sock.recv(65536)
        except ConnectionResetError:
            return b""

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, *args: Any, head: bool = False, **kwargs: Any) -> HttpResponse:
        """Send one request (see ``build_request``) and read its response."""
        self.send(build_request(*args, **kwargs))
        return self.read_response(head=head)


def assert_json_error(resp: HttpResponse, status: int) -> dict[str, Any]:
    """``resp`` is an error in infergate's shape: ``{"error": {"message", "type", "code"}}``."""
    assert resp.status == status, f"expected {status}, got {resp.status}: {resp.body[:300]!r}"
    assert resp.header("content-type") == "application/json"
    doc = json.loads(resp.body)
    assert set(doc) == {"error"}
    err = doc["error"]
    assert set(err) == {"message", "type", "code"}
    assert err["code"] == status
    assert isinstance(err["message"], str)
    assert err["message"]
    assert isinstance(err["type"], str)
    assert err["type"]
    return err  # type: ignore[no-any-return]


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` in Prometheus text whose labels include ``labels``.

    Summing makes the check independent of extra labels (e.g. one series per reactor).
    """
    total = 0.0
    found = False
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        sample, _, label_text = series.partition("{")
        if sample != name:
            continue
        have = dict(_LABEL_RE.findall(label_text))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(value)
            found = True
    assert found, f"no sample {name} {labels} in metrics:\n{text}"
    return total


_LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
