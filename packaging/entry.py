"""Entry point of the PyInstaller executable (the same as the ``infergate`` command)."""

import sys

# Imported explicitly so PyInstaller's analysis sees them (they are loaded lazily at run time).
import onnxruntime  # noqa: F401
import tokenizers  # noqa: F401
import uvloop._noop  # noqa: F401

import infergate.tui.app  # noqa: F401
from infergate.app.cli import main

if __name__ == "__main__":
    sys.exit(main())
