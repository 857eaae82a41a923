"""The one exception an upstream call fails a batch with, and its reasons."""

from __future__ import annotations

from infergate.engine.scheduler.queues import Rejection

UPSTREAM_UNAVAILABLE = "upstream_unavailable"
"""No replica could take the call (all ejected, refused or reset), or the connection to the
chosen replica broke before a response arrived: 502."""
UPSTREAM_TIMEOUT = "upstream_timeout"
"""The replica did not answer within ``request_timeout_ms``: 504."""
UPSTREAM_ERROR = "upstream_error"
"""The replica answered with an error status or a response that does not fit the batch: 502,
carrying the upstream's status and message."""


class UpstreamError(Rejection):
    """A failed upstream call: the whole batch fails with ``status`` and ``reason``.

    A ``Rejection`` (the one error type that carries an HTTP answer), so the Batcher hands it
    to the batch's requests as it is and the APIs answer 502/504 with this reason; ``message``
    is what the client reads, ``str(e)`` (for logs) starts with the reason.
    """

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        *,
        replica: str | None = None,
        upstream_status: int | None = None,
    ) -> None:
        super().__init__(status, reason, message)
        self.args = (f"{reason}: {message}",)
        self.replica = replica
        """Base URL of the replica that failed, when one was chosen."""
        self.upstream_status = upstream_status
        """The status the upstream answered with (``upstream_error`` only)."""


def unavailable(message: str, replica: str | None = None) -> UpstreamError:
    return UpstreamError(502, UPSTREAM_UNAVAILABLE, message, replica=replica)


def timeout(message: str, replica: str | None = None) -> UpstreamError:
    return UpstreamError(504, UPSTREAM_TIMEOUT, message, replica=replica)


def upstream_error(status: int, message: str, replica: str) -> UpstreamError:
    return UpstreamError(
        502,
        UPSTREAM_ERROR,
        f"replica {replica} answered {status}: {message}",
        replica=replica,
        upstream_status=status,
    )
