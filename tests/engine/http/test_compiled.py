"""Which build of engine.http is running: mypyc-compiled where it was built, else source."""

from __future__ import annotations

import ast
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
    # mypyc's shared runtime module lives in the package (setup.py's group_name), so the wheel
    # keeps its one top-level name
    assert ("infergate.engine.http._native__mypyc" in sys.modules) == compiled
    assert [m for m in sys.modules if m.endswith("__mypyc") and "." not in m] == []
    if os.environ.get("CI") and _built() and not os.environ.get("INFERGATE_PURE_PYTHON"):
        assert compiled  # CI builds it (make compile): a stale or broken build shows here


def test_pure_python_on_request() -> None:
    env = {**os.environ, "INFERGATE_PURE_PYTHON": "1"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == "False"
    assert Path(out[1]).resolve() == HERE / "protocol.py"  # imported through infergate/engine


def _http_names(tree: ast.Module) -> tuple[set[str], set[str]]:
    """Names bound to ``engine.http`` classes-or-functions, and to its modules, in a module."""
    names: set[str] = set()
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("infergate.engine.http."):
                names.update(a.asname or a.name for a in node.names)
            elif node.module == "infergate.engine.http":
                modules.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("infergate.engine.http.") and a.asname:
                    modules.add(a.asname)
    return names, modules


def test_no_interpreted_class_subclasses_a_compiled_one() -> None:
    """Compiled by mypyc, engine.http's classes cannot be subclassed by interpreted code: such
    a subclass is defined without error but creating an instance raises "interpreted classes
    cannot inherit from compiled" (a TLS protocol subclass made every handshake time out, a
    Router subclass broke ``admin_on_public``). Use hooks and views instead."""
    root = HERE.parent.parent
    found = []
    for folder in ("app", "engine", "tui", "tests"):
        for path in (root / folder).rglob("*.py"):
            if path.parent == HERE:
                continue  # the compiled modules themselves
            tree = ast.parse(path.read_text(encoding="utf-8"))
            names, modules = _http_names(tree)
            for node in ast.walk(tree):
                if not isinstance(node, ast.ClassDef):
                    continue
                for base in node.bases:
                    if (isinstance(base, ast.Name) and base.id in names) or (
                        isinstance(base, ast.Attribute)
                        and isinstance(base.value, ast.Name)
                        and base.value.id in modules
                    ):
                        found.append(f"{path.relative_to(root)}: {node.name}({ast.unparse(base)})")
    assert found == []
