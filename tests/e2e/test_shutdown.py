"""Graceful shutdown on SIGTERM, using ``slow_app`` so that a response is in flight."""

from __future__ import annotations

import signal

import pytest

from tests.conftest import ServerFactory
from tests.support.client import ConnectionClosedError, RawConnection, build_request

MODES = ["handoff", "reuseport"]


def assert_not_served(port: int) -> None:
    """A new connection is refused, or accepted and closed without an answer."""
    try:
        c = RawConnection(port, timeout=5)
    except ConnectionRefusedError:
        return
    with c:
        try:
            c.send(build_request("GET", "/healthz"))
        except (BrokenPipeError, ConnectionResetError):
            return
        with pytest.raises(ConnectionClosedError):
            c.read_response()


@pytest.mark.parametrize("mode", MODES)
def test_in_flight_response_completes_then_process_exits_0(
    start_server: ServerFactory, mode: str
) -> None:
    server = start_server(slow_app=True, accept_mode=mode)
    with RawConnection(server.port) as c:
        c.send(build_request("GET", "/slow?ms=1000"))
        server.wait_for_line(r"^slow: started 1000$", timeout=10)
        server.signal()
        r = c.read_response()
        assert r.status == 200
        assert r.body == b"slept 1000"
        assert r.header("connection") == "close"
        c.assert_closed()
    assert_not_served(server.port)
    assert server.wait() == 0, server.log_text()


@pytest.mark.parametrize("mode", MODES)
def test_idle_connections_are_closed_and_process_exits_0(
    start_server: ServerFactory, mode: str
) -> None:
    server = start_server(accept_mode=mode)
    with RawConnection(server.port) as idle, RawConnection(server.port) as fresh:
        assert idle.request("GET", "/healthz").status == 200
        assert fresh.request("GET", "/healthz").status == 200
        server.signal()
        idle.assert_closed()
        fresh.assert_closed()
    assert server.wait() == 0, server.log_text()


def test_drain_timeout_cuts_slow_requests_and_exits_3(start_server: ServerFactory) -> None:
    server = start_server(slow_app=True, limits={"drain_timeout_ms": 300})
    with RawConnection(server.port) as c:
        c.send(build_request("GET", "/slow?ms=30000"))
        server.wait_for_line(r"^slow: started 30000$", timeout=10)
        server.signal()
        assert c.read_until_eof() == b""  # cut without a response
    assert server.wait() == 3, server.log_text()


def test_sigint_also_stops_gracefully(start_server: ServerFactory) -> None:
    server = start_server()
    with RawConnection(server.port) as c:
        assert c.request("GET", "/healthz").status == 200
        server.signal(signal.SIGINT)
        c.assert_closed()
    assert server.wait() == 0, server.log_text()


def test_listening_line_reports_the_configuration(start_server: ServerFactory) -> None:
    server = start_server(sub_reactors=3, accept_mode="reuseport")
    assert "(3 sub-reactors, reuseport; static: " in server.ready_line
    with RawConnection(server.port) as c:
        assert c.request("GET", "/healthz").status == 200
