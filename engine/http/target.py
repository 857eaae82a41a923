"""Request targets: splitting path and query, decoding the path."""

from __future__ import annotations

from urllib.parse import unquote

import httptools

from engine.http.errors import HttpError


def split_target(url: bytes) -> tuple[bytes, bytes]:
    """(path, query) of an origin-form, absolute-form or asterisk-form request target."""
    if url[:1] == b"/":
        path, _, query = url.partition(b"?")
        return path, query
    if url == b"*":
        return b"*", b""
    try:
        parsed = httptools.parse_url(url)
    except httptools.HttpParserInvalidURLError:
        raise HttpError(400, "malformed request target") from None
    return parsed.path or b"/", parsed.query or b""


def decode_path(raw: bytes) -> str:
    """Percent-decode a path once, as UTF-8. Raises ValueError for invalid bytes."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("request path is not valid UTF-8") from None
    if "%" not in text:
        return text
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise ValueError("percent-encoded request path is not valid UTF-8") from None
