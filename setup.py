"""Build hook: the hot HTTP modules compiled with mypyc where a compiler is present.

Everything else is in pyproject.toml. ``engine/http`` (compiled as ``infergate.engine.http``,
through the ``infergate/engine`` link) is compiled ahead of time (the protocol,
its intake and output sides, response encoding: bench/proto_micro.py 9.7 -> 4.6-6.1 µs per
pipelined request, docs/benchmarks.md "Compiled protocol"); the pure-Python modules stay
beside the extension modules and are used where mypyc or a C compiler is missing, a build
fails, ``INFERGATE_PURE_PYTHON=1`` is set at build or run time, or a source is newer than its
compiled module (see ``engine/http/__init__.py``). The wheel, the editable install (mypy is a
build requirement in pyproject.toml), ``make test`` and ``make package`` all build it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
HOT = sorted(
    str(p.relative_to(ROOT))
    for p in (ROOT / "infergate" / "engine" / "http").glob("*.py")
    if p.name != "__init__.py"
)


class OptionalBuildExt(build_ext):
    """A failed compile leaves the pure-Python modules in use instead of failing the install."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # compiler missing or failing: the fallback is the .py files
            print(f"infergate: mypyc build failed, using pure Python ({e})", file=sys.stderr)

    def build_extension(self, ext: object) -> None:
        try:
            super().build_extension(ext)  # type: ignore[arg-type]
        except Exception as e:
            print(f"infergate: could not compile {ext}: {e}", file=sys.stderr)


# mypycify type-checks and generates C when called (~20 s): only for commands that build, not
# for the metadata steps a PEP 517 frontend runs first (egg_info, dist_info)
_BUILDS = {"build", "build_ext", "bdist_wheel", "editable_wheel", "install", "develop"}


def ext_modules() -> list[object]:
    if os.environ.get("INFERGATE_PURE_PYTHON") == "1" or not _BUILDS & set(sys.argv[1:]):
        return []
    try:
        from mypyc.build import mypycify  # noqa: PLC0415  (optional: a build dependency)
    except ImportError:
        return []
    try:
        # group_name puts mypyc's shared runtime module inside the package
        # (infergate/engine/http/_native__mypyc.*.so) instead of a hash-named top-level module:
        # the wheel keeps its one top-level name, PyInstaller's --collect-submodules finds it
        native = "infergate.engine.http._native"
        return list(mypycify(HOT, opt_level="3", debug_level="0", group_name=native))
    except BaseException as e:  # mypyc's own type check failed: ship pure Python
        print(f"infergate: mypyc refused the hot modules, using pure Python ({e})", file=sys.stderr)
        return []


setup(ext_modules=ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
