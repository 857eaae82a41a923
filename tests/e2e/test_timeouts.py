"""Header, body and idle timeouts (300, 400 and 500 ms on ``timeout_server``).

Each test checks when the server closed, against two bounds from the configured timeouts:

- not before ``EARLIEST_S``, half the shortest configured timeout (the server's clock is cached
  per tick, so a deadline may fire up to one tick early, never half a timeout early); the clock
  starts before the connection is opened, so it starts before any server timer does;
- within ``CLOSE_BOUND_S``, ten times the configured timeouts but half ``SOCKET_TIMEOUT_S``: a
  server that closes late fails the elapsed assertion, one that never closes fails the read
  (``TimeoutError``), so neither can pass.

Reads wait on the server's bytes or EOF, never on a sleep.
"""

from __future__ import annotations

import time

from tests.support.client import RawConnection, assert_json_error, build_request, parse_responses

HEADER_TIMEOUT_S = 0.3
BODY_TIMEOUT_S = 0.4
IDLE_TIMEOUT_S = 0.5
EARLIEST_S = min(HEADER_TIMEOUT_S, BODY_TIMEOUT_S, IDLE_TIMEOUT_S) / 2
CLOSE_BOUND_S = 5.0
SOCKET_TIMEOUT_S = 10.0


class TimedConnection(RawConnection):
    """A connection that knows when it was opened."""

    def __init__(self, port: int) -> None:
        self.opened = time.monotonic()  # before connect: before the server's first deadline
        super().__init__(port, timeout=SOCKET_TIMEOUT_S)

    def __enter__(self) -> TimedConnection:
        return self

    def read_to_close(self) -> tuple[bytes, float]:
        """Everything up to the server's EOF, and the seconds from opening to that EOF."""
        try:
            data = self.read_until_eof()
        except TimeoutError:
            raise AssertionError(
                f"the server did not close the connection within {SOCKET_TIMEOUT_S} s"
            ) from None
        return data, time.monotonic() - self.opened


def assert_closed_in_time(elapsed: float, earliest: float = EARLIEST_S) -> None:
    assert elapsed >= earliest, f"closed after {elapsed:.3f} s, before its timeout"
    assert elapsed < CLOSE_BOUND_S, f"closed after {elapsed:.3f} s, long after its timeout"


def test_incomplete_request_head_gets_408_and_close(timeout_server: int) -> None:
    with TimedConnection(timeout_server) as c:
        c.send(b"GET /heal")
        data, elapsed = c.read_to_close()
    [r] = parse_responses(data)
    assert_json_error(r, 408)
    assert r.header("connection") == "close"
    assert_closed_in_time(elapsed)


def test_incomplete_headers_get_408(timeout_server: int) -> None:
    with TimedConnection(timeout_server) as c:
        c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Partial: ab")
        data, elapsed = c.read_to_close()
    [r] = parse_responses(data)
    assert_json_error(r, 408)
    assert_closed_in_time(elapsed)


def test_incomplete_body_gets_408(timeout_server: int) -> None:
    with TimedConnection(timeout_server) as c:
        c.send(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        data, elapsed = c.read_to_close()
    [r] = parse_responses(data)
    assert_json_error(r, 408)
    assert_closed_in_time(elapsed)


def test_silent_connection_is_closed_without_a_response(timeout_server: int) -> None:
    with TimedConnection(timeout_server) as c:
        data, elapsed = c.read_to_close()
    assert data == b""
    assert_closed_in_time(elapsed)


def test_idle_keep_alive_connection_is_closed(timeout_server: int) -> None:
    with TimedConnection(timeout_server) as c:
        r = c.request("GET", "/healthz")
        assert r.status == 200
        assert r.header("connection") is None  # kept alive...
        data, elapsed = c.read_to_close()  # ...until the idle timeout, not at once
    assert data == b""
    assert_closed_in_time(elapsed, earliest=IDLE_TIMEOUT_S / 2)


def test_pipelined_partial_request_after_a_response_gets_408(timeout_server: int) -> None:
    with TimedConnection(timeout_server) as c:
        c.send(build_request("GET", "/healthz") + b"GET /hea")
        assert c.read_response().status == 200
        data, elapsed = c.read_to_close()
    [r] = parse_responses(data)
    assert_json_error(r, 408)
    assert r.header("connection") == "close"
    assert_closed_in_time(elapsed)
