"""The Batcher's path for executors that run batches on an event loop of their own
(``RunsAsync``: gateway models), with no slot threads.

Whichever thread finds work and a free slot (a submitting reactor, the executor's loop
finishing a batch, the deadline thread at a window's end) takes the batch under the Batcher's
lock (``_pump``) and starts it after releasing it (``_start``); the executor's loop finishes it
in the future's callback (``_finish``), which frees the slot and starts what is due next. A
request then crosses two threads (reactor -> executor loop -> reactor) instead of four.

``AsyncBatches`` is a mixin of ``Batcher`` (``batcher.py``): it owns the free-slot list and
the window timer's due time; queueing, batch decisions (``_take``) and a batch's bookkeeping
(``_begin``/``_complete``/``_strand``) are the Batcher's, shared with the slot threads.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from concurrent.futures import CancelledError, Future
from typing import Any, cast

from infergate.engine.executors.base import Executor, Outputs, RunsAsync
from infergate.engine.scheduler.queues import SHUTTING_DOWN, Part, Rejection


class AsyncBatches:
    """Starting and finishing batches of a ``RunsAsync`` executor (see the module doc)."""

    executor: Executor
    name: str
    _async: bool
    _closed: bool
    _cond: threading.Condition
    _timer: threading.Condition
    _free: list[int]
    """The slots with no batch running (under the lock)."""
    _wake_at: float | None
    """When a waiting batch (a window) is due; the deadline thread wakes then to start it
    (under the lock)."""

    def _take(self) -> tuple[list[Part] | None, float | None]:
        raise NotImplementedError  # Batcher's

    def _begin(self, parts: list[Part]) -> tuple[list[Any], float]:
        raise NotImplementedError  # Batcher's

    def _complete(
        self,
        parts: list[Part],
        slot: int,
        n: int,
        t0: float,
        outputs: Outputs | None,
        exc: BaseException | None,
    ) -> None:
        raise NotImplementedError  # Batcher's

    def _strand(self, parts: list[Part]) -> None:
        raise NotImplementedError  # Batcher's

    def _idle(self) -> bool:
        """Under the lock: no batch of an async executor is running."""
        return not self._async or len(self._free) == self.executor.instances

    def _pump(self) -> list[tuple[list[Part], int]]:
        """Under the lock (async executors): take every batch due now onto a free slot; the
        caller starts them (``_start``) after releasing the lock."""
        starts: list[tuple[list[Part], int]] = []
        wake_at = None  # none while every slot is busy: a finishing batch pumps again
        while self._free:
            parts, wake_at = self._take()
            if parts is None:
                break
            starts.append((parts, self._free.pop()))
        if wake_at is not None and (self._wake_at is None or wake_at < self._wake_at):
            self._timer.notify()  # a window is open: the deadline thread ends it
        self._wake_at = wake_at
        return starts

    def _start(self, starts: list[tuple[list[Part], int]]) -> None:
        """Start batches taken by ``_pump`` (outside the lock); each finishes in its future's
        callback on the executor's loop. A start that fails at once (the executor is closed)
        fails its batch here, in a loop rather than by recursion."""
        while starts:
            parts, slot = starts.pop()
            items, t0 = self._begin(parts)
            try:
                # cast, not isinstance: a runtime Protocol check costs ~20 µs per batch
                fut = cast(RunsAsync, self.executor).run_async(items, slot)
            except Exception as e:
                try:
                    self._complete(parts, slot, len(items), t0, None, e)
                except Exception:
                    self._strand(parts)
                starts.extend(self._free_slot(slot))
                continue
            fut.add_done_callback(functools.partial(self._finish, parts, slot, len(items), t0))

    def _finish(
        self,
        parts: list[Part],
        slot: int,
        n: int,
        t0: float,
        fut: asyncio.Future[Outputs] | Future[Outputs],
    ) -> None:
        """``_start``'s callback: record the batch, deliver it, free the slot, start more."""
        try:
            error: BaseException | None = None
            outputs = None
            try:
                outputs = fut.result()
            except (CancelledError, asyncio.CancelledError):  # given up at a reactor's stop
                error = Rejection(
                    503, SHUTTING_DOWN, f"model {self.name}: the call was cancelled", 1.0
                )
            except Exception as e:
                error = e
            self._complete(parts, slot, n, t0, outputs, error)
        except Exception:
            self._strand(parts)
        finally:
            self._start(self._free_slot(slot))

    def _free_slot(self, slot: int) -> list[tuple[list[Part], int]]:
        """Return ``slot`` and take the batches now due (for ``_start``)."""
        with self._cond:
            self._free.append(slot)
            if self._closed and self._idle():
                self._timer.notify()  # the last batch of a closing model is over
            return self._pump()
