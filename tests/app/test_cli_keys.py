"""``infergate keys ...`` reaches the keys command from the main entry point."""

from __future__ import annotations

from pathlib import Path

import pytest

from infergate.app.cli import main
from infergate.engine.auth.keys import hash_secret, list_keys


def test_infergate_keys_add_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys.toml"
    assert main(["keys", "add", "team-a", "--file", str(path)]) == 0
    secret = capsys.readouterr().out.strip()
    [key] = list_keys(str(path))
    assert key.name == "team-a"
    assert key.sha256 == hash_secret(secret)
    assert main(["keys", "list", "--file", str(path)]) == 0
    assert "team-a" in capsys.readouterr().out
