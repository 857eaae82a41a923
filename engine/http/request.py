"""The request object handed to route handlers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol
from urllib.parse import parse_qsl


class ClientConnection(Protocol):
    """What a handler may ask of the connection a request came on (``HttpProtocol``)."""

    def on_client_eof(self, cb: Callable[[], None]) -> None:
        """Call ``cb`` when the client half-closes (or now, if it already has)."""

    def discard_client_eof(self, cb: Callable[[], None]) -> None:
        """Forget a callback registered with ``on_client_eof``."""


class Request:
    """One parsed HTTP request. Created and used on the connection's sub-reactor only."""

    __slots__ = (
        "body",
        "conn",
        "headers",
        "keep_alive",
        "method",
        "notes",
        "path",
        "query",
        "raw_path",
        "t0",
        "version",
    )

    def __init__(
        self,
        method: str,
        raw_path: bytes,
        path: str,
        query: bytes,
        version: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        keep_alive: bool,
        conn: ClientConnection | None,
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        """The path as sent, still percent-encoded."""
        self.path = path
        """The path percent-decoded once (used for routing)."""
        self.query = query
        self.version = version
        self.headers = headers
        """Header fields in arrival order; names lower-cased."""
        self.body = body
        self.keep_alive = keep_alive
        self.conn = conn
        """The connection, for disconnect checks; None in unit tests."""
        self.t0 = 0.0
        """``time.perf_counter()`` when the request's first byte was parsed."""
        self.notes: dict[str, object] | None = None
        """Fields a handler adds to this request's access-log line (model, batch size...)."""

    def header(self, name: bytes) -> bytes | None:
        """First value of the (lower-case) header ``name``, or None."""
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def query_params(self) -> dict[str, str]:
        return dict(parse_qsl(self.query.decode("latin-1"), keep_blank_values=True))
