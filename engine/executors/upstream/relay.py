"""One generate call's channel between three threads: the client's reactor, a Batcher slot
thread and the model's upstream loop.

Why this shape. The Batcher's slots are the admission permits (replicas x ``max_inflight``):
a chat request must hold one for as long as its upstream call runs, streamed or not, so a
priority-1 request waits behind no priority-2 one and no replica gets more than
``max_inflight`` calls. The upstream socket stays on the model's own loop thread (one aiohttp
session and keep-alive pool per model, as for embeddings, with its health checks): making the
call on the client's reactor would need one session per reactor loop per model, each with its
own pool to bound and close. So:

- the reactor queues an ``InferRequest`` whose one item is a :class:`Relay`, then reads the
  relay's events (:meth:`Relay.next`): a :class:`Head` when the upstream answered 2xx, body
  chunks (``bytes``) as they arrive, and an :class:`End` when the Batcher delivers the request;
- the slot thread that takes it (``GenerateExecutor.run``) starts the upstream call on the
  model's loop and blocks on its future: the slot is held exactly as long as the call;
- the upstream loop sends each chunk across with ``call_soon_threadsafe`` as soon as it is read
  (no buffering), spending one of ``CREDITS``; the reactor returns the credit when it takes the
  chunk. A client that reads slowly therefore stops the upstream read after ``CREDITS`` chunks
  (TCP backpressure reaches the upstream) and the event queue stays bounded.

A client that goes away calls :meth:`Relay.cancel`: the upstream task is cancelled on its
loop, which closes the upstream connection (the upstream sees it close), and the slot thread
returns at once.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

CREDITS = 32
"""Chunks read from the upstream but not yet taken by the client's reactor, at most."""


@dataclass(frozen=True, slots=True)
class Head:
    """The upstream answered 2xx: what the client's response starts with."""

    status: int
    content_type: bytes
    replica: str


@dataclass(frozen=True, slots=True)
class End:
    """The call is over (the Batcher delivered the request): ``error`` None on success."""

    error: Exception | None


Event = Head | bytes | End


class RelayClosed(Exception):
    """The client's reactor is gone: nobody reads this relay any more."""


class Relay:
    """A generate request's body and its event stream.

    Created on the client's reactor (it binds that loop). ``next``/``end`` run on the reactor;
    ``cancel`` is thread-safe; ``attach`` runs on the slot thread; ``open``/``emit``/``send``
    on the upstream loop.
    """

    __slots__ = (
        "_cancelled",
        "_client_loop",
        "_credits",
        "_future",
        "_lock",
        "body",
        "events",
        "level",
        "loop",
        "path",
        "stream",
    )

    def __init__(self, path: str, body: dict[str, Any], level: int, stream: bool) -> None:
        self.path = path
        """Upstream path: ``/v1/chat/completions`` or ``/v1/completions``."""
        self.body = body
        """The client's JSON body without infergate's own fields (model replaced upstream)."""
        self.level = level
        self.stream = stream
        # the reactor side
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[Event] = asyncio.Queue(CREDITS + 2)  # + Head + End
        # shared, under _lock: the slot thread attaches the upstream task, the reactor cancels
        self._lock = threading.Lock()
        self._cancelled = False
        self._future: Future[Any] | None = None
        # the upstream loop side (set by open, before the first chunk crosses)
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._credits: asyncio.Semaphore | None = None

    # ---- the client's reactor ----------------------------------------------------------------

    async def next(self) -> Event:
        """The next event; taking a chunk returns its credit to the upstream loop."""
        ev = await self.events.get()
        if isinstance(ev, bytes):
            loop, credits = self._client_loop, self._credits
            if loop is not None and credits is not None:
                try:
                    loop.call_soon_threadsafe(credits.release)
                except RuntimeError:
                    pass  # the model was unloaded: its call is over
        return ev

    def end(self, error: Exception | None) -> None:
        """The Batcher delivered the request (after every chunk: the slot thread returns only
        once the upstream task is over, and its chunks were scheduled on this loop before)."""
        self._put(End(error))

    def cancel(self) -> None:
        """The client went away: abort the upstream call (if it started). Thread-safe;
        idempotent."""
        with self._lock:
            self._cancelled = True
            fut = self._future
        if fut is not None:
            fut.cancel()  # cancels the task on its own loop (run_coroutine_threadsafe)

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def _put(self, ev: Event) -> None:
        try:
            self.events.put_nowait(ev)
        except asyncio.QueueFull:  # cannot happen while the credits hold; never block a loop
            self.cancel()

    # ---- the slot thread ---------------------------------------------------------------------

    def attach(self, fut: Future[Any]) -> bool:
        """Remember the upstream task's future so ``cancel`` can reach it; False (and the
        caller cancels it) if the client already left."""
        with self._lock:
            self._future = fut
            return not self._cancelled

    # ---- the upstream loop -------------------------------------------------------------------

    def open(self) -> None:
        """Bind the credits to the running (upstream) loop."""
        self._client_loop = asyncio.get_running_loop()
        self._credits = asyncio.Semaphore(CREDITS)

    def emit(self, ev: Head | bytes) -> None:
        """Hand ``ev`` to the reactor now.

        Raises:
            RelayClosed: the reactor has stopped.
        """
        try:
            self.loop.call_soon_threadsafe(self._put, ev)
        except RuntimeError:
            raise RelayClosed("the client's reactor has stopped") from None

    async def send(self, data: bytes, wait_s: float) -> None:
        """Spend a credit (waiting at most ``wait_s`` for the client to take older chunks),
        then hand ``data`` to the reactor.

        Raises:
            RelayClosed: the client took no chunk for ``wait_s``, or its reactor has stopped.
        """
        credits = self._credits
        assert credits is not None, "open() first"
        if credits.locked():
            try:
                async with asyncio.timeout(wait_s):
                    await credits.acquire()
            except TimeoutError:
                raise RelayClosed(f"the client took no chunk for {wait_s:g} s") from None
        else:
            await credits.acquire()  # returns at once
        self.emit(data)
