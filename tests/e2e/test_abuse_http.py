"""Bounds under abuse against the real server (issue 7: 7.3, 7.4, 7.8): a second instance on the
same port, the connection cap, the body-memory cap, and a client that never reads (that no more
responses are computed for it is tested at the protocol seam, tests/engine/http/test_bounds.py).

Each wait is on a condition with a deadline (``wait_until``) or on the server's bytes.
"""

from __future__ import annotations

import socket

import pytest

from tests.conftest import ServerFactory
from tests.support.client import (
    ConnectionClosedError,
    RawConnection,
    assert_json_error,
    build_request,
    metric,
)
from tests.support.wait import wait_until

DEADLINE_S = 10.0


def metrics(port: int) -> str:
    with RawConnection(port) as c:
        r = c.request("GET", "/metrics", headers=[("Connection", "close")])
        assert r.status == 200
        return r.body.decode()


def test_second_instance_on_the_same_port_fails_naming_it(start_server: ServerFactory) -> None:
    first = start_server(admin_listen="")  # default accept_mode: reuseport
    with pytest.raises(AssertionError, match="server exited") as info:
        start_server(admin_listen="", extra_args=["--listen", f"127.0.0.1:{first.port}"])
    assert f"address already in use: 127.0.0.1:{first.port}" in str(info.value)
    with RawConnection(first.port) as c:  # the first one is undisturbed
        assert c.request("GET", "/healthz").status == 200


def test_connection_cap_refuses_logs_and_counts(start_server: ServerFactory) -> None:
    server = start_server(limits={"max_connections": 3})
    held = [RawConnection(server.port) for _ in range(3)]
    try:
        for c in held:  # each is accepted and served (the cap counts across sub-reactors)
            assert c.request("GET", "/hello.txt").status == 200
        with RawConnection(server.port) as extra, pytest.raises(ConnectionClosedError):
            extra.request("GET", "/hello.txt")
    finally:
        held.pop().close()
    wait_until(
        lambda: metric(metrics(server.port), "infergate_connections_refused_total") >= 1,
        DEADLINE_S,
        "the refusal to be counted",
    )
    for c in held:
        c.close()
    assert "refusing new connections: 3 open, limits.max_connections = 3" in server.log_text()


def test_body_memory_cap_answers_503_with_retry_after(start_server: ServerFactory) -> None:
    server = start_server(limits={"max_body_memory_bytes": 1500, "max_body_bytes": 1024})
    head = build_request(
        "POST", "/v1/embeddings", [("Expect", "100-continue"), ("Content-Length", "1000")]
    )
    with RawConnection(server.port) as a, RawConnection(server.port) as b:
        a.send(head)
        assert a.read_response().status == 100  # its 1000 bytes are reserved
        b.send(head)
        r = b.read_response()
        assert_json_error(r, 503)
        assert r.header("retry-after") == "1"
    with RawConnection(server.port) as c:  # a's connection died: its reservation went with it
        c.send(head)
        assert c.read_response().status == 100


def test_client_that_never_reads_is_cut_at_the_send_timeout(start_server: ServerFactory) -> None:
    server = start_server(limits={"send_timeout_ms": 300, "write_high_water": 65536})
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    try:
        # 40 x 300 KB: more than the kernel's buffers hold for a client that reads nothing
        sock.sendall(build_request("GET", "/big.bin") * 40)
        wait_until(
            lambda: metric(metrics(server.port), "infergate_http_connections_open") == 1,
            DEADLINE_S,
            "the server to close the client that reads nothing (only the scrape left open)",
        )
        assert metric(metrics(server.port), "infergate_http_slow_readers_cut_total") == 1
        assert "whose client read nothing for 0.3 s" in server.log_text()
    finally:
        sock.close()
