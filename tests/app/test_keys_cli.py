"""``infergate keys``: in-process on files under tmp_path, and once as a child process."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from infergate.app.keys_cli import main
from infergate.engine.auth.keys import KeyStore, hash_secret, list_keys
from tests.support.server import REPO_ROOT


def _add(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["add", *argv]) == 0
    out, err = capsys.readouterr()
    assert "shown only now and is not stored" in err
    secret = out.strip()
    assert "\n" not in secret  # stdout carries the secret alone
    return secret


def test_add_prints_the_secret_once_and_stores_its_digest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "keys.toml"
    secret = _add(
        capsys,
        "team-a",
        "--file", str(path),
        "--models", "minilm, rerank",
        "--max-priority", "2",
        "--rps", "2.5",
        "--items-per-minute", "600",
        "--items-burst", "100",
        "--max-concurrency", "4",
        "--weight", "3",
    )  # fmt: skip
    text = path.read_text()
    assert secret not in text
    assert hash_secret(secret) in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (k,) = list_keys(str(path))
    assert k.models == ("minilm", "rerank")
    assert (k.max_priority, k.requests_per_second, k.requests_burst) == (2, 2.5, 3)
    assert (k.items_per_minute, k.items_burst, k.max_concurrency, k.weight) == (600, 100, 4, 3)
    found = KeyStore.load(str(path)).authenticate(secret.encode())
    assert found is not None
    assert found.name == "team-a"


def test_default_file_is_keys_toml_in_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    _add(capsys, "a", "--items-per-minute", "90")
    (k,) = list_keys(str(tmp_path / "keys.toml"))
    assert (k.requests_per_second, k.requests_burst, k.items_burst) == (0.0, 0, 90)


def test_config_names_the_file_relative_to_itself(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    config = conf_dir / "infergate.toml"
    config.write_text('[auth]\nkeys_file = "secrets/keys.toml"\n')
    (conf_dir / "secrets").mkdir()
    _add(capsys, "a", "--config", str(config))
    assert [k.name for k in list_keys(str(conf_dir / "secrets" / "keys.toml"))] == ["a"]

    bare = conf_dir / "bare.toml"
    bare.write_text("")
    assert main(["list", "--config", str(bare)]) == 2
    assert "sets no [auth] keys_file; pass --file PATH" in capsys.readouterr().err
    assert main(["list", "--config", str(conf_dir / "missing.toml")]) == 2
    assert "cannot read config" in capsys.readouterr().err


def test_list_and_remove(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = str(tmp_path / "keys.toml")
    assert main(["list", "--file", f]) == 1
    assert f"no keys file at {f}" in capsys.readouterr().err
    secret = _add(capsys, "alpha", "--file", f, "--rps", "5", "--burst", "9")
    _add(capsys, "beta", "--file", f, "--models", "minilm")

    assert main(["list", "--file", f]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == [
        "NAME", "MODELS", "MAX-PRIO", "REQUESTS", "ITEMS", "CONCURRENCY", "WEIGHT", "SHA256",
    ]  # fmt: skip
    assert lines[1].split()[:6] == ["alpha", "*", "1", "5/s", "burst", "9"]
    assert lines[2].split()[:2] == ["beta", "minilm"]
    assert secret not in out
    assert hash_secret(secret)[:12] in out

    assert main(["remove", "alpha", "--file", f]) == 0
    assert "removed key 'alpha'" in capsys.readouterr().err
    assert [k.name for k in list_keys(f)] == ["beta"]
    assert main(["remove", "alpha", "--file", f]) == 1
    assert "no key named 'alpha'" in capsys.readouterr().err
    assert main(["remove", "beta", "--file", f]) == 0
    capsys.readouterr()
    assert main(["list", "--file", f]) == 0
    assert "no keys in" in capsys.readouterr().err


def test_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = str(tmp_path / "keys.toml")
    _add(capsys, "a", "--file", f)
    before = Path(f).read_bytes()
    assert main(["add", "a", "--file", f]) == 1
    assert "already has a key named 'a'" in capsys.readouterr().err
    assert main(["add", "b", "--file", f, "--max-priority", "0"]) == 1
    assert "$.max_priority" in capsys.readouterr().err
    assert main(["add", "b/c", "--file", f]) == 1
    assert "$.name" in capsys.readouterr().err
    assert Path(f).read_bytes() == before
    Path(f).write_text("[[keys]]\nname = 'x'\n")
    assert main(["list", "--file", f]) == 1
    assert f"keys file {f}: Object missing required field `sha256` - at `$.keys[0]`" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2


def test_runs_as_a_module(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    f = str(tmp_path / "keys.toml")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "infergate.app.keys_cli",
            "add",
            "cli-key",
            "--file",
            f,
            "--rps",
            "1",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    secret = run.stdout.strip()
    found = KeyStore.load(f).authenticate(secret.encode())
    assert found is not None
    assert found.name == "cli-key"
