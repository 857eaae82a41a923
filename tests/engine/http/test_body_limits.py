"""Per-route body limits (``Router.add(max_body=...)``): refused when the head arrives, before
the body is read, with the route's own answer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from infergate.engine.config import Limits
from infergate.engine.http.protocol import CONTINUE
from infergate.engine.http.request import Request
from infergate.engine.http.response import Response, json_response
from infergate.engine.http.router import Router
from tests.support.client import assert_json_error, build_request, chunked
from tests.support.fake_transport import Connection

LIMIT = 100
TOO_LARGE = json_response({"error": "too big for /api"}, 413, [(b"X-Reason", b"body_too_large")])
EXEMPT = "Binary-Part-Length"
NEXT = build_request("GET", "/api/x", host="x")


@pytest.fixture
def seen() -> list[bytes]:
    """The bodies the handlers were called with."""
    return []


ConnFactory = Callable[..., Connection]


@pytest.fixture
def connect(
    loop: asyncio.AbstractEventLoop, executor: ThreadPoolExecutor, seen: list[bytes]
) -> ConnFactory:
    def echo(req: Request) -> Response:
        seen.append(req.body)
        return Response(req.body)

    r = Router()
    r.add(["POST"], "/api/", echo, prefix=True, max_body=LIMIT, max_body_unless=EXEMPT,
          too_large=TOO_LARGE)  # fmt: skip
    r.add(["GET", "PUT"], "/api/", echo, prefix=True)
    r.add(["POST"], "/plain", echo, max_body=LIMIT)
    r.add(["POST"], "/roomy", echo, max_body=10_000)

    def make(limits: Limits | None = None) -> Connection:
        return Connection(loop, r, executor, limits or Limits(max_body_bytes=1000))

    return make


def post(path: str, body: bytes, *headers: tuple[str, str]) -> bytes:
    return build_request("POST", path, list(headers), host="x", body=body)


def head_only(path: str, length: int, *headers: tuple[str, str]) -> bytes:
    """A POST head announcing ``length`` body bytes, without them."""
    fields = "".join(f"{k}: {v}\r\n" for k, v in headers)
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n{fields}\r\n".encode()


def assert_refused_with_route_answer(c: Connection) -> None:
    c.settle()
    [r] = c.responses()
    assert (r.status, r.json()) == (413, {"error": "too big for /api"})
    assert r.header("x-reason") == "body_too_large"
    assert r.header("connection") == "close"
    assert c.transport.eof_written  # lingering close: the unread body cannot become a RST


def test_content_length_over_the_route_limit_is_refused_before_the_body(
    connect: ConnFactory, seen: list[bytes]
) -> None:
    c = connect()
    c.feed(head_only("/api/infer", LIMIT + 1))  # no body byte sent
    assert_refused_with_route_answer(c)
    assert c.protocol.body_held == 0  # nothing was reserved for it
    c.feed(b"z" * (LIMIT + 1) + NEXT)  # the body, then a request: discarded
    assert len(c.responses()) == 1
    assert seen == []


def test_body_at_the_route_limit_is_served_on_a_kept_connection(
    connect: ConnFactory, seen: list[bytes]
) -> None:
    c = connect()
    c.feed(post("/api/infer", b"a" * LIMIT) + NEXT)
    c.settle()
    assert [r.status for r in c.responses()] == [200, 200]
    assert seen == [b"a" * LIMIT, b""]
    assert not c.transport.closed


def test_chunked_body_is_refused_as_soon_as_it_passes_the_route_limit(
    connect: ConnFactory, seen: list[bytes]
) -> None:
    c = connect()
    te = ("Transfer-Encoding", "chunked")
    c.feed(build_request("POST", "/api/infer", [te], host="x") + chunked(b"a" * LIMIT)[:-5])
    assert c.transport.data == b""  # at the limit: still reading
    c.feed(b"1\r\nb\r\n")  # one byte over, the body not finished
    assert_refused_with_route_answer(c)
    assert seen == []


def test_expect_100_continue_over_the_route_limit_gets_no_100(connect: ConnFactory) -> None:
    c = connect()
    c.feed(head_only("/api/infer", LIMIT + 1, ("Expect", "100-continue")))
    assert not c.transport.data.startswith(CONTINUE)
    assert_refused_with_route_answer(c)


@pytest.mark.parametrize("name", [EXEMPT, EXEMPT.upper()])
def test_the_exempt_header_lifts_the_route_limit(
    connect: ConnFactory, seen: list[bytes], name: str
) -> None:
    c = connect()
    c.feed(post("/api/infer", b"a" * 500, (name, "10")))
    c.settle()
    [r] = c.responses()
    assert r.status == 200
    assert seen == [b"a" * 500]


def test_the_exempt_header_does_not_lift_the_server_limit(connect: ConnFactory) -> None:
    c = connect()
    c.feed(head_only("/api/infer", 1001, (EXEMPT, "10")))
    c.settle()
    [r] = c.responses()
    assert "larger than 1000 bytes" in assert_json_error(r, 413)["message"]


def test_the_limit_applies_only_to_the_methods_it_was_given_with(
    connect: ConnFactory, seen: list[bytes]
) -> None:
    c = connect()
    c.feed(build_request("PUT", "/api/infer", host="x", body=b"a" * 500))
    c.settle()
    assert [r.status for r in c.responses()] == [200]
    assert seen == [b"a" * 500]


def test_default_answer_is_a_json_413_naming_the_route(connect: ConnFactory) -> None:
    c = connect()
    c.feed(head_only("/plain", LIMIT + 1))
    c.settle()
    [r] = c.responses()
    err = assert_json_error(r, 413)
    assert err["message"] == f"request bodies of POST /plain are limited to {LIMIT} bytes"
    assert r.header("connection") == "close"


def test_a_route_limit_above_the_server_limit_changes_nothing(connect: ConnFactory) -> None:
    c = connect()
    c.feed(head_only("/roomy", 1001))
    c.settle()
    [r] = c.responses()
    assert "larger than 1000 bytes" in assert_json_error(r, 413)["message"]


def test_a_request_held_back_is_routed_like_any_other(
    connect: ConnFactory, seen: list[bytes]
) -> None:
    # The client does not read: the next requests are deferred, then dispatched by route.
    c = connect()
    c.protocol.pause_writing()  # the transport crossed its high-water mark
    c.feed(post("/api/infer", b"a" * 10) + post("/plain", b"b" * 10))
    assert seen == []
    c.protocol.resume_writing()
    c.settle()
    assert seen == [b"a" * 10, b"b" * 10]
