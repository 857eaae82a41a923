"""Where a model's batched upstream calls run: on the loop of the reactor that starts them.

A call started on a sub-reactor's thread (the usual case: the reactor that queued the request
finds a free slot and starts the batch) runs on that reactor's loop, with that loop's
keep-alive pool (``lean.py``): the request's bytes are read, sent upstream, answered and
written back by one thread, with no hand-off (docs/benchmarks.md, "Concurrency 1"). A call
started where no reactor's loop runs (the deadline thread ending a window) runs on the
model's own client loop (``client.py``) and its pool.

Bounds: a replica never has more than ``max_inflight`` calls in flight (its ReplicaSet), so a
loop's pool holds at most ``max_inflight`` connections to it; all pools together at most
(reactors + 1) x ``max_inflight``.

Lifecycle (``engine/net/lent.py``): a reactor lends its loop; a pool is registered there on
first use. A reactor that stops closes its pool before its loop ends (``LeanPool.aclose``):
a call on a connection fails at once (502 ``upstream_unavailable``, not counted against the
replica), one still connecting or waiting for a replica is cancelled (503
``shutting_down``), and either way its batch is answered. A model that closes first closes
every reactor's pool on its loop; one closing while a reactor reclaims leaves the pool to that
reactor's closer, which holds it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
import time
from collections.abc import Coroutine
from typing import Any

from infergate.engine.executors.upstream.lean import CANCEL_WAIT_S, UNWIND_S, LeanPool
from infergate.engine.net import lent

log = logging.getLogger("infergate.upstream")

CLOSE_WAIT_S = UNWIND_S + CANCEL_WAIT_S + 1.0
"""Bound on waiting for the reactors to close their pools (``LeanPool.aclose``)."""


class LoopPools:
    """One model's lean pools on the reactors' loops. Thread-safe."""

    def __init__(self, model: str, connect_timeout_s: float, cap: int) -> None:
        self.model = model
        self.connect_timeout_s = connect_timeout_s
        self.cap = cap
        self._lock = threading.Lock()
        self._pools: dict[asyncio.AbstractEventLoop, LeanPool] = {}
        """Pools by loop (written under the lock; read without it)."""
        self._closed = False

    def new_pool(self) -> LeanPool:
        return LeanPool(self.connect_timeout_s, self.cap)

    def start(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any] | None:
        """Run ``coro`` (a call) on the calling thread's loop, if a reactor lent it; None if
        this thread runs no such loop (``coro`` is untouched: run it elsewhere)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        pool = self._pools.get(loop)
        if pool is None:
            pool = self._open(loop)
            if pool is None:
                return None
        task = loop.create_task(coro)
        pool.track(task)
        return task

    def here(self) -> LeanPool | None:
        """The running loop's pool (None on a loop that has none: the client's own)."""
        return self._pools.get(asyncio.get_running_loop())

    def _open(self, loop: asyncio.AbstractEventLoop) -> LeanPool | None:
        with self._lock:
            if self._closed:
                return None
            pool = self.new_pool()
            # the closer holds the pool itself: a model closing while the reactor reclaims
            # (``forget`` then says False) leaves it to this closer, which still has it
            if not lent.register(loop, self, functools.partial(self._reclaim, loop, pool)):
                return None
            self._pools[loop] = pool
            return pool

    async def _reclaim(self, loop: asyncio.AbstractEventLoop, pool: LeanPool) -> None:
        """The reactor of ``loop`` stops (on ``loop``): close its pool."""
        with self._lock:
            if self._pools.get(loop) is pool:
                del self._pools[loop]
        await pool.aclose()

    def close(self) -> None:
        """Close every reactor's pool, each on its loop, all at once (the model closes).
        Blocks, bounded by ``CLOSE_WAIT_S``; not from a reactor's thread."""
        with self._lock:
            self._closed = True
            pools, self._pools = self._pools, {}
        closing = []
        for loop, pool in pools.items():
            if not lent.forget(loop, self):
                continue  # that reactor is stopping: its closer closes the pool
            aclose = pool.aclose()
            try:
                closing.append(asyncio.run_coroutine_threadsafe(aclose, loop))
            except RuntimeError:  # the loop closed since; its reactor cancelled what was left
                aclose.close()
        deadline = time.monotonic() + CLOSE_WAIT_S
        for done in closing:
            try:
                done.result(max(0.0, deadline - time.monotonic()))
            except (RuntimeError, concurrent.futures.TimeoutError) as e:
                log.warning("model %s: a reactor's upstream pool did not close: %r",
                            self.model, e)  # fmt: skip
