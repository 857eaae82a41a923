"""Which build of engine.http is running: mypyc-compiled where it was built, else source."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import infergate.engine.http
import infergate.engine.http.protocol

HERE = Path(infergate.engine.http.__file__).resolve().parent
PROBE = (
    "import infergate.engine.http as h, infergate.engine.http.protocol as p; "
    "print(h.COMPILED, p.__file__)"
)


def _built() -> bool:
    return any((HERE / f"protocol{s}").exists() for s in EXTENSION_SUFFIXES)


def test_compiled_flag_matches_the_module_file() -> None:
    compiled = infergate.engine.http.protocol.__file__.endswith(tuple(EXTENSION_SUFFIXES))
    assert compiled == infergate.engine.http.COMPILED
    print(f"engine.http: {'compiled (mypyc)' if compiled else 'pure Python'}")  # shown with -s
    if os.environ.get("CI") and _built() and not os.environ.get("INFERGATE_PURE_PYTHON"):
        assert compiled  # CI builds it (make compile): a stale or broken build shows here


def test_pure_python_on_request() -> None:
    env = {**os.environ, "INFERGATE_PURE_PYTHON": "1"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == "False"
    assert Path(out[1]).resolve() == HERE / "protocol.py"  # imported through infergate/engine
