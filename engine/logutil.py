"""Rate-limited logging for errors that a client can trigger at will.

An unexpected error on the request path is logged with its traceback the first time in each
interval for its *kind* (a short key the caller chooses, e.g. ``"handler GET /v1/embeddings"``);
repeats inside the interval are only counted, and the next record of that kind says how many were
dropped: ``... (36658 more in the 10 s after the previous report)``. 36,659 tracebacks in
10 s grew a log by 17 MB before this; now it is one record per kind per interval.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["RateLimitedLog"]

_MAX_KINDS = 1024
"""Kinds remembered at once; the oldest are forgotten beyond it (kinds may carry paths)."""


class RateLimitedLog:
    """Logs each kind at most once per ``interval_s``, with the count of the ones dropped.

    Thread-safe: the sub-reactors share one instance; a lock guards the per-kind counters and
    is taken only on an error path.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        # kind -> [start of the current interval, records dropped in it]
        self._kinds: dict[str, list[float]] = {}

    def reset(self) -> None:
        """Forget every kind (tests that count records start from a clean state)."""
        with self._lock:
            self._kinds.clear()

    def _admit(self, kind: str) -> int:
        """-1 to drop this record, else the count dropped before it in the last interval."""
        now = self._clock()
        with self._lock:
            entry = self._kinds.get(kind)
            if entry is not None and now - entry[0] < self.interval_s:
                entry[1] += 1
                return -1
            dropped = int(entry[1]) if entry is not None else 0
            if entry is None and len(self._kinds) >= _MAX_KINDS:
                del self._kinds[next(iter(self._kinds))]
            self._kinds[kind] = [now, 0]
            return dropped

    def log(
        self, level: int, kind: str, msg: str, *args: Any, exc_info: Any = None, **kw: Any
    ) -> bool:
        """Log ``msg % args`` at ``level`` unless ``kind`` was logged in this interval.

        Returns True if a record was emitted.
        """
        if not self.logger.isEnabledFor(level):
            return False
        dropped = self._admit(kind)
        if dropped < 0:
            return False
        if dropped:
            msg = f"{msg} (%d more in the %g s after the previous report)"
            args = (*args, dropped, self.interval_s)
        self.logger.log(level, msg, *args, exc_info=exc_info, **kw)
        return True

    def exception(self, kind: str, msg: str, *args: Any) -> bool:
        """``log`` at ERROR with the current exception's traceback."""
        return self.log(logging.ERROR, kind, msg, *args, exc_info=True)

    def warning(self, kind: str, msg: str, *args: Any) -> bool:
        return self.log(logging.WARNING, kind, msg, *args)
