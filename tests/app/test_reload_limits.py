"""The config file is read with a size cap, regular files only, and every decode error is a
clear refusal that changes nothing: at start-up (exit 2) and on SIGHUP (logged, old config kept).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from infergate.app.config import MAX_CONFIG_BYTES, ConfigError, load_config
from tests.support.client import RawConnection
from tests.support.server import REPO_ROOT, ServerProcess
from tests.support.wait import wait_until

START_REFUSAL_TIMEOUT_S = 30.0
"""Deadline for a refused start-up: reading 1 MiB and exiting takes far less; reading an
endless file without a cap never ends."""
RELOAD_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 15.0

BINARY = b"listen = \xff\xfe\x00\x9c binary\n" + bytes(range(256))

MODEL = """
[[models]]
name = "sim"
executor = "sim"
dim = 4
base_us = 200
per_item_us = 1
[models.batching]
max_batch_size = {batch}
"""


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    return str(info.value)


# ---- load_config -------------------------------------------------------------------------------


def test_binary_file_is_refused_as_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bin.toml"
    path.write_bytes(BINARY)
    message = load_error(path)
    assert str(path) in message
    assert "UTF-8" in message


def test_a_file_over_the_size_cap_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.toml"
    # valid TOML (a comment), so only the size can be the reason
    path.write_bytes(b"#" + b"x" * MAX_CONFIG_BYTES + b"\n")
    message = load_error(path)
    assert str(path) in message
    assert "larger than" in message


def test_a_file_at_the_size_cap_is_read(tmp_path: Path) -> None:
    path = tmp_path / "cap.toml"
    path.write_bytes(b"#" + b"x" * (MAX_CONFIG_BYTES - 2) + b"\n")
    assert load_config(str(path)).source == str(path)


def test_a_character_device_is_refused_without_reading_it() -> None:
    message = load_error(Path("/dev/urandom"))
    assert "/dev/urandom" in message
    assert "not a regular file" in message


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.toml"
    os.mkfifo(fifo)
    message = load_error(fifo)  # opening a FIFO for reading would block until a writer came
    assert "not a regular file" in message


def test_a_symlink_to_a_device_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "c.toml"
    link.symlink_to("/dev/zero")
    assert "not a regular file" in load_error(link)


def test_toml_nested_too_deeply_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.toml"
    path.write_text("a = " + "[" * 50_000 + "\n")
    message = load_error(path)
    assert str(path) in message
    assert "nested" in message


# ---- start-up ----------------------------------------------------------------------------------


def start_cli(config: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "infergate.app",
            "--headless",
            "--listen",
            "127.0.0.1:0",
            "--config",
            config,
        ],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=START_REFUSAL_TIMEOUT_S,
        check=False,
    )


def test_startup_with_dev_urandom_as_config_exits_2_naming_the_file() -> None:
    proc = start_cli("/dev/urandom")
    assert proc.returncode == 2, proc.stderr
    assert "/dev/urandom" in proc.stderr
    assert "not a regular file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_startup_with_a_binary_config_exits_2_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bin.toml"
    path.write_bytes(BINARY)
    proc = start_cli(str(path))
    assert proc.returncode == 2, proc.stderr
    assert str(path) in proc.stderr
    assert "UTF-8" in proc.stderr
    assert "Traceback" not in proc.stderr


# ---- SIGHUP ------------------------------------------------------------------------------------


def embed_ok(port: int) -> bool:
    with RawConnection(port) as c:
        r = c.request("POST", "/v1/embeddings", body=b'{"model": "sim", "input": "x"}')
        return r.status == 200


def test_sighup_with_an_unreadable_replacement_keeps_serving_and_sigterm_still_stops(
    tmp_path: Path,
) -> None:
    cfg = tmp_path / "c.toml"
    good = 'listen = "127.0.0.1:0"\nsub_reactors = 1\n' + MODEL
    cfg.write_text(good.format(batch=8))
    with ServerProcess(cfg) as s:
        assert embed_ok(s.port)
        refusals = 0

        def refused(replace: Callable[[], object], reason: str) -> None:
            nonlocal refusals
            cfg.unlink()
            replace()
            s.signal(signal.SIGHUP)
            refusals += 1
            wait_until(
                lambda: s.log_text().count("SIGHUP: config not reloaded") == refusals,
                RELOAD_TIMEOUT_S,
                f"the refused reload ({reason}) has been logged",
            )
            assert reason in s.log_text().split("SIGHUP: config not reloaded")[-1]
            assert embed_ok(s.port)

        refused(lambda: cfg.write_bytes(BINARY), "not UTF-8")
        refused(lambda: cfg.symlink_to("/dev/urandom"), "not a regular file")
        refused(lambda: cfg.write_text("a = " + "[" * 50_000), "nested")
        assert "Traceback" not in s.log_text()
        # nothing was applied: a valid file now changes exactly the one value it changes
        cfg.unlink()
        cfg.write_text(good.format(batch=4))
        s.signal(signal.SIGHUP)
        wait_until(
            lambda: "1 change(s) applied" in s.log_text(),
            RELOAD_TIMEOUT_S,
            "the valid reload has been applied",
        )
        # SIGTERM still works (the reactor is not stuck reading a file)
        s.signal(signal.SIGTERM)
        assert s.wait(STOP_TIMEOUT_S) == 0
