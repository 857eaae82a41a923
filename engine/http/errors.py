"""The error the HTTP layer raises inside parser callbacks."""

from __future__ import annotations


class HttpError(Exception):
    """A request the server refuses; raised inside parser callbacks, answered in order."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
