"""Giving a closed model's memory back to the operating system.

A reload or unload frees the old executor (its ONNX Runtime session, arenas and buffers), but
glibc's allocator keeps freed pages mapped for reuse, so the process's RSS creeps up reload
after reload although nothing leaks (bench/reload_rss.py). ``malloc_trim(0)`` returns them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
from collections.abc import Callable

log = logging.getLogger("infergate.models")


def _find_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_malloc_trim = _find_malloc_trim()


def release_memory() -> bool:
    """Collect garbage, then return the allocator's free pages to the OS where the C library
    can (glibc). Blocks for a few milliseconds: call it off the reactors, after a model closed.
    Returns whether pages could be trimmed."""
    gc.collect()
    if _malloc_trim is None:
        return False
    return bool(_malloc_trim(0))
