"""HTTP/1.1 conformance: RFC 9112 §2-7 and RFC 9110 §2.5, §7.2, §15, one test per requirement.

Each test is named after the section it checks and quotes the requirement. Requirements that
tests elsewhere already cover are listed in docs/architecture.md ("HTTP conformance") with the
name of that test; they are not repeated here. A requirement the server does not meet yet is
written as it should behave and marked ``xfail(strict=True)``: the mark must go when the fix in
engine/http/protocol.py lands. Deliberate deviations are tested as they are (and documented).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from infergate.engine.config import Limits
from infergate.engine.http.protocol import CONTINUE
from infergate.engine.http.request import Request
from infergate.engine.http.response import Response, StreamResponse
from infergate.engine.http.router import Router
from tests.support.client import HttpResponse, assert_json_error, build_request, chunked
from tests.support.fake_transport import FIXED_DATE, Connection

SMALL = Limits(max_header_bytes=1024, max_uri_bytes=256, max_body_bytes=1024)
NEXT = b"GET /info?next HTTP/1.1\r\nHost: x\r\n\r\n"
"""A valid request sent after a bad one: it must never be answered (the connection is done)."""


def _pending_fix(section: str, what: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=f"{section}: {what}; fix pending in protocol.py")


# ---- a router whose handlers show what the protocol handed them --------------------------------


def info(req: Request) -> Response:
    doc = {
        "method": req.method,
        "path": req.path,
        "query": req.query.decode("latin-1"),
        "version": req.version,
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in req.headers],
    }
    return Response(json.dumps(doc).encode(), 200, b"application/json")


def echo(req: Request) -> Response:
    return Response(req.body, 200, b"application/octet-stream")


def status(req: Request) -> Response:
    return Response(b"xyz", int(req.query))


async def _two_chunks() -> AsyncIterator[bytes]:
    yield b"ab"
    yield b"cd"


def stream(req: Request) -> StreamResponse:
    return StreamResponse(_two_chunks(), int(req.query or b"200"), b"text/plain")


async def info_later(req: Request) -> Response:
    for _ in range(3):
        await asyncio.sleep(0)  # yield to the loop: the response is not ready within the read
    return info(req)


def make_router() -> Router:
    r = Router()
    r.add(["GET"], "/info", info)
    r.add(["GET"], "/later", info_later)
    r.add(["POST"], "/echo", echo)
    r.add(["GET"], "/status", status)
    r.add(["GET"], "/stream", stream)
    return r


ConnFactory = Callable[..., Connection]


@pytest.fixture
def connect(loop: asyncio.AbstractEventLoop, executor: ThreadPoolExecutor) -> ConnFactory:
    router = make_router()

    def make(limits: Limits | None = None) -> Connection:
        return Connection(loop, router, executor, limits)

    return make


def exchange(
    connect: ConnFactory, *data: bytes, limits: Limits | None = None, heads: tuple[bool, ...] = ()
) -> tuple[Connection, list[HttpResponse]]:
    """Feed ``data`` (one read per argument) to a new connection; every response it wrote."""
    c = connect(limits)
    c.feed(*data)
    c.settle()
    return c, c.responses(heads)


def refused(
    connect: ConnFactory, *data: bytes, status: int, limits: Limits | None = None
) -> dict[str, str]:
    """``data`` (followed by a valid request) gets exactly one JSON error ``status`` with
    ``Connection: close``, the connection half-closes (lingering close) and the valid request
    after the bad one is never answered. Returns the error object."""
    c, responses = exchange(connect, *data[:-1], data[-1] + NEXT, limits=limits)
    assert len(responses) == 1, [r.status for r in responses]
    [r] = responses
    err = assert_json_error(r, status)
    assert r.header("connection") == "close"
    assert c.transport.eof_written or c.transport.closed
    return err


def served(connect: ConnFactory, data: bytes, limits: Limits | None = None) -> dict[str, Any]:
    """``data`` is one request to /info, answered 200 on a connection that stays open."""
    c, [r] = exchange(connect, data, limits=limits)
    assert r.status == 200, r.body
    assert not c.transport.closed
    assert not c.transport.eof_written
    doc: dict[str, Any] = r.json()
    return doc


def get(target: str = "/info", *headers: tuple[str, str], version: str = "HTTP/1.1") -> bytes:
    return build_request("GET", target, list(headers), version=version, host="x")


def post_chunked(*rest: bytes, headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    te = [("Transfer-Encoding", "chunked"), *headers]
    return build_request("POST", "/echo", te, host="x") + b"".join(rest)


# ---- RFC 9112 §2.2: message parsing -------------------------------------------------------------


@pytest.mark.parametrize("prefix", [b"\r\n", b"\r\n\r\n\r\n"], ids=["one", "three"])
def test_9112_2_2_empty_lines_before_the_request_line_are_ignored(
    connect: ConnFactory, prefix: bytes
) -> None:
    """§2.2: "a server that is expecting to receive and parse a request-line SHOULD ignore at
    least one empty line (CRLF) received prior to the request-line"."""
    assert served(connect, prefix + get())["path"] == "/info"


def test_9112_2_2_empty_lines_between_pipelined_requests_are_ignored(
    connect: ConnFactory,
) -> None:
    """§2.2: the same robustness rule applies before every request-line on a connection."""
    _c, responses = exchange(connect, get("/info?1") + b"\r\n" + get("/info?2"))
    assert [r.json()["query"] for r in responses] == ["1", "2"]


def test_9112_2_2_endless_empty_lines_do_not_outlive_the_header_deadline(
    connect: ConnFactory,
) -> None:
    """§2.2 robustness rule vs. bytes that never become a request: ignoring empty lines must not
    keep a connection open (or hold memory) past the header deadline."""
    c = connect()
    for _ in range(100):
        c.feed(b"\r\n" * 1000)
    assert c.transport.data == b""
    c.ctx.sweep(c.loop.time() + 60)
    assert c.transport.closed
    assert c.transport.data == b""


TLS_CLIENT_HELLO = bytes.fromhex(
    "16030100f4010000f00303"  # record header, ClientHello, TLS 1.2 legacy version
    "6a1f4f2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7"  # random
    "20" + "11" * 32 + "0008130213031301c02f0100"  # session id, ciphers, compression
)
NOT_HTTP = {
    "tls-client-hello": TLS_CLIENT_HELLO,
    "binary": bytes(range(256)),
    "nul-bytes": b"\x00" * 64,
    "ssh-banner-noise": b"\x7fELF\x02\x01\x01\x00",
}


@pytest.mark.parametrize("data", NOT_HTTP.values(), ids=NOT_HTTP.keys())
def test_9112_2_2_bytes_that_are_not_http_are_refused_and_closed(
    connect: ConnFactory, data: bytes
) -> None:
    """§2.2: a server receiving octets that do not match the HTTP-message grammar "SHOULD
    respond with a 400 (Bad Request) response and close the connection". The close part: one
    error, at once (not a hang waiting for more), then a lingering close that ends."""
    c, responses = exchange(connect, data)
    [r] = responses
    assert 400 <= r.status < 600
    assert r.header("connection") == "close"
    assert c.transport.eof_written
    c.feed(b"more noise")
    c.ctx.sweep(c.loop.time() + 60)
    assert c.transport.closed
    assert len(c.responses()) == 1


@pytest.mark.parametrize("data", NOT_HTTP.values(), ids=NOT_HTTP.keys())
def test_9112_2_2_bytes_that_are_not_http_get_400(connect: ConnFactory, data: bytes) -> None:
    """§2.2: "...the server SHOULD respond with a 400 (Bad Request) response". 501 claims a
    method was recognised as a method and not implemented; a TLS ClientHello has no method."""
    refused(connect, data, status=400)


def test_9112_2_2_whitespace_before_the_first_field_is_refused(connect: ConnFactory) -> None:
    """§2.2: "A recipient that receives whitespace between the start-line and the first header
    field MUST either reject the message as invalid or consume each whitespace-preceded line
    without further processing of it"."""
    refused(connect, b"GET /info HTTP/1.1\r\n X-A: b\r\nHost: x\r\n\r\n", status=400)


@pytest.mark.parametrize(
    "data",
    [
        b"GET /info HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
        b"GET /info HTTP/1.1\rHost: x\r\n\r\n",
        b"GET /in\rfo HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["in-field-value", "after-version", "in-target"],
)
def test_9112_2_2_bare_cr_is_refused(connect: ConnFactory, data: bytes) -> None:
    """§2.2: "A recipient of such a bare CR MUST consider that element to be invalid or replace
    each bare CR with SP before processing the element or forwarding the message"."""
    refused(connect, data, status=400)


# ---- RFC 9112 §2.3 and RFC 9110 §2.5: versions ------------------------------------------------


def test_9110_2_5_response_version_is_1_1_for_http10_and_http11(connect: ConnFactory) -> None:
    """RFC 9110 §2.5: "A server SHOULD send a response version equal to the highest version to
    which the server is conformant that has a major version less than or equal to the one
    received in the request" (HTTP/1.1 for both 1.0 and 1.1; a 1.0 client gets no chunking,
    see test_9112_6_1_no_transfer_encoding_in_responses_to_http10)."""
    _c, responses = exchange(
        connect,
        get(version="HTTP/1.0").replace(b"Host: x\r\n", b"Connection: keep-alive\r\n") + get(),
    )
    assert [(r.version, r.status) for r in responses] == [("HTTP/1.1", 200)] * 2
    assert [r.json()["version"] for r in responses] == ["1.0", "1.1"]


@pytest.mark.parametrize("version", ["HTTP/1.2", "HTTP/1.9"])
def test_9110_2_5_higher_minor_version_is_processed_as_1_1(
    connect: ConnFactory, version: str
) -> None:
    """RFC 9110 §2.5: a recipient receiving "a higher minor version number than what the
    recipient implements SHOULD process the message as if it were in the highest minor version
    within that major version to which the recipient is conformant" (so: as HTTP/1.1, which is
    persistent by default)."""
    doc = served(connect, get(version=version))
    assert doc["version"] == "1.1"


@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/0.9"])
def test_9110_2_5_other_major_versions_are_505(connect: ConnFactory, version: str) -> None:
    """RFC 9110 §15.6.6: 505 "indicates that the server does not support, or refuses to
    support, the major version of HTTP that was used in the request message"."""
    refused(connect, get(version=version), status=505)


def test_9112_2_3_request_line_without_version_is_505(connect: ConnFactory) -> None:
    """RFC 9112 §2.3 / Appendix: an HTTP/0.9 "simple request" (no version) is not served; llhttp
    reads it as version 0.9, which gets 505 like any other major version but 1."""
    refused(connect, b"GET /info\r\nHost: x\r\n\r\n", status=505)


@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/3.0", "HTTP/0.9"])
def test_9110_15_6_6_505_says_which_versions_are_supported(
    connect: ConnFactory, version: str
) -> None:
    """RFC 9110 §15.6.6: "The server SHOULD generate a representation for the 505 response
    that describes why that version is not supported and what other protocols are supported by
    that server"."""
    err = refused(connect, get(version=version), status=505)
    assert "HTTP/1.1" in err["message"]
    assert "HTTP/1.0" in err["message"]


@pytest.mark.parametrize("version", [b"http/1.1", b"HTTP/1.10", b"HTTP/11", b"HTTP/1.1 "])
def test_9112_2_3_malformed_http_version_is_400(connect: ConnFactory, version: bytes) -> None:
    """§2.3: HTTP-version = HTTP-name "/" DIGIT "." DIGIT; "HTTP-version is case-sensitive".
    Anything else is an invalid request-line (§3: SHOULD respond with 400)."""
    refused(connect, b"GET /info " + version + b"\r\nHost: x\r\n\r\n", status=400)


def test_9112_2_3_http2_connection_preface_is_refused(connect: ConnFactory) -> None:
    """§2.3 / RFC 9113 §3.4: this server speaks HTTP/1.x only; an HTTP/2 prior-knowledge
    preface ("PRI * HTTP/2.0") is refused at once (400 from llhttp, or 505) and closed."""
    c, responses = exchange(connect, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00" * 9)
    [r] = responses
    assert r.status in (400, 505)
    assert r.header("connection") == "close"
    assert c.transport.eof_written


# ---- RFC 9112 §3: request line ----------------------------------------------------------------


def test_9112_3_request_line_words_on_extra_spaces_are_accepted(connect: ConnFactory) -> None:
    """§3: "recipients MAY instead parse on whitespace-delimited word boundaries". llhttp
    (non-strict build) accepts repeated SP between the words; this is allowed, and documented
    as such in docs/architecture.md (SP after the version is refused: see the smuggling test
    "space-after-version")."""
    assert served(connect, b"GET  /info  HTTP/1.1\r\nHost: x\r\n\r\n")["path"] == "/info"


@pytest.mark.parametrize(
    "line", [b" GET /info HTTP/1.1", b"GET\t/info HTTP/1.1", b"\tGET /info HTTP/1.1"]
)
def test_9112_3_invalid_request_line_whitespace_is_400(connect: ConnFactory, line: bytes) -> None:
    """§3: "Recipients of an invalid request-line SHOULD respond with either a 400 (Bad Request)
    error or a 301 (Moved Permanently) redirect"; a leading SP or an HTAB separator (when
    whitespace is not parsed leniently) makes the request-line invalid."""
    refused(connect, line + b"\r\nHost: x\r\n\r\n", status=400)


@pytest.mark.parametrize(
    "target",
    [b"/in fo", b"/caf\xc3\xa9", b"?q"],
    ids=["space", "non-ascii", "no-path"],
)
def test_9112_3_2_invalid_request_target_is_400(connect: ConnFactory, target: bytes) -> None:
    """§3.2 / §3: the request-target is a URI form (no whitespace, no octets outside US-ASCII,
    origin-form starts with "/"); an invalid request-line SHOULD get 400."""
    refused(connect, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n", status=400)


@pytest.mark.parametrize("method", [b"get", b"FOO", b"A" * 40, b"PROPFIND"])
def test_9112_3_1_unrecognised_method_is_501(connect: ConnFactory, method: bytes) -> None:
    """§3.1: "The request method is case-sensitive"; "A server that receives a method longer
    than any that it implements SHOULD respond with a 501 (Not Implemented) status code";
    RFC 9110 §9.1 / §15.6.2: an unrecognised or unimplemented method SHOULD get 501."""
    refused(connect, method + b" /info HTTP/1.1\r\nHost: x\r\n\r\n", status=501)


def test_9112_3_request_target_over_the_limit_is_414(connect: ConnFactory) -> None:
    """§3: "A server that receives a request-target longer than any URI it wishes to parse MUST
    respond with a 414 (URI Too Long) status code" (RFC 9110 §15.5.15)."""
    refused(connect, get("/" + "a" * 300), status=414, limits=SMALL)


def test_9112_3_request_lines_of_8000_octets_are_supported_by_default(
    connect: ConnFactory,
) -> None:
    """§3: "It is RECOMMENDED that all HTTP senders and recipients support, at a minimum,
    request-line lengths of 8000 octets" (the default limits)."""
    target = "/info?" + "q" * (8000 - len("GET /info? HTTP/1.1"))
    assert len(f"GET {target} HTTP/1.1") == 8000
    assert served(connect, get(target))["query"] == "q" * (8000 - len("GET /info? HTTP/1.1"))


# ---- RFC 9112 §3.2 / RFC 9110 §7.2: Host --------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"GET /info HTTP/1.1\r\n\r\n",
        b"GET http://x/info HTTP/1.1\r\n\r\n",
        b"GET /info HTTP/1.1\r\nHost: x\r\nHost: x\r\n\r\n",
        b"GET /info HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
        b"GET /info HTTP/1.0\r\nHost: x\r\nHost: x\r\n\r\n",
    ],
    ids=["missing", "missing-absolute-form", "two-equal", "two-different", "two-in-http10"],
)
def test_9112_3_2_host_must_be_present_and_single(connect: ConnFactory, data: bytes) -> None:
    """§3.2: "A server MUST respond with a 400 (Bad Request) status code to any HTTP/1.1 request
    message that lacks a Host header field and to any request message that contains more than
    one Host header field line"."""
    refused(connect, data, status=400)


@pytest.mark.parametrize(
    "host",
    [b"", b"example.com", b"example.com:8080", b"x:", b"127.0.0.1", b"[::1]:80", b"a-b.c_d~!$"],
    ids=["empty", "name", "name-port", "empty-port", "ipv4", "ipv6", "sub-delims"],
)
def test_9112_3_2_valid_host_values_are_accepted(connect: ConnFactory, host: bytes) -> None:
    """RFC 9110 §7.2: Host = uri-host [ ":" port ]; reg-name may be empty (and must be when the
    target URI has no authority)."""
    served(connect, b"GET /info HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")


INVALID_HOSTS = [b"a b", b"a/b", b"u@a", b"a:8x", b"a:1:2", b"a, b", b"[::1", b"caf\xe9"]


@pytest.mark.parametrize("version", [b"HTTP/1.1", b"HTTP/1.0"])
@pytest.mark.parametrize("host", INVALID_HOSTS)
def test_9112_3_2_host_must_be_valid(connect: ConnFactory, host: bytes, version: bytes) -> None:
    """§3.2: "A server MUST respond with a 400 (Bad Request) status code to ... any request
    message that contains ... a Host header field with an invalid field value" (grammar:
    RFC 9110 §7.2, uri-host [ ":" port ] from RFC 3986)."""
    refused(connect, b"GET /info " + version + b"\r\nHost: " + host + b"\r\n\r\n", status=400)


def test_9112_3_2_2_absolute_form_target_wins_over_host(connect: ConnFactory) -> None:
    """§3.2.2: "A server MUST accept the absolute-form in requests"; "When an origin server
    receives a request with an absolute-form of request-target, the origin server MUST ignore
    the received Host header field (if any) and instead use the host information of the
    request-target". infergate serves one origin and never derives anything from Host, so a
    disagreeing Host is not an error and the target's path and query are what is served."""
    doc = served(connect, b"GET https://a:443/info?q=1 HTTP/1.1\r\nHost: b\r\n\r\n")
    assert (doc["path"], doc["query"]) == ("/info", "q=1")


def test_9112_3_2_2_absolute_form_without_path_is_the_root(connect: ConnFactory) -> None:
    """§3.2.2 with RFC 9110 §4.2.3: an empty path in an http(s) URI is equivalent to "/"."""
    _c, [r] = exchange(connect, b"GET http://a HTTP/1.1\r\nHost: a\r\n\r\n")
    assert_json_error(r, 404)  # the test router has no "/": routed as "/", not refused
    assert r.json()["error"]["message"] == "no route for /"


def test_9112_3_2_3_authority_form_is_only_for_connect(connect: ConnFactory) -> None:
    """§3.2.3: "The authority-form of request-target is only used for CONNECT requests";
    CONNECT is not implemented here (RFC 9110 §15.6.2: 501)."""
    refused(connect, b"GET x:80 HTTP/1.1\r\nHost: x\r\n\r\n", status=400)
    refused(connect, b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n", status=501)


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_9112_3_2_4_asterisk_form_is_only_for_options(connect: ConnFactory, method: str) -> None:
    """§3.2.4: "The asterisk-form of request-target is only used for a server-wide OPTIONS
    request". Any other method on "*" reaches no handler (404; OPTIONS * is 204 with Allow,
    see test_options in test_protocol.py)."""
    _c, [r] = exchange(connect, build_request(method, "*", host="x"), heads=(method == "HEAD",))
    assert r.status == 404


# ---- RFC 9112 §4: status line ------------------------------------------------------------------

STATUS_LINE = re.compile(rb"HTTP/1\.1 [1-5][0-9]{2} [\x21-\x7e][\x20-\x7e]*\r\n")


def test_9112_4_status_line_format(connect: ConnFactory) -> None:
    """§4: status-line = HTTP-version SP status-code SP [ reason-phrase ]; "A server MUST send
    the space that separates the status-code from the reason-phrase even when the
    reason-phrase is absent"; status-code is 3DIGIT; reason-phrase is visible text."""
    _c, responses = exchange(
        connect,
        get("/status?200") + get("/status?418") + get("/status?599") + get("/nope"),
    )
    lines = [r.raw_head.split(b"\r\n", 1)[0] + b"\r\n" for r in responses]
    assert all(STATUS_LINE.fullmatch(line) for line in lines), lines
    assert lines[2] == b"HTTP/1.1 599 Unknown\r\n"


# ---- RFC 9112 §5: field syntax -----------------------------------------------------------------


@pytest.mark.parametrize("sep", [b" :", b"\t:"], ids=["space", "tab"])
def test_9112_5_1_whitespace_before_colon_is_400(connect: ConnFactory, sep: bytes) -> None:
    """§5.1: "A server MUST reject, with a response status code of 400 (Bad Request), any
    received request message that contains whitespace between a header field name and
    colon"."""
    refused(connect, b"GET /info HTTP/1.1\r\nHost: x\r\nX-A" + sep + b" b\r\n\r\n", status=400)


@pytest.mark.parametrize(
    "line",
    [b"X A: b", b": b", b"X-A", b"X-A: a\x00b", b"X-A: a\x7fb"],
    ids=["space-in-name", "empty-name", "no-colon", "nul-in-value", "del-in-value"],
)
def test_9112_5_invalid_field_line_is_400(connect: ConnFactory, line: bytes) -> None:
    """§5 / RFC 9110 §5.1, §5.5: field-name = token; "Field values containing CR, LF, or NUL
    characters are invalid and dangerous ... a recipient ... MUST either reject the message or
    replace each of those characters with SP" (other CTLs are outside field-vchar too)."""
    refused(connect, b"GET /info HTTP/1.1\r\nHost: x\r\n" + line + b"\r\n\r\n", status=400)


def test_9112_5_1_leading_ows_is_not_part_of_the_value(connect: ConnFactory) -> None:
    """§5.1: "OWS occurring before the first non-whitespace octet of the field line value ...
    is excluded by parsers when extracting the field line value"; obs-text is opaque data
    (RFC 9110 §5.5)."""
    doc = served(connect, b"GET /info HTTP/1.1\r\nHost: x\r\nX-A: \t a b\r\nX-B: caf\xe9\r\n\r\n")
    assert doc["headers"][1:] == [["x-a", "a b"], ["x-b", "caf\xe9"]]


def test_9112_5_1_trailing_ows_is_not_part_of_the_value(connect: ConnFactory) -> None:
    """§5.1: "...or after the last non-whitespace octet of the field line value, is excluded by
    parsers when extracting the field line value from a field line"."""
    doc = served(connect, b"GET /info HTTP/1.1\r\nHost: x \t\r\nX-A: a b \t \r\n\r\n")
    assert doc["headers"] == [["host", "x"], ["x-a", "a b"]]


def test_9112_5_1_trailing_ows_does_not_change_a_field_meaning(connect: ConnFactory) -> None:
    """§5.1 (trailing OWS excluded) applied to a field the protocol interprets itself."""
    c = connect()
    c.feed(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue \r\n\r\n")
    assert c.transport.data == CONTINUE
    c.feed(b"ok")
    assert c.responses()[-1].body == b"ok"


def test_9112_5_2_obs_fold_is_400(connect: ConnFactory) -> None:
    """§5.2: "A server that receives an obs-fold in a request message that is not within a
    'message/http' container MUST either reject the message by sending a 400 (Bad Request) ...
    or replace each received obs-fold with one or more SP octets"."""
    refused(connect, b"GET /info HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tb\r\n\r\n", status=400)


# ---- RFC 9112 §6: message body -----------------------------------------------------------------


def test_9112_6_1_transfer_coding_names_are_case_insensitive(connect: ConnFactory) -> None:
    """§6.1 / RFC 9110 §10.1.4: transfer-coding names are case-insensitive."""
    te = [("Transfer-Encoding", "Chunked")]
    _c, [r] = exchange(connect, build_request("POST", "/echo", te, host="x") + chunked(b"abc"))
    assert r.body == b"abc"


def test_9112_6_1_unknown_transfer_coding_is_501(connect: ConnFactory) -> None:
    """§6.1: "A server that receives a request message with a transfer coding it does not
    understand SHOULD respond with 501 (Not Implemented)" (and, with chunked final, the framing
    is still known, so it is a 501 rather than a 400)."""
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    refused(connect, head + chunked(b"abc"), status=501)


@pytest.mark.parametrize("te", [b"gzip", b"identity", b"chunked, gzip"])
def test_9112_6_3_chunked_not_final_is_400(connect: ConnFactory, te: bytes) -> None:
    """§6.3 (4): "If a Transfer-Encoding header field is present in a request and the chunked
    transfer coding is not the final encoding, the message body length cannot be determined
    reliably; the server MUST respond with the 400 (Bad Request) status code and then close
    the connection"."""
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: " + te + b"\r\n\r\n"
    refused(connect, head + b"0\r\n\r\n", status=400)


def test_9112_6_1_transfer_encoding_in_http10_is_faulty_framing(connect: ConnFactory) -> None:
    """§6.1: "A server or client that receives an HTTP/1.0 message containing a
    Transfer-Encoding header field MUST treat the message as if the framing is faulty, even if
    a Content-Length is present, and close the connection after processing the message"."""
    head = b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
    refused(connect, head + b"0\r\n\r\n", status=400)


def test_9112_6_1_no_transfer_encoding_in_responses_to_http10(connect: ConnFactory) -> None:
    """§6.1: "A server MUST NOT send a response containing Transfer-Encoding unless the
    corresponding request indicates HTTP/1.1 (or later minor revisions)". A body of unknown
    length is then delimited by closing the connection (§6.3 (8))."""
    c, [r] = exchange(connect, b"GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert r.header("transfer-encoding") is None
    assert r.header("content-length") is None
    assert r.header("connection") == "close"
    assert r.body == b"abcd"
    assert c.transport.closed


def test_9112_6_1_chunked_responses_to_http11(connect: ConnFactory) -> None:
    """§6.1 / §7.1: to an HTTP/1.1 request, a body of unknown length is chunked and the
    connection stays usable."""
    c, [r] = exchange(connect, get("/stream"))
    assert r.header("transfer-encoding") == "chunked"
    assert r.header("content-length") is None
    assert r.body == b"abcd"
    assert not c.transport.closed


@pytest.mark.parametrize("code", [204, 304])
def test_9112_6_1_no_transfer_encoding_or_body_in_204_and_304(
    connect: ConnFactory, code: int
) -> None:
    """§6.1: "A server MUST NOT send a Transfer-Encoding header field in any response with a
    status code of 1xx (Informational) or 204 (No Content)"; RFC 9110 §15.3.5 / §15.4.5: 204
    and 304 responses are terminated by the end of the header section and cannot contain
    content. Holds even when the handler returned a streamed response."""
    c = connect()
    c.feed(get(f"/stream?{code}") + get("/info"))
    c.settle()
    data = c.transport.data
    first, _, rest = data.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 %d " % code)
    assert b"Transfer-Encoding" not in first
    assert b"Content-Length" not in first
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n")


@pytest.mark.parametrize(
    "value",
    [b"-1", b"+1", b"", b"1 2", b"0x1", b"1, 1", b"99999999999999999999999"],
    ids=["negative", "plus", "empty", "two-numbers", "hex", "list", "overflow"],
)
def test_9112_6_3_invalid_content_length_is_400_and_closes(
    connect: ConnFactory, value: bytes
) -> None:
    """§6.3 (5): "If a message is received without Transfer-Encoding and with an invalid
    Content-Length header field, then the message framing is invalid and the recipient MUST
    treat it as an unrecoverable error ... the server MUST respond with a 400 (Bad Request)
    status code and then close the connection"; RFC 9110 §8.6: recipients "MUST anticipate
    potentially large decimal numerals and prevent parsing errors due to integer conversion
    overflows". (An identical list "1, 1" MAY be accepted; it is refused here: documented.)"""
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: " + value + b"\r\n\r\n"
    refused(connect, head + b"x", status=400)


def test_9112_6_3_content_length_beyond_the_limit_is_413(connect: ConnFactory) -> None:
    """§6.3 / RFC 9110 §15.5.14: a valid length larger than the server accepts is refused
    before any body byte is read (413, connection closed)."""
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551615\r\n\r\n"
    refused(connect, head, status=413)


@pytest.mark.parametrize("order", ["cl-te", "te-cl"])
def test_9112_6_3_content_length_with_transfer_encoding_is_refused(
    connect: ConnFactory, order: str
) -> None:
    """§6.3 (3): CL with TE "ought to be handled as an error"; "A server MAY reject a request
    that contains both Content-Length and Transfer-Encoding or process such a request in
    accordance with the Transfer-Encoding alone. Regardless, the server MUST close the
    connection after responding to such a request". Rejected with 400, then closed."""
    cl, te = b"Content-Length: 5\r\n", b"Transfer-Encoding: chunked\r\n"
    fields = cl + te if order == "cl-te" else te + cl
    refused(connect, b"POST /echo HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n0\r\n\r\n", status=400)


def test_9112_6_3_request_without_framing_has_no_body(connect: ConnFactory) -> None:
    """§6.3 (7): "If this is a request message and none of the above are true, then the message
    body length is zero (no message body is present)": the next bytes are the next request."""
    _c, responses = exchange(connect, b"POST /echo HTTP/1.1\r\nHost: x\r\n\r\n" + get("/info?2"))
    assert [(r.status, r.body[:1]) for r in responses] == [(200, b""), (200, b"{")]
    assert responses[1].json()["query"] == "2"


def test_9112_6_3_incomplete_body_is_never_processed(connect: ConnFactory) -> None:
    """§6.3: "If the sender closes the connection or the recipient times out before the
    indicated number of octets are received, the recipient MUST consider the message to be
    incomplete and close the connection" (timeout: test_body_deadline_sends_408)."""
    c = connect()
    c.feed(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    assert c.protocol.eof_received() is False  # nothing owed: let the transport close
    c.settle()
    assert c.transport.data == b""


# ---- RFC 9112 §7: chunked transfer coding ----------------------------------------------------


def test_9112_7_1_chunk_size_is_hex_any_case_with_leading_zeros(connect: ConnFactory) -> None:
    """§7.1: chunk-size = 1*HEXDIG; "A recipient MUST be able to parse and decode the chunked
    transfer coding" (HEXDIG is case-insensitive; leading zeros are allowed)."""
    body = b"000A\r\n0123456789\r\n0b\r\nabcdefghijk\r\n1\r\nZ\r\n00\r\n\r\n"
    _c, [r] = exchange(connect, post_chunked(body))
    assert r.body == b"0123456789abcdefghijkZ"


@pytest.mark.parametrize(
    "size",
    [b"0x3", b"-3", b"3 ", b" 3", b"+3", b"g"],
    ids=["0x-prefix", "negative", "trailing-space", "leading-space", "plus", "not-hex"],
)
def test_9112_7_1_invalid_chunk_size_is_400(connect: ConnFactory, size: bytes) -> None:
    """§7.1: chunk-size = 1*HEXDIG; anything else makes the framing invalid (400, closed)."""
    refused(connect, post_chunked(size + b"\r\nabc\r\n0\r\n\r\n"), status=400)


def test_9112_7_1_chunk_size_overflow_is_400(connect: ConnFactory) -> None:
    """§7.1: "Recipients MUST anticipate potentially large hexadecimal numerals and prevent
    parsing errors due to integer conversion overflows or precision loss due to integer
    representation"."""
    refused(connect, post_chunked(b"1" + b"0" * 20 + b"\r\nabc\r\n"), status=400)


def test_9112_7_1_chunk_larger_than_the_body_limit_is_413(connect: ConnFactory) -> None:
    """§7.1 with RFC 9110 §15.5.14: a representable but huge chunk-size is refused (413, closed)
    as soon as the body received exceeds the limit; the announced size alone reserves
    nothing (httptools does not expose it: documented)."""
    refused(
        connect,
        post_chunked(b"fffffffffffffff\r\n"),
        b"a" * 1500,
        status=413,
        limits=SMALL,
    )


def test_9112_7_1_chunk_data_must_end_with_crlf(connect: ConnFactory) -> None:
    """§7.1: chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF: data longer than the
    chunk-size is a framing error, not the start of the next chunk."""
    refused(connect, post_chunked(b"3\r\nabcX\r\n0\r\n\r\n"), status=400)


def test_9112_7_1_1_chunk_extensions_are_ignored(connect: ConnFactory) -> None:
    """§7.1.1: "A recipient MUST ignore unrecognized chunk extensions" (token and
    quoted-string values, on the last chunk too)."""
    body = b'3;a=b;c\r\nabc\r\n2;q="x y;z"\r\nde\r\n0;last=1\r\n\r\n'
    _c, [r] = exchange(connect, post_chunked(body))
    assert r.body == b"abcde"


@pytest.mark.parametrize("ext", [b"3 ;a=b", b"3; a=b", b"3;a = b"])
def test_9112_7_1_1_bad_whitespace_in_chunk_extensions_is_refused(
    connect: ConnFactory, ext: bytes
) -> None:
    """§7.1.1: chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] ), and
    RFC 9110 §5.6.3 says recipients MUST parse and remove BWS. Deliberate deviation
    (docs/architecture.md): llhttp refuses whitespace in chunk lines, and chunk-line parsing
    differences are a known smuggling vector; no real client sends it."""
    refused(connect, post_chunked(ext + b"\r\nabc\r\n0\r\n\r\n"), status=400)


def test_9112_7_1_2_trailer_fields_are_accepted(connect: ConnFactory) -> None:
    """§7.1.2: trailer-section = *( field-line CRLF ); "A recipient that removes the chunked
    coding from a message MAY selectively retain or discard the received trailer fields"."""
    c, [r] = exchange(connect, post_chunked(chunked(b"abc", trailer=b"X-T: 1\r\nX-U: 2\r\n")))
    assert r.body == b"abc"
    assert not c.transport.closed


def test_9112_7_1_2_invalid_trailer_field_is_400(connect: ConnFactory) -> None:
    """§7.1.2 / §5.1: trailer field lines have the header field line syntax."""
    refused(connect, post_chunked(b"0\r\nX T: 1\r\n\r\n"), status=400)


def test_9112_7_1_2_trailer_fields_are_not_merged_into_the_header_section(
    loop: asyncio.AbstractEventLoop, executor: ThreadPoolExecutor
) -> None:
    """§7.1.2: "A recipient MUST NOT merge a received trailer field into the header section
    unless its corresponding header field definition explicitly permits and instructs how the
    trailer field value can be safely merged". Neither a handler nor the protocol may see a
    trailer as a header: a trailing "Connection: close" does not close the connection."""
    router = make_router()
    seen: list[list[tuple[bytes, bytes]]] = []

    def headers(req: Request) -> Response:
        seen.append(req.headers)
        return Response(b"ok")

    router.add(["POST"], "/headers", headers)
    c = Connection(loop, router, executor)
    te = [("Transfer-Encoding", "chunked")]
    trailer = b"X-Priority: 1\r\nConnection: close\r\n"
    c.feed(build_request("POST", "/headers", te, host="x") + chunked(b"a", trailer=trailer))
    c.feed(get("/info?after"))
    c.settle()
    assert seen == [[(b"host", b"x"), (b"transfer-encoding", b"chunked")]]
    assert [r.status for r in c.responses()] == [200, 200]
    assert not c.transport.closed


def test_9112_7_1_2_trailer_fields_are_bounded_like_header_fields(connect: ConnFactory) -> None:
    """RFC 9110 §5.4: "A server that receives a request header field line, field value, or set
    of fields larger than it wishes to process MUST respond with an appropriate 4xx (Client
    Error) status code"; trailer fields get the header limits, enforced while they arrive (as
    test_unterminated_header_line_over_many_reads_is_431 does for the header section)."""
    c = connect(SMALL)
    c.feed(post_chunked(b"0\r\nX-T: "))
    for _ in range(20):
        c.feed(b"v" * 1000)
        if c.transport.data:
            break
    c.settle()
    [r] = c.responses()
    assert_json_error(r, 431)
    assert c.transport.eof_written


@pytest.mark.parametrize(
    "start",
    [b"3;ext=", b"3;e", b"0;e", b""],
    ids=["ext-value", "ext-name", "last-chunk-ext", "size-leading-zeros"],
)
def test_9112_7_1_1_unfinished_chunk_lines_are_bounded(connect: ConnFactory, start: bytes) -> None:
    """§7.1.1: "A server ought to limit the total length of chunk extensions received in a
    request to an amount reasonable for the services provided, in the same way that it applies
    length limitations and timeouts for other parts of a message, and generate an appropriate
    4xx (Client Error) response if that amount is exceeded". A chunk line that never ends is
    refused once it passes the header limits, read by read (431, closed)."""
    c = connect(SMALL)
    c.feed(post_chunked(b"2\r\nab\r\n" + start))
    filler = b"v" if start else b"0"
    for _ in range(20):
        c.feed(filler * 1000)
        if c.transport.data:
            break
    c.settle()
    [r] = c.responses()
    assert_json_error(r, 431)
    assert c.transport.eof_written


def test_9112_7_4_te_request_field_is_not_transfer_encoding(connect: ConnFactory) -> None:
    """§7.4: the TE request field only announces what the client accepts in responses; it has
    no bearing on the request's framing (and the server is free to ignore it)."""
    doc = served(connect, get("/info", ("TE", "trailers, deflate;q=0.5")))
    assert doc["headers"][1] == ["te", "trailers, deflate;q=0.5"]


# ---- RFC 9112 §9.6 (as referenced by the brief): Connection: close ---------------------------


@pytest.mark.parametrize("value", ["Close", "keep-alive, close", "CLOSE"])
def test_9112_9_6_close_option_is_case_insensitive_and_found_in_a_list(
    connect: ConnFactory, value: str
) -> None:
    """§9.6: "A server that receives a 'close' connection option MUST initiate closure of the
    connection after it sends the final response to the request that contained the 'close'
    connection option" and "SHOULD send a 'close' connection option in its final response";
    connection options are case-insensitive tokens in a list (RFC 9110 §7.6.1)."""
    c, [r] = exchange(connect, get("/info", ("Connection", value)) + NEXT)
    assert r.header("connection") == "close"
    assert c.transport.closed


@pytest.mark.parametrize(
    "close",
    [
        get("/later?close", ("Connection", "close")),
        get("/later?close", ("Connection", "close"), version="HTTP/1.2"),
        b"GET /later?close HTTP/1.0\r\n\r\n",
    ],
    ids=["close-option", "close-option-http12", "http10-default"],
)
@pytest.mark.parametrize("split", [False, True], ids=["same-read", "later-reads"])
def test_9112_9_6_nothing_is_served_after_a_request_that_closes(
    connect: ConnFactory, close: bytes, split: bool
) -> None:
    """§9.6: "A server that receives a 'close' connection option MUST initiate closure of the
    connection after it sends the final response to the request that contained the 'close'
    connection option. The server SHOULD NOT process any further requests received on that
    connection". llhttp's own keep-alive tracking is switched off (lenient_keep_alive, so that
    a trailer field cannot close the connection): the protocol alone stops reading, whether
    the next request is in the same read or arrives later (the response being still due)."""
    c = connect()
    pipelined = get("/info?next") + post_chunked(chunked(b"abc")) + NEXT
    if split:
        c.feed(close)
        for part in (pipelined[:10], pipelined[10:]):
            c.feed(part)
    else:
        c.feed(close + pipelined)
    c.settle()
    [r] = c.responses()
    assert r.json()["query"] == "close"
    assert r.header("connection") == "close"
    assert c.transport.closed


def test_9112_9_6_upgrade_request_is_answered_then_closed(connect: ConnFactory) -> None:
    """RFC 9110 §7.8: a server MAY ignore Upgrade and answer in HTTP/1.1. Deliberate: no other
    protocol is spoken, and the connection closes after the answer (llhttp stops parsing at an
    upgrade request); the pipelined request after it is not answered."""
    head = get("/info", ("Connection", "Upgrade"), ("Upgrade", "websocket"))
    c, [r] = exchange(connect, head + NEXT)
    assert r.status == 200
    assert r.header("connection") == "close"
    assert c.transport.closed


# ---- RFC 9110 §15 and §6.6.1: statuses, HEAD, Date -------------------------------------------


@pytest.mark.parametrize("code", [204, 304])
def test_9110_15_204_and_304_have_no_content(connect: ConnFactory, code: int) -> None:
    """RFC 9110 §15.3.5: "A 204 response is terminated by the end of the header section; it
    cannot contain content or trailers"; §15.4.5 the same for 304; §8.6: "A server MUST NOT
    send a Content-Length header field in any response with a status code of 1xx
    (Informational) or 204 (No Content)". The handler's body is dropped, the connection stays
    in sync."""
    c = connect()
    c.feed(get(f"/status?{code}") + get("/info"))
    first, _, rest = c.transport.data.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 %d " % code)
    assert b"Content-Length" not in first
    assert b"Transfer-Encoding" not in first
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n")


def test_9110_15_2_interim_100_has_no_body_and_precedes_the_final_response(
    connect: ConnFactory,
) -> None:
    """RFC 9110 §15.2: a 1xx response "is terminated by the end of the header section"; the
    final response follows on the same connection (100 Continue to HTTP/1.0: see
    test_no_100_continue_for_http10; Expect is case-insensitive, RFC 9110 §10.1.1)."""
    c = connect()
    c.feed(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-Continue\r\n\r\n")
    assert c.transport.data == b"HTTP/1.1 100 Continue\r\n\r\n"
    c.feed(b"ok")
    interim, final = c.responses()
    assert (interim.status, final.status, final.body) == (100, 200, b"ok")


@pytest.mark.parametrize("target", ["/status?200", "/status?404", "/nope", "/stream"])
def test_9110_9_3_2_head_gets_the_get_header_fields(connect: ConnFactory, target: str) -> None:
    """RFC 9110 §9.3.2: "The server SHOULD send the same header fields in response to a HEAD
    request as it would have sent if the request method had been GET"; §8.6: a Content-Length
    in a HEAD response equals the GET content's length; §15: the HEAD response has no body."""
    c, [g, h] = exchange(
        connect,
        build_request("GET", target, host="x") + build_request("HEAD", target, host="x"),
        heads=(False, True),
    )
    assert h.headers == g.headers
    assert h.raw_head == g.raw_head
    assert c.transport.data.endswith(h.raw_head)  # nothing after the HEAD response's head


def test_9110_15_5_6_405_sends_allow(connect: ConnFactory) -> None:
    """RFC 9110 §15.5.6: "The origin server MUST generate an Allow header field in a 405
    response containing a list of the target resource's currently supported methods"."""
    c, [r] = exchange(connect, b"DELETE /info HTTP/1.1\r\nHost: x\r\n\r\n")
    assert_json_error(r, 405)
    assert r.header("allow") == "GET, HEAD, OPTIONS"
    assert not c.transport.closed


def test_9110_15_5_14_413_closes_the_connection(connect: ConnFactory) -> None:
    """RFC 9110 §15.5.14: on 413 "the server MAY terminate the request, if the protocol version
    in use allows it; otherwise, the server MAY close the connection": the unread body makes
    the connection unusable, so it is closed (lingering, see the §2.2 tests)."""
    refused(connect, build_request("POST", "/echo", host="x", body=b"z" * 1025), status=413,
            limits=SMALL)  # fmt: skip


def test_9110_6_6_1_date_in_every_final_response(connect: ConnFactory) -> None:
    """RFC 9110 §6.6.1: "An origin server with a clock ... MUST generate a Date header field in
    all 2xx (Successful), 3xx (Redirection), and 4xx (Client Error) responses, and MAY
    generate a Date header field in 1xx (Informational) and 5xx (Server Error) responses"."""
    data = (
        get("/info")
        + get("/status?204")
        + get("/status?304")
        + get("/status?301")
        + get("/nope")
        + build_request("HEAD", "/info", host="x")
        + get("/stream")
        + get("/status?500")
        + b"GET /info HTTP/1.1\r\nHost : x\r\n\r\n"  # a parse error: 400, then closed
    )
    _c, responses = exchange(connect, data, heads=(False,) * 5 + (True,))
    codes = [r.status for r in responses]
    assert codes == [200, 204, 304, 301, 404, 200, 200, 500, 400]
    date = FIXED_DATE.decode().split(": ", 1)[1].strip()
    assert [r.header_all("date") for r in responses] == [[date]] * len(codes)
