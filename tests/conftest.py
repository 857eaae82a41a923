"""Shared fixtures: a static folder with known files, and real server child processes."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import ServerProcess, write_config

# Small limits so each one is cheap to hit; timeouts generous except on ``timeout_server``.
LIMITS: dict[str, int] = {
    "max_header_bytes": 2048,
    "max_uri_bytes": 512,
    "max_body_bytes": 1024,
    "header_timeout_ms": 10_000,
    "idle_timeout_ms": 30_000,
    "drain_timeout_ms": 10_000,
}
SECRET = b"TOP-SECRET: this file lives outside the static root\n"
BIG_SIZE = 300 * 1024


def _make_static_tree(base: Path) -> Path:
    root = base / "static"
    outside = base / "outside"
    (root / "docs").mkdir(parents=True)
    (root / "empty").mkdir()
    outside.mkdir()
    (root / "index.html").write_bytes(b"<!doctype html><h1>home</h1>\n")
    (root / "docs" / "index.html").write_bytes(b"<h1>docs</h1>\n")
    (root / "hello.txt").write_bytes(b"hello, world\n")
    (root / "digits.txt").write_bytes(b"0123456789" * 10)
    (root / "data.json").write_bytes(b'{"a": 1}\n')
    (root / "style.css").write_bytes(b"body { color: red }\n")
    (root / "app.js").write_bytes(b"console.log(1)\n")
    (root / "pixel.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    (root / "blob").write_bytes(b"\x00\x01\x02 no extension")
    (root / "big.bin").write_bytes(random.Random(1234).randbytes(BIG_SIZE))
    (root / ".hidden").write_bytes(b"dotfile")
    (outside / "secret.txt").write_bytes(SECRET)
    os.symlink(outside / "secret.txt", root / "leak.txt")
    os.symlink(outside, root / "leakdir")
    os.symlink(root / "hello.txt", root / "inner-link.txt")
    return root


@pytest.fixture(scope="session")
def static_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A static folder: see ``_make_static_tree``. ``leak.txt`` links outside the root."""
    return _make_static_tree(tmp_path_factory.mktemp("files"))


ServerFactory = Callable[..., ServerProcess]


def _start(
    tmp: Path, static_root: Path | None, *, slow_app: bool = False, **settings: Any
) -> ServerProcess:
    limits = {**LIMITS, **settings.pop("limits", {})}
    extra_args = settings.pop("extra_args", ())
    settings.setdefault("sub_reactors", 2)
    config = write_config(tmp / "infergate.toml", static_root, limits=limits, **settings)
    return ServerProcess(config, slow_app=slow_app, extra_args=extra_args)


@pytest.fixture
def start_server(tmp_path: Path, static_root: Path) -> Iterator[ServerFactory]:
    """Start a server with custom settings for one test; stopped at teardown."""
    started: list[ServerProcess] = []

    def start(*, slow_app: bool = False, **settings: Any) -> ServerProcess:
        d = tmp_path / f"server{len(started)}"
        d.mkdir()
        server = _start(d, static_root, slow_app=slow_app, **settings)
        started.append(server)
        return server

    yield start
    for s in started:
        s.stop()


@pytest.fixture(scope="session")
def app_server(tmp_path_factory: pytest.TempPathFactory, static_root: Path) -> Iterator[int]:
    """Port of the real ``python -m infergate.app`` server (default accept mode, 2 sub-reactors)."""
    with _start(tmp_path_factory.mktemp("app"), static_root) as server:
        yield server.port


@pytest.fixture(scope="session", params=["handoff", "reuseport"])
def any_mode_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, static_root: Path
) -> Iterator[int]:
    """Port of the real server in each accept mode."""
    mode = request.param
    with _start(tmp_path_factory.mktemp(mode), static_root, accept_mode=mode) as server:
        yield server.port


@pytest.fixture(scope="session")
def echo_server(tmp_path_factory: pytest.TempPathFactory, static_root: Path) -> Iterator[int]:
    """Port of ``slow_app``: the engine plus ``GET /slow?ms=N`` and ``POST /echo``."""
    with _start(tmp_path_factory.mktemp("slow"), static_root, slow_app=True) as server:
        yield server.port


@pytest.fixture(scope="session")
def timeout_server(tmp_path_factory: pytest.TempPathFactory, static_root: Path) -> Iterator[int]:
    """Port of the real server with header_timeout_ms=300, idle_timeout_ms=500 and
    body_timeout_ms=400.

    tests/e2e/test_timeouts.py derives its bounds from these values.
    """
    limits = {"header_timeout_ms": 300, "idle_timeout_ms": 500, "body_timeout_ms": 400}
    with _start(tmp_path_factory.mktemp("timeouts"), static_root, limits=limits) as server:
        yield server.port
