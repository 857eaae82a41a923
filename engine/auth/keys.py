"""API keys: the keys file (``[auth] keys_file``), the immutable :class:`KeyStore` that the
request path authenticates against, and the file edits behind ``infergate keys``.

The file is TOML, one ``[[keys]]`` table per key::

    [[keys]]
    name = "team-a"
    sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    models = ["minilm", "rerank"]      # omitted: every model
    max_priority = 2                   # asks for 1 are served at 2
    requests_per_second = 20.0         # 0 = unlimited
    requests_burst = 40
    items_per_minute = 60000.0         # items, or tokens for text models; 0 = unlimited
    items_burst = 5000
    max_concurrency = 8                # 0 = unlimited
    weight = 1.0                       # fair-share weight

The file holds the SHA-256 of each secret, never the secret: ``infergate keys add`` prints the
secret once. A reload (SIGHUP, admin API) builds a new :class:`KeyStore` and swaps the
reference that the request path reads; a store is never changed in place.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import math
import os
import secrets
import tempfile
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

MAX_KEYS_FILE_BYTES = 8 << 20
"""A keys file larger than this is refused (about 25,000 keys)."""
MAX_SECRET_BYTES = 512
"""A presented secret longer than this is refused without hashing (ours are 46 bytes)."""
SECRET_PREFIX = "ig-"
"""Secrets made by :func:`add_key` start with this, so leaked ones are easy to grep for."""

KeyName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
Sha256Hex = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-fA-F]{64}$")]
ModelName = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Rate = Annotated[float, msgspec.Meta(ge=0, le=1e9)]
Burst = Annotated[int, msgspec.Meta(ge=0, le=1_000_000_000)]


class KeysFileError(Exception):
    """The keys file cannot be used, or an edit is refused; the message names the file and,
    for a bad value, the key path (``$.keys[2].sha256``)."""


class Key(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One API key: who it is, what it may use, and its limits. Immutable."""

    name: KeyName
    """Unique; the tenant's name in logs, metrics and fair sharing."""
    sha256: Sha256Hex
    """Hex SHA-256 of the secret."""
    models: Annotated[tuple[ModelName, ...], msgspec.Meta(min_length=1)] | None = None
    """Models this key may use; omitted (None) means every model."""
    max_priority: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1
    """Highest priority level it may ask for (1 is the highest); asks above it are lowered."""
    requests_per_second: Rate = 0.0
    """Refill rate of the request bucket; 0 = unlimited."""
    requests_burst: Burst = 0
    """Capacity of the request bucket (requests allowed at once after a quiet spell)."""
    items_per_minute: Rate = 0.0
    """Refill rate of the item bucket (items, or tokens for text models); 0 = unlimited."""
    items_burst: Burst = 0
    """Capacity of the item bucket; also the largest request (in items) the key may send."""
    max_concurrency: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 0
    """Requests of this key in flight at once on this box; 0 = unlimited."""
    weight: Annotated[float, msgspec.Meta(gt=0, le=1000)] = 1.0
    """Fair-share weight inside a priority level."""

    def __post_init__(self) -> None:
        if self.requests_per_second > 0 and self.requests_burst < 1:
            raise ValueError("requests_burst must be at least 1 when requests_per_second is set")
        if self.items_per_minute > 0 and self.items_burst < 1:
            raise ValueError("items_burst must be at least 1 when items_per_minute is set")

    @property
    def digest(self) -> bytes:
        """The stored SHA-256 as 32 bytes."""
        return bytes.fromhex(self.sha256)


class KeysFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The whole keys file."""

    keys: tuple[Key, ...] = ()

    def __post_init__(self) -> None:
        names = [k.name for k in self.keys]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"key names must be unique: {', '.join(dupes)}")
        digests = [k.sha256.lower() for k in self.keys]
        shared = sorted({k.name for k in self.keys if digests.count(k.sha256.lower()) > 1})
        if shared:
            raise ValueError(f"keys {', '.join(shared)} have the same sha256 (one secret)")


def hash_secret(secret: str | bytes) -> str:
    """Hex SHA-256 of a secret, as stored in the keys file."""
    raw = secret.encode() if isinstance(secret, str) else secret
    return hashlib.sha256(raw).hexdigest()


def presented_secret(authorization: bytes | None, x_api_key: bytes | None) -> bytes | None:
    """The secret a client presents: ``Authorization: Bearer SECRET`` (what the ``openai``
    SDK sends as ``api_key``), else ``X-Api-Key: SECRET``; None when neither carries one.

    Thread-safe: a pure function.
    """
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(b" ")
        token = token.strip()
        if scheme.lower() == b"bearer" and token:
            return token
    if x_api_key is not None:
        token = x_api_key.strip()
        if token:
            return token
    return None


class KeyStore:
    """An immutable snapshot of the configured keys.

    Thread-safe: never changed after construction, so any reactor thread may read it; a
    reload builds a new store and swaps the reference the request path reads (one attribute
    assignment, atomic under the GIL).
    """

    __slots__ = ("_by_digest", "_by_name", "keys", "source")

    def __init__(self, keys: Sequence[Key] = (), source: str = "") -> None:
        checked = msgspec.convert({"keys": [msgspec.to_builtins(k) for k in keys]}, KeysFile)
        self.keys: tuple[Key, ...] = checked.keys
        self.source = source
        """The file it came from ("" when built in code)."""
        self._by_digest: dict[bytes, tuple[bytes, Key]] = {
            k.digest: (k.digest, k) for k in self.keys
        }
        self._by_name: dict[str, Key] = {k.name: k for k in self.keys}

    @classmethod
    def load(cls, path: str) -> KeyStore:
        """The keys of ``path``.

        Raises:
            KeysFileError: unreadable file, TOML syntax error, unknown field or bad value.
        """
        return cls(read_keys_file(path).keys, path)

    @property
    def enabled(self) -> bool:
        """True when at least one key is configured (then every request needs one)."""
        return bool(self.keys)

    def names(self) -> tuple[str, ...]:
        return tuple(self._by_name)

    def get(self, name: str) -> Key | None:
        return self._by_name.get(name)

    def authenticate(self, secret: bytes) -> Key | None:
        """The key whose stored SHA-256 matches ``secret``, or None.

        Thread-safe: reads only.
        """
        if len(secret) > MAX_SECRET_BYTES:
            return None
        digest = hashlib.sha256(secret).digest()
        # Found by a dict lookup on the digest rather than by comparing against every key:
        # the lookup's timing depends only on the digest of what the client sent, which the
        # client can compute itself, and a digest learnt from a timing leak would still not
        # reveal a 256-bit random secret (SHA-256 is preimage resistant); a scan would cost
        # O(keys) per request. The match is then confirmed with compare_digest, so the final
        # decision never rests on a short-circuiting byte comparison (dict equality is one).
        found = self._by_digest.get(digest)
        if found is None or not hmac.compare_digest(digest, found[0]):
            return None
        return found[1]

    def authenticate_headers(
        self, authorization: bytes | None, x_api_key: bytes | None
    ) -> Key | None:
        """:meth:`authenticate` of the secret in the request headers; None without one."""
        secret = presented_secret(authorization, x_api_key)
        return None if secret is None else self.authenticate(secret)

    from_request_headers = staticmethod(presented_secret)

    @staticmethod
    def may_use(key: Key, model: str) -> bool:
        """Whether ``key`` may send requests to ``model``."""
        return key.models is None or model in key.models

    @staticmethod
    def effective_priority(key: Key, requested: int) -> tuple[int, bool]:
        """The level a request of ``key`` asking for ``requested`` is served at, and whether
        it was lowered (1 is the highest level; a key capped at 2 asking for 1 gets 2)."""
        if requested < key.max_priority:
            return key.max_priority, True
        return requested, False


@dataclass(frozen=True, slots=True)
class KeyChanges:
    """What a reload changed, by key name (for the audit line)."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


def diff_stores(old: KeyStore, new: KeyStore) -> KeyChanges:
    """Names added, removed and changed (any field, the secret included) from old to new."""
    old_names, new_names = set(old.names()), set(new.names())
    return KeyChanges(
        added=tuple(sorted(new_names - old_names)),
        removed=tuple(sorted(old_names - new_names)),
        changed=tuple(sorted(n for n in old_names & new_names if old.get(n) != new.get(n))),
    )


# -- the file ---------------------------------------------------------------------------------


def read_keys_file(path: str, missing_ok: bool = False) -> KeysFile:
    """Parse and validate ``path``; with ``missing_ok`` an absent file is an empty one.

    Raises:
        KeysFileError: naming the file and, for a bad value, the key path.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEYS_FILE_BYTES + 1)
    except FileNotFoundError:
        if missing_ok:
            return KeysFile()
        raise KeysFileError(f"cannot read keys file {path}: no such file") from None
    except OSError as e:
        raise KeysFileError(f"cannot read keys file {path}: {e.strerror}") from None
    if len(data) > MAX_KEYS_FILE_BYTES:
        raise KeysFileError(f"keys file {path} is larger than {MAX_KEYS_FILE_BYTES} bytes")
    try:
        raw: dict[str, Any] = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise KeysFileError(f"keys file {path} is not UTF-8 (byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise KeysFileError(f"keys file {path} is not valid TOML: {e}") from None
    try:
        return msgspec.convert(raw, KeysFile)
    except msgspec.ValidationError as e:
        raise KeysFileError(f"keys file {path}: {e}") from None


def list_keys(path: str) -> tuple[Key, ...]:
    """The keys of ``path`` (an absent file has none).

    Raises:
        KeysFileError: the file exists but cannot be used.
    """
    return read_keys_file(path, missing_ok=True).keys


def add_key(
    path: str,
    name: str,
    models: Sequence[str] | None = None,
    max_priority: int = 1,
    requests_per_second: float = 0.0,
    requests_burst: int = 0,
    items_per_minute: float = 0.0,
    items_burst: int = 0,
    max_concurrency: int = 0,
    weight: float = 1.0,
) -> str:
    """Add a key named ``name`` to ``path`` (created if absent) and return its new secret.

    The secret is not stored anywhere: only its SHA-256 goes into the file, which is
    rewritten atomically with mode 0600.

    Thread-safe: edits of one file are serialised by an advisory lock (``flock``) on a
    sidecar ``.lock`` file, across processes too.

    Raises:
        KeysFileError: a bad value, a name already in the file, or an unusable file.
    """
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    entry: dict[str, Any] = {
        "name": name,
        "sha256": hash_secret(secret),
        "max_priority": max_priority,
        "requests_per_second": requests_per_second,
        "requests_burst": requests_burst,
        "items_per_minute": items_per_minute,
        "items_burst": items_burst,
        "max_concurrency": max_concurrency,
        "weight": weight,
    }
    if models is not None:
        entry["models"] = list(models)
    try:
        key = msgspec.convert(entry, Key)
    except msgspec.ValidationError as e:
        raise KeysFileError(f"key {name!r}: {e}") from None
    with _locked(path):
        current = read_keys_file(path, missing_ok=True)
        if any(k.name == name for k in current.keys):
            raise KeysFileError(f"keys file {path} already has a key named {name!r}")
        _write_keys_file(path, (*current.keys, key))
    return secret


def remove_key(path: str, name: str) -> Key:
    """Remove the key named ``name`` from ``path`` and return it.

    Thread-safe: as :func:`add_key`.

    Raises:
        KeysFileError: no such key, or an unusable file.
    """
    with _locked(path):
        current = read_keys_file(path)
        kept = tuple(k for k in current.keys if k.name != name)
        if len(kept) == len(current.keys):
            raise KeysFileError(f"keys file {path} has no key named {name!r}")
        _write_keys_file(path, kept)
    return next(k for k in current.keys if k.name == name)


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    folder, base = os.path.split(os.path.abspath(path))
    lock_path = os.path.join(folder, f".{base}.lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise KeysFileError(f"cannot lock keys file {path} ({lock_path}): {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # also releases the lock


def _write_keys_file(path: str, keys: Sequence[Key]) -> None:
    """Write ``keys`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    text = render_keys_file(keys)
    msgspec.convert(tomllib.loads(text), KeysFile)  # what we write must read back
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=folder)
    except OSError as e:
        raise KeysFileError(f"cannot write keys file {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise KeysFileError(f"cannot write keys file {path}: {e.strerror}") from None
    with contextlib.suppress(OSError):  # make the rename durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


# -- TOML writing: only what a Key holds (strings, ints, finite floats, lists of strings) ----

_HEADER = (
    "# API keys of infergate ([auth] keys_file). Edited by `infergate keys add|remove`,\n"
    "# which rewrite the whole file (comments are not kept). Only the SHA-256 of each secret\n"
    "# is stored here. Running servers reload it on SIGHUP.\n"
)
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f"}
_ESCAPES["\r"] = "\\r"


def toml_string(s: str) -> str:
    """``s`` as a TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for ch in s:
        esc = _ESCAPES.get(ch)
        if esc is not None:
            out.append(esc)
        elif ch < " " or ch == "\x7f":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(v: object) -> str:
    """A TOML value for a str, int, finite float or list of strings."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"not a finite number: {v}")
        return repr(v)  # shortest round-tripping form, always with '.' or 'e'
    if isinstance(v, list | tuple) and all(isinstance(x, str) for x in v):
        return "[" + ", ".join(toml_string(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to the keys file")


def render_keys_file(keys: Sequence[Key]) -> str:
    """The TOML text of a keys file holding ``keys`` (every field written, ``models`` only
    when restricted)."""
    parts = [_HEADER]
    for key in keys:
        lines = ["", "[[keys]]"]
        for field in key.__struct_fields__:
            value = getattr(key, field)
            if value is None:
                continue
            lines.append(f"{field} = {toml_value(value)}")
        parts.append("\n".join(lines) + "\n")
    return "".join(parts)
