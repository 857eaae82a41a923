"""What every inference API shares: body and header parsing, the per-request limits,
priority and timeout parsing, submit-and-wait, errors and telemetry headers."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Any

import msgspec

from engine.executors.spec import InputError
from engine.http.request import Request
from engine.http.response import Headers, Response, error_response
from engine.scheduler.batcher import Batcher
from engine.scheduler.queues import CANCELLED, InferRequest, Rejection

INVALID_INPUT = "invalid_input"
BODY_TOO_LARGE = "body_too_large"
MAX_TIMEOUT_MS = 3_600_000
"""Longest queue timeout a client may ask for (1 h); the shortest is 1 ms."""
MODEL_NOT_FOUND = "model_not_found"

MAX_INPUTS = 2048
"""Inputs (texts or token arrays; KServe rows) per request, as OpenAI's limit."""
MAX_INPUT_CHARS = 16_384
"""Characters per text input: about 4k tokens, far past the builtin model's 256-token window
(the rest is truncated), but every character is still tokenised."""
MAX_INPUT_TOKENS = 8192
"""Token ids per token-array input (OpenAI's per-input limit)."""
TOKEN_CHARS = 4
"""What one token id counts for in the request budget (an English token is ~4-5 characters)."""
MAX_REQUEST_CHARS = 32_768
"""Characters in all the texts of one request (token ids count TOKEN_CHARS each): the items x
length budget. Builtin MiniLM (int8, 1 thread) costs 120-155 µs per character of 10-300-word
inputs on the shared 2-core dev box (bench/minilm_cost.py; ~60 µs in issue 7's run, where 2048
inputs of ~300 words took 193 s), so one maximal request costs 2-5 s of one core, not minutes.
See docs/api.md "Limits"."""
_MAX_DIGITS = 18
"""Longest numeric header value read (below 2**63): ``int()`` of 4,301+ digits raises."""


class ApiError(Rejection):
    """A request the API refuses before it reaches a queue.

    The one error type that carries an HTTP answer: it is a ``Rejection`` (the scheduler's
    refusals: queue full, deadline, executor error, shutdown), so a route catches
    ``HTTP_ERRORS`` once and turns them into a response in one function per API shape
    (``api_error_response`` for OpenAI's, ``kserve_error_response`` for KServe's, the admin
    plane's ``admin_error``).
    """

    def __init__(
        self, status: int, reason: str, message: str, retry_after: float | None = None
    ) -> None:
        super().__init__(status, reason, message, retry_after)


HTTP_ERRORS = (Rejection, InputError)
"""What a route catches: ApiError and the scheduler's Rejection, and the model spec's
InputError (a request that does not fit the model: 400 naming the input)."""


def http_error(e: Rejection | InputError) -> Rejection:
    """``e`` as the one error type: an InputError (or ShapeError) becomes a 400
    ``invalid_input`` whose message names the input (and the expected and received shape)."""
    if isinstance(e, InputError):
        return ApiError(400, INVALID_INPUT, str(e))
    return e


def invalid(message: str) -> ApiError:
    return ApiError(400, INVALID_INPUT, message)


def drop_headers(reason: str, retry_after: float | None = None) -> Headers:
    """``X-Infergate-Drop-Reason`` and, when given, ``Retry-After`` (whole seconds, ≥ 1)."""
    headers: Headers = [(b"X-Infergate-Drop-Reason", reason.encode())]
    if retry_after is not None:
        headers.append((b"Retry-After", b"%d" % max(1, round(retry_after))))
    return headers


def error(status: int, reason: str, message: str, retry_after: float | None = None) -> Response:
    """The JSON error (OpenAI's shape, ``code`` = reason) with ``X-Infergate-Drop-Reason``."""
    headers = drop_headers(reason, retry_after)
    err_type = "invalid_request_error" if status < 500 and status != 429 else "server_error"
    return error_response(status, message, err_type=err_type, code=reason, headers=headers)


def api_error_response(e: Rejection | InputError) -> Response:
    """The OpenAI-shaped answer to any error a route catches (``HTTP_ERRORS``)."""
    r = http_error(e)
    return error(r.status, r.reason, r.message, r.retry_after)


def decode_json(decoder: msgspec.json.Decoder[Any], body: bytes | memoryview, what: str) -> Any:
    """``body`` decoded by ``decoder``; every malformed body is an ApiError 400.

    msgspec raises UnicodeDecodeError for invalid UTF-8 inside strings and RecursionError past
    the interpreter's depth limit (~1,000 levels), not only DecodeError.
    """
    try:
        return decoder.decode(body)
    except msgspec.DecodeError as e:
        raise invalid(f"invalid {what}: {e}") from None
    except UnicodeDecodeError as e:
        raise invalid(f"invalid {what}: not valid UTF-8 at byte {e.start}") from None
    except RecursionError:
        raise invalid(f"invalid {what}: JSON nested too deeply") from None


def digits(raw: bytes, name: str) -> int:
    """A header value of ASCII digits only (no sign, space, underscore or other numerals)."""
    if not raw.isdigit():  # bytes.isdigit(): b"0"-b"9" only
        raise invalid(f"header {name} must be ASCII digits 0-9, got {raw[:40]!r}")
    if len(raw.lstrip(b"0")) > _MAX_DIGITS:
        raise invalid(f"header {name} is out of range")
    return int(raw)


def _int_header(req: Request, name: bytes) -> int | None:
    raw = req.header(name)
    return None if raw is None else digits(raw, name.decode().title())  # X-Request-Timeout-Ms


def check_texts(texts: list[str] | list[Any], what: str = "input") -> None:
    """The per-request limits on texts and token arrays (see MAX_REQUEST_CHARS).

    ``texts`` holds strings or lists of token ids, already checked for type and emptiness.
    """
    if len(texts) > MAX_INPUTS:
        raise invalid(f"at most {MAX_INPUTS} inputs per request, got {len(texts)}")
    total = 0
    for i, x in enumerate(texts):
        n = len(x)
        if isinstance(x, str):
            if n > MAX_INPUT_CHARS:
                raise invalid(f"{what}[{i}] is longer than {MAX_INPUT_CHARS} characters ({n})")
        else:
            if n > MAX_INPUT_TOKENS:
                raise invalid(f"{what}[{i}] has more than {MAX_INPUT_TOKENS} token ids ({n})")
            n *= TOKEN_CHARS
        total += n
    if total > MAX_REQUEST_CHARS:
        raise invalid(
            f"the request carries {total} characters of {what} (token ids count {TOKEN_CHARS} "
            f"each); at most {MAX_REQUEST_CHARS} per request: split it into several requests"
        )


def priority_and_timeout(
    req: Request, batcher: Batcher, body_priority: Any = None, body_timeout_ms: Any = None
) -> tuple[int, float | None]:
    """The request's priority level and client timeout (seconds), validated.

    Header ``X-Priority`` wins over the body's ``priority``; ``X-Request-Timeout-Ms`` over the
    body's timeout. A timeout is accepted only where the level's ``allow_override`` is true.
    """
    prios = batcher.config.priorities
    level = _int_header(req, b"x-priority")
    if level is None and body_priority is not None:
        if not isinstance(body_priority, int) or isinstance(body_priority, bool):
            raise invalid("priority must be an integer")
        level = body_priority
    if level is None:
        level = prios.default
    if not 1 <= level <= prios.levels:
        raise invalid(f"priority must be between 1 and {prios.levels}, got {level}")
    timeout_ms: float | None = _int_header(req, b"x-request-timeout-ms")
    if timeout_ms is None and body_timeout_ms is not None:
        if not isinstance(body_timeout_ms, int | float) or isinstance(body_timeout_ms, bool):
            raise invalid("timeout must be a number of milliseconds")
        timeout_ms = body_timeout_ms
    if timeout_ms is None:
        return level, None
    if not 1 <= timeout_ms <= MAX_TIMEOUT_MS:  # also refuses NaN
        raise invalid(f"request timeout must be between 1 and {MAX_TIMEOUT_MS} milliseconds")
    if not prios.level(level).allow_override:
        raise invalid(f"priority {level} does not allow a client timeout")
    return level, timeout_ms / 1000


async def infer(
    req: Request,
    batcher: Batcher,
    items: list[Any],
    key: Hashable,
    level: int,
    timeout_s: float | None,
) -> InferRequest:
    """Queue ``items`` on ``batcher`` for the HTTP request ``req`` and wait for all outputs.

    A client that goes away while its request is still queued (connection lost, or FIN) has
    the request removed from the queue, so it never takes executor time.

    Raises:
        Rejection: queue full, deadline, executor error, shutdown, client gone.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[InferRequest] = loop.create_future()

    def deliver(r: InferRequest) -> None:
        if not fut.done():
            fut.set_result(r)

    ireq = InferRequest(items, key, level, deliver, timeout_s, loop)

    def client_gone() -> None:
        if batcher.cancel(ireq):
            ireq.error = Rejection(499, CANCELLED, "client closed the connection while queued")
            deliver(ireq)

    batcher.submit(ireq)
    conn = req.conn
    if conn is not None:
        conn.on_client_eof(client_gone)
    try:
        done = await fut
    except asyncio.CancelledError:
        batcher.cancel(ireq)  # connection lost: do not run it if it is still queued
        raise
    finally:
        if conn is not None:
            conn.discard_client_eof(client_gone)
    req.notes = {
        "model": batcher.name,
        "priority": level,
        "items": len(items),
        "queue_us": round((done.dispatched_at - done.enqueued) * 1e6)
        if done.dispatched_at
        else None,
        "batch_items": done.batch_items,
        "batch_requests": done.batch_requests,
    }
    if done.error is not None:
        req.notes["error"] = done.error.reason
        raise done.error
    return done


def telemetry(r: InferRequest) -> Headers:
    """Batching telemetry of the batch that took this request's first items (and, for a
    gateway model, the replica that ran it and the upstream time)."""
    headers = [
        (b"X-Infergate-Queue-Us", b"%d" % max(0, round((r.dispatched_at - r.enqueued) * 1e6))),
        (b"X-Infergate-Batch-Items", b"%d" % r.batch_items),
        (b"X-Infergate-Batch-Requests", b"%d" % r.batch_requests),
        (b"X-Infergate-Compute-Us", b"%d" % round(r.compute_s * 1e6)),
    ]
    if r.upstream is not None:
        headers.append((b"X-Infergate-Upstream-Replica", r.upstream.replica.encode()))
        headers.append((b"X-Infergate-Upstream-Us", b"%d" % round(r.upstream.seconds * 1e6)))
    return headers
