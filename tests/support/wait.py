"""Wait for a condition on the server under test, bounded by a deadline rather than a count.

A count of polls says nothing about time: on a fast machine 2000 polls may be over before the
server has done anything, on a loaded one they may take minutes. Every e2e wait goes through
``wait_until`` so that each one has a deadline and fails with what it was waiting for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_INTERVAL_S = 0.005
"""Pause between polls of an external process: short against every timeout waited on, long
enough that polling does not starve the server of the machine's few cores."""


def wait_until(
    predicate: Callable[[], T],
    timeout_s: float,
    what: str,
    *,
    interval_s: float = DEFAULT_INTERVAL_S,
) -> T:
    """Poll ``predicate`` until it returns a truthy value, and return that value.

    The predicate is called at least once, and once more after the deadline, so a condition
    that became true while the last pause ran is not missed.

    Raises:
        AssertionError: ``timeout_s`` passed without a truthy value; the message names ``what``
            (phrase it as the condition: "the reload has been applied") and the last value.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        late = time.monotonic() >= deadline
        value = predicate()
        if value:
            return value
        if late:
            raise AssertionError(f"timed out after {timeout_s} s waiting until {what} ({value!r})")
        time.sleep(min(interval_s, max(0.0, deadline - time.monotonic())))
