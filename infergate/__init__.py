"""infergate: the one name this project installs.

In the repository ``app``, ``engine`` and ``tui`` are top-level folders (DESIGN.md's layout);
``infergate/app``, ``infergate/engine`` and ``infergate/tui`` are symbolic links to them, so the
code is imported, type-checked, packaged into the wheel and frozen by PyInstaller as
``infergate.app``, ``infergate.engine`` and ``infergate.tui`` (ruff bans the bare names).
"""
