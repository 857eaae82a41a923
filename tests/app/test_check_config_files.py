"""``infergate --check-config`` loads the files the config names as start-up does: the TLS
certificate and key, and the API keys file. Through the real CLI, in a child process."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from infergate.app.keys_cli import main as keys_main
from tests.app.test_config import run_cli
from tests.support.certs import Certs, make_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def _config(folder: Path, certs: Certs, cert: str = "tls/a.pem", key: str = "tls/a.key") -> Path:
    """A config beside copies of the certificates (``tls/``) and a keys file with one key."""
    shutil.copytree(certs.folder, folder / "tls")
    assert keys_main(["add", "team-a", "--file", str(folder / "keys.toml")]) == 0
    cfg = folder / "c.toml"
    cfg.write_text(
        f'listen = "127.0.0.1:0"\ntls_cert_file = "{cert}"\ntls_key_file = "{key}"\n'
        '[auth]\nkeys_file = "keys.toml"\n',
        encoding="utf-8",
    )
    return cfg


def test_valid_tls_files_and_keys_file_pass(tmp_path: Path, certs: Certs) -> None:
    proc = run_cli("--check-config", "--config", str(_config(tmp_path, certs)))
    assert proc.returncode == 0, proc.stderr
    assert f"TLS OK: {tmp_path}/tls/a.pem with {tmp_path}/tls/a.key" in proc.stdout
    assert f"API keys OK: {tmp_path}/keys.toml (1 key(s))" in proc.stdout
    assert "config OK" in proc.stdout


def test_a_key_that_does_not_match_and_a_broken_keys_file_are_both_named(
    tmp_path: Path, certs: Certs
) -> None:
    cfg = _config(tmp_path, certs, key="tls/b.key")
    (tmp_path / "keys.toml").write_text("[[keys]\n", encoding="utf-8")
    proc = run_cli("--check-config", "--config", str(cfg))
    assert proc.returncode == 2
    tls = tmp_path / "tls"
    assert f"tls_key_file {tls}/b.key does not match the certificate in {tls}/a.pem" in (
        proc.stderr
    )
    assert f"keys file {tmp_path}/keys.toml is not valid TOML" in proc.stderr
    assert "config OK" not in proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("cert", "problem"),
    [
        ("tls/none.pem", "cannot read tls_cert_file {d}/tls/none.pem: No such file or directory"),
        ("tls/a.key", "tls_cert_file {d}/tls/a.key is not a PEM certificate"),
    ],
)
def test_a_certificate_that_cannot_be_used_is_named(
    tmp_path: Path, certs: Certs, cert: str, problem: str
) -> None:
    proc = run_cli("--check-config", "--config", str(_config(tmp_path, certs, cert=cert)))
    assert proc.returncode == 2
    assert problem.format(d=tmp_path) in proc.stderr
    assert "API keys OK" in proc.stdout  # the other file is still checked
    assert "config OK" not in proc.stdout


def test_a_missing_keys_file_is_named(tmp_path: Path, certs: Certs) -> None:
    cfg = _config(tmp_path, certs)
    (tmp_path / "keys.toml").unlink()
    proc = run_cli("--check-config", "--config", str(cfg))
    assert proc.returncode == 2
    assert f"cannot read keys file {tmp_path}/keys.toml: no such file" in proc.stderr
    assert "TLS OK" in proc.stdout
    assert "config OK" not in proc.stdout
