"""Request targets: splitting path and query, decoding the path."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import httptools

from infergate.engine.http.errors import HttpError


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
    # httptools declares bytes but gives None when absent; mypyc checks declared types at run
    # time, so read the fields untyped
    url_fields: Any = parsed
    got_path: bytes | None = url_fields.path
    got_query: bytes | None = url_fields.query
    return got_path or b"/", got_query or b""


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
