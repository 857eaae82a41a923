"""Request-head checks the protocol makes on top of llhttp (RFC 9112 §2-3, §6; RFC 9110 §2.5,
§7.2). Functions of bytes and strings; they raise ``HttpError`` for a refusal.

Every pattern is compiled once; the callers keep the common case inline (versions 1.1 and 1.0,
an origin-form target) and ``check_host`` remembers the values it accepted.
"""

from __future__ import annotations

import re

from infergate.engine.http.errors import HttpError

REQUEST_START = re.compile(rb"(?:\r?\n)*[!#$%&'*+\-.^_`|~0-9A-Za-z]+ ")
"""What a request-line starts with (optional empty lines, a token, SP): a method llhttp refuses
after this is an unknown method (501); anything else is not HTTP at all (400)."""

HOST = re.compile(
    rb"(?:\[(?:[0-9A-Fa-f:.]+|v[0-9A-Fa-f]+\.[-A-Za-z0-9._~!$&'()*+,;=:]+)\]"
    rb"|(?:[-A-Za-z0-9._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*)"
    rb"(?::[0-9]*)?"
)
"""RFC 9110 §7.2: Host = uri-host [ ":" port ] (RFC 3986: IP-literal, IPv4 or reg-name)."""

SUPPORTED_VERSIONS = "this server supports HTTP/1.1 and HTTP/1.0"


def invalid_method(data: bytes) -> tuple[int, str]:
    """The answer to llhttp's invalid-method error for a read that starts with ``data``."""
    if REQUEST_START.match(data):
        return 501, "method not implemented"
    return 400, "not an HTTP/1.x request"


def http_version(version: str) -> str:
    """The version a request of ``version`` ("major.minor", as llhttp reports it) is served as.

    RFC 9110 §2.5: a higher minor version is processed as the highest one implemented (1.1);
    another major version is a 505 that says what is supported (§15.6.6).
    """
    if version in {"1.1", "1.0"}:  # a constant set: compiled to a frozenset
        return version
    if version[:2] != "1.":
        raise HttpError(505, f"HTTP version {version} is not supported; {SUPPORTED_VERSIONS}")
    return "1.1"


KNOWN_HOSTS: set[bytes] = set()
"""Host values already found valid. A client sends the same one on every request: one set probe
instead of the regex (bench/proto_micro.py under cProfile: the regex took about as long as
encoding the response). The caller probes it before calling ``check_host``. Bounded:
once full, further values are checked by the regex each time. Shared by the reactors' threads
(set operations are atomic under the GIL; a race only repeats a check)."""
KNOWN_HOSTS_MAX = 256


def check_host(value: bytes) -> None:
    """RFC 9112 §3.2: a Host field with an invalid value is a 400."""
    if not HOST.fullmatch(value):
        raise HttpError(400, "invalid Host header")
    if len(KNOWN_HOSTS) < KNOWN_HOSTS_MAX:
        KNOWN_HOSTS.add(value)


def check_transfer_encoding(te: bytes, version: str) -> None:
    """RFC 9112 §6.1, §6.3: only ``chunked``, last, and never in HTTP/1.0."""
    if version == "1.0":
        raise HttpError(400, "Transfer-Encoding is not allowed in HTTP/1.0 requests")
    codings = [c.strip().lower() for c in te.split(b",")]
    if codings[-1] != b"chunked":
        raise HttpError(400, "Transfer-Encoding must end with chunked")
    if len(codings) > 1:
        raise HttpError(501, "only the chunked transfer coding is implemented")
