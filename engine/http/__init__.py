"""HTTP/1.1 server side: the protocol, request intake, output flow, responses, routing.

Where a C compiler was present at install time these modules run compiled by mypyc (see
setup.py); the ``.py`` sources beside them are the fallback. In a source tree (an editable
install) a source newer than its compiled module would otherwise be silently ignored by the
import system, so then, or with ``INFERGATE_PURE_PYTHON=1``, every module of this package is
loaded from source (all or none: compiled modules call each other directly). ``COMPILED``
says which one is running.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from importlib.machinery import EXTENSION_SUFFIXES, ModuleSpec
from importlib.util import spec_from_file_location
from pathlib import Path
from types import ModuleType

_HERE = Path(__file__).resolve().parent
_SOURCE_TREE = (_HERE.parent.parent / "pyproject.toml").exists()


def _compiled(name: str) -> Path | None:
    for suffix in EXTENSION_SUFFIXES:
        path = _HERE / f"{name}{suffix}"
        if path.exists():
            return path
    return None


def _stale() -> list[str]:
    """Modules whose source changed after they were compiled (source trees only).

    A module's own ``.so`` is a shim that the build rewrites only when it differs, which it
    rarely does: the code is in the shared ``_native__mypyc`` library, so the newer of the two
    is when it was compiled."""
    native = _compiled("_native__mypyc")
    built_native = native.stat().st_mtime if native is not None else 0.0
    out = []
    for src in _HERE.glob("*.py"):
        so = _compiled(src.stem)
        if so is not None and src.stat().st_mtime > max(so.stat().st_mtime, built_native):
            out.append(src.stem)
    return out


class _SourceFinder:
    """Loads ``engine.http.*`` from the ``.py`` files even where compiled modules exist."""

    @staticmethod
    def find_spec(
        name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        prefix, _, leaf = name.rpartition(".")
        if prefix != __name__ or not (_HERE / f"{leaf}.py").exists():
            return None
        return spec_from_file_location(name, _HERE / f"{leaf}.py")


def _choose() -> bool:
    if getattr(sys, "frozen", False):  # PyInstaller: the compiled modules if they were bundled
        return _compiled("protocol") is not None or not (_HERE / "protocol.py").exists()
    if _compiled("protocol") is None:
        return False
    stale = _stale() if _SOURCE_TREE else []
    if os.environ.get("INFERGATE_PURE_PYTHON") == "1" or stale:
        if stale:
            print(
                f"infergate: {', '.join(sorted(stale))} changed after compiling; running "
                "engine.http from source (make compile rebuilds)",
                file=sys.stderr,
            )
        sys.meta_path.insert(0, _SourceFinder())
        return False
    return True


COMPILED = _choose()
"""True when this package's modules are the mypyc-compiled ones."""
