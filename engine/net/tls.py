"""HTTPS for the listeners: the server's TLS context, checked at start, swapped on SIGHUP.

Modern defaults: TLS 1.2 and 1.3 only, the ``ssl`` module's server cipher list (forward secret
AEAD suites), no compression, no renegotiation, ALPN ``http/1.1``.

Reload: a new certificate is loaded into a *new* context, built and checked off the reactors,
and ``ServerTls.current`` is swapped (one reference). The listeners keep the context they were
given at start, whose ``sni_callback`` runs in every handshake (OpenSSL calls it whether or not
the client sent a server name) and moves the handshake to ``current``. Loading into the live
context instead would also reach new handshakes on uvloop (checked), but OpenSSL does not make
``SSL_CTX_use_certificate`` safe against ``SSL_new`` on another thread, and a key that fails to
load would leave that context with the new certificate and no key. Established connections
keep the certificate they were opened with.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import ssl
import stat
from collections.abc import Callable
from typing import Any

from infergate.engine.config import ServerConfig

log = logging.getLogger("infergate.tls")

TLS_SHUTDOWN_S = 3.0
"""How long a closing TLS connection may take to flush its last bytes and exchange
``close_notify`` before it is cut (uvloop's ``ssl_shutdown_timeout``, 30 s by default). Idle
keep-alive clients rarely answer ``close_notify`` (they are not reading), so this is also how
long each one holds its descriptor after we close it, and it adds to a graceful drain: it must
stay well under ``drain_timeout_ms``. The TLS handshake gets ``header_timeout_ms``."""
ALPN = ["http/1.1"]
WRITE_CHUNK = 64 * 1024
"""Largest write handed to uvloop's SSL transport at once (see ``SplitWrites``)."""
_PEM_CERT = b"-----BEGIN CERTIFICATE-----"
_PEM_KEY = b"PRIVATE KEY-----"
_MAX_PEM_BYTES = 1 << 20
_MISMATCH = frozenset({"KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED"})


class TlsError(Exception):
    """The certificate or key cannot be used; the message names the file and the problem."""


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context serving ``cert_file`` (PEM chain, server certificate first) with
    ``key_file`` (PEM, unencrypted).

    Raises:
        TlsError: a file is missing, unreadable, not PEM, not a certificate or key, the key is
            encrypted, or it does not match the certificate; the message names the file.
    """
    cert = _read_pem(cert_file, "tls_cert_file", _PEM_CERT, "a PEM certificate")
    _read_pem(key_file, "tls_key_file", _PEM_KEY, "a PEM private key")
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cadata=cert.decode("ascii", "replace"))
    except (ssl.SSLError, ValueError) as e:
        raise TlsError(
            f"tls_cert_file {cert_file}: not a valid certificate ({_reason(e)})"
        ) from None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    ctx.set_alpn_protocols(ALPN)
    try:
        ctx.load_cert_chain(cert_file, key_file, password=_no_password(key_file))
    except TlsError:
        raise
    except ssl.SSLError as e:
        if e.reason in _MISMATCH:  # another key, or one of another type (EC vs RSA)
            raise TlsError(
                f"tls_key_file {key_file} does not match the certificate in {cert_file}"
            ) from None
        raise TlsError(
            f"tls_key_file {key_file}: not a usable private key ({_reason(e)})"
        ) from None
    except OSError as e:  # the file changed between the checks and the load
        raise TlsError(f"cannot read {cert_file} or {key_file}: {e.strerror}") from None
    return ctx


def fingerprint(cert_file: str) -> str:
    """SHA-256 of the first certificate in ``cert_file`` (DER), as ``AB:CD:...`` (first 8
    bytes): enough to tell in a log line which certificate is being served."""
    with open(cert_file, "rb") as f:
        pem = f.read(_MAX_PEM_BYTES).decode("ascii", "replace")
    end = "-----END CERTIFICATE-----"
    first = pem[pem.index(_PEM_CERT.decode()) : pem.index(end) + len(end)]
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(first)).digest()
    return ":".join(f"{b:02X}" for b in digest[:8])


class ServerTls:
    """The TLS side of the listeners: ``context`` goes to every listener at start; each
    handshake is moved to ``current``, which ``reload`` replaces.

    Thread-safety: ``reload`` runs on the reload thread (one at a time); handshakes on any
    sub-reactor only read ``current`` (one reference).
    """

    def __init__(self, cert_file: str, key_file: str) -> None:
        """Raises TlsError (see ``server_context``)."""
        self.cert_file = cert_file
        self.key_file = key_file
        self.current = server_context(cert_file, key_file)
        self.context = self.current
        self.context.sni_callback = self._pick
        self.reloads = 0
        log.info("TLS: serving %s (sha256 %s...)", cert_file, fingerprint(cert_file))
        if os.stat(key_file).st_mode & 0o004:
            log.warning("TLS: the key %s is readable by every user; chmod 600 it", key_file)

    @classmethod
    def from_config(cls, config: ServerConfig, base_dir: str) -> ServerTls | None:
        """The pair ``tls_cert_file`` / ``tls_key_file`` of ``config`` (relative to
        ``base_dir``), or None when they are not set: what start-up and ``--check-config``
        load. Raises TlsError (see ``server_context``)."""
        if not config.tls_cert_file:
            return None
        return cls(
            os.path.join(base_dir, config.tls_cert_file),
            os.path.join(base_dir, config.tls_key_file),
        )

    def _pick(
        self, obj: ssl.SSLObject | ssl.SSLSocket, _name: str | None, ctx: ssl.SSLContext
    ) -> None:
        """In the handshake (OpenSSL's servername callback): serve the current certificate."""
        current = self.current
        if current is not ctx:
            obj.context = current

    def reload(self) -> bool:
        """Re-read both files into a new context and serve it to new connections; a file that
        cannot be used is logged and the old certificate keeps serving. Returns whether the new
        one is served."""
        try:
            new = server_context(self.cert_file, self.key_file)
            shown = fingerprint(self.cert_file)
        except (TlsError, OSError, ValueError) as e:
            log.error("SIGHUP: TLS certificate not reloaded, the old one keeps serving: %s", e)
            return False
        self.current = new
        self.reloads += 1
        log.info("SIGHUP: TLS certificate reloaded from %s (sha256 %s...)", self.cert_file, shown)
        return True


def _read_pem(path: str, key: str, marker: bytes, what: str) -> bytes:
    """The file's bytes, or a TlsError naming ``key``, the file and the problem."""
    try:  # non-blocking: a FIFO must not hang the start or the reload thread
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise TlsError(f"cannot read {key} {path}: {e.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "it is a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise TlsError(f"cannot read {key} {path}: {kind}")
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(_MAX_PEM_BYTES + 1)
        except OSError as e:
            raise TlsError(f"cannot read {key} {path}: {e.strerror}") from None
    if len(data) > _MAX_PEM_BYTES:
        raise TlsError(f"{key} {path} is larger than {_MAX_PEM_BYTES // 1024} KiB; not {what}")
    if marker not in data:
        raise TlsError(f"{key} {path} is not {what} (no '{marker.decode().strip('-')}' block)")
    if key == "tls_key_file" and b"ENCRYPTED" in data:
        raise TlsError(f"{key} {path} is encrypted; give an unencrypted key")
    return data


def _no_password(key_file: str) -> Callable[[], str]:
    def refuse() -> str:
        raise TlsError(f"tls_key_file {key_file} is encrypted; give an unencrypted key")

    return refuse


def _reason(e: Exception) -> str:
    reason = getattr(e, "reason", None)
    return str(reason).lower().replace("_", " ") if reason else str(e)


class Handshake(asyncio.Protocol):
    """Stands in for the HTTP protocol while a TLS handshake runs, so that the connection holds
    its slot in ``limits.max_connections`` from accept (the reactor reserved it) and not only
    from ``connection_made``, which uvloop calls once the handshake is over.

    At ``connection_made`` the slot is given back, the transport is switched to the HTTP
    protocol (``set_protocol``: later callbacks go straight to it) and the HTTP protocol's
    ``connection_made`` counts the connection again, as for plain HTTP. Between the two another
    sub-reactor may take the slot: then this connection is refused after its handshake; the
    count never exceeds the cap. A handshake that fails or times out never reaches
    ``connection_made`` (uvloop calls no protocol method then): the reactor calls ``give_back``
    when ``connect_accepted_socket`` ends. ``give_back`` releases at most once.
    """

    __slots__ = ("_inner", "_release")

    def __init__(self, inner: asyncio.Protocol, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release: Callable[[], None] | None = release

    def give_back(self) -> None:
        """Release the reserved slot, if not done yet."""
        release = self._release
        if release is not None:
            self._release = None
            release()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.give_back()
        transport.set_protocol(self._inner)
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.give_back()


class SplitWrites(asyncio.Transport):
    """uvloop's SSL transport, with large writes handed over in ``WRITE_CHUNK`` pieces.

    One ``write`` is encrypted at once and passed whole to the TCP transport below, whose
    buffer ``get_write_buffer_size`` does not count: a 8 MB response to a client that reads
    nothing showed 0 unsent bytes, so the send timeout, ``write_high_water`` and
    ``max_unsent_bytes`` never saw it (checked with uvloop 0.23). In pieces, once the TCP
    transport passes its own high-water mark (64 KiB) the rest waits encrypted in the SSL
    layer, where it is counted. Every other method is the SSL transport's own (bound once).
    The reactor installs it as ``HttpContext.wrap_transport``.
    """

    __slots__ = (
        "_transport",
        "abort",
        "can_write_eof",
        "close",
        "get_extra_info",
        "get_write_buffer_size",
        "is_closing",
        "pause_reading",
        "resume_reading",
        "set_write_buffer_limits",
        "write_eof",
    )

    def __init__(self, transport: Any) -> None:
        super().__init__()
        self._transport = transport
        for name in self.__slots__[1:]:
            setattr(self, name, getattr(transport, name))

    def write(self, data: bytes | bytearray | memoryview) -> None:
        write = self._transport.write
        if len(data) <= WRITE_CHUNK:
            write(data)
            return
        view = memoryview(bytes(data) if isinstance(data, bytearray) else data)
        for i in range(0, len(view), WRITE_CHUNK):
            write(view[i : i + WRITE_CHUNK])
