"""Loading and validating the TOML config file into the engine's typed structs."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from typing import Any

import msgspec

from engine.config import ServerConfig


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


DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.toml")
"""The built-in config (``configs/default.toml`` links to it); used when no --config is given,
by the package and the PyInstaller executable alike."""


def load_config(path: str | None, overrides: dict[str, Any] | None = None) -> LoadedConfig:
    """Read ``path`` (or the built-in default config), apply CLI ``overrides``, validate.

    Raises:
        ConfigError: unreadable file, TOML syntax error, unknown key or bad value.
    """
    builtin = path is None
    path = path or DEFAULT_CONFIG
    source = f"<built-in default> ({path})" if builtin else path
    base_dir = os.path.dirname(os.path.abspath(path))
    try:
        with open(path, "rb") as f:
            raw: dict[str, Any] = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {path} is not valid TOML: {e}") from None
    explicit_static = "static_root" in raw and not builtin
    raw.update(overrides or {})
    try:
        server = msgspec.convert(raw, ServerConfig)
    except msgspec.ValidationError as e:
        raise ConfigError(f"config {source}: {e}") from None
    resolved = os.path.normpath(os.path.join(base_dir, server.static_root))
    static_root: str | None = resolved
    if not os.path.isdir(resolved):
        if explicit_static:
            raise ConfigError(
                f"config {source}: static_root {server.static_root!r} is not a folder "
                f"(resolved to {resolved})"
            )
        static_root = None
    return LoadedConfig(server, static_root, source, base_dir)
