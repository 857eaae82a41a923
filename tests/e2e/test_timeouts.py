"""Header and idle timeouts (header_timeout_ms=300, idle_timeout_ms=500 on ``timeout_server``).

The bounds asserted are generous (5 s, the socket timeout) so they hold on a loaded machine;
reads wait on the server's bytes or EOF, never on a sleep.
"""

from __future__ import annotations

import time

from tests.support.client import RawConnection, assert_json_error, build_request, parse_responses

BOUND_S = 5.0


def read_to_close(c: RawConnection) -> tuple[bytes, float]:
    t0 = time.monotonic()
    data = c.read_until_eof()  # raises TimeoutError after BOUND_S if the server never closes
    return data, time.monotonic() - t0


def test_incomplete_request_head_gets_408_and_close(timeout_server: int) -> None:
    with RawConnection(timeout_server, timeout=BOUND_S) as c:
        c.send(b"GET /heal")
        data, elapsed = read_to_close(c)
    assert elapsed < BOUND_S
    [r] = parse_responses(data)
    assert_json_error(r, 408)
    assert r.header("connection") == "close"


def test_incomplete_headers_get_408(timeout_server: int) -> None:
    with RawConnection(timeout_server, timeout=BOUND_S) as c:
        c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Partial: ab")
        data, _ = read_to_close(c)
    [r] = parse_responses(data)
    assert_json_error(r, 408)


def test_incomplete_body_gets_408(timeout_server: int) -> None:
    with RawConnection(timeout_server, timeout=BOUND_S) as c:
        c.send(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        data, _ = read_to_close(c)
    [r] = parse_responses(data)
    assert_json_error(r, 408)


def test_silent_connection_is_closed_without_a_response(timeout_server: int) -> None:
    with RawConnection(timeout_server, timeout=BOUND_S) as c:
        data, elapsed = read_to_close(c)
    assert data == b""
    assert elapsed < BOUND_S


def test_idle_keep_alive_connection_is_closed(timeout_server: int) -> None:
    with RawConnection(timeout_server, timeout=BOUND_S) as c:
        r = c.request("GET", "/healthz")
        assert r.status == 200
        assert r.header("connection") is None  # kept alive...
        data, elapsed = read_to_close(c)  # ...until the idle timeout
    assert data == b""
    assert elapsed < BOUND_S


def test_pipelined_partial_request_after_a_response_gets_408(timeout_server: int) -> None:
    with RawConnection(timeout_server, timeout=BOUND_S) as c:
        c.send(build_request("GET", "/healthz") + b"GET /hea")
        assert c.read_response().status == 200
        data, _ = read_to_close(c)
    [r] = parse_responses(data)
    assert_json_error(r, 408)
