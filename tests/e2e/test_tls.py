"""HTTPS end to end: the real server with ``tls_cert_file`` / ``tls_key_file`` (certificates made
by ``openssl`` in ``tests.support.certs``), the official ``openai`` client over https, reload on
SIGHUP, start-up errors that name the file, and the admin listener with ``admin_tls``."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.certs import (
    Certs,
    TlsConnection,
    client_context,
    make_certs,
    presented_name,
    tls_1_1_client,
)
from tests.support.client import DEFAULT_TIMEOUT, HOST, RawConnection, metric
from tests.support.server import REPO_ROOT, ServerProcess
from tests.support.wait import wait_until

MODEL = """
[[models]]
name = "sim-embed"
executor = "sim"
dim = 8
base_us = 0
per_item_us = 0
"""


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def _config(folder: Path, certs: Certs, top: str = "") -> Path:
    """A config beside copies of the CA and certificate a (``tls/a.pem``, relative paths)."""
    tls = folder / "tls"
    shutil.copytree(certs.folder, tls)
    cfg = folder / "c.toml"
    cfg.write_text(
        f'listen = "127.0.0.1:0"\nsub_reactors = 1\ntls_cert_file = "tls/a.pem"\n'
        f'tls_key_file = "tls/a.key"\n{top}\n{MODEL}',
        encoding="utf-8",
    )
    return cfg


def test_the_openai_client_gets_embeddings_over_https(tmp_path: Path, certs: Certs) -> None:
    with ServerProcess(_config(tmp_path, certs)) as s:
        assert s.scheme == "https"
        assert s.ready_line.startswith(f"infergate {s.version} listening on https://127.0.0.1:")
        assert s.admin_scheme == "http"  # admin_tls is off
        with httpx.Client(verify=client_context(certs.ca)) as http:
            client = openai.OpenAI(
                base_url=f"https://127.0.0.1:{s.port}/v1", api_key="x", http_client=http
            )
            out = client.embeddings.create(model="sim-embed", input=["one", "two"])
        assert [len(d.embedding) for d in out.data] == [8, 8]
        with RawConnection(s.admin_port or 0) as c:
            assert c.request("GET", "/healthz").status == 200


def test_old_protocols_plain_http_and_silent_clients_are_refused(
    tmp_path: Path, certs: Certs
) -> None:
    with ServerProcess(_config(tmp_path, certs, "[limits]\nheader_timeout_ms = 300")) as s:
        with TlsConnection(s.port, certs.ca) as c:  # TLS 1.3 by default
            assert c.request("GET", "/healthz").status == 200
        tls12 = client_context(certs.ca)
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        with (
            socket.create_connection((HOST, s.port), timeout=DEFAULT_TIMEOUT) as raw,
            tls12.wrap_socket(raw, server_hostname="localhost") as sock,
        ):
            assert sock.version() == "TLSv1.2"
        old = tls_1_1_client()
        with (
            socket.create_connection((HOST, s.port), timeout=DEFAULT_TIMEOUT) as raw,
            pytest.raises(ssl.SSLError),
        ):
            old.wrap_socket(raw)
        with socket.create_connection((HOST, s.port), timeout=DEFAULT_TIMEOUT) as raw:
            raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert raw.recv(100) == b""  # closed at once: no answer, no hang
        with socket.create_connection((HOST, s.port), timeout=DEFAULT_TIMEOUT) as raw:
            assert raw.recv(100) == b""  # no ClientHello: closed at the 300 ms handshake limit
        with TlsConnection(s.port, certs.ca) as c:
            assert c.request("GET", "/healthz").status == 200


@pytest.mark.parametrize("mode", ["reuseport", "handoff"])
def test_silent_tls_clients_count_in_the_connection_cap(
    tmp_path: Path, certs: Certs, mode: str
) -> None:
    """Two clients that never send a ClientHello fill ``max_connections = 2``: the third (accepted
    after them: one sub-reactor, one accept queue) is closed at once, not at the 60 s handshake
    limit (the 10 s socket timeout would raise first); it is logged and counted."""
    top = f'accept_mode = "{mode}"\n[limits]\nmax_connections = 2\nheader_timeout_ms = 60000'
    with ServerProcess(_config(tmp_path, certs, top)) as s:
        silent = [socket.create_connection((HOST, s.port), timeout=DEFAULT_TIMEOUT)]
        silent.append(socket.create_connection((HOST, s.port), timeout=DEFAULT_TIMEOUT))
        try:
            with socket.create_connection((HOST, s.port), timeout=DEFAULT_TIMEOUT) as extra:
                assert extra.recv(100) == b""
        finally:
            for c in silent:
                c.close()

        def scrape() -> str | None:  # refused until the server has seen both leave
            try:
                with TlsConnection(s.port, certs.ca) as c:
                    r = c.request("GET", "/metrics", headers=[("Connection", "close")])
                    return r.body.decode() if r.status == 200 else None
            except (ConnectionError, ssl.SSLError):
                return None

        text = wait_until(scrape, DEFAULT_TIMEOUT, "an HTTPS scrape is served")
        assert metric(text, "infergate_connections_refused_total") >= 1
        assert "refusing new connections: 2 open, limits.max_connections = 2" in s.log_text()


def test_sighup_serves_a_new_certificate_to_new_connections(tmp_path: Path, certs: Certs) -> None:
    with ServerProcess(_config(tmp_path, certs)) as s:
        live = tmp_path / "tls"
        with TlsConnection(s.port, certs.ca) as kept:
            assert kept.request("GET", "/healthz").status == 200
            assert kept.common_name == "server-a"
            shutil.copyfile(certs.cert_b, live / "a.pem")
            shutil.copyfile(certs.key_b, live / "a.key")
            s.signal(signal.SIGHUP)
            wait_until(
                lambda: presented_name(s.port, certs.ca) == "server-b",
                DEFAULT_TIMEOUT,
                "a new connection is served the new certificate",
            )
            r = kept.request("GET", "/healthz")  # the keep-alive connection goes on
            assert r.status == 200
            assert kept.common_name == "server-a"
            # a certificate that does not match the key: logged, the last good pair serves on
            shutil.copyfile(certs.cert_a, live / "a.pem")
            s.signal(signal.SIGHUP)
            wait_until(
                lambda: "TLS certificate not reloaded" in s.log_text(),
                DEFAULT_TIMEOUT,
                "the bad certificate is logged",
            )
            assert "does not match the certificate" in s.log_text()
            assert presented_name(s.port, certs.ca) == "server-b"
            assert kept.request("GET", "/healthz").status == 200


def test_the_admin_listener_serves_https_with_admin_tls(tmp_path: Path, certs: Certs) -> None:
    with ServerProcess(_config(tmp_path, certs, "admin_tls = true")) as s:
        assert s.admin_scheme == "https"
        assert s.admin_port is not None
        with TlsConnection(s.admin_port, certs.ca) as c:
            r = c.request("GET", "/admin/models")
            assert r.status == 200, r.body
            assert [m["name"] for m in r.json()["models"]] == ["sim-embed"]
        with TlsConnection(s.port, certs.ca) as c:
            assert c.request("GET", "/admin/models").status == 404


def _start(config: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    argv = [sys.executable, "-m", "infergate.app", "--config", str(config), "--headless",
            "--listen", "127.0.0.1:0", "--admin-listen", ""]  # fmt: skip
    return subprocess.run(
        argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("cert", "key", "problem"),
    [
        ("tls/missing.pem", "tls/a.key", "cannot read tls_cert_file {d}/missing.pem: No such file"),
        ("tls/a.pem", "tls/b.key", "tls_key_file {d}/b.key does not match the certificate in"),
        ("tls/a.pem", "tls/empty.key", "tls_key_file {d}/empty.key is not a PEM private key"),
        ("tls", "tls/a.key", "cannot read tls_cert_file {d}: it is a folder"),
        ("tls/fifo.pem", "tls/a.key", "cannot read tls_cert_file {d}/fifo.pem: not a regular"),
    ],
)
def test_a_certificate_that_cannot_be_used_stops_the_start_naming_it(
    tmp_path: Path, certs: Certs, cert: str, key: str, problem: str
) -> None:
    cfg = _config(tmp_path, certs)
    (tmp_path / "tls" / "empty.key").write_text("")
    os.mkfifo(tmp_path / "tls" / "fifo.pem")  # unreadable even for root: no writer, ever
    text = cfg.read_text().replace('"tls/a.pem"', f'"{cert}"').replace('"tls/a.key"', f'"{key}"')
    cfg.write_text(text)
    done = _start(cfg)
    assert done.returncode == 2, done.stderr
    assert problem.format(d=tmp_path / "tls") in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file whatever its mode")
def test_an_unreadable_key_stops_the_start_naming_it(tmp_path: Path, certs: Certs) -> None:
    cfg = _config(tmp_path, certs)
    (tmp_path / "tls" / "a.key").chmod(0)
    done = _start(cfg)
    assert done.returncode == 2
    assert f"cannot read tls_key_file {tmp_path}/tls/a.key: Permission denied" in done.stderr


def test_only_one_of_the_pair_is_a_config_error(tmp_path: Path, certs: Certs) -> None:
    cfg = _config(tmp_path, certs)
    cfg.write_text(cfg.read_text().replace('tls_key_file = "tls/a.key"', ""))
    done = _start(cfg)
    assert done.returncode == 2
    assert "tls_cert_file and tls_key_file go together" in done.stderr
