"""Bounds under abuse against the real server (issue 7: 7.3, 7.4, 7.8): a second instance on the
same port, the connection cap, the body-memory cap, and a client that never reads (that no more
responses are computed for it is tested at the protocol seam, tests/engine/http/test_bounds.py).

Each wait is on a condition with a deadline (``wait_until``) or on the server's bytes.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tests.conftest import ServerFactory
from tests.support.client import (
    ConnectionClosedError,
    RawConnection,
    assert_json_error,
    build_request,
    metric,
)
from tests.support.server import ServerProcess
from tests.support.wait import wait_until

DEADLINE_S = 10.0


def metrics(port: int) -> str:
    with RawConnection(port) as c:
        r = c.request("GET", "/metrics", headers=[("Connection", "close")])
        assert r.status == 200
        return r.body.decode()


def refused_count(port: int) -> float:
    """The refusals counted, or -1 while this scrape itself is refused (the cap is reached
    until the server has seen a held connection close)."""
    try:
        return metric(metrics(port), "infergate_connections_refused_total")
    except (ConnectionClosedError, ConnectionResetError):
        return -1


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
        lambda: refused_count(server.port) >= 1,
        DEADLINE_S,
        "a scrape to be accepted (a slot freed) and show the refusal",
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
    wait_until(  # a's connection died: its reservation goes with it once the server sees it
        lambda: continue_status(server.port, head) == 100,
        DEADLINE_S,
        "a new body to be accepted (100 Continue)",
    )


def continue_status(port: int, head: bytes) -> int:
    with RawConnection(port) as c:
        c.send(head)
        return c.read_response().status


def test_client_that_never_reads_is_cut_at_the_send_timeout(start_server: ServerFactory) -> None:
    server = start_server(limits={"send_timeout_ms": 300, "write_high_water": 65536})
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    try:
        # 40 x 300 KB: more than the kernel's buffers hold for a client that reads nothing
        sock.sendall(build_request("GET", "/big.bin") * 40)
        wait_until(
            lambda: metric(metrics(server.port), "infergate_http_slow_readers_cut_total") == 1,
            DEADLINE_S,
            "the server to cut the client that reads nothing",
        )
        wait_until(
            lambda: metric(metrics(server.port), "infergate_http_connections_open") == 1,
            DEADLINE_S,
            "the cut connection to be gone (only the scrape open)",
        )
        assert "whose client read nothing for 0.3 s" in server.log_text()
    finally:
        sock.close()


SIM_CONFIG = """
listen = "127.0.0.1:0"
sub_reactors = 2
admin_listen = ""

[limits]
max_unsent_bytes = 2000000
write_high_water = 65536

[[models]]
name = "sim-embed"
executor = "sim"
dim = 384
base_us = 100
per_item_us = 1
[models.batching]
max_batch_size = 256
"""


def test_pipelined_inference_for_a_client_that_never_reads_is_capped(tmp_path: Path) -> None:
    # The observed case: one connection pipelining large embedding responses and reading none
    # of them reached 1.42 GB. Past max_unsent_bytes (2 MB here) the connection is cut, well
    # before the send timeout (30 s by default).
    config = tmp_path / "infergate.toml"
    config.write_text(SIM_CONFIG)
    body = json.dumps({"model": "sim-embed", "input": [f"w{i}" for i in range(128)]}).encode()
    request = build_request("POST", "/v1/embeddings", [("Content-Type", "application/json")], body)
    with ServerProcess(config) as server:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        try:
            sock.sendall(request * 60)
            wait_until(
                lambda: metric(metrics(server.port), "infergate_http_slow_readers_cut_total") == 1,
                DEADLINE_S,
                "the server to cut the connection holding the most unsent bytes",
            )
            wait_until(
                lambda: metric(metrics(server.port), "infergate_http_connections_open") == 1,
                DEADLINE_S,
                "the cut connection to be gone (only the scrape open)",
            )
            assert "over limits.max_unsent_bytes" in server.log_text()
        finally:
            sock.close()


def announce(target: str, length: int, *headers: tuple[str, str]) -> bytes:
    """A POST head announcing ``length`` body bytes and asking to continue: no body follows."""
    fields = [("Content-Type", "application/json"), ("Expect", "100-continue"), *headers]
    return build_request("POST", target, [*fields, ("Content-Length", str(length))])


def test_json_body_over_the_route_limit_is_refused_before_it_is_sent(
    start_server: ServerFactory,
) -> None:
    """Issue 7.9: the APIs' 1 MiB JSON limit is checked when the head arrives: an 8 MB body is
    never read (no 100 Continue; the 413 comes at once, in each API's error shape, and closes).
    KServe bodies with Inference-Header-Content-Length (binary tensors) are exempt."""
    server = start_server(limits={"max_body_bytes": 8 * 1024 * 1024})
    kserve = "/v2/models/sim-tensor/infer"
    for target in ("/v1/embeddings", kserve):
        with RawConnection(server.port) as c:
            c.send(announce(target, 8_000_000))
            r = c.read_response()
            assert r.status == 413
            assert r.header("connection") == "close"
            assert r.header("x-infergate-drop-reason") == "body_too_large"
            err = json.loads(r.body)["error"]
            if target == kserve:
                assert "binary_data" in err  # KServe's shape: a message string
            else:
                assert err["code"] == "body_too_large"
            c.assert_closed()
    with RawConnection(server.port) as c:
        c.send(announce(kserve, 4_000_000, ("Inference-Header-Content-Length", "100")))
        assert c.read_response().status == 100
