"""One Batcher per model: priority queues, a scheduling thread, and executor slots.

Threads: callers (sub-reactors) use ``submit``/``cancel``/``set_batching``; one thread per
executor slot waits for work, decides its next batch and runs it; one deadline thread expires
queued requests. All share one short lock (decide-under-lock, act-after): a slot thread pops a
batch under the lock, runs the model without it, and takes it again only to record results.
A free slot deciding for itself saves a thread hand-off per batch (measured: one client in
flight, p50 over the bare executor call).

The deadline thread sleeps on its own Condition until the earliest deadline or a change, so a
queued request expires on time even while every executor slot is busy.

Executors that run batches on an event loop of their own (``RunsAsync``: gateway models) get
no slot threads: whichever thread finds work and a free slot takes the batch under the lock and
starts it, and the executor's loop finishes it in the future's callback (``async_batches.py``,
a mixin of the Batcher). Both paths share the queueing, the batch decision (``_take``) and a
batch's bookkeeping (``_begin``/``_complete``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import msgspec

from infergate.engine.config import BatchingConfig, ModelConfig
from infergate.engine.executors.base import Executor, Outputs, RunsAsync, batch_ceiling
from infergate.engine.scheduler.async_batches import AsyncBatches
from infergate.engine.scheduler.policy import decide
from infergate.engine.scheduler.queues import (
    CANCELLED,
    DEADLINE_EXCEEDED,
    EXECUTOR_ERROR,
    MODEL_UNLOADED,
    QUEUE_FULL,
    SHUTTING_DOWN,
    InferRequest,
    Part,
    PriorityQueues,
    Rejection,
)
from infergate.engine.stats import ModelStats

log = logging.getLogger("infergate.batcher")

MAX_WAIT_S = 3600.0
"""Longest single wait of a scheduler thread (it re-checks its state afterwards)."""

Clock = Callable[[], float]


@runtime_checkable
class Measures(Protocol):
    """An executor that tokenises items before they are queued (text models)."""

    def lengths(self, items: Sequence[Any]) -> tuple[list[Any], list[int]]:
        """The items as the executor will take them, and each one's token length.
        Thread-safe."""
        ...


class Batcher(AsyncBatches):
    """Queues and batches one model's requests onto its executor."""

    def __init__(self, cfg: ModelConfig, executor: Executor, clock: Clock = time.monotonic) -> None:
        self.name = cfg.name
        self.config = cfg
        self.batching = cfg.batching
        self.executor = executor
        self.clock = clock
        self.ceiling = batch_ceiling(cfg.max_batch_size_limit, executor)
        """Largest ``max_batch_size`` this model accepts, at start and for every runtime
        change; fixed at start (``ModelRegistry.load`` recomputes it once the executor knows
        its model)."""
        self._measures = isinstance(executor, Measures)
        """The executor tokenises items at submit (text models): requests carry lengths."""
        self.max_batch_tokens = cfg.max_batch_tokens
        """Token budget of a batch (rows x longest item); 0: batches count items only."""
        self.queues = PriorityQueues(cfg.priorities)
        self.stats = ModelStats(cfg.priorities.levels)
        lock = threading.Lock()
        self._cond = threading.Condition(lock)
        """Slot threads wait here for work (submit, a freed slot, a config change)."""
        self._timer = threading.Condition(lock)
        """The deadline thread waits here."""
        self._async = isinstance(executor, RunsAsync)
        """Batches start from any thread and finish in the executor's loop (no slot threads)."""
        self._free = list(range(executor.instances - 1, -1, -1))  # async executors
        self._wake_at = None  # async executors: a window's end (see AsyncBatches)
        self._threads = [
            threading.Thread(
                target=self._slot_loop, args=(i,), name=f"exec-{cfg.name}-{i}", daemon=True
            )
            for i in range(0 if self._async else executor.instances)
        ]
        self._threads.append(
            threading.Thread(target=self._deadline_loop, name=f"deadlines-{cfg.name}", daemon=True)
        )
        self._shedding = False
        """Set by ``shed_queued``/``close``/``unload``: new submits are refused with 503."""
        self._refusal_reason = SHUTTING_DOWN
        """Why submits are refused once shedding: ``shutting_down``, or ``model_unloaded``."""
        self._successor: Batcher | None = None
        """Set by ``retire``: the model's new instance, which takes every submit from then on."""
        self._closed = False
        """Set by ``close``: the threads exit once nothing is queued."""
        self._executor_closed = False
        self._rate = 0.0  # items/s completed (EWMA), for Retry-After
        self._last_done = 0.0

    def start(self) -> None:
        for t in self._threads:
            t.start()

    # ---- thread-safe entry points ------------------------------------------------------------

    def submit(self, req: InferRequest) -> None:
        """Queue ``req``. Thread-safe.

        Raises:
            Rejection: 429 queue full (with Retry-After), 503 ``shutting_down`` after
            ``shed_queued`` or ``close``, 503 ``model_unloaded`` after ``unload``.
        """
        if req.lengths is None and self._measures:
            self._measure(req)
        starts: list[tuple[list[Part], int]] = []
        with self._cond:
            successor = self._successor
            if successor is None:
                self._push(req)
                if self._async:
                    starts = self._pump()
        self._start(starts)
        if successor is not None:
            # looked up just before a reload swapped the model: the new instance serves it
            successor.submit(req)

    def _push(self, req: InferRequest) -> None:
        """``submit``'s queueing, under the lock."""
        if self._shedding:
            r = self._refused()
            self.stats.rejected[r.reason] += 1
            raise r
        try:
            out = self.queues.push(req, self.clock())
        except Rejection as r:
            r.retry_after = self._retry_after(req.level)
            self.stats.rejected[r.reason] += 1
            raise
        if out is not None:  # pushed out of a full level by a lighter tenant (queues.push)
            self._push_out(out, req.level)
        self.stats.submitted += 1
        self._cond.notify()
        if req.deadline is not None:
            self._timer.notify()

    def _measure(self, req: InferRequest) -> None:
        """Tokenise ``req``'s items on the submitting thread, outside the lock, so the token
        budget knows their lengths and the executor does not tokenise them again."""
        assert isinstance(self.executor, Measures)
        try:
            items, lengths = self.executor.lengths(req.items)
        except Exception as e:
            log.warning("model %s: cannot tokenise a request: %s", self.name, e)
            self.stats.rejected[EXECUTOR_ERROR] += 1
            raise Rejection(500, EXECUTOR_ERROR, f"model {self.name} cannot tokenise: {e}") from e
        if len(items) != req.n or len(lengths) != req.n:
            raise Rejection(500, EXECUTOR_ERROR, f"model {self.name}: tokenising lost items")
        req.items, req.lengths = items, lengths

    def cancel(self, req: InferRequest) -> bool:
        """Drop the parts of ``req`` not yet started, because its client went away. Thread-safe.

        True if any part was still queued: ``req`` is then finished (the outputs of its parts
        already running are discarded when they complete) and nothing delivers it; the caller
        answers it. False if every part had started (it completes and is delivered normally)
        or it had already finished.
        """
        with self._cond:
            removed = self.queues.remove(req)
            if removed:
                req.finished = True
                self.stats.rejected[CANCELLED] += 1
                self._cond.notify()
        return removed

    def shed_queued(self) -> int:
        """Answer 503 ``shutting_down`` to every queued request, including the parts not yet
        started of split ones, and refuse new submits the same way; running batches finish
        normally. Thread-safe. Returns the number of requests shed.

        The drain cut-off calls this so that work nobody will wait for is never computed.
        """
        with self._cond:
            self._shedding = True
            shed = self.queues.remove_all()
            error = self._refused()
            for req in shed:
                req.error = error
                req.finished = True
            self.stats.rejected[error.reason] += len(shed)
            self._cond.notify_all()
            self._timer.notify()
        if shed:
            log.info("model %s: %d queued request(s) answered 503 %s", self.name, len(shed),
                     error.reason)  # fmt: skip
        _deliver(shed)
        return len(shed)

    def retire(self, successor: Batcher) -> None:
        """Stop taking work without dropping any (a reload): what is queued or running
        finishes on this instance, every submit from now on goes to ``successor`` (the
        model's new instance, so a request that looked the model up just before the swap is
        served too), and the threads exit once the queue has drained. ``wait_retired`` then
        frees the executor. Thread-safe."""
        with self._cond:
            self._successor = successor
            self._closed = True
            self._cond.notify_all()
            self._timer.notify()

    def wait_retired(self, timeout: float | None = None) -> bool:
        """After ``retire``: wait until the queued and running work has finished, then close
        the executor (its memory is released). Blocks: call it off the reactors. Returns
        False if ``timeout`` passed first (nothing closed; call again)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            if t.is_alive():
                t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
                if t.is_alive():
                    return False
        self._close_executor()
        return True

    def _close_executor(self) -> None:
        """Close the executor once, whichever of ``close`` and ``wait_retired`` comes first."""
        with self._cond:
            done, self._executor_closed = self._executor_closed, True
        if not done:
            self.executor.close()

    def unload(self, timeout: float = 10.0) -> int:
        """Answer every queued request 503 ``model_unloaded`` and refuse new submits the same
        way; running batches finish; then stop the threads and close the executor (``close``).
        Thread-safe; blocks, so call it off the reactors. Returns the requests answered."""
        with self._cond:
            self._refusal_reason = MODEL_UNLOADED
        shed = self.shed_queued()
        self.close(timeout)
        return shed

    def set_batching(self, cfg: BatchingConfig) -> BatchingConfig:
        """Swap the batching config; the next batch decision uses it. Thread-safe.

        Returns the previous config. ``cfg`` is a validated, frozen struct, so the swap is one
        reference assignment, atomic between batches.
        """
        with self._cond:
            old = self.batching
            self.batching = cfg
            self.stats.config_changes += 1
            self._cond.notify()
            starts = self._pump() if self._async else []
        self._start(starts)
        log.info("model %s: batching %s -> %s", self.name, _fmt(old), _fmt(cfg))
        return old

    def snapshot_depths(self) -> list[int]:
        """Queued requests per priority level. Thread-safe."""
        with self._cond:
            return self.queues.depths()

    def depths_nowait(self) -> list[int]:
        """Queued requests per level without taking the lock (``len`` of a deque is atomic
        under the GIL): for dashboards that must never wait on the request path."""
        return [len(q) for q in self.queues.levels]

    def set_default_priority(self, level: int) -> int:
        """Change the level of requests that name none; returns the previous one. Thread-safe
        (one reference swap)."""
        prios = self.config.priorities
        if not 1 <= level <= prios.levels:
            raise ValueError(f"default priority must be 1..{prios.levels}, got {level}")
        with self._cond:
            old = self.config.priorities
            new = msgspec.structs.replace(old, default=level)
            self.config = msgspec.structs.replace(self.config, priorities=new)
            self.stats.config_changes += 1
        log.info("model %s: default priority -> %d", self.name, level)
        return old.default

    def close(self, timeout: float = 10.0) -> None:
        """Shed what is queued (``shed_queued``), let the running batches finish, stop the
        threads (each join bounded by ``timeout``). Thread-safe."""
        self.shed_queued()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            self._timer.notify()
        for t in self._threads:
            if t.is_alive():
                t.join(timeout)
        self._close_executor()

    # ---- deadline thread -----------------------------------------------------------------

    def _deadline_loop(self) -> None:
        q = self.queues
        while True:
            try:
                starts: list[tuple[list[Part], int]] = []
                with self._cond:
                    while True:
                        if self._closed and not len(q) and self._idle():
                            return
                        now = self.clock()
                        demotions = q.demotions
                        expired = q.expire(now)
                        if q.demotions != demotions:
                            self._cond.notify_all()  # the head may have changed
                        if expired:
                            self.stats.rejected[DEADLINE_EXCEEDED] += len(expired)
                            for req in expired:
                                req.error = _deadline_error(req)
                                req.finished = True
                            self._cond.notify_all()  # a demotion or expiry changes decisions
                        if self._async:
                            starts = self._pump()  # a window's end, a demotion or an expiry
                        if expired or starts:
                            break
                        wake = _earliest(q.next_deadline(), self._wake_at)
                        # bounded: Condition.wait overflows beyond threading.TIMEOUT_MAX
                        self._timer.wait(
                            MAX_WAIT_S if wake is None else min(MAX_WAIT_S, max(0.0, wake - now))
                        )
                _deliver(expired)
                self._start(starts)
            except Exception:
                log.exception("model %s: deadline thread error (continuing)", self.name)

    # ---- executor slot threads ---------------------------------------------------------------

    def _slot_loop(self, slot: int) -> None:
        while True:
            with self._cond:
                parts = self._next_batch()
            if parts is None:
                return
            try:
                self._run_batch(parts, slot)
            except Exception:
                self._strand(parts)

    def _strand(self, parts: list[Part]) -> None:
        """A bug outside the executor must not cost the slot or strand the requests: answer
        500 whatever of ``parts`` is unfinished."""
        log.exception("model %s: batch bookkeeping failed", self.name)
        error = Rejection(500, EXECUTOR_ERROR, "internal error in a batch")
        with self._cond:
            stranded = [req for req, _, _ in parts if not req.finished]
            for req in stranded:
                self.queues.remove_rest(req)
                req.error = error
                req.finished = True
        _deliver(stranded)

    def _next_batch(self) -> list[Part] | None:
        """Wait (under the lock) for this slot's next batch; None means stop."""
        q = self.queues
        while True:
            if q.head() is None and self._closed:
                self._timer.notify()  # the queue drained: let the deadline thread finish too
                return None
            parts, wake_at = self._take()
            if parts is not None:
                if q.head() is not None:
                    self._cond.notify()  # more work: wake another free slot
                return parts
            wake = None if wake_at is None else wake_at - self.clock()
            self._cond.wait(MAX_WAIT_S if wake is None else min(MAX_WAIT_S, max(0.0, wake)))

    def _take(self) -> tuple[list[Part] | None, float | None]:
        """Under the lock: the batch due now, or None and when to decide again (None: when
        the queue changes)."""
        q = self.queues
        head = q.head()
        if head is None:
            return None, None
        now = self.clock()
        cfg = self.batching
        ready, oldest = q.ready(head.key, cfg.max_batch_size)
        d = decide(cfg, ready, head.n - head.taken, oldest, now)
        if not d.take:
            return None, d.wake_at
        single = cfg.policy == "off"
        budget = self.max_batch_tokens
        if budget:
            return q.take_tokens(head.key, d.take, budget, single), None
        return q.take(head.key, d.take, single=single), None

    def _run_batch(self, parts: list[Part], slot: int) -> None:
        items, t0 = self._begin(parts)
        outputs: Outputs | None = None
        exc: BaseException | None = None
        try:
            outputs = self.executor.run(items, slot)
        except Exception as e:
            exc = e
        self._complete(parts, slot, len(items), t0, outputs, exc)

    # ---- a batch's bookkeeping (both paths) ----------------------------------------------------

    def _begin(self, parts: list[Part]) -> tuple[list[Any], float]:
        """A batch's items and start time; its requests are stamped as dispatched."""
        items = [item for req, start, end in parts for item in req.items[start:end]]
        t0 = self.clock()
        for req, start, _ in parts:
            if start == 0:
                req.dispatched_at = t0
                req.batch_items = len(items)
                req.batch_requests = len(parts)
        return items, t0

    def _complete(
        self,
        parts: list[Part],
        slot: int,
        n: int,
        t0: float,
        outputs: Outputs | None,
        exc: BaseException | None,
    ) -> None:
        """Record a batch of ``n`` items that ran from ``t0`` (its outputs, or why it failed)
        and deliver the requests it finished."""
        if exc is None and (outputs is None or len(outputs) != n):
            exc = RuntimeError(f"{0 if outputs is None else len(outputs)} outputs for {n} inputs")
        error: Rejection | None = None
        if exc is not None:
            log.warning("model %s: batch of %d items failed: %s", self.name, n, exc)
            error = (  # an executor's own answer (an UpstreamError's 502/504) is kept
                exc
                if isinstance(exc, Rejection)
                else Rejection(
                    500, EXECUTOR_ERROR, f"model {self.name} failed on this batch: {exc}"
                )
            )
        t1 = self.clock()
        call = self.executor.last_call(slot) if error is None else None
        finished: list[InferRequest] = []
        with self._cond:
            self.stats.observe_batch(n, len(parts), t1 - t0, error is not None)
            self._update_rate(n, t1)
            self.queues.charge(_used_per_level(parts, len(self.queues.levels), t1 - t0))
            offset = 0
            for req, start, end in parts:
                if not req.finished:
                    req.compute_s += t1 - t0
                    if error is not None:
                        req.error = error
                        self.queues.remove_rest(req)
                    else:
                        assert outputs is not None
                        req.outputs[start:end] = outputs[offset : offset + end - start]
                        req.done += end - start
                        if start == 0:
                            req.upstream = call
                    if error is not None or req.done == req.n:
                        req.finished = True
                        finished.append(req)
                        self.stats.observe_request(req, t1, error is None)
                offset += end - start
        _deliver(finished)

    def _update_rate(self, items: int, now: float) -> None:
        if self._last_done:
            dt = max(now - self._last_done, 1e-4)
            self._rate = 0.8 * self._rate + 0.2 * (items / dt) if self._rate else items / dt
        self._last_done = now

    def _refused(self) -> Rejection:
        """The answer to work refused once shedding (``shed_queued``, ``close``, ``unload``)."""
        if self._refusal_reason == MODEL_UNLOADED:
            return Rejection(503, MODEL_UNLOADED, f"model {self.name} was unloaded")
        return Rejection(503, SHUTTING_DOWN, f"model {self.name} is shutting down", 1.0)

    def _push_out(self, req: InferRequest, level: int) -> None:
        """Answer 429 a request that a lighter tenant's pushed out of its full level (under
        the lock: delivery is one ``call_soon_threadsafe``, it never blocks)."""
        req.error = Rejection(
            429,
            QUEUE_FULL,
            f"priority {level} queue is full; this tenant holds the most of it",
            self._retry_after(level),
        )
        req.finished = True
        self.stats.rejected[QUEUE_FULL] += 1
        _deliver([req])

    def _retry_after(self, level: int) -> float:
        """Seconds until what a request at ``level`` waits behind would have drained at the
        measured rate (1..60)."""
        if self._rate <= 0:
            return 1.0
        ahead = self.queues.items_ahead(level)
        return float(min(60, max(1, math.ceil(ahead / self._rate))))


def _used_per_level(parts: list[Part], levels: int, seconds: float) -> list[float]:
    """A batch's executor time split over the priority levels of its items."""
    used = [0.0] * levels
    total = sum(end - start for _, start, end in parts) or 1
    for req, start, end in parts:
        used[min(req.level, levels) - 1] += seconds * (end - start) / total
    return used


def _deliver(reqs: list[InferRequest]) -> None:
    """Hand finished requests back, one ``call_soon_threadsafe`` per event loop (``call_soon``
    for the loop running here: a gateway's batch finishes on a reactor's loop)."""
    by_loop: dict[asyncio.AbstractEventLoop | None, list[InferRequest]] = defaultdict(list)
    for req in reqs:
        by_loop[req.loop].append(req)
    here = asyncio.events._get_running_loop()
    for loop, group in by_loop.items():
        if loop is None:
            for req in group:
                req.deliver(req)
        elif loop is here:
            loop.call_soon(_deliver_all, group)
        else:
            try:
                loop.call_soon_threadsafe(_deliver_all, group)
            except RuntimeError:
                pass  # that reactor has stopped (shutdown): nobody is left to answer


def _deliver_all(reqs: list[InferRequest]) -> None:
    for req in reqs:
        req.deliver(req)


def _earliest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _deadline_error(req: InferRequest) -> Rejection:
    if req.taken:
        msg = f"deadline exceeded after {req.taken} of {req.n} items started; the rest dropped"
    else:
        msg = "deadline exceeded in queue"
    return Rejection(504, DEADLINE_EXCEEDED, msg)


def _fmt(cfg: BatchingConfig) -> str:
    return (
        f"policy={cfg.policy} max_batch_size={cfg.max_batch_size} "
        f"max_queue_delay_us={cfg.max_queue_delay_us}"
    )
