"""What every upstream executor shares: replicas, the client loop, lifecycle and statistics."""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from concurrent.futures import Future
from typing import Any
from urllib.parse import urlsplit

from infergate.engine.config import UpstreamConfig
from infergate.engine.executors.base import Executor, ExecutorError, Outputs, UpstreamCall
from infergate.engine.executors.upstream.client import UpstreamClient, UpstreamReply
from infergate.engine.executors.upstream.replicas import Clock, ReplicaSet, ReplicaStats

log = logging.getLogger("infergate.upstream")


def check_upstream_url(url: str) -> str:
    """``url`` without a trailing slash, if it is ``http://HOST:PORT[/prefix]`` or
    ``https://HOST[:PORT][/prefix]``.

    Raises:
        ExecutorError: naming the bad URL and what is expected.
    """
    expected = "expected http://HOST:PORT or https://HOST[:PORT], optionally with a path prefix"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ExecutorError(f"invalid upstream URL {url!r}: {e}; {expected}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ExecutorError(f"invalid upstream URL {url!r}: {expected}")
    if parts.scheme == "http" and port is None:
        raise ExecutorError(f"invalid upstream URL {url!r}: http needs a port; {expected}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ExecutorError(
            f"invalid upstream URL {url!r}: no credentials, query or fragment; {expected}"
        )
    return url.rstrip("/")


class UpstreamExecutor(Executor):
    """An executor whose ``run`` is an HTTP call to one of several replicas.

    Slots = replicas x ``max_inflight``: the Batcher never runs more calls than the replicas
    may take at once, and requests beyond wait in its priority queues. A batch runs on the
    loop of the reactor that starts it, or the client loop (``client.py``, ``pools.py``); a
    generate call's slot thread blocks on the client loop; ``load``/``close`` run
    on the thread that loads the registry; ``describe``/``replica_stats`` from any thread.
    """

    simulated = False
    default_health_path = "/"

    def __init__(
        self,
        name: str,
        upstreams: list[str],
        upstream_model: str,
        cfg: UpstreamConfig,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        if not upstreams:
            raise ExecutorError(f"executor {self.kind} needs at least one URL in upstreams")
        urls = [check_upstream_url(u) for u in upstreams]
        dupes = sorted({u for u in urls if urls.count(u) > 1})
        if dupes:
            raise ExecutorError(f"upstreams must be distinct: {', '.join(dupes)}")
        super().__init__(len(urls) * cfg.max_inflight)
        self.name = name
        self.upstream_model = upstream_model or name
        self.cfg = cfg
        self.replicas = ReplicaSet(
            urls,
            cfg.max_inflight,
            cfg.consecutive_failures,
            cfg.base_ejection_ms / 1000,
            cfg.max_ejection_ms / 1000,
            clock=clock,
        )
        self.client = UpstreamClient(
            name, self.replicas, cfg, cfg.health_path or self.default_health_path
        )
        self._last: list[UpstreamCall | None] = [None] * self.instances
        """Per slot: the last successful call (slot ``k``'s thread is its only writer)."""

    def load(self) -> None:
        """Start the client loop, check every replica once, start the periodic checks.

        Replicas that fail the first check are logged and stay ejected until a check passes;
        start-up goes on (the upstream may start after the gateway).
        """
        self.client.start()
        self.client.check_now()
        down = [s for s in self.replicas.stats() if s.state != "healthy"]
        for s in down:
            log.warning(
                "model %s: upstream %s is down at start-up (%s); ejected until a health "
                "check passes", self.name, s.url, s.last_error,
            )  # fmt: skip
        if len(down) < len(self.replicas.replicas):
            self.after_first_check()
        self.client.start_health_checks()

    def after_first_check(self) -> None:
        """Called by ``load`` when at least one replica is healthy (e.g. to learn a dim)."""

    def close(self) -> None:
        self.client.close()

    def record(self, slot: int, reply: UpstreamReply | None) -> None:
        """Remember slot ``slot``'s last call (None: this batch made none that answered).
        Slot ``slot``'s thread only."""
        if 0 <= slot < len(self._last):
            self._last[slot] = None if reply is None else UpstreamCall(reply.replica, reply.seconds)

    def last_call(self, slot: int) -> UpstreamCall | None:
        """The replica and upstream time of slot ``slot``'s last successful call: what the
        Batcher can copy onto the requests of the batch it just ran. Slot ``slot``'s
        thread (right after ``run``)."""
        return self._last[slot] if 0 <= slot < len(self._last) else None

    def replica_stats(self) -> list[ReplicaStats]:
        """Every replica's state and counters (for ``/metrics``). Thread-safe."""
        return self.replicas.stats()

    def replica_stats_nowait(self) -> list[ReplicaStats]:
        """``replica_stats`` without a lock (the dashboard's snapshots). Any thread."""
        return self.replicas.stats_nowait()

    def describe(self) -> dict[str, Any]:
        """Public facts: no replica URLs (they are internal addresses)."""
        d = super().describe()
        d.update(
            upstream_model=self.upstream_model,
            max_inflight=self.cfg.max_inflight,
            replicas_healthy=sum(s.state == "healthy" for s in self.replicas.stats()),
        )
        return d

    def describe_admin(self) -> dict[str, Any]:
        """``describe`` plus every replica's URL, state and counters (``/admin/models``)."""
        d = self.describe()
        d["replicas"] = [s.as_dict() for s in self.replicas.stats()]
        return d


class BatchUpstreamExecutor(UpstreamExecutor):
    """An upstream executor whose batch is one coroutine (``arun``): ``run_async`` lets the
    Batcher start it on the loop of the reactor that starts the batch and finish it in the
    task's callback there, with no thread hand-off (``pools.py``; off the reactors, on the
    client loop); ``run`` blocks a thread on it (probes, tests)."""

    @abc.abstractmethod
    async def arun(self, items: list[Any], slot: int) -> Outputs:
        """Outputs for ``items`` (on the loop that runs the call: a reactor's or the
        client loop)."""

    def run_async(self, items: list[Any], slot: int) -> asyncio.Future[Outputs] | Future[Outputs]:
        return self.client.begin(self.arun(items, slot))

    def run(self, items: list[Any], slot: int) -> Outputs:
        out: Outputs = self.client.submit(self.arun(items, slot)).result()
        return out
