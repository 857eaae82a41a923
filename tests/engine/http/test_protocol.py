"""HttpProtocol driven through a fake transport on a real uvloop loop: exact bytes in and out."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infergate.engine.config import Limits
from infergate.engine.http.protocol import CONTINUE
from infergate.engine.http.request import Request
from infergate.engine.http.response import Response
from infergate.engine.http.router import Router
from tests.support.client import assert_json_error, build_request, chunked, parse_responses
from tests.support.fake_transport import FIXED_DATE, Connection

SMALL = Limits(max_header_bytes=1024, max_uri_bytes=256, max_body_bytes=1024)


def hello(_req: Request) -> Response:
    return Response(b"hello")


def info(req: Request) -> Response:
    text = f"{req.method} {req.path} {req.query.decode()} {req.version}"
    return Response(text.encode())


def echo(req: Request) -> Response:
    return Response(req.body, 200, b"application/octet-stream")


async def later(req: Request) -> Response:
    for _ in range(3):
        await asyncio.sleep(0)
    return Response(b"later " + req.query)


FUTURES: list[asyncio.Future[Response]] = []


def promised(loop: asyncio.AbstractEventLoop) -> Callable[[Request], asyncio.Future[Response]]:
    """A handler that answers through a future, resolved two loop turns later (as the
    inference APIs' anonymous path, engine.api.common.infer_then)."""
    return lambda req: _promise(loop, req)


def _promise(loop: asyncio.AbstractEventLoop, req: Request) -> asyncio.Future[Response]:
    fut: asyncio.Future[Response] = loop.create_future()
    FUTURES.append(fut)

    def resolve() -> None:
        if fut.done():
            return
        if req.query == b"fail":
            fut.set_exception(RuntimeError("future failure injected by the test"))
        else:
            fut.set_result(Response(b"promised " + req.query))

    loop.call_soon(loop.call_soon, resolve)
    return fut


def boom(_req: Request) -> Response:
    raise RuntimeError("handler failure injected by the test")


def make_router(loop: asyncio.AbstractEventLoop) -> Router:
    r = Router()
    r.add(["GET"], "/hello", hello)
    r.add(["GET"], "/info", info)
    r.add(["POST"], "/echo", echo)
    r.add(["GET"], "/later", later)
    r.add(["GET"], "/promised", promised(loop))
    r.add(["GET"], "/boom", boom)
    return r


ConnFactory = Callable[..., Connection]


@pytest.fixture
def connect(loop: asyncio.AbstractEventLoop, executor: ThreadPoolExecutor) -> ConnFactory:
    router = make_router(loop)

    def make(limits: Limits | None = None) -> Connection:
        return Connection(loop, router, executor, limits)

    return make


def get(path: str, *headers: tuple[str, str], version: str = "HTTP/1.1") -> bytes:
    host = None if version == "HTTP/1.0" else "x"
    return build_request("GET", path, list(headers), version=version, host=host)


# ---- basic exchanges ---------------------------------------------------------------------------


def test_get_response_bytes_are_exact(connect: ConnFactory) -> None:
    c = connect()
    c.feed(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
    assert c.transport.data == (
        b"HTTP/1.1 200 OK\r\nServer: infergate\r\n" + FIXED_DATE + b"Content-Type: text/plain; "
        b"charset=utf-8\r\nContent-Length: 5\r\n\r\nhello"
    )
    assert not c.transport.closed


def test_connection_made_applies_write_buffer_limits(connect: ConnFactory) -> None:
    c = connect(Limits(write_high_water=8192, write_low_water=1024))
    assert c.transport.write_limits == (8192, 1024)


def test_pipelined_burst_is_answered_in_order_with_one_write(connect: ConnFactory) -> None:
    c = connect()
    c.feed(get("/info?1") + get("/nope") + get("/info?3"))
    assert len(c.transport.writes) == 1
    r = c.responses()
    assert [x.status for x in r] == [200, 404, 200]
    assert r[0].body == b"GET /info 1 1.1"
    assert r[2].body == b"GET /info 3 1.1"


def test_head_gets_get_headers_without_body(connect: ConnFactory) -> None:
    c = connect()
    c.feed(build_request("HEAD", "/hello", host="x"))
    [r] = c.responses([True])
    assert r.status == 200
    assert r.header("content-length") == "5"
    assert c.transport.data.endswith(b"\r\n\r\n")


def test_connection_close_stops_reading_and_closes(connect: ConnFactory) -> None:
    c = connect()
    c.feed(get("/hello", ("Connection", "close")))
    c.settle()
    [r] = c.responses()
    assert r.header("connection") == "close"
    assert c.transport.closed
    assert c.protocol not in c.ctx.connections


def test_request_pipelined_after_connection_close_is_ignored(connect: ConnFactory) -> None:
    # RFC 9112 §9.6: after a request with "Connection: close" no further request is processed
    # and nothing follows the response that announced "Connection: close".
    c = connect()
    c.feed(get("/hello", ("Connection", "close")) + get("/hello"))
    c.settle()
    [r] = c.responses()
    assert r.status == 200
    assert r.header("connection") == "close"
    assert c.transport.closed or c.transport.eof_written


def test_http10_closes_unless_keep_alive(connect: ConnFactory) -> None:
    c = connect()
    c.feed(get("/hello", ("Connection", "keep-alive"), version="HTTP/1.0"))
    c.feed(get("/hello", version="HTTP/1.0"))
    c.settle()
    first, second = c.responses()
    assert first.header("connection") == "keep-alive"
    assert second.header("connection") == "close"
    assert c.transport.closed


def test_absolute_form_target_is_routed_by_its_path(connect: ConnFactory) -> None:
    c = connect()
    c.feed(get("http://x/info?q=1"))
    [r] = c.responses()
    assert r.body == b"GET /info q=1 1.1"


def test_percent_encoded_path_is_decoded_once(connect: ConnFactory) -> None:
    c = connect()
    c.feed(get("/%69nfo"))
    [r] = c.responses()
    assert r.body == b"GET /info  1.1"


def test_invalid_utf8_path_is_400(connect: ConnFactory) -> None:
    c = connect()
    c.feed(get("/%ff"))
    c.settle()
    [r] = c.responses()
    assert_json_error(r, 400)


def test_handler_exception_is_500(connect: ConnFactory) -> None:
    c = connect()
    c.feed(get("/boom") + get("/hello"))
    r500, r200 = c.responses()
    assert_json_error(r500, 500)
    assert r200.body == b"hello"


def test_options(connect: ConnFactory) -> None:
    c = connect()
    c.feed(build_request("OPTIONS", "/echo", host="x") + build_request("OPTIONS", "*", host="x"))
    route, star = c.responses()
    assert route.status == 204
    assert route.header("allow") == "OPTIONS, POST"
    assert star.status == 204
    assert star.header("allow") == "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"


def test_stats_count_responses_by_class(connect: ConnFactory) -> None:
    c = connect()
    c.feed(get("/hello") + get("/hello") + get("/missing"))
    stats = c.ctx.stats
    assert stats.responses_by_class[2] == 2
    assert stats.responses_by_class[4] == 1
    assert stats.duration_count == 3
    assert stats.connections_open == 1


# ---- bodies ------------------------------------------------------------------------------------


def test_content_length_and_chunked_bodies_are_echoed(connect: ConnFactory) -> None:
    c = connect()
    body = bytes(range(256))
    c.feed(build_request("POST", "/echo", host="x", body=body))
    c.feed(
        build_request("POST", "/echo", [("Transfer-Encoding", "chunked")], host="x")
        + chunked(b"abc", b"", b"defg", trailer=b"X-T: 1\r\n")
    )
    first, second = c.responses()
    assert first.body == body
    assert second.body == b"abcdefg"


def test_chunked_total_over_limit_is_413(connect: ConnFactory) -> None:
    c = connect(SMALL)
    c.feed(
        build_request("POST", "/echo", [("Transfer-Encoding", "chunked")], host="x")
        + chunked(b"a" * 600, b"b" * 600)
    )
    c.settle()
    [r] = c.responses()
    assert_json_error(r, 413)
    assert c.transport.eof_written


def test_split_head_followed_by_large_body_is_accepted(connect: ConnFactory) -> None:
    # The head is split across two reads and the second read also carries a body larger than
    # max_header_bytes + max_uri_bytes. Only head bytes may count against the header limits.
    limits = Limits(max_header_bytes=1024, max_uri_bytes=256, max_body_bytes=8192)
    c = connect(limits)
    body = b"x" * 4000
    c.feed(b"POST /echo HTTP/1.1\r\nHost: x\r\n", b"Content-Length: 4000\r\n\r\n" + body)
    [r] = c.responses()
    assert r.status == 200
    assert r.body == body


def test_split_head_followed_by_pipelined_requests_is_accepted(connect: ConnFactory) -> None:
    c = connect(SMALL)
    rest = b"".join(get(f"/info?{i}") for i in range(60))  # 60 small, valid requests
    c.feed(b"GET /hello HTTP/1.1\r\nHo", b"st: x\r\n\r\n" + rest)
    responses = c.responses()
    assert [r.status for r in responses] == [200] * 61


def test_expect_100_continue(connect: ConnFactory) -> None:
    c = connect()
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    c.feed(head)
    assert c.transport.data == CONTINUE
    c.feed(b"hello")
    interim, final = c.responses()
    assert interim.status == 100
    assert final.status == 200
    assert final.body == b"hello"


def test_expect_100_continue_with_chunked_body(connect: ConnFactory) -> None:
    c = connect()
    te = [("Transfer-Encoding", "chunked"), ("Expect", "100-continue")]
    c.feed(build_request("POST", "/echo", te, host="x"))
    assert c.transport.data == CONTINUE
    c.feed(chunked(b"abc"))
    assert c.responses()[-1].body == b"abc"


def test_no_100_continue_for_http10(connect: ConnFactory) -> None:
    c = connect()
    c.feed(b"POST /echo HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
    assert c.transport.data == b""
    c.feed(b"ok")
    [r] = c.responses()
    assert r.body == b"ok"


def test_unterminated_header_line_over_many_reads_is_431(connect: ConnFactory) -> None:
    c = connect(SMALL)
    c.feed(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Long: ")
    for _ in range(20):
        c.feed(b"v" * 200)
        if c.transport.data:
            break
    c.settle()
    [r] = c.responses()
    assert_json_error(r, 431)


def test_expect_100_continue_is_not_sent_for_a_too_large_body(connect: ConnFactory) -> None:
    c = connect(SMALL)
    c.feed(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n"
    )
    c.settle()
    [r] = c.responses()
    assert_json_error(r, 413)


def test_expect_other_than_100_continue_is_417(connect: ConnFactory) -> None:
    c = connect()
    c.feed(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nExpect: magic\r\n\r\nx")
    c.settle()
    [r] = c.responses()
    assert_json_error(r, 417)


def test_100_continue_never_overtakes_an_earlier_response(connect: ConnFactory) -> None:
    c = connect()
    c.feed(
        get("/later?a")
        + b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    )
    assert c.transport.data == b""
    c.feed(b"ok")
    c.settle()
    statuses = [r.status for r in c.responses()]
    assert statuses[0] == 200
    assert statuses[-1] == 200
    assert c.responses()[0].body == b"later a"
    assert c.responses()[-1].body == b"ok"


# ---- async handlers, flow control --------------------------------------------------------------


def test_async_response_keeps_request_order(connect: ConnFactory) -> None:
    c = connect()
    c.feed(get("/later?first") + get("/hello") + get("/later?third"))
    assert c.transport.data == b""  # /hello waits behind the unfinished first response
    c.settle()
    bodies = [r.body for r in c.responses()]
    assert bodies == [b"later first", b"hello", b"later third"]


def test_future_responses_keep_request_order_without_a_task(connect: ConnFactory) -> None:
    c = connect()
    c.feed(get("/promised?first") + get("/hello") + get("/later?third") + get("/promised?4"))
    assert c.transport.data == b""
    assert c.protocol.tasks  # the futures and the task wait in the connection's set
    c.settle()
    bodies = [r.body for r in c.responses()]
    assert bodies == [b"promised first", b"hello", b"later third", b"promised 4"]
    assert not c.protocol.tasks


def test_a_future_that_fails_is_500_and_the_next_request_is_answered(
    connect: ConnFactory,
) -> None:
    c = connect()
    c.feed(get("/promised?fail") + get("/promised?ok"))
    c.settle()
    r500, r200 = c.responses()
    assert_json_error(r500, 500)
    assert r200.body == b"promised ok"


def test_connection_lost_cancels_a_handler_future(connect: ConnFactory) -> None:
    FUTURES.clear()
    c = connect()
    c.feed(get("/promised?x"))
    assert c.protocol.tasks == {FUTURES[0]}  # the future itself, no task wrapping it
    c.transport.close()
    c.settle()
    [fut] = FUTURES
    assert fut.cancelled()
    assert c.transport.data == b""
    assert not c.protocol.tasks


def test_max_pipelined_pauses_and_resumes_reading(connect: ConnFactory) -> None:
    c = connect(Limits(max_pipelined=2))
    c.feed(get("/later?1") + get("/later?2") + get("/later?3"))
    assert c.transport.pause_calls >= 1
    assert not c.transport.reading
    c.settle()
    assert [r.body for r in c.responses()] == [b"later 1", b"later 2", b"later 3"]
    assert c.transport.reading


def test_eof_after_request_still_answers_then_closes(connect: ConnFactory) -> None:
    c = connect()
    c.feed(get("/later?x"))
    assert c.protocol.eof_received()  # keep the transport open: a response is owed
    c.settle()
    [r] = c.responses()
    assert r.body == b"later x"
    assert c.transport.closed


def test_eof_with_nothing_in_flight_lets_the_transport_close(connect: ConnFactory) -> None:
    c = connect()
    c.feed(get("/hello"))
    assert not c.protocol.eof_received()


def test_connection_lost_cancels_handlers_without_writing(connect: ConnFactory) -> None:
    c = connect()
    c.feed(get("/later?x"))
    c.transport.close()
    c.settle()
    assert c.transport.data == b""
    assert c.protocol not in c.ctx.connections


def test_shutdown_finishes_in_flight_with_connection_close(connect: ConnFactory) -> None:
    c = connect()
    c.feed(get("/later?x"))
    c.ctx.shutting_down = True
    c.protocol.begin_shutdown()
    c.feed(get("/hello"))  # arrives after shutdown began: not served
    c.settle()
    [r] = c.responses()
    assert r.body == b"later x"
    assert r.header("connection") == "close"
    assert c.transport.closed


def test_shutdown_closes_idle_connection(connect: ConnFactory) -> None:
    c = connect()
    c.feed(get("/hello"))
    c.protocol.begin_shutdown()
    assert c.transport.closed


# ---- errors and deadlines ----------------------------------------------------------------------


def test_error_after_good_request_is_answered_in_order_then_lingers(connect: ConnFactory) -> None:
    c = connect()
    c.feed(get("/hello") + b"GET / HTTP/1.1\r\nHost : x\r\n\r\n" + get("/hello"))
    c.settle()
    ok, bad = c.responses()
    assert ok.status == 200
    assert_json_error(bad, 400)
    assert bad.header("connection") == "close"
    # lingering close: FIN sent, reading goes on (discarding) until the linger deadline
    assert c.transport.eof_written
    assert not c.transport.closed
    c.feed(b"more bytes from the client")
    c.ctx.sweep(c.loop.time() + 60)
    assert c.transport.closed
    assert len(c.responses()) == 2


def test_header_deadline_sends_408(connect: ConnFactory) -> None:
    c = connect()
    c.feed(b"GET /hel")
    c.ctx.sweep(c.loop.time())  # not due yet
    assert c.transport.data == b""
    c.ctx.sweep(c.loop.time() + 60)
    c.settle()
    [r] = c.responses()
    assert_json_error(r, 408)
    assert c.transport.eof_written


def test_body_deadline_sends_408(connect: ConnFactory) -> None:
    c = connect()
    c.feed(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    c.ctx.sweep(c.loop.time() + 120)
    c.settle()
    [r] = c.responses()
    assert_json_error(r, 408)


def test_idle_deadline_closes_silently(connect: ConnFactory) -> None:
    c = connect()
    c.feed(get("/hello"))
    before = c.transport.data
    c.ctx.sweep(c.loop.time() + 120)
    assert c.transport.closed
    assert c.transport.data == before


def test_silent_connection_is_closed_at_the_header_deadline(connect: ConnFactory) -> None:
    c = connect()
    c.ctx.sweep(c.loop.time() + 60)
    assert c.transport.closed
    assert c.transport.data == b""


# ---- property: how the bytes are split never changes the answer -------------------------------


@st.composite
def request_streams(draw: st.DrawFn) -> tuple[bytes, list[int], list[bool], list[bytes]]:
    """(stream of valid requests, split points, HEAD flags, expected bodies)."""
    parts: list[bytes] = []
    heads: list[bool] = []
    expected: list[bytes] = []
    for i in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["GET", "HEAD", "POST", "POST-chunked"]))
        if kind in ("GET", "HEAD"):
            parts.append(build_request(kind, f"/info?i={i}", host="x"))
            heads.append(kind == "HEAD")
            expected.append(b"" if kind == "HEAD" else f"GET /info i={i} 1.1".encode())
            continue
        body = draw(st.binary(max_size=600))
        if kind == "POST":
            parts.append(build_request("POST", "/echo", host="x", body=body, content_length=True))
        else:
            cuts = sorted(draw(st.sets(st.integers(0, len(body)), max_size=4)))
            pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
            te = [("Transfer-Encoding", "chunked")]
            parts.append(build_request("POST", "/echo", te, host="x") + chunked(*pieces))
        heads.append(False)
        expected.append(body)
    stream = b"".join(parts)
    splits = sorted(draw(st.sets(st.integers(1, len(stream) - 1), max_size=12)))
    return stream, splits, heads, expected


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(request_streams())
def test_split_points_never_change_the_output(
    case: tuple[bytes, list[int], list[bool], list[bytes]],
) -> None:
    stream, splits, heads, expected = case
    lp = uvloop.new_event_loop()
    router = make_router(lp)
    ex = ThreadPoolExecutor(max_workers=1)
    try:
        whole = Connection(lp, router, ex, SMALL)
        whole.feed(stream)
        pieces = Connection(lp, router, ex, SMALL)
        pieces.feed(
            *[stream[a:b] for a, b in zip([0, *splits], [*splits, len(stream)], strict=True)]
        )
        assert pieces.transport.data == whole.transport.data
        responses = parse_responses(whole.transport.data, heads)
        assert [r.status for r in responses] == [200] * len(expected)
        assert [r.body for r in responses] == expected
    finally:
        ex.shutdown()
        lp.close()


def test_write_backpressure_pauses_reading_until_the_low_water_mark(connect: ConnFactory) -> None:
    c = connect()
    c.feed(get("/hello"))
    c.protocol.pause_writing()  # the transport crossed its high-water mark
    assert not c.transport.reading
    c.protocol.resume_writing()  # back under the low-water mark
    assert c.transport.reading
    c.feed(get("/hello"))
    assert [r.status for r in c.responses()] == [200, 200]


def test_reading_resumes_only_when_every_reason_to_pause_is_gone(connect: ConnFactory) -> None:
    c = connect(Limits(max_pipelined=1))
    c.feed(get("/later?1"))  # one unanswered request: the pipeline limit pauses reading
    c.protocol.pause_writing()
    c.settle()  # the response is sent: the pipeline reason is gone, the write reason is not
    assert not c.transport.reading
    c.protocol.resume_writing()
    assert c.transport.reading
