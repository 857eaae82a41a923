"""Build the PyInstaller executable and smoke-test it (about 30 s)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_executable_builds_and_serves_from_an_empty_folder(tmp_path: Path) -> None:
    pytest.importorskip("PyInstaller", reason="PyInstaller is not installed")
    env = {**os.environ, "DIST": str(tmp_path / "dist"), "PY": sys.executable}
    subprocess.run(["bash", "packaging/build.sh"], cwd=REPO, env=env, check=True,
                   capture_output=True)  # fmt: skip
    exe = tmp_path / "dist" / "infergate" / "infergate"
    assert exe.is_file()
    out = subprocess.run(
        [sys.executable, "packaging/smoke_test.py", str(exe), "--runs", "1"],
        cwd=REPO, check=True, capture_output=True, text=True,
    )  # fmt: skip
    assert "OK" in out.stdout
