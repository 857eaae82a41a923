"""The real server over real sockets: connection handling, framing, limits, metrics."""

from __future__ import annotations

import json
import socket
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.support.client import (
    RawConnection,
    assert_json_error,
    build_request,
    chunked,
    metric,
)

HEALTH_OK = b'{"status":"ok"}'


# ---- keep-alive ------------------------------------------------------------------------------


def test_three_requests_on_one_http11_connection(any_mode_server: int) -> None:
    with RawConnection(any_mode_server) as c:
        for _ in range(3):
            r = c.request("GET", "/healthz")
            assert r.status == 200
            assert r.body == HEALTH_OK
            assert r.header("connection") is None  # HTTP/1.1: persistent by default
        assert r.header("content-type") == "application/json"
        assert r.header("server") == "infergate"
        assert (
            r.header(
                "date",
            )
            is not None
        )


def test_http10_with_keep_alive_stays_open(any_mode_server: int) -> None:
    with RawConnection(any_mode_server) as c:
        for _ in range(2):
            r = c.request(
                "GET", "/healthz", [("Connection", "keep-alive")], version="HTTP/1.0", host=None
            )
            assert r.status == 200
            assert r.header("connection") == "keep-alive"
            assert r.body == HEALTH_OK


def test_http10_without_keep_alive_closes(any_mode_server: int) -> None:
    with RawConnection(any_mode_server) as c:
        r = c.request("GET", "/healthz", version="HTTP/1.0", host=None)
        assert r.status == 200
        assert r.header("connection") == "close"
        c.assert_closed()


def test_connection_close_closes_after_the_response(app_server: int) -> None:
    with RawConnection(app_server) as c:
        r = c.request("GET", "/healthz", [("Connection", "close")])
        assert r.status == 200
        assert r.header("connection") == "close"
        c.assert_closed()


def test_request_pipelined_after_connection_close_gets_no_response(app_server: int) -> None:
    # RFC 9112 §9.6: no request after "Connection: close" is processed or answered.
    with RawConnection(app_server) as c:
        c.send(build_request("GET", "/healthz", [("Connection", "close")]) + build_request())
        r = c.read_response()
        assert r.status == 200
        assert r.header("connection") == "close"
        c.assert_closed()


def test_head_has_content_length_and_no_body(app_server: int) -> None:
    with RawConnection(app_server) as c:
        r = c.request("HEAD", "/healthz", head=True)
        assert r.status == 200
        assert r.header("content-length") == str(len(HEALTH_OK))
        # the connection is still in sync: the next response starts right after the head
        assert c.request("GET", "/healthz").body == HEALTH_OK


# ---- pipelining --------------------------------------------------------------------------------


def test_five_pipelined_requests_answered_in_order(any_mode_server: int, static_root: Path) -> None:
    targets = ["/healthz", "/hello.txt", "/nope.txt", "/digits.txt", "/healthz"]
    with RawConnection(any_mode_server) as c:
        c.send(b"".join(build_request("GET", t) for t in targets))
        got = [c.read_response() for _ in targets]
    assert [r.status for r in got] == [200, 200, 404, 200, 200]
    assert got[0].body == HEALTH_OK
    assert got[1].body == (static_root / "hello.txt").read_bytes()
    assert_json_error(got[2], 404)
    assert got[3].body == (static_root / "digits.txt").read_bytes()
    assert got[4].body == HEALTH_OK


def test_pipelined_streamed_file_keeps_order(app_server: int, static_root: Path) -> None:
    targets = ["/hello.txt", "/big.bin", "/healthz", "/big.bin", "/digits.txt"]
    with RawConnection(app_server) as c:
        c.send(b"".join(build_request("GET", t) for t in targets))
        got = [c.read_response() for _ in targets]
    big = (static_root / "big.bin").read_bytes()
    assert [r.body for r in got] == [
        (static_root / "hello.txt").read_bytes(),
        big,
        HEALTH_OK,
        big,
        (static_root / "digits.txt").read_bytes(),
    ]


def test_pipelined_after_a_slow_async_request_keeps_order(echo_server: int) -> None:
    reqs = [
        build_request("GET", "/slow?ms=200"),
        build_request("GET", "/healthz"),
        build_request("POST", "/echo", body=b"second"),
        build_request("GET", "/slow?ms=0"),
        build_request("GET", "/hello.txt"),
        build_request("POST", "/echo", body=b"last"),
    ]
    with RawConnection(echo_server) as c:
        c.send(b"".join(reqs))
        bodies = [c.read_response().body for _ in reqs]
    assert bodies == [b"slept 200", HEALTH_OK, b"second", b"slept 0", b"hello, world\n", b"last"]


def test_hundreds_of_pipelined_requests_mixing_async_and_sync(echo_server: int) -> None:
    # more than max_pipelined (64) unanswered requests: reading pauses and resumes
    reqs, expected = [], []
    for i in range(300):
        if i % 2:
            reqs.append(build_request("GET", f"/slow?ms={i % 3}"))
            expected.append(b"slept %d" % (i % 3))
        else:
            reqs.append(build_request("POST", "/echo", body=b"%d" % i))
            expected.append(b"%d" % i)
    with RawConnection(echo_server) as c:
        c.send(b"".join(reqs))
        assert [c.read_response().body for _ in reqs] == expected


def test_error_behind_an_in_flight_async_response(echo_server: int) -> None:
    with RawConnection(echo_server) as c:
        c.send(build_request("GET", "/slow?ms=100") + b"GET / HTTP/1.1\r\nHost : x\r\n\r\n")
        assert c.read_response().body == b"slept 100"
        assert_json_error(c.read_response(), 400)
        c.assert_closed()


def test_options_and_absolute_form(app_server: int) -> None:
    with RawConnection(app_server) as c:
        r = c.request("OPTIONS", "*")
        assert r.status == 204
        assert "GET" in (r.header("allow") or "")
        r = c.request("OPTIONS", "/healthz")
        assert r.status == 204
        assert r.header("allow") == "GET, HEAD, OPTIONS"
        assert c.request("GET", "http://test/healthz").body == HEALTH_OK


def test_request_sent_byte_by_byte(app_server: int) -> None:
    data = build_request("GET", "/healthz?x=1", [("X-Test", "byte by byte")])
    with RawConnection(app_server) as c:
        for i in range(len(data)):
            c.send(data[i : i + 1])
        r = c.read_response()
        assert r.status == 200
        assert r.body == HEALTH_OK


def test_body_sent_byte_by_byte(echo_server: int) -> None:
    body = bytes(range(200))
    data = build_request("POST", "/echo", body=body)
    with RawConnection(echo_server) as c:
        for i in range(len(data)):
            c.send(data[i : i + 1])
        assert c.read_response().body == body


def test_half_closed_client_still_gets_its_response(echo_server: int) -> None:
    with RawConnection(echo_server) as c:
        c.send(build_request("GET", "/slow?ms=100"))
        c.sock.shutdown(socket.SHUT_WR)
        r = c.read_response()
        assert r.status == 200
        assert r.body == b"slept 100"
        c.assert_closed()


# ---- request bodies ----------------------------------------------------------------------------


def test_content_length_upload_echo(echo_server: int) -> None:
    body = bytes(range(256)) * 4
    with RawConnection(echo_server) as c:
        r = c.request("POST", "/echo", body=body)
        assert r.status == 200
        assert r.body == body
        assert c.request("POST", "/echo", body=b"", content_length=True).body == b""


def test_chunked_upload_echo(echo_server: int) -> None:
    te = [("Transfer-Encoding", "chunked")]
    with RawConnection(echo_server) as c:
        c.send(build_request("POST", "/echo", te))
        for piece in (b"hello", b", ", b"chunked ", b"world"):
            c.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        c.send(b"0\r\nX-Trailer: yes\r\n\r\n")
        r = c.read_response()
        assert r.status == 200
        assert r.body == b"hello, chunked world"
        c.send(build_request("POST", "/echo", te) + chunked(b"a" * 300, b"b" * 300))
        assert c.read_response().body == b"a" * 300 + b"b" * 300


def test_expect_100_continue(echo_server: int) -> None:
    head = build_request("POST", "/echo", [("Expect", "100-continue"), ("Content-Length", "5")])
    with RawConnection(echo_server) as c:
        c.send(head)
        interim = c.read_response()
        assert interim.status == 100
        assert interim.raw_head == b"HTTP/1.1 100 Continue\r\n\r\n"
        c.send(b"hello")
        r = c.read_response()
        assert r.status == 200
        assert r.body == b"hello"


def test_expect_100_continue_refused_for_too_large_body(echo_server: int) -> None:
    head = build_request("POST", "/echo", [("Expect", "100-continue"), ("Content-Length", "5000")])
    with RawConnection(echo_server) as c:
        c.send(head)
        assert_json_error(c.read_response(), 413)  # and no "100 Continue" before it
        c.assert_closed()


# ---- limits and refused requests ---------------------------------------------------------------


def expect_error(port: int, data: bytes, status: int) -> dict[str, str]:
    """Send ``data``; the server answers ``status`` as a JSON error and closes."""
    with RawConnection(port) as c:
        c.send(data)
        err = assert_json_error(c.read_response(), status)
        c.assert_closed()
        return err


def test_uri_too_long_is_414(app_server: int) -> None:
    expect_error(app_server, build_request("GET", "/" + "a" * 600), 414)


def test_headers_too_large_is_431(app_server: int) -> None:
    expect_error(app_server, build_request("GET", "/", [("X-Big", "v" * 3000)]), 431)


def test_many_headers_too_large_is_431(app_server: int) -> None:
    headers = [(f"X-H{i}", "v" * 50) for i in range(60)]
    expect_error(app_server, build_request("GET", "/", headers), 431)


def test_body_too_large_by_content_length_is_413(app_server: int) -> None:
    expect_error(app_server, build_request("POST", "/", [("Content-Length", "1025")]), 413)


def test_body_at_the_limit_is_accepted(echo_server: int) -> None:
    with RawConnection(echo_server) as c:
        assert c.request("POST", "/echo", body=b"z" * 1024).body == b"z" * 1024


def test_body_too_large_by_chunked_total_is_413(echo_server: int) -> None:
    te = [("Transfer-Encoding", "chunked")]
    body = chunked(b"a" * 500, b"b" * 500, b"c" * 100)
    expect_error(echo_server, build_request("POST", "/echo", te) + body, 413)


@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/3.0", "HTTP/0.9"])
def test_unsupported_version_is_505(app_server: int, version: str) -> None:
    err = expect_error(app_server, build_request("GET", "/healthz", version=version), 505)
    assert "HTTP/1.1 and HTTP/1.0" in err["message"]


def test_higher_minor_version_is_served_as_http11(app_server: int) -> None:
    # RFC 9110 §2.5: HTTP/1.2 is processed as HTTP/1.1 (persistent by default)
    with RawConnection(app_server) as c:
        for _ in range(2):
            r = c.request("GET", "/healthz", version="HTTP/1.2")
            assert (r.version, r.status, r.header("connection")) == ("HTTP/1.1", 200, None)


@pytest.mark.parametrize("method", ["FOO", "PROPFIND", "TRACE", "CONNECT"])
def test_unknown_or_unsupported_method_is_501(app_server: int, method: str) -> None:
    target = "x:443" if method == "CONNECT" else "/healthz"
    expect_error(app_server, build_request(method, target), 501)


def test_wrong_method_is_405_with_allow(app_server: int) -> None:
    with RawConnection(app_server) as c:
        r = c.request("POST", "/healthz", body=b"x")
        assert_json_error(r, 405)
        assert r.header("allow") == "GET, HEAD, OPTIONS"
        assert c.request("GET", "/healthz").status == 200  # a 405 keeps the connection


def test_not_found_is_json_404(app_server: int) -> None:
    with RawConnection(app_server) as c:
        assert_json_error(c.request("GET", "/no/such/file"), 404)
        assert c.request("GET", "/healthz").status == 200


def test_invalid_utf8_path_is_400(app_server: int) -> None:
    expect_error(app_server, build_request("GET", "/%ff%fe"), 400)


# ---- metrics -----------------------------------------------------------------------------------


def test_metrics_count_responses_and_durations(app_server: int) -> None:
    with RawConnection(app_server) as c:
        before = c.request("GET", "/metrics")
        assert before.status == 200
        assert (before.header("content-type") or "").startswith("text/plain")
        ok_before = metric(before.body.decode(), "infergate_http_responses_total", code="2xx")
        for _ in range(5):
            assert c.request("GET", "/healthz").status == 200
        assert c.request("GET", "/missing").status == 404
        text = c.request("GET", "/metrics").body.decode()
    ok = metric(text, "infergate_http_responses_total", code="2xx")
    assert ok >= ok_before + 6  # five /healthz and the first scrape
    assert metric(text, "infergate_http_responses_total", code="4xx") >= 1
    assert "infergate_http_request_duration_seconds_bucket" in text
    total = metric(text, "infergate_http_request_duration_seconds_bucket", le="+Inf")
    assert total == metric(text, "infergate_http_request_duration_seconds_count")
    assert total >= ok
    assert metric(text, "infergate_http_connections_open") >= 1


# ---- many connections --------------------------------------------------------------------------


def test_forty_concurrent_connections(any_mode_server: int) -> None:
    with RawConnection(any_mode_server) as m:
        text = m.request("GET", "/metrics").body.decode()
        total_before = metric(text, "infergate_http_connections_total")
        with ExitStack() as stack:
            conns = [stack.enter_context(RawConnection(any_mode_server)) for _ in range(40)]
            for i, c in enumerate(conns):
                c.send(build_request("GET", f"/healthz?c={i}"))
            responses = [c.read_response() for c in conns]
        assert [r.status for r in responses] == [200] * 40
        assert all(r.body == HEALTH_OK for r in responses)
        text = m.request("GET", "/metrics").body.decode()
    assert metric(text, "infergate_http_connections_total") >= total_before + 40
    assert metric(text, "infergate_http_connections_total") >= 40
    assert json.loads(HEALTH_OK) == {"status": "ok"}
