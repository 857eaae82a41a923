"""A reactor's loop lent to the layers above it, and taken back when the reactor stops.

Code that runs on a sub-reactor's loop may open connections of its own there: the gateway's
upstream calls run on the loop of the reactor that started them, with a keep-alive pool per
loop (``executors/upstream/client.py``), so a request crosses no thread. Such a resource's
owner (a model) may outlive the loop (models close after the reactors have stopped) or end
first (a model unloaded while serving). Whichever ends first closes it:

- the reactor calls ``lend`` when its loop starts and ``reclaim`` on its loop when it stops:
  from then on nothing more is registered, and every closer still registered is awaited;
- an owner calls ``register`` before opening anything on a loop (False: not a lent loop, or
  one being reclaimed: use a loop of its own instead) and ``forget`` when it closes first
  (True: it is still registered, and the owner closes it on the loop itself).

Thread-safe: one lock guards the table; closers run on their loop, outside it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Awaitable, Callable

log = logging.getLogger("infergate.net")

Closer = Callable[[], Awaitable[None]]
"""Closes what an owner opened on one loop; run on that loop."""

_lock = threading.Lock()
_lent: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[object, Closer]] = (
    weakref.WeakKeyDictionary()
)
"""Lent loops (not yet reclaimed) and, by owner, the closers registered on each."""


def lend(loop: asyncio.AbstractEventLoop) -> None:
    """Let owners open resources on ``loop`` (a reactor's, as it starts)."""
    with _lock:
        _lent.setdefault(loop, {})


def is_lent(loop: asyncio.AbstractEventLoop) -> bool:
    """``loop`` is lent and not being reclaimed."""
    return loop in _lent


def register(loop: asyncio.AbstractEventLoop, owner: object, closer: Closer) -> bool:
    """Have ``closer`` run on ``loop`` when the reactor stops. False if ``loop`` is not lent
    (or is being reclaimed): then nothing may be opened on it. One closer per owner."""
    with _lock:
        closers = _lent.get(loop)
        if closers is None:
            return False
        closers[owner] = closer
        return True


def forget(loop: asyncio.AbstractEventLoop, owner: object) -> bool:
    """Take ``owner``'s closer back. True if it was registered: the owner closes its
    resources itself; False if the reactor has run (or is running) it."""
    with _lock:
        closers = _lent.get(loop)
        return closers is not None and closers.pop(owner, None) is not None


async def reclaim(loop: asyncio.AbstractEventLoop) -> None:
    """On ``loop``, as its reactor stops: refuse new registrations, run every closer."""
    with _lock:
        closers = _lent.pop(loop, {})
    for owner, closer in closers.items():
        try:
            await closer()
        except Exception:
            log.exception("closing what %r left on a stopping reactor", owner)
