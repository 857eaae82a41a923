"""The error the HTTP layer raises inside parser callbacks."""

from __future__ import annotations

Headers = list[tuple[bytes, bytes]]


class HttpError(Exception):
    """A request the server refuses; raised inside parser callbacks, answered in order."""

    def __init__(self, status: int, message: str, headers: Headers | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers
        """Extra response header fields (``Retry-After``...)."""
