"""What every inference API shares: body and header parsing, the per-request limits,
priority and timeout parsing, submit-and-wait, errors and telemetry headers."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Hashable
from typing import Any

import msgspec

from infergate.engine.auth.keys import Key, KeyStore
from infergate.engine.auth.limits import ITEMS_OVER_BURST, STORE_UNAVAILABLE
from infergate.engine.auth.tenants import Auth
from infergate.engine.executors.spec import InputError
from infergate.engine.http.request import Request
from infergate.engine.http.response import Headers, Response, error_response
from infergate.engine.scheduler.batcher import Batcher, Measures
from infergate.engine.scheduler.queues import CANCELLED, EXECUTOR_ERROR, InferRequest, Rejection

INVALID_INPUT = "invalid_input"
BODY_TOO_LARGE = "body_too_large"
MAX_TIMEOUT_MS = 3_600_000
"""Longest queue timeout a client may ask for (1 h); the shortest is 1 ms."""
MODEL_NOT_FOUND = "model_not_found"
INVALID_API_KEY = "invalid_api_key"
"""401: no API key, or not one of the configured keys (also sends WWW-Authenticate)."""
MODEL_NOT_ALLOWED = "model_not_allowed"
"""403: the key may not use this model."""

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


_WWW_AUTHENTICATE = (b"WWW-Authenticate", b'Bearer realm="infergate"')


def drop_headers(reason: str, retry_after: float | None = None) -> Headers:
    """``X-Infergate-Drop-Reason`` and, when given, ``Retry-After``: whole seconds rounded up
    (a client that waits that long finds the token there), at least 1. A 401 adds
    ``WWW-Authenticate: Bearer``."""
    headers: Headers = [(b"X-Infergate-Drop-Reason", reason.encode())]
    if retry_after is not None and math.isfinite(retry_after):
        headers.append((b"Retry-After", b"%d" % max(1, math.ceil(retry_after))))
    if reason == INVALID_API_KEY:
        headers.append(_WWW_AUTHENTICATE)
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


class Admission:
    """A request admitted under an API key: its tenant and weight for fair sharing, the
    priority header when its level was lowered, and the concurrency slot it holds until
    :meth:`release`. The anonymous admission (no keys configured) holds nothing."""

    __slots__ = ("_auth", "key", "lowered", "released", "tenant", "weight")

    def __init__(self, auth: Auth | None, key: Key | None, lowered: bytes = b"") -> None:
        self._auth = auth
        self.key = key
        self.tenant = "" if key is None else key.name
        """The fair-sharing tenant: the key's name, "" for the anonymous client."""
        self.weight = 1.0 if key is None else key.weight
        self.lowered = lowered
        """``X-Infergate-Priority-Lowered`` value (``b"1->2"``), or b"" when not lowered."""
        self.released = key is None

    def bind(self, ireq: InferRequest) -> None:
        """Carry the tenant (and the lowered-priority note) into the queued request."""
        ireq.tenant = self.tenant
        ireq.weight = self.weight
        ireq.lowered = self.lowered

    def release(self, done: InferRequest | None = None, reason: str | None = None) -> None:
        """The request is answered: free its concurrency slot and count its queue wait and
        error reason. Idempotent; called on the request's reactor."""
        if self.released:
            return
        self.released = True
        auth, key = self._auth, self.key
        assert auth is not None
        assert key is not None
        auth.gate.release(key)
        wait = None
        if done is not None:
            if done.dispatched_at:
                wait = done.dispatched_at - done.enqueued
            if reason is None and done.error is not None:
                reason = done.error.reason
        auth.metrics.finished(key.name, wait, reason)

    def wrap(self, deliver: Callable[[InferRequest], None]) -> Callable[[InferRequest], None]:
        """``deliver`` that releases first (for routes that build their own InferRequest)."""
        if self.key is None:
            return deliver

        def released(r: InferRequest) -> None:
            self.release(r)
            deliver(r)

        return released


ANONYMOUS = Admission(None, None)
"""The admission of every request while no keys are configured."""


def authenticate(req: Request, auth: Auth) -> Key | None:
    """The API key of ``req`` (``Authorization: Bearer`` or ``X-Api-Key``), or None when no
    keys are configured. Call first, before any costly parsing.

    Raises:
        ApiError: 401 ``invalid_api_key`` (with ``WWW-Authenticate: Bearer``) for a missing or
            unknown key while keys are configured.
    """
    # With no keys this check and admit's first line are the whole cost of admission:
    # ~0.13 + 0.2 µs per request (timeit on the shared 2-core dev box).
    if not auth.enabled:
        return None
    secret = KeyStore.from_request_headers(req.header(b"authorization"), req.header(b"x-api-key"))
    key = None if secret is None else auth.keys.authenticate(secret)
    if key is None:
        raise ApiError(
            401,
            INVALID_API_KEY,
            "missing API key: send 'Authorization: Bearer KEY' or 'X-Api-Key: KEY'"
            if secret is None
            else "invalid API key",
        )
    return key


async def admit(
    req: Request, auth: Auth, key: Key | None, batcher: Batcher, level: int, cost: int
) -> tuple[int, Admission]:
    """Admit a request of ``key`` (from :func:`authenticate`) to ``batcher`` at ``level``,
    carrying ``cost`` items (tokens for text models). Returns the level to queue at (lowered to
    the key's ceiling, ``max_priority``) and the admission, to :meth:`Admission.bind` into the
    request and :meth:`Admission.release` when it is answered (``infer`` does both).

    Order: model allowed (403), concurrency slot (429, released again if a later check
    refuses), then both token buckets at once (429 with the exact Retry-After; a request over
    the item burst can never pass: 400; the shared store down with ``fail_closed``: 503).

    Raises:
        ApiError: as above, in every API's own error shape through its error function.
    """
    if key is None:
        return level, ANONYMOUS
    name = key.name
    metrics = auth.metrics
    if not KeyStore.may_use(key, batcher.name):
        metrics.rejected(name, MODEL_NOT_ALLOWED)
        raise ApiError(403, MODEL_NOT_ALLOWED, f"API key {name!r} may not use model {batcher.name}")
    served, _ = KeyStore.effective_priority(key, level)
    served = min(served, batcher.config.priorities.levels)  # a ceiling below the model's levels
    note = b"%d->%d" % (level, served) if served != level else b""
    if not auth.gate.acquire(key):
        d = auth.gate.denied()
        metrics.rejected(name, d.reason)
        raise ApiError(
            429,
            d.reason,
            f"API key {name!r} already has {key.max_concurrency} requests in flight",
            d.retry_after_s,
        )
    try:
        d = await auth.limiter.check(key, 1, cost, auth.clock())
    except BaseException:
        auth.gate.release(key)
        raise
    if not d.allowed:
        auth.gate.release(key)
        metrics.rejected(name, d.reason)
        raise _limited(key, d.reason, d.retry_after_s, cost)
    metrics.admitted(name, cost)
    req.notes = {"key": name}  # the access log
    return served, Admission(auth, key, note)


def measured(batcher: Batcher, items: list[Any]) -> tuple[list[Any], list[int] | None, int]:
    """``items`` as the model's queue takes them, their token lengths (text models, which
    tokenise before queueing; None otherwise) and what they cost in the key's item bucket:
    tokens for text models, else one per item. Runs the tokenizer here, on the reactor, where
    ``Batcher.submit`` would have run it.

    Raises:
        Rejection: 500 ``executor_error`` when the tokenizer fails.
    """
    ex = batcher.executor
    if not isinstance(ex, Measures):
        return items, None, len(items)
    try:
        out, lengths = ex.lengths(items)
    except Exception as e:
        raise Rejection(500, EXECUTOR_ERROR, f"model {batcher.name} cannot tokenise: {e}") from e
    return out, lengths, sum(lengths)


def _limited(key: Key, reason: str, retry_after: float, cost: int) -> ApiError:
    if reason == ITEMS_OVER_BURST or not math.isfinite(retry_after):
        return ApiError(
            400,
            ITEMS_OVER_BURST,
            f"this request carries {cost} items (tokens for text models), more than API key "
            f"{key.name!r} may send at once (items_burst {key.items_burst}): split it into "
            f"requests of at most {key.items_burst}",
        )
    if reason == STORE_UNAVAILABLE:
        return ApiError(503, reason, "the rate-limit store is unavailable", retry_after)
    what = "requests" if reason == "rate_limit_requests" else "items"
    return ApiError(
        429,
        reason,
        f"API key {key.name!r} is over its {what} rate limit; retry in {retry_after:.3f} s",
        retry_after,
    )


def _delivered(_r: InferRequest) -> None:
    """``InferRequest.deliver`` once its caller has its answer: later deliveries do nothing."""


async def infer(
    req: Request,
    batcher: Batcher,
    items: list[Any],
    key: Hashable,
    level: int,
    timeout_s: float | None,
    adm: Admission = ANONYMOUS,
    lengths: list[int] | None = None,
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

    ireq = InferRequest(items, key, level, deliver, timeout_s, loop, lengths)
    if adm.key is not None:
        adm.bind(ireq)

    def client_gone() -> None:
        if batcher.cancel(ireq):
            ireq.error = Rejection(499, CANCELLED, "client closed the connection while queued")
            deliver(ireq)

    try:
        batcher.submit(ireq)
    except Rejection as e:
        adm.release(None, e.reason)
        raise
    conn = req.conn
    if conn is not None:
        conn.on_client_eof(client_gone)
    try:
        done = await fut
    except asyncio.CancelledError:
        batcher.cancel(ireq)  # connection lost: do not run it if it is still queued
        adm.release(None, CANCELLED)
        raise
    finally:
        if conn is not None:
            conn.discard_client_eof(client_gone)
        ireq.deliver = _delivered  # fut -> ireq -> deliver -> fut was one cycle per request
    adm.release(done)
    req.notes = {
        **(req.notes or {}),
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


def _note(req: Request, batcher: Batcher, level: int, n: int, done: InferRequest) -> None:
    """What the access log says of an answered inference request."""
    notes = req.notes
    if notes is None:
        req.notes = notes = {}
    notes["model"] = batcher.name
    notes["priority"] = level
    notes["items"] = n
    notes["queue_us"] = (
        round((done.dispatched_at - done.enqueued) * 1e6) if done.dispatched_at else None
    )
    notes["batch_items"] = done.batch_items
    notes["batch_requests"] = done.batch_requests
    if done.error is not None:
        notes["error"] = done.error.reason


class _Pending:
    """An anonymous request waiting for its outputs with no task and no coroutine: the
    batcher's delivery builds the answer and resolves the future the protocol waits on
    (``infer_then``). Its cycles (future -> callbacks -> self -> future, request -> deliver
    -> self -> request) end when it is answered or cancelled."""

    __slots__ = ("answer", "batcher", "conn", "fail", "fut", "ireq", "level", "req")

    def __init__(
        self,
        req: Request,
        batcher: Batcher,
        level: int,
        fut: asyncio.Future[Response],
        answer: Callable[[InferRequest], Response],
        fail: Callable[[Rejection], Response],
    ) -> None:
        self.req = req
        self.batcher = batcher
        self.level = level
        self.fut = fut
        self.answer = answer
        self.fail = fail
        self.conn = req.conn
        self.ireq: InferRequest | None = None

    def deliver(self, r: InferRequest) -> None:
        """The batcher's delivery, on the request's loop: answer, once."""
        r.deliver = _delivered
        self.ireq = None
        conn = self.conn
        if conn is not None:
            conn.discard_client_eof(self.client_gone)
        fut = self.fut
        if fut.done():
            return  # cancelled: the connection is gone
        _note(self.req, self.batcher, self.level, r.n, r)
        try:
            resp = self.answer(r) if r.error is None else self.fail(r.error)
        except Exception as e:  # the protocol logs it and answers 500
            fut.set_exception(e)
            return
        fut.set_result(resp)

    def submit(self) -> None:
        """Queue the request (``_submit_queued``), unless its connection is already gone."""
        fut, ireq = self.fut, self.ireq
        if fut.done() or ireq is None:
            return
        try:
            self.batcher.submit(ireq)
        except Rejection as e:
            ireq.deliver = _delivered
            self.ireq = None
            fut.set_result(self.fail(e))
            return
        if self.conn is not None:
            self.conn.on_client_eof(self.client_gone)

    def client_gone(self) -> None:
        ireq = self.ireq
        if ireq is not None and self.batcher.cancel(ireq):
            ireq.error = Rejection(499, CANCELLED, "client closed the connection while queued")
            self.deliver(ireq)

    def done(self, fut: asyncio.Future[Response]) -> None:
        """The future's done callback: a cancelled one (connection lost) leaves the queue."""
        ireq = self.ireq
        if ireq is not None and fut.cancelled():
            self.ireq = None
            ireq.deliver = _delivered
            if self.conn is not None:
                self.conn.discard_client_eof(self.client_gone)
            self.batcher.cancel(ireq)


_to_submit: dict[asyncio.AbstractEventLoop, list[_Pending]] = {}
"""Requests of ``infer_then`` waiting for their loop's next turn to be queued, per loop."""


def _submit_queued(loop: asyncio.AbstractEventLoop) -> None:
    for p in _to_submit.pop(loop):
        p.submit()


def infer_then(
    req: Request,
    batcher: Batcher,
    items: list[Any],
    key: Hashable,
    level: int,
    timeout_s: float | None,
    answer: Callable[[InferRequest], Response],
    fail: Callable[[Rejection], Response],
    lengths: list[int] | None = None,
) -> asyncio.Future[Response]:
    """``infer`` for an anonymous request (no API key, nothing to admit), without a task:
    returns a future of ``answer(done)`` (``fail(error)`` for a refusal) for the protocol to
    wait on. ``answer`` runs on the reactor when the outputs arrive; an exception in it is the
    protocol's 500. The same notes, client-gone and connection-lost handling as ``infer``
    (the protocol cancels the future when the connection is lost).

    The request is queued in a callback of the loop's next turn, together with every other
    request that turn brought, not here: handlers run inside each connection's read callback,
    and uvloop lets go of the GIL between those, so a submit from here woke the slot thread
    once per request and batches shrank from ~34 requests to ~3 (the CPU per request rose
    15%, docs/benchmarks.md "The inference front end"). A task per request had the same
    effect as this callback, by accident.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Response] = loop.create_future()
    p = _Pending(req, batcher, level, fut, answer, fail)
    p.ireq = InferRequest(items, key, level, p.deliver, timeout_s, loop, lengths)
    fut.add_done_callback(p.done)
    waiting = _to_submit.get(loop)
    if waiting is None:
        _to_submit[loop] = waiting = []
        loop.call_soon(_submit_queued, loop)
    waiting.append(p)
    return fut


def telemetry(r: InferRequest) -> Headers:
    """Batching telemetry of the batch that took this request's first items (and, for a
    gateway model, the replica that ran it and the upstream time)."""
    headers = [
        (b"X-Infergate-Queue-Us", b"%d" % max(0, round((r.dispatched_at - r.enqueued) * 1e6))),
        (b"X-Infergate-Batch-Items", b"%d" % r.batch_items),
        (b"X-Infergate-Batch-Requests", b"%d" % r.batch_requests),
        (b"X-Infergate-Compute-Us", b"%d" % round(r.compute_s * 1e6)),
    ]
    if r.lowered:
        headers.append((b"X-Infergate-Priority-Lowered", r.lowered))
    if r.upstream is not None:
        headers.append((b"X-Infergate-Upstream-Replica", r.upstream.replica.encode()))
        headers.append((b"X-Infergate-Upstream-Us", b"%d" % round(r.upstream.seconds * 1e6)))
    return headers
