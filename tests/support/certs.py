"""Test certificates made with the ``openssl`` command: a CA and two server certificates for
127.0.0.1 and localhost, and TLS clients that trust that CA."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

from tests.support.client import DEFAULT_TIMEOUT, HOST, RawConnection

OPENSSL = shutil.which("openssl")
SAN = "subjectAltName=IP:127.0.0.1,DNS:localhost"


@dataclass(frozen=True)
class Certs:
    """``a`` and ``b``: two server certificates (CN ``server-a`` / ``server-b``, serials 10
    and 11) signed by one CA; ``other_key``: a key that matches neither."""

    folder: Path
    ca: Path
    cert_a: Path
    key_a: Path
    cert_b: Path
    key_b: Path
    other_key: Path


def _openssl(*args: str | Path) -> None:
    assert OPENSSL is not None, "the openssl command is needed for the TLS tests"
    subprocess.run(
        [OPENSSL, *map(str, args)], check=True, capture_output=True, timeout=DEFAULT_TIMEOUT
    )


def _ec_key(path: Path) -> Path:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
    return path


def make_certs(folder: Path) -> Certs:
    """Write a CA, two server certificates and a stray key into ``folder`` (EC P-256 keys:
    generated in milliseconds)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = _ec_key(folder / "ca.key")
    ca = folder / "ca.pem"
    _openssl("req", "-x509", "-new", "-key", ca_key, "-out", ca, "-days", "2",
             "-subj", "/CN=infergate test CA")  # fmt: skip
    ext = folder / "san.ext"
    ext.write_text(SAN + "\n", encoding="ascii")
    made: list[Path] = []
    for name, serial in (("a", "10"), ("b", "11")):
        key = _ec_key(folder / f"{name}.key")
        csr = folder / f"{name}.csr"
        cert = folder / f"{name}.pem"
        _openssl("req", "-new", "-key", key, "-out", csr, "-subj", f"/CN=server-{name}")
        _openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-set_serial", serial,
                 "-out", cert, "-days", "2", "-extfile", ext)  # fmt: skip
        made += [cert, key]
    other = _ec_key(folder / "other.key")
    return Certs(folder, ca, made[0], made[1], made[2], made[3], other)


def client_context(ca: Path) -> ssl.SSLContext:
    """A client context that trusts only ``ca`` and checks the host name."""
    return ssl.create_default_context(cafile=str(ca))


def tls_1_1_client() -> ssl.SSLContext:
    """A client that offers TLS 1.0 and 1.1 only (no verification): the refusal it meets comes
    from the server, not from its own OpenSSL security level."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # naming TLSVersion.TLSv1_1 warns
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def common_name(sock: ssl.SSLSocket) -> str:
    """The CN of the certificate the server presented on ``sock``."""
    cert = sock.getpeercert()
    assert cert is not None
    names = dict(pair[0] for pair in cert["subject"])  # type: ignore[misc]
    return str(names["commonName"])


class TlsConnection(RawConnection):
    """``RawConnection`` over TLS, verified against ``ca`` for ``localhost``."""

    def __init__(self, port: int, ca: Path, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(port, timeout)
        self.sock: ssl.SSLSocket = client_context(ca).wrap_socket(
            self.sock, server_hostname="localhost"
        )

    def __enter__(self) -> TlsConnection:
        return self

    def _recv(self) -> bytes:
        try:
            return self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError):
            return b""

    @property
    def common_name(self) -> str:
        return common_name(self.sock)


def presented_name(port: int, ca: Path) -> str:
    """Open a new TLS connection and return the CN the server presents on it."""
    with (
        socket.create_connection((HOST, port), timeout=DEFAULT_TIMEOUT) as raw,
        client_context(ca).wrap_socket(raw, server_hostname="localhost") as sock,
    ):
        return common_name(sock)
