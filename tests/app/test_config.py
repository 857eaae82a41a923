"""Config loading and validation, and the CLI's --check-config / --version."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from infergate.app.config import ConfigError, load_config
from infergate.engine import __version__
from infergate.engine.config import Limits, ServerConfig, parse_listen
from tests.support.server import REPO_ROOT

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "infergate.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(str(write(tmp_path, text)))
    return str(info.value)


def test_without_a_file_the_builtin_default_config_is_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # independent of the current folder
    loaded = load_config(None)
    assert loaded.source.startswith("<built-in default>")
    assert [m.name for m in loaded.server.models] == ["minilm", "sim-embed", "sim-tensor"]
    assert loaded.server.models[0].executor == "onnxruntime"
    assert loaded.server.listen == "0.0.0.0:8080"
    assert loaded.server.accept_mode == "reuseport"
    assert loaded.static_root == str(REPO / "public")


def test_configs_default_toml_is_the_builtin_default() -> None:
    assert load_config(str(REPO / "configs" / "default.toml")).server == load_config(None).server


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    loaded = load_config(str(write(tmp_path, "")))
    assert loaded.server == ServerConfig()
    assert loaded.source == str(tmp_path / "infergate.toml")


def test_values_are_read(tmp_path: Path) -> None:
    (tmp_path / "www").mkdir()
    text = (
        'listen = "127.0.0.1:9000"\nsub_reactors = 3\naccept_mode = "reuseport"\n'
        'static_root = "www"\naccess_log = true\n'
        "[limits]\nmax_body_bytes = 0\nheader_timeout_ms = 300\nmax_pipelined = 8\n"
    )
    loaded = load_config(str(write(tmp_path, text)))
    cfg = loaded.server
    assert (cfg.host, cfg.port) == ("127.0.0.1", 9000)
    assert cfg.sub_reactors == 3
    assert cfg.accept_mode == "reuseport"
    assert cfg.access_log is True
    assert cfg.limits.max_body_bytes == 0
    assert cfg.limits.header_timeout_ms == 300
    assert cfg.limits.max_pipelined == 8
    assert cfg.limits.idle_timeout_ms == Limits().idle_timeout_ms
    assert loaded.static_root == str(tmp_path / "www")  # relative to the config file


def test_static_root_is_relative_to_the_config_file_not_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "files").mkdir()
    path = write(tmp_path / "conf", 'static_root = "files"\n')
    monkeypatch.chdir(tmp_path)
    assert load_config(str(path)).static_root == str(tmp_path / "conf" / "files")


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'listen = "127.0.0.1:9000"\nsub_reactors = 3\n')
    cfg = load_config(str(path), {"listen": "127.0.0.1:0", "sub_reactors": 1}).server
    assert cfg.listen == "127.0.0.1:0"
    assert cfg.sub_reactors == 1


def test_invalid_override_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sub_reactors"):
        load_config(str(write(tmp_path, "")), {"sub_reactors": -1})


def test_unknown_top_level_key_is_named(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "colour = 1\n")
    assert "colour" in msg
    assert str(tmp_path / "infergate.toml") in msg


def test_unknown_limits_key_is_named(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "[limits]\nmax_header_byte = 4096\n")
    assert "max_header_byte" in msg
    assert "limits" in msg


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[limits]\nmax_header_bytes = 10\n", "max_header_bytes"),
        ("[limits]\nmax_uri_bytes = 1\n", "max_uri_bytes"),
        ("[limits]\nmax_body_bytes = -1\n", "max_body_bytes"),
        ("[limits]\nheader_timeout_ms = 0\n", "header_timeout_ms"),
        ('[limits]\nidle_timeout_ms = "5s"\n', "idle_timeout_ms"),
        ("[limits]\nmax_pipelined = 0\n", "max_pipelined"),
        ("[limits]\nwrite_high_water = 8192\nwrite_low_water = 9000\n", "write_low_water"),
        ('listen = "nope"\n', "listen"),
        ('listen = "127.0.0.1:70000"\n', "port"),
        ('listen = "127.0.0.1:"\n', "port"),
        ('listen = "example.com:80"\n', "host"),
        ("listen = 8080\n", "listen"),
        ("sub_reactors = -1\n", "sub_reactors"),
        ('sub_reactors = "two"\n', "sub_reactors"),
        ('accept_mode = "fork"\n', "accept_mode"),
        ('access_log = "yes"\n', "access_log"),
        ("limits = 5\n", "limits"),
    ],
)
def test_bad_values_are_named(tmp_path: Path, text: str, field: str) -> None:
    assert field in load_error(tmp_path, text)


def test_missing_explicit_static_root_is_an_error(tmp_path: Path) -> None:
    msg = load_error(tmp_path, 'static_root = "no-such-folder"\n')
    assert "static_root" in msg
    assert "no-such-folder" in msg


def test_static_root_that_is_a_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert "static_root" in load_error(tmp_path, 'static_root = "file"\n')


def test_toml_syntax_error(tmp_path: Path) -> None:
    assert "not valid TOML" in load_error(tmp_path, "listen = \n")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(str(tmp_path / "absent.toml"))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("0.0.0.0:8080", ("0.0.0.0", 8080)),
        ("[::1]:443", ("::1", 443)),
        ("localhost:65535", ("localhost", 65535)),
    ],
)
def test_parse_listen_accepts(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize(
    "value", ["", "8080", ":8080", "127.0.0.1", "127.0.0.1:-1", "127.0.0.1:65536", "host:80"]
)
def test_parse_listen_rejects(value: str) -> None:
    with pytest.raises(ValueError, match="listen"):
        parse_listen(value)


# ---- the command line --------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "infergate.app", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_check_config_rejects_a_bad_file_with_exit_2(tmp_path: Path) -> None:
    bad = write(tmp_path, "[limits]\nmax_header_bytes = 10\n", "bad.toml")
    proc = run_cli("--check-config", "--config", str(bad))
    assert proc.returncode == 2
    assert "max_header_bytes" in proc.stderr
    assert "bad.toml" in proc.stderr
    assert "config OK" not in proc.stdout


def test_cli_check_config_accepts_a_valid_file(tmp_path: Path) -> None:
    (tmp_path / "www").mkdir()
    good = write(tmp_path, 'listen = "127.0.0.1:0"\nstatic_root = "www"\n', "good.toml")
    proc = run_cli("--check-config", "--config", str(good))
    assert proc.returncode == 0, proc.stderr
    assert "config OK" in proc.stdout


def test_cli_check_config_accepts_the_shipped_default_config() -> None:
    proc = run_cli("--check-config", "--config", "configs/default.toml")
    assert proc.returncode == 0, proc.stderr


def test_cli_bad_listen_override_exits_2(tmp_path: Path) -> None:
    proc = run_cli("--check-config", "--config", str(write(tmp_path, "")), "--listen", "nope")
    assert proc.returncode == 2
    assert "listen" in proc.stderr


def test_cli_version() -> None:
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"infergate {__version__}"
