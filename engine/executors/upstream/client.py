"""The HTTP side of gateway mode: a model's client loop thread, its health checks and calls.

Embeddings and tensor calls (``apost``) run on the lean keep-alive client of ``lean.py``:
the Batcher starts them (``begin``) on the loop of the reactor that starts the batch, with
that loop's pool (``pools.py``: no thread hand-off), or on this model's own loop when no
reactor's loop runs on the starting thread, and they finish in their future's callback with
no thread blocked in between; ``post`` is the same call for a thread that may block
(start-up, probes). Generate calls (``stream``) and the health checks use one aiohttp
``ClientSession`` per model on its own loop (``iter_any()`` relays a streamed body as it
arrives); the pool's ``limit_per_host`` (``max_inflight`` + 1 for the health check) bounds
its connections to each replica.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
import time
from collections.abc import Coroutine, Mapping
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from typing import Any

import aiohttp
import uvloop

from infergate.engine.config import UpstreamConfig
from infergate.engine.executors.upstream.errors import (
    UPSTREAM_ERROR,
    UpstreamError,
    timeout,
    unavailable,
    upstream_error,
)
from infergate.engine.executors.upstream.lean import ConnectFailed, LeanPool, PoolClosed, TooLarge
from infergate.engine.executors.upstream.pools import LoopPools
from infergate.engine.executors.upstream.relay import Head, Relay, RelayClosed
from infergate.engine.executors.upstream.replicas import Replica, ReplicaSet

log = logging.getLogger("infergate.upstream")

START_TIMEOUT_S = 10.0
"""Bound on starting or stopping the loop thread and its session."""
CALL_MARGIN_S = 1.0
"""A slot thread waits this much past ``request_timeout_ms`` for aiohttp's own timeout."""
MAX_ERROR_TEXT = 300
"""Characters of an upstream's error body kept in our error message."""
MAX_ERROR_BODY = 64 * 1024
"""Bytes of a non-2xx answer read to find its message (and of a health check's answer)."""
MAX_REPLY_BYTES = 256 * 1024 * 1024
"""Largest answer read from a replica (a batch of embeddings or tensors is far smaller: the
APIs cap a request at 16 Mi elements); beyond it the call fails as ``upstream_error``."""


class ReplyTooLarge(Exception):
    """A replica's answer passed ``MAX_REPLY_BYTES``: it is not read further."""


JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
STREAM_HEADERS = {"Content-Type": "application/json"}


@dataclass(frozen=True, slots=True)
class UpstreamReply:
    """A response that arrived with a 2xx status."""

    replica: str
    """Base URL of the replica that answered."""
    status: int
    body: bytes
    """The whole body (``post``); empty for a relayed call (``stream``)."""
    seconds: float
    """Upstream time: from sending the request to the end of the response body."""
    header_length: int | None = None
    """``Inference-Header-Content-Length`` (KServe binary answers): the JSON part's size."""


class _NotSent(Exception):
    """The connection could not be opened: nothing reached the upstream (safe to retry)."""


class UpstreamClient:
    """A model's loop thread, HTTP session and health checks over its ReplicaSet.

    ``start``/``check_now``/``close`` are called by the thread that loads the model; ``post``
    by the Batcher's slot threads (Thread-safe: it only schedules on the loop and waits). The
    session and every coroutine belong to the loop thread.
    """

    def __init__(
        self, model: str, replicas: ReplicaSet, cfg: UpstreamConfig, health_path: str
    ) -> None:
        self.model = model
        self.replicas = replicas
        self.cfg = cfg
        self.health_path = health_path
        self._request_s = cfg.request_timeout_ms / 1000
        self._health_s = cfg.health_timeout_ms / 1000
        # owned by the loop thread once started
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._session: aiohttp.ClientSession | None = None
        self._lean: LeanPool | None = None
        """The pool of this model's own loop (calls started off the reactors)."""
        self.pools = LoopPools(model, cfg.connect_timeout_ms / 1000, MAX_REPLY_BYTES)
        """The pools on the reactors' loops (calls started there)."""
        self._waits: concurrent.futures.ThreadPoolExecutor | None = None
        """Threads for a call that must wait for a replica (``_acquire``)."""
        self._health_task: asyncio.Task[None] | None = None

    # ---- lifecycle (the loading thread) ------------------------------------------------------

    def start(self) -> None:
        """Start the loop thread and open the session."""
        loop = uvloop.new_event_loop()
        self._loop = loop
        self._waits = concurrent.futures.ThreadPoolExecutor(
            max(1, len(self.replicas.replicas) * self.cfg.max_inflight),
            thread_name_prefix=f"upstream-wait-{self.model}",
        )
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"upstream-{self.model}", daemon=True
        )
        self._thread.start()
        self.submit(self._open()).result(START_TIMEOUT_S)

    def check_now(self) -> None:
        """Run one round of health checks and wait for it (bounded by the check timeout)."""
        self.submit(self._check_all()).result(self._health_s + START_TIMEOUT_S)

    def start_health_checks(self) -> None:
        """Check every replica each ``health_interval_ms`` until ``close``."""
        self.submit(self._start_health_loop()).result(START_TIMEOUT_S)

    def close(self) -> None:
        """Close the reactors' pools; stop the health checks, close the session and the
        pool, stop the loop thread. Blocks (bounded); not from a reactor's thread."""
        self.pools.close()
        if self._waits is not None:
            self._waits.shutdown(wait=False, cancel_futures=True)
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self.submit(self._close()).result(START_TIMEOUT_S)
        except Exception:
            log.exception("model %s: closing the upstream session failed", self.model)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(START_TIMEOUT_S)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = None

    # ---- calls (slot threads) ----------------------------------------------------------------

    def post(
        self,
        path: str,
        body: bytes | None,
        headers: Mapping[str, str] = JSON_HEADERS,
        method: str = "POST",
    ) -> UpstreamReply:
        """``apost`` from another thread: blocks the calling thread until the reply or a
        failure. Thread-safe (not from the loop thread itself)."""
        fut = self.submit(self.apost(path, body, headers, method))
        bound = (self._request_s + CALL_MARGIN_S) * 2 * len(self.replicas.replicas)
        try:
            result: UpstreamReply = fut.result(bound)
        except TimeoutError:
            fut.cancel()  # aiohttp's own timeout should have fired long before: a backstop
            raise timeout(f"no replica answered within {bound:g} s", None) from None
        return result

    async def apost(
        self,
        path: str,
        body: bytes | None,
        headers: Mapping[str, str] = JSON_HEADERS,
        method: str = "POST",
    ) -> UpstreamReply:
        """POST ``body`` (JSON unless ``headers`` say otherwise; ``method`` GET with no body
        reads a document) to ``path`` on the least loaded healthy replica. The loop thread
        only (``submit`` it from elsewhere).

        A replica that cannot be connected to (nothing was sent) is counted as failed and the
        call is retried on another one; every other failure is final.

        Raises:
            UpstreamError: 502 ``upstream_unavailable`` (no replica, connection lost), 504
                ``upstream_timeout``, 502 ``upstream_error`` (a non-2xx answer).
        """
        tried: list[Replica] = []
        while True:
            replica = await self._acquire(tried)
            try:
                return await self._attempt(replica, path, body, headers, method)
            except _NotSent as e:
                log.warning("model %s: %s unreachable, retrying elsewhere: %s", self.model,
                            replica.url, e)  # fmt: skip
                tried.append(replica)  # acquire raises once every replica has been tried

    async def _acquire(self, tried: list[Replica]) -> Replica:
        """A replica with room, without blocking the loop: at once in the usual case (the
        Batcher never starts more calls than replicas x ``max_inflight``); while some
        replicas are ejected and the others full, the blocking wait runs on a worker thread."""
        replica = self.replicas.try_acquire(tried)
        if replica is not None:
            return replica
        try:
            assert self._waits is not None
            waiting = self._waits.submit(self.replicas.acquire, tried, self._request_s)
        except RuntimeError:  # the threads were shut down: the model is closing
            raise unavailable(f"model {self.model} is closing") from None
        try:
            return await asyncio.wrap_future(waiting)
        except asyncio.CancelledError:
            # the wait goes on on its thread: a replica it reserves after all is given back
            waiting.add_done_callback(self._give_back)
            raise

    def _give_back(self, waiting: Future[Replica]) -> None:
        if not waiting.cancelled() and waiting.exception() is None:
            self.replicas.release(waiting.result(), counted=False)

    async def _attempt(
        self,
        replica: Replica,
        path: str,
        body: bytes | None,
        headers: Mapping[str, str],
        method: str,
    ) -> UpstreamReply:
        """One call to ``replica``; always releases it, with the outcome."""
        url = replica.url
        t0 = time.monotonic()
        try:
            status, payload, hlen = await self._send(method, url, path, body, headers)
        except _NotSent as e:
            self.replicas.release(replica, failure=f"connect: {e}")
            raise
        except PoolClosed as e:  # our own shutdown: not the replica's failure, not retried
            self.replicas.release(replica, counted=False)
            raise unavailable(f"replica {url}: {e}", url) from None
        except ReplyTooLarge as e:
            self.replicas.release(replica, failure=str(e))
            raise UpstreamError(502, UPSTREAM_ERROR, f"replica {url}: {e}", replica=url) from None
        except TimeoutError:
            self.replicas.release(replica, failure="timed out")
            raise timeout(
                f"replica {url} did not answer within {self._request_s:g} s", url
            ) from None
        except (aiohttp.ClientError, OSError) as e:
            self.replicas.release(replica, failure=f"{type(e).__name__}: {e}")
            raise unavailable(f"replica {url} failed: {type(e).__name__}: {e}", url) from e
        except asyncio.CancelledError:  # the gateway gave the call up (shutting down)
            self.replicas.release(replica, counted=False)
            raise
        except BaseException:
            self.replicas.release(replica, failure="internal error")
            raise
        seconds = time.monotonic() - t0
        if status >= 500:
            self.replicas.release(replica, failure=f"status {status}")
            raise upstream_error(status, _error_text(payload), url)
        if status >= 300:
            self.replicas.release(replica)  # it answered: not an outlier
            raise upstream_error(status, _error_text(payload), url)
        self.replicas.release(replica, latency_s=seconds)
        return UpstreamReply(url, status, payload, seconds, hlen)

    def stream(self, path: str, body: bytes, relay: Relay) -> UpstreamReply | None:
        """POST ``body`` to ``path`` on the least loaded healthy replica and relay the answer
        chunk by chunk to ``relay`` (see ``relay.py``). Thread-safe; blocks the calling slot
        thread for the whole call, so the slot is the call's admission permit.

        Retried on another replica only when the connection could not be opened: nothing
        reached the upstream and, since the head is relayed only once a replica answered,
        nothing reached the client. Never after that.

        Returns:
            The replica and the call's duration, or None if the client went away (the upstream
            request was aborted).

        Raises:
            UpstreamError: as ``post``; after the head, the relay's End carries it.
        """
        tried: list[Replica] = []
        while True:
            replica = self.replicas.acquire(tried, wait_s=self._request_s)
            try:
                return self._attempt_stream(replica, path, body, relay)
            except _NotSent as e:
                log.warning("model %s: %s unreachable, retrying elsewhere: %s", self.model,
                            replica.url, e)  # fmt: skip
                tried.append(replica)

    def _attempt_stream(
        self, replica: Replica, path: str, body: bytes, relay: Relay
    ) -> UpstreamReply | None:
        """One relayed call to ``replica``; always releases it, with the outcome."""
        url = replica.url
        t0 = time.monotonic()
        fut = self.submit(self._relay(url, path, body, relay))
        if not relay.attach(fut):
            fut.cancel()
        try:
            fut.result()  # bounded by the call's own timeouts (connect, gap between reads)
        except (CancelledError, RelayClosed):
            self.replicas.release(replica)  # the client left: not the replica's fault
            return None
        except _NotSent as e:
            self.replicas.release(replica, failure=f"connect: {e}")
            raise
        except UpstreamError as e:  # an error status
            bad = e.upstream_status is not None and e.upstream_status >= 500
            self.replicas.release(replica, failure=f"status {e.upstream_status}" if bad else None)
            raise
        except TimeoutError:
            self.replicas.release(replica, failure="timed out")
            raise timeout(f"replica {url} sent nothing for {self._request_s:g} s", url) from None
        except (aiohttp.ClientError, OSError) as e:
            self.replicas.release(replica, failure=f"{type(e).__name__}: {e}")
            raise unavailable(f"replica {url} failed: {type(e).__name__}: {e}", url) from e
        except BaseException:
            self.replicas.release(replica, failure="internal error")
            raise
        seconds = time.monotonic() - t0
        self.replicas.release(replica, latency_s=seconds)
        return UpstreamReply(url, 200, b"", seconds)

    def begin(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any] | Future[Any]:
        """Start a call: on the calling reactor's loop (``pools.py``), or else on this
        model's loop. Its future's callbacks run on the loop that runs it. Thread-safe."""
        task = self.pools.start(coro)
        return task if task is not None else self.submit(self._tracked(coro))

    async def _tracked(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """``coro`` on this model's loop, known to its pool: closing the model cancels it if
        it is still waiting (``LeanPool.aclose``), so its batch is answered."""
        task, lean = asyncio.current_task(), self._lean
        if task is not None and lean is not None:
            lean.track(task)
        return await coro

    def submit(self, coro: Any) -> Future[Any]:
        """Run ``coro`` on the loop thread. Thread-safe."""
        loop = self._loop
        if loop is None:
            coro.close()
            raise unavailable(f"model {self.model}: the upstream client is not running")
        return asyncio.run_coroutine_threadsafe(coro, loop)

    # ---- coroutines (the loop thread) --------------------------------------------------------

    async def _open(self) -> None:
        self._lean = LeanPool(self.cfg.connect_timeout_ms / 1000, MAX_REPLY_BYTES)
        connector = aiohttp.TCPConnector(
            limit=0,  # bounded per replica instead
            limit_per_host=self.cfg.max_inflight + 1,  # + 1: a health check never queues
            keepalive_timeout=30.0,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=self._request_s, sock_connect=self.cfg.connect_timeout_ms / 1000
            ),
            auto_decompress=True,
        )

    async def _close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            try:
                await self._health_task
            except asyncio.CancelledError:
                pass
        if self._session is not None:
            await self._session.close()
        if self._lean is not None:
            await self._lean.aclose()  # a call still waiting for a replica is cancelled

    async def _send(
        self, method: str, base: str, path: str, body: bytes | None, headers: Mapping[str, str]
    ) -> tuple[int, bytes, int | None]:
        """One call on the running loop's lean pool (``lean.py``), its errors as the aiohttp
        path's."""
        lean = self.pools.here()
        if lean is None:
            if asyncio.get_running_loop() is not self._loop:
                raise PoolClosed("the reactor running this call is stopping")
            lean = self._lean
        assert lean is not None
        try:
            return await lean.request(base, method, path, body, headers, self._request_s)
        except ConnectFailed as e:
            raise _NotSent(str(e)) from e
        except TooLarge as e:
            raise ReplyTooLarge(str(e)) from None

    async def _relay(self, replica: str, path: str, body: bytes, relay: Relay) -> None:
        """Send one generate call and hand its answer to ``relay`` as it arrives.

        A streamed answer has no total timeout: ``request_timeout_ms`` bounds each gap
        between two reads. Anything but a complete answer (the client left, a failure, a
        cancel) closes the connection instead of returning it to the pool, so the upstream
        sees the request end and stops generating.
        """
        assert self._session is not None
        relay.open()
        t = aiohttp.ClientTimeout(
            total=None, sock_connect=self.cfg.connect_timeout_ms / 1000, sock_read=self._request_s
        )
        try:
            resp = await self._session.post(
                replica + path, data=body, headers=STREAM_HEADERS, timeout=t
            )
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as e:
            raise _NotSent(str(e) or type(e).__name__) from e
        complete = False
        try:
            if resp.status >= 300:
                payload = await _read_capped(resp, MAX_ERROR_BODY)
                raise upstream_error(resp.status, _error_text(payload), replica)
            ctype = resp.headers.get("Content-Type", "application/json")
            relay.emit(Head(resp.status, ctype.encode("latin-1", "replace"), replica))
            async for data in resp.content.iter_any():
                await relay.send(data, self._request_s)
            complete = True
        finally:
            if complete:
                resp.release()  # read to the end: the connection goes back to the pool
            else:
                resp.close()

    async def _start_health_loop(self) -> None:
        self._health_task = asyncio.get_running_loop().create_task(self._health_loop())

    async def _health_loop(self) -> None:
        # A timer is the point here: active checks run every health_interval_ms.
        interval = self.cfg.health_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            try:
                await self._check_all()
            except Exception:
                log.exception("model %s: health check round failed (continuing)", self.model)

    async def _check_all(self) -> None:
        await asyncio.gather(*(self._check(r) for r in self.replicas.replicas))

    async def _check(self, replica: Replica) -> None:
        assert self._session is not None
        t = aiohttp.ClientTimeout(
            total=self._health_s,
            sock_connect=min(self._health_s, self.cfg.connect_timeout_ms / 1000),
        )
        try:
            async with self._session.get(replica.url + self.health_path, timeout=t) as resp:
                await _read_capped(resp, MAX_ERROR_BODY)
                ok, detail = 200 <= resp.status < 300, f"GET {self.health_path}: {resp.status}"
        except TimeoutError:
            ok, detail = False, f"GET {self.health_path}: no answer within {self._health_s:g} s"
        except aiohttp.ClientError as e:
            ok, detail = False, f"GET {self.health_path}: {type(e).__name__}: {e}"
        self.replicas.health_result(replica, ok, detail)


async def _read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes:
    """Up to ``cap`` bytes of ``resp``'s body."""
    parts: list[bytes] = []
    size = 0
    async for data in resp.content.iter_any():
        parts.append(data)
        size += len(data)
        if size >= cap:
            break
    return b"".join(parts)[:cap]


def _error_text(payload: bytes) -> str:
    """The upstream's error message: OpenAI's ``error.message``, KServe's ``error``, or the
    start of the body."""
    text = payload[:4096].decode("utf-8", "replace")
    try:
        doc = json.loads(payload)
    except ValueError:
        return text[:MAX_ERROR_TEXT] or "(empty body)"
    if isinstance(doc, dict):
        err = doc.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])[:MAX_ERROR_TEXT]
        if isinstance(err, str):
            return err[:MAX_ERROR_TEXT]
    return text[:MAX_ERROR_TEXT]
