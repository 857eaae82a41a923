"""Loading and validating the TOML config file into the engine's typed structs."""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass
from typing import Any

import msgspec

from infergate.engine.config import ServerConfig
from infergate.engine.models.repository import (
    RepoEntry,
    RepositoryError,
    merge_models,
    scan_repository,
)

MAX_CONFIG_BYTES = 1 << 20
"""A config file is a few kB; anything over 1 MiB is refused unread (a path replaced by a
device or a log file must not pin the reactor that reloads it on SIGHUP, nor its memory)."""


class ConfigError(Exception):
    """The config cannot be used; the message names the file and the offending key."""


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    server: ServerConfig
    static_root: str | None
    """Absolute static folder, or None when the default folder does not exist."""
    source: str
    """The file it came from, or ``<built-in default> (PATH)``."""
    base_dir: str
    """Folder that relative paths in the config are relative to."""
    model_repository: str | None = None
    """Absolute path of the model repository, None when there is none."""
    repository: tuple[RepoEntry, ...] = ()
    """The repository's models as scanned (their configs are in ``server.models`` too)."""


# realpath: imported through the infergate/app link, the built-in config still sits beside
# the repository's public/ (its static_root is "../public")
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.realpath(__file__)), "default.toml")
"""The built-in config (``configs/default.toml`` links to it); used when no --config is given,
by the package and the PyInstaller executable alike."""


def load_config(path: str | None, overrides: dict[str, Any] | None = None) -> LoadedConfig:
    """Read ``path`` (or the built-in default config), apply CLI ``overrides``, validate.

    Raises:
        ConfigError: unreadable file, not a regular file, over ``MAX_CONFIG_BYTES``, not
            UTF-8, TOML syntax error, unknown key or bad value. Nothing else escapes: SIGHUP
            reloads rely on it to change nothing on a bad file.
    """
    builtin = path is None
    path = path or DEFAULT_CONFIG
    source = f"<built-in default> ({path})" if builtin else path
    base_dir = os.path.dirname(os.path.abspath(path))
    raw = _parse(path, _read_capped(path))
    explicit_static = "static_root" in raw and not builtin
    raw.update(overrides or {})
    try:
        server = msgspec.convert(raw, ServerConfig)
    except msgspec.ValidationError as e:
        raise ConfigError(f"config {source}: {e}") from None
    server, repo_path, entries = _with_repository(server, base_dir, source)
    if server.tls_cert_file:  # checked (readable, PEM, key matches) by engine.net.tls at start
        cert, key = (os.path.join(base_dir, p) for p in (server.tls_cert_file, server.tls_key_file))
        server = msgspec.structs.replace(server, tls_cert_file=cert, tls_key_file=key)
    resolved = os.path.normpath(os.path.join(base_dir, server.static_root))
    static_root: str | None = resolved
    if not os.path.isdir(resolved):
        if explicit_static:
            raise ConfigError(
                f"config {source}: static_root {server.static_root!r} is not a folder "
                f"(resolved to {resolved})"
            )
        static_root = None
    return LoadedConfig(server, static_root, source, base_dir, repo_path, entries)


def _with_repository(
    server: ServerConfig, base_dir: str, source: str
) -> tuple[ServerConfig, str | None, tuple[RepoEntry, ...]]:
    """``server`` with the model repository's models after its ``[[models]]`` (the folder
    relative to the config file; ``--model-repository`` passes an absolute one), the
    repository's absolute path and its entries. Every folder is validated (``model.toml``,
    the model file exists); no model is loaded.

    Raises:
        ConfigError: a broken folder (one line each), or a name defined both in ``[[models]]``
            and in the repository, naming both places.
    """
    if not server.model_repository:
        return server, None, ()
    path = os.path.normpath(os.path.join(base_dir, server.model_repository))
    try:
        entries = tuple(scan_repository(path))
        models = merge_models(server.models, entries, source)
    except RepositoryError as e:
        raise ConfigError(f"config {source}: {e}") from None
    return msgspec.structs.replace(server, models=models), path, entries


def _read_capped(path: str) -> bytes:
    """The file's bytes: a regular file of at most ``MAX_CONFIG_BYTES``, or a ConfigError.

    Opened non-blocking so that a FIFO does not wait for a writer; the type is checked on the
    open descriptor (after symlinks), and at most one byte past the cap is ever read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = _KINDS.get(stat.S_IFMT(mode), "not a file")
            raise ConfigError(f"config {path} is not a regular file ({kind}); give a TOML file")
        try:
            data = f.read(MAX_CONFIG_BYTES + 1)
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config {path} is larger than {MAX_CONFIG_BYTES // 1024} KiB; refused")
    return data


_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
}


def _parse(path: str, data: bytes) -> dict[str, Any]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"config {path} is not UTF-8 text (invalid byte at offset {e.start})"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {path} is not valid TOML: {e}") from None
    except RecursionError:
        raise ConfigError(
            f"config {path} is not valid TOML: arrays or tables nested too deeply"
        ) from None
