"""Sub-reactors: connections spread over them, streaming responses, and accept under EMFILE."""

from __future__ import annotations

import socket

import pytest

from tests.conftest import ServerFactory
from tests.support.client import ConnectionClosedError, RawConnection, metric
from tests.support.wait import wait_until

RECOVERY_DEADLINE_S = 10.0
"""How long the server may take to serve again once the clients holding its descriptors close."""


def healthz_status(port: int) -> int:
    """``GET /healthz`` on a new connection: its status, or 0 if the connection was refused."""
    try:
        with RawConnection(port) as c:
            return c.request("GET", "/healthz").status
    except (ConnectionClosedError, OSError):
        return 0


def test_handoff_spreads_connections_round_robin(start_server: ServerFactory) -> None:
    server = start_server(sub_reactors=2, accept_mode="handoff")
    conns = [RawConnection(server.port) for _ in range(40)]
    try:
        for c in conns:
            assert c.request("GET", "/healthz").status == 200
    finally:
        for c in conns:
            c.close()
    with RawConnection(server.port) as c:
        text = c.request("GET", "/metrics").body.decode()
    per_reactor = [
        metric(text, "infergate_http_connections_total", reactor=str(i)) for i in range(2)
    ]
    assert sum(per_reactor) >= 41
    # round robin: the 41 connections (40 + this one) split 20/21 whatever the order
    assert min(per_reactor) >= 20


def test_stream_response_is_chunked_on_http11(start_server: ServerFactory) -> None:
    server = start_server(slow_app=True)
    with RawConnection(server.port) as c:
        r = c.request("GET", "/stream?n=5")
        assert r.status == 200
        assert r.header("transfer-encoding") == "chunked"
        assert r.header("content-length") is None
        assert r.body == b"".join(b"chunk %d\n" % i for i in range(5))
        # the connection stays usable after the last chunk
        assert c.request("GET", "/healthz").status == 200


def test_stream_response_on_http10_ends_with_the_connection(start_server: ServerFactory) -> None:
    server = start_server(slow_app=True)
    with RawConnection(server.port) as c:
        c.send(b"GET /stream?n=3 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        raw = c.read_until_eof()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"chunked" not in head.lower()
    assert b"connection: close" in head.lower()
    assert body == b"chunk 0\nchunk 1\nchunk 2\n"


@pytest.mark.parametrize("mode", ["handoff", "reuseport"])
def test_accept_recovers_after_running_out_of_file_descriptors(
    start_server: ServerFactory, mode: str
) -> None:
    # 64 descriptors: the server's own loops, pipes and listener take ~20, so a burst of 100
    # connections exhausts the table and accept() fails with EMFILE. The connection cap is
    # raised past the table: the cap derived from it (max_connections = 0) refuses and closes
    # connections as they come, which on a loaded box freed descriptors as fast as the accept
    # loop took them, and EMFILE never came.
    server = start_server(
        slow_app=True,
        sub_reactors=1,
        accept_mode=mode,
        extra_args=["--nofile", "64"],
        limits={"max_connections": 1000},
    )
    clients = []
    try:
        for _ in range(100):
            clients.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
        if mode == "handoff":
            # our accept loop backs off instead of spinning (libuv does its own in reuseport)
            server.wait_for_line("accept paused", timeout=20)
        else:
            # libuv accepts and closes what it cannot hold: some clients are refused
            refused = 0
            for s in clients:
                try:
                    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    refused += s.recv(1) == b""
                except OSError:
                    refused += 1
            assert refused > 0
    finally:
        for s in clients:
            s.close()
    # The server frees its descriptors as it sees the clients' FINs; until then a new connection
    # may still be refused. It must be served again before the deadline.
    status = wait_until(
        lambda: healthz_status(server.port),
        RECOVERY_DEADLINE_S,
        "the server accepts and serves a new connection again",
    )
    assert status == 200
    assert server.proc.poll() is None
