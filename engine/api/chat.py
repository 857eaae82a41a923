"""OpenAI-compatible ``POST /v1/chat/completions`` and ``POST /v1/completions``: forwarded to a
``generate`` model's upstream replicas, streamed answers relayed chunk by chunk.

A request is admitted like any inference request: it waits in the model's priority queues
(deadlines, 429 when full) for a Batcher slot, and holds that slot (one of replicas x
``max_inflight``) until its upstream call is over. It is never merged with others: each request
has a batch key of its own. The answer starts only once a replica has answered 2xx, so an
error before that is a normal JSON error (502/504, OpenAI's shape); an error after the first
streamed byte ends the stream with an SSE ``error`` event (what vLLM and the openai SDK use).
See ``engine/executors/upstream/relay.py`` for the threads involved.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec

from infergate.engine.api.common import (
    ANONYMOUS,
    BODY_TOO_LARGE,
    HTTP_ERRORS,
    MODEL_NOT_FOUND,
    ApiError,
    admit,
    api_error_response,
    authenticate,
    decode_json,
    invalid,
    priority_and_timeout,
    telemetry,
)
from infergate.engine.auth.tenants import Auth
from infergate.engine.executors.upstream.errors import UPSTREAM_ERROR, UpstreamError
from infergate.engine.executors.upstream.generate import CHAT_PATH, COMPLETIONS_PATH
from infergate.engine.executors.upstream.relay import End, Head, Relay
from infergate.engine.http.request import Request
from infergate.engine.http.response import AnyResponse, Headers, Response, StreamResponse
from infergate.engine.http.router import Router
from infergate.engine.models.registry import ModelRegistry
from infergate.engine.scheduler.batcher import Batcher
from infergate.engine.scheduler.queues import CANCELLED, InferRequest, Rejection

MAX_BODY_BYTES = 4 * 1024 * 1024
"""A chat body: long conversations are bigger than an embeddings request (128k tokens of
context are ~500 KB of JSON)."""
MAX_REPLY_BYTES = 16 * 1024 * 1024
"""A non-streamed answer held in memory before it is sent."""

_body = msgspec.json.Decoder(dict[str, Any])
_encoder = msgspec.json.Encoder()


def add_chat_routes(router: Router, registry: ModelRegistry, auth: Auth | None = None) -> None:
    guard = auth if auth is not None else Auth()

    async def chat(req: Request) -> AnyResponse:
        return await generate(req, registry, CHAT_PATH, guard)

    async def completions(req: Request) -> AnyResponse:
        return await generate(req, registry, COMPLETIONS_PATH, guard)

    router.add(["POST"], CHAT_PATH, chat)
    router.add(["POST"], COMPLETIONS_PATH, completions)


async def generate(req: Request, registry: ModelRegistry, path: str, auth: Auth) -> AnyResponse:
    """Admit, forward and answer one chat or completions request."""
    adm = ANONYMOUS  # the key's concurrency slot is held until the upstream call is over
    try:
        api_key = authenticate(req, auth)
        batcher, body, stream = _parse(req, registry)
        level, timeout_s = priority_and_timeout(
            req, batcher, body.pop("priority", None), body.pop("timeout", None)
        )
        level, adm = await admit(req, auth, api_key, batcher, level, 1)
        relay = Relay(path, body, level, stream)
        ireq = InferRequest(
            [relay], ("generate", id(relay)), level, adm.wrap(lambda r: relay.end(r.error)),
            timeout_s, relay.loop,
        )  # fmt: skip
        adm.bind(ireq)
        batcher.submit(ireq)
    except HTTP_ERRORS as e:
        adm.release(None, e.reason if isinstance(e, Rejection) else None)
        return api_error_response(e)

    def client_gone() -> None:
        """The client closed its side (FIN) or the connection: withdraw the request if it is
        queued, abort its upstream call if it runs. HTTP clients do not half-close while
        they wait for an answer, so a FIN means the client left."""
        if batcher.cancel(ireq):
            adm.release(None, CANCELLED)
            relay.end(Rejection(499, CANCELLED, "client closed the connection while queued"))
        else:
            relay.cancel()

    conn = req.conn
    if conn is not None:
        conn.on_client_eof(client_gone)
    handed = False  # the stream's body takes over client_gone
    req.notes = {"model": batcher.name, "priority": level, "stream": stream}  # the access log
    try:
        head = await _admitted(relay)
        req.notes["upstream"] = head.replica
        headers: Headers = [
            *telemetry(ireq)[:1],  # X-Infergate-Queue-Us: the rest is known only at the end
            *([(b"X-Infergate-Priority-Lowered", adm.lowered)] if adm.lowered else []),
            (b"X-Infergate-Upstream-Replica", head.replica.encode()),
        ]
        if stream:
            handed = True
            body_iter = _chunks(relay, req, client_gone)
            return StreamResponse(body_iter, head.status, head.content_type, headers)
        return await _whole(relay, ireq, head)
    except HTTP_ERRORS as e:
        req.notes["error"] = e.reason if isinstance(e, Rejection) else "invalid_input"
        return api_error_response(e)
    except asyncio.CancelledError:  # the connection was lost
        client_gone()
        raise
    finally:
        if conn is not None and not handed:
            conn.discard_client_eof(client_gone)


def _parse(req: Request, registry: ModelRegistry) -> tuple[Batcher, dict[str, Any], bool]:
    if len(req.body) > MAX_BODY_BYTES:
        raise ApiError(413, BODY_TOO_LARGE, f"request bodies are limited to {MAX_BODY_BYTES} bytes")
    body: dict[str, Any] = decode_json(_body, req.body, "request body")
    model = body.get("model")
    if not isinstance(model, str):
        raise invalid("model must be a string")
    batcher = registry.get(model)
    if batcher is None:
        raise ApiError(404, MODEL_NOT_FOUND, f"The model '{model}' does not exist")
    if batcher.config.task != "generate":
        raise invalid(f"model {model} serves task '{batcher.config.task}', not generate")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid("stream must be true or false")
    return batcher, body, stream


async def _admitted(relay: Relay) -> Head:
    """Wait until a replica answered 2xx (the Head).

    Raises:
        Rejection: deadline, shutdown, the client left, an upstream error before the answer.
    """
    ev = await relay.next()
    if isinstance(ev, Head):
        return ev
    assert isinstance(ev, End), "a chunk cannot come before the head"
    if isinstance(ev.error, Rejection):
        raise ev.error
    raise UpstreamError(502, UPSTREAM_ERROR, f"the upstream call ended without an answer: {ev}")


async def _chunks(
    relay: Relay, req: Request, client_gone: Callable[[], None]
) -> AsyncIterator[bytes]:
    """The streamed body: each upstream chunk as it arrives. A client that leaves (FIN:
    ``client_gone``; connection lost: the connection's task is cancelled, which closes this
    generator) aborts the upstream call.

    Should the connection die while this response still waits behind a pipelined one, it is
    never iterated: the upstream call then ends when its chunks are not taken for
    ``request_timeout_ms`` (the relay's credits run out).
    """
    try:
        while True:
            ev = await relay.next()
            if isinstance(ev, bytes):
                yield ev
            elif isinstance(ev, End):
                if ev.error is not None:
                    yield _sse_error(ev.error)
                return
    finally:
        relay.cancel()  # no-op once the call is over
        if req.conn is not None:
            req.conn.discard_client_eof(client_gone)


async def _whole(relay: Relay, ireq: InferRequest, head: Head) -> AnyResponse:
    """A non-streamed answer, read to the end (bounded) and sent with its telemetry."""
    parts: list[bytes] = []
    size = 0
    try:
        while True:
            ev = await relay.next()
            if isinstance(ev, bytes):
                size += len(ev)
                if size > MAX_REPLY_BYTES:
                    raise UpstreamError(
                        502, UPSTREAM_ERROR, f"the answer exceeds {MAX_REPLY_BYTES} bytes",
                        replica=head.replica,
                    )  # fmt: skip
                parts.append(ev)
            elif isinstance(ev, End):
                if isinstance(ev.error, Rejection):
                    raise ev.error
                break
    finally:
        relay.cancel()
    return Response(b"".join(parts), head.status, head.content_type, telemetry(ireq))


def _sse_error(e: Exception) -> bytes:
    """An SSE event in OpenAI's error shape (the openai SDK raises it as an APIError)."""
    if isinstance(e, Rejection):
        err = {"message": e.message, "type": "server_error", "code": e.reason, "status": e.status}
    else:
        err = {"message": str(e), "type": "server_error", "code": UPSTREAM_ERROR, "status": 502}
    return b"data: %s\n\n" % _encoder.encode({"error": err})
