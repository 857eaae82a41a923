"""TLS at the reactor seam: real SubReactors on 127.0.0.1 with certificates made by ``openssl``
(``tests.support.certs``), in both accept modes (hand-off: sockets accepted elsewhere and
adopted; reuseport: the SubReactor accepts on its own listener, as for the admin listener)."""

from __future__ import annotations

import logging
import shutil
import socket
import ssl
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from infergate.engine.config import Limits
from infergate.engine.http.bounds import ProcessBounds
from infergate.engine.http.response import Response
from infergate.engine.http.router import Router
from infergate.engine.net.reactor import SubReactor, open_listeners
from infergate.engine.net.tls import WRITE_CHUNK, ServerTls, SplitWrites, TlsError, server_context
from tests.support.certs import (
    Certs,
    TlsConnection,
    client_context,
    make_certs,
    presented_name,
    tls_1_1_client,
)
from tests.support.client import DEFAULT_TIMEOUT, HOST
from tests.support.wait import wait_until

BIG = b"x" * (8 << 20)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def live(tmp_path: Path, certs: Certs) -> Certs:
    """A copy of ``certs`` whose files a test may overwrite."""
    folder = tmp_path / "live"
    shutil.copytree(certs.folder, folder)
    files = (certs.ca, certs.cert_a, certs.key_a, certs.cert_b, certs.key_b, certs.other_key)
    return Certs(folder, *(folder / f.name for f in files))


class Serving:
    """One SubReactor serving TLS: ``handoff`` adopts accepted sockets, ``reuseport`` accepts
    on the listener itself (``serve_reuseport``)."""

    def __init__(self, tls: ServerTls, mode: str, limits: Limits) -> None:
        router = Router()
        router.add(["GET"], "/hello", lambda _r: Response(b"hello"))
        router.add(["GET"], "/big", lambda _r: Response(BIG))
        self.executor = ThreadPoolExecutor(1)
        self.sub = SubReactor(
            0, router, limits, self.executor, bounds=ProcessBounds(limits), tls=tls.context
        )
        [self.listener] = open_listeners(HOST, 0, 1, reuseport=False)
        self.port = self.listener.getsockname()[1]
        self.sub.start()
        self.mode = mode
        if mode == "reuseport":
            self.sub.serve_reuseport(self.listener)
        else:
            self.sub.loop.call_soon_threadsafe(self._accept_soon)

    def _accept_soon(self) -> None:
        self.sub.loop.add_reader(self.listener.fileno(), self._accept)

    def _accept(self) -> None:  # on the sub-reactor: what MainReactor._on_acceptable does
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        self.sub.adopt([conn])

    def close(self) -> None:
        if self.mode == "handoff":
            self.sub.loop.call_soon_threadsafe(self.sub.loop.remove_reader, self.listener.fileno())
        self.sub.drain(1.0).result(DEFAULT_TIMEOUT)
        self.sub.stop()
        self.listener.close()
        self.executor.shutdown()


@pytest.fixture(params=["handoff", "reuseport"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def serve(mode: str) -> Iterator[list[Serving]]:
    started: list[Serving] = []
    yield started
    for s in started:
        s.close()


def _serve(serve: list[Serving], tls: ServerTls, mode: str, **limits: int) -> Serving:
    s = Serving(tls, mode, Limits(**limits))
    serve.append(s)
    return s


# ---- the context ------------------------------------------------------------------------------


def test_the_context_has_modern_defaults(certs: Certs) -> None:
    ctx = server_context(str(certs.cert_a), str(certs.key_a))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_RENEGOTIATION
    assert ctx.options & ssl.OP_NO_COMPRESSION


@pytest.mark.parametrize(
    ("cert", "key", "message"),
    [
        ("missing.pem", "a.key", "cannot read tls_cert_file {d}/missing.pem: No such file"),
        (".", "a.key", "cannot read tls_cert_file {d}: it is a folder"),
        ("a.pem", "missing.key", "cannot read tls_key_file {d}/missing.key: No such file"),
        ("a.key", "a.key", "tls_cert_file {d}/a.key is not a PEM certificate"),
        ("a.pem", "a.pem", "tls_key_file {d}/a.pem is not a PEM private key"),
        ("a.pem", "b.key", "tls_key_file {d}/b.key does not match the certificate in {d}/a.pem"),
        ("a.pem", "other.key", "tls_key_file {d}/other.key does not match the certificate"),
    ],
)
def test_a_file_that_cannot_be_used_is_named_with_the_problem(
    certs: Certs, cert: str, key: str, message: str
) -> None:
    d = certs.folder
    with pytest.raises(TlsError) as info:
        server_context(str(d / cert), str(d / key))
    assert str(info.value).startswith(message.format(d=d))


def test_a_broken_certificate_and_an_encrypted_key_are_named(tmp_path: Path, certs: Certs) -> None:
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(TlsError, match=f"tls_cert_file {broken}: not a valid certificate"):
        server_context(str(broken), str(certs.key_a))
    encrypted = tmp_path / "enc.key"
    body = certs.key_a.read_text().replace("PRIVATE KEY", "ENCRYPTED PRIVATE KEY")
    encrypted.write_text(body)
    with pytest.raises(TlsError, match=f"tls_key_file {encrypted} is encrypted"):
        server_context(str(certs.cert_a), str(encrypted))


# ---- serving ----------------------------------------------------------------------------------


def test_https_is_served_and_tls_1_1_refused(serve: list[Serving], mode: str, certs: Certs) -> None:
    s = _serve(serve, ServerTls(str(certs.cert_a), str(certs.key_a)), mode)
    with TlsConnection(s.port, certs.ca) as c:
        assert c.request("GET", "/hello").body == b"hello"
        assert c.sock.version() in ("TLSv1.2", "TLSv1.3")
    alpn = client_context(certs.ca)
    alpn.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection((HOST, s.port), timeout=DEFAULT_TIMEOUT) as raw,
        alpn.wrap_socket(raw, server_hostname="localhost") as sock,
    ):
        assert sock.selected_alpn_protocol() == "http/1.1"
    old = tls_1_1_client()
    with (
        socket.create_connection((HOST, s.port), timeout=DEFAULT_TIMEOUT) as raw,
        pytest.raises(ssl.SSLError),
    ):
        old.wrap_socket(raw)


def test_plain_http_to_the_tls_port_is_closed(
    serve: list[Serving], mode: str, certs: Certs
) -> None:
    s = _serve(serve, ServerTls(str(certs.cert_a), str(certs.key_a)), mode)
    with socket.create_connection((HOST, s.port), timeout=DEFAULT_TIMEOUT) as raw:
        raw.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        assert raw.recv(100) == b""  # closed (OpenSSL: "http request"), no answer, no hang


def test_a_client_that_never_says_hello_is_closed_at_the_handshake_timeout(
    serve: list[Serving], mode: str, certs: Certs
) -> None:
    s = _serve(serve, ServerTls(str(certs.cert_a), str(certs.key_a)), mode, header_timeout_ms=300)
    with socket.create_connection((HOST, s.port), timeout=DEFAULT_TIMEOUT) as raw:
        assert raw.recv(100) == b""  # the socket timeout (10 s) would raise instead


def test_handshakes_count_in_max_connections_from_accept(
    serve: list[Serving], mode: str, certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    """Clients that never send a ClientHello hold a slot from accept: at the cap the next one
    is closed at once (long before the 60 s handshake limit, and the 10 s socket timeout
    would raise instead), logged and counted; once they leave, HTTPS is served again."""
    tls = ServerTls(str(certs.cert_a), str(certs.key_a))
    s = _serve(serve, tls, mode, max_connections=2, header_timeout_ms=60_000)
    bounds = s.sub.ctx.bounds
    silent = [socket.create_connection((HOST, s.port), timeout=DEFAULT_TIMEOUT) for _ in range(2)]
    try:
        wait_until(lambda: bounds.connections == 2, DEFAULT_TIMEOUT, "both handshakes counted")
        with (
            caplog.at_level(logging.WARNING, "infergate.http"),
            socket.create_connection((HOST, s.port), timeout=DEFAULT_TIMEOUT) as extra,
        ):
            assert extra.recv(100) == b""  # refused: closed at once
        wait_until(lambda: s.sub.stats.connections_refused, DEFAULT_TIMEOUT, "a refusal counted")
        assert s.sub.stats.connections_refused == 1
        assert "refusing new connections: 2 open, limits.max_connections = 2" in caplog.text
        assert bounds.connections == 2
    finally:
        for c in silent:
            c.close()
    wait_until(lambda: bounds.connections == 0, DEFAULT_TIMEOUT, "the silent clients' slots freed")
    with TlsConnection(s.port, certs.ca) as c:
        assert c.request("GET", "/hello").body == b"hello"
        assert bounds.connections == 1  # counted once, through the handshake and after it
    wait_until(lambda: bounds.connections == 0, DEFAULT_TIMEOUT, "the HTTPS client's slot freed")


def test_a_failed_handshake_gives_its_slot_back(
    serve: list[Serving], mode: str, certs: Certs
) -> None:
    s = _serve(serve, ServerTls(str(certs.cert_a), str(certs.key_a)), mode, max_connections=1)
    bounds = s.sub.ctx.bounds
    for _ in range(3):  # each would be refused if a slot leaked
        with socket.create_connection((HOST, s.port), timeout=DEFAULT_TIMEOUT) as raw:
            raw.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")  # not a ClientHello
            assert raw.recv(100) == b""
        wait_until(lambda: bounds.connections == 0, DEFAULT_TIMEOUT, "the slot given back")
    with TlsConnection(s.port, certs.ca) as c:
        assert c.request("GET", "/hello").body == b"hello"
    assert s.sub.stats.connections_refused == 0


def test_sighup_reload_serves_new_connections_and_keeps_open_ones(
    serve: list[Serving], mode: str, live: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    tls = ServerTls(str(live.cert_a), str(live.key_a))
    s = _serve(serve, tls, mode)
    with TlsConnection(s.port, live.ca) as kept:
        assert kept.request("GET", "/hello").status == 200
        assert kept.common_name == "server-a"
        shutil.copyfile(live.cert_b, live.cert_a)
        shutil.copyfile(live.key_b, live.key_a)
        assert tls.reload()
        assert presented_name(s.port, live.ca) == "server-b"
        assert kept.request("GET", "/hello").status == 200  # same connection, same certificate
        assert kept.common_name == "server-a"
        # a bad file: logged, the certificate served stays
        live.cert_a.write_text("not a certificate")
        with caplog.at_level(logging.ERROR, "infergate.tls"):
            assert not tls.reload()
        assert "TLS certificate not reloaded, the old one keeps serving" in caplog.text
        assert str(live.cert_a) in caplog.text
        assert presented_name(s.port, live.ca) == "server-b"
        assert kept.request("GET", "/hello").status == 200


def test_a_mismatched_key_on_reload_keeps_the_old_pair(serve: list[Serving], live: Certs) -> None:
    tls = ServerTls(str(live.cert_a), str(live.key_a))
    s = _serve(serve, tls, "reuseport")
    shutil.copyfile(live.cert_b, live.cert_a)  # the new certificate, the old key
    assert not tls.reload()
    assert presented_name(s.port, live.ca) == "server-a"


def test_a_client_that_never_reads_is_cut_at_the_send_timeout(
    serve: list[Serving], mode: str, certs: Certs
) -> None:
    """One 8 MB write: without ``SplitWrites`` uvloop's SSL transport hands it all to the TCP
    transport, whose buffer ``get_write_buffer_size`` does not count, and nothing is cut."""
    tls = ServerTls(str(certs.cert_a), str(certs.key_a))
    s = _serve(serve, tls, mode, send_timeout_ms=300, write_high_water=65536)
    with TlsConnection(s.port, certs.ca) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.send(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until(lambda: s.sub.stats.slow_readers_cut, DEFAULT_TIMEOUT, "the reader is cut")
    assert s.sub.stats.slow_readers_cut == 1


def test_a_client_that_reads_gets_the_whole_large_body(
    serve: list[Serving], mode: str, certs: Certs
) -> None:
    s = _serve(serve, ServerTls(str(certs.cert_a), str(certs.key_a)), mode)
    with TlsConnection(s.port, certs.ca) as c:
        for _ in range(2):
            r = c.request("GET", "/big")
            assert r.status == 200
            assert r.body == BIG


def test_split_writes_hands_large_writes_over_in_chunks() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.writes: list[bytes] = []

        def write(self, data: memoryview | bytes) -> None:
            self.writes.append(bytes(data))

        def __getattr__(self, name: str) -> object:
            return lambda *a: None

    inner = Recorder()
    t = SplitWrites(inner)
    t.write(b"small")
    t.write(bytearray(b"y" * (2 * WRITE_CHUNK + 1)))
    assert [len(w) for w in inner.writes] == [5, WRITE_CHUNK, WRITE_CHUNK, 1]
    assert b"".join(inner.writes[1:]) == b"y" * (2 * WRITE_CHUNK + 1)
