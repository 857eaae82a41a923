"""KServe v2 inference protocol (Triton's HTTP/REST API), with the binary tensor extension.

A model's inputs and outputs are its executor's ``ModelSpec``: ``GET /v2/models/{m}`` returns
them (tritonclient builds requests from that alone) and ``GET /v2/models/{m}/config`` returns a
Triton-like config with ``max_batch_size``. A request carries any number of inputs; they are
checked against the spec (a missing, unknown or mistyped input, or a shape that does not fit,
is a 400 naming the input) and cut into items: one per row for a batched model, so rows of
requests with the same batch key (datatypes and non-batch dimensions) are concatenated along
dimension 0 and a request of more rows than ``max_batch_size`` is split and reassembled in
order by the Batcher; one item holding whole tensors for an unbatched model. The ``outputs``
selection (names validated before queuing, ``binary_data`` per output) picks and orders the
answer's tensors.

Text models (embeddings, rerank, classify) take and return the tensors of
``engine.api.kserve_text``: ``TEXT`` → ``EMBEDDING``, ``QUERY`` + ``DOCUMENT`` → ``SCORE``,
``TEXT`` → ``LOGITS`` (+ ``PROBABILITIES``); their items are texts or (query, document) pairs,
sharing batches with ``/v1/embeddings``, ``/v1/rerank`` and ``/v1/classify`` ones.
Bodies and tensors are decoded and encoded by ``engine.api.kserve_codec``, which holds the
limits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Any, NamedTuple

from infergate.engine.api.common import (
    BODY_TOO_LARGE,
    HTTP_ERRORS,
    MODEL_NOT_FOUND,
    ApiError,
    admit,
    authenticate,
    drop_headers,
    http_error,
    infer,
    invalid,
    priority_and_timeout,
    telemetry,
)
from infergate.engine.api.kserve_codec import (
    JSON_CHUNK,
    MAX_JSON_BYTES,
    OFFLOAD_BYTES,
    OutputTensor,
    OutputWanted,
    codec_thread,
    decode_inputs,
    encode_outputs,
    outputs_wanted,
    split_body,
    timeout_ms,
)
from infergate.engine.api.kserve_text import TEXT_TASKS, text_answer, text_items, text_spec
from infergate.engine.api.text import text_headers
from infergate.engine.auth.keys import Key
from infergate.engine.auth.tenants import Auth
from infergate.engine.executors.spec import (
    InputError,
    ModelSpec,
    SpecError,
    embedding_spec,
    from_items,
    from_numpy,
    to_items,
)
from infergate.engine.http.request import Request
from infergate.engine.http.response import CONTENT_TYPE_JSON, Response, json_response
from infergate.engine.http.router import Router
from infergate.engine.models.registry import ModelRegistry
from infergate.engine.scheduler.batcher import Batcher
from infergate.engine.scheduler.queues import EXECUTOR_ERROR, InferRequest, Rejection

TRITON_TYPES = {"BYTES": "TYPE_STRING"}
"""Triton config ``data_type`` names that are not ``TYPE_`` + the KServe name."""


def kserve_error(
    status: int, reason: str, message: str, retry_after: float | None = None
) -> Response:
    """KServe's error shape ``{"error": "..."}``, with infergate's reason header."""
    return json_response({"error": message}, status, drop_headers(reason, retry_after))


def kserve_error_response(e: Rejection | InputError) -> Response:
    """The KServe answer to any error a route catches (``HTTP_ERRORS``): the one place."""
    r = http_error(e)
    return kserve_error(r.status, r.reason, r.message, r.retry_after)


def model_spec(b: Batcher) -> ModelSpec:
    """What model ``b`` takes over KServe: its executor's spec; an embeddings model whose
    executor publishes none (a gateway model) takes TEXT and returns EMBEDDING of the
    configured ``dim``; a rerank or classify model with a tokenizer, the contract of
    ``engine.api.kserve_text``.

    Raises:
        ApiError: 400, the model has no tensor interface (a text task without a spec).
    """
    spec = b.executor.spec
    if spec is not None:
        return spec
    if b.config.task == "embeddings":
        return embedding_spec(b.config.dim, b.batching.max_batch_size)
    spec = text_spec(b)
    if spec is not None:
        return spec
    raise invalid(f"model {b.name} (task {b.config.task}) is not served over KServe v2")


def max_batch_size(b: Batcher, spec: ModelSpec) -> int:
    """Triton's ``max_batch_size``: the live batching limit of a batched model, else 0."""
    return b.batching.max_batch_size if spec.batched else 0


def metadata(b: Batcher) -> dict[str, Any]:
    """``GET /v2/models/{m}``: KServe v2 model metadata from the spec."""
    spec = model_spec(b)
    return spec.metadata(
        b.name,
        b.executor.kind,
        simulated=b.executor.simulated,
        max_batch_size=max_batch_size(b, spec),
    )


def model_config(b: Batcher) -> dict[str, Any]:
    """``GET /v2/models/{m}/config``: Triton's model configuration (JSON form); the dims of a
    batched model leave out the batch dimension, as Triton writes them."""
    spec = model_spec(b)
    skip = 1 if spec.batched else 0

    def entries(tensors: Any) -> list[dict[str, Any]]:
        return [
            {
                "name": t.name,
                "data_type": TRITON_TYPES.get(t.datatype, f"TYPE_{t.datatype}"),
                "dims": list(t.shape[skip:]),
            }
            for t in tensors
        ]

    return {
        "name": b.name,
        "platform": "onnxruntime_onnx" if b.executor.kind == "onnxruntime" else b.executor.kind,
        "backend": b.executor.kind,
        "max_batch_size": max_batch_size(b, spec),
        "input": entries(spec.inputs),
        "output": entries(spec.outputs),
    }


class Parsed(NamedTuple):
    """A KServe inference request, decoded and validated, ready to queue."""

    items: list[Any]
    key: Hashable
    priority: Any
    timeout_ms: float | None
    req_id: str | None
    outputs: list[OutputWanted]
    task: str
    """``tensor``, or the text task whose items these are (``engine.api.kserve_text``)."""
    lengths: list[int] | None = None
    """Token counts of items tokenised while parsing (rerank, classify)."""
    tokenize_s: float | None = None


def parse_request(req: Request, b: Batcher) -> Parsed:
    """Decode and validate a KServe inference request for model ``b``.

    Thread-safe: reads only the request, ``b.config`` (a frozen struct swapped by reference)
    and the executor's spec (immutable once loaded), so big bodies are parsed on the codec
    thread.

    Raises:
        ApiError: 400 for anything malformed, 413 for a JSON part over MAX_JSON_BYTES.
        InputError: the tensors do not fit the model (400 naming the input).
    """
    header, body, header_len = split_body(req)
    spec = model_spec(b)
    tensors = decode_inputs(header, body, header_len)
    params = header.get("parameters") or {}
    if not isinstance(params, dict):
        raise invalid("parameters must be an object")
    # decided (and "outputs" validated) before any work is queued
    wanted = outputs_wanted(header, tuple(t.name for t in spec.outputs))
    req_id = header.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise invalid("id must be a string")
    prio = params.get("priority")
    prio = None if type(prio) is int and prio == 0 else prio  # Triton: 0 = model default
    timeout = timeout_ms(params.get("timeout"))
    if b.config.task in TEXT_TASKS:
        t = text_items(b, tensors)
        return Parsed(
            t.items, t.key, prio, timeout, req_id, wanted, b.config.task, t.lengths, t.tokenize_s
        )
    arrays, key = b.executor.accept(tensors)
    return Parsed(to_items(spec, arrays), key, prio, timeout, req_id, wanted, "tensor")


def answer_tensors(b: Batcher, p: Parsed, done: InferRequest) -> list[OutputTensor]:
    """The requested outputs of a finished request, in the order asked for; the datatype is
    the array's own (the simulator's output follows its input's datatype).

    Raises:
        ApiError: 500 when the executor's outputs do not match the spec (never a misaligned
            reply).
    """
    if p.task != "tensor":
        return text_answer(p.task, done.outputs, p.outputs)
    spec = model_spec(b)
    try:
        arrays = from_items(spec, done.outputs)
        by_name = {t.name: a for t, a in zip(spec.outputs, arrays, strict=True)}
        return [
            OutputTensor(w.name, from_numpy(by_name[w.name].dtype), by_name[w.name], w.binary)
            for w in p.outputs
        ]
    except (ValueError, SpecError) as e:
        raise ApiError(500, EXECUTOR_ERROR, f"model {b.name} answered badly: {e}") from None


def add_kserve_routes(router: Router, registry: ModelRegistry, auth: Auth | None = None) -> None:
    guard = auth if auth is not None else Auth()
    ok = Response(b"", 200, CONTENT_TYPE_JSON)

    def live(_req: Request) -> Response:
        return ok

    def ready(_req: Request) -> Response:
        return ok

    def server_meta(_req: Request) -> Response:
        return json_response(
            {"name": "infergate", "version": "1", "extensions": ["binary_tensor_data"]}
        )

    def _model(name: str) -> Batcher:
        b = registry.get(name)
        if b is None:
            raise ApiError(404, MODEL_NOT_FOUND, f"model {name!r} does not exist")
        return b

    def model_get(req: Request) -> Response:
        name, _, rest = req.path.removeprefix("/v2/models/").partition("/")
        rest = _strip_version(rest)
        try:
            b = _model(name)
            if rest == "":
                return json_response(metadata(b))
            if rest == "config":
                return json_response(model_config(b))
        except HTTP_ERRORS as e:
            return kserve_error_response(e)
        if rest == "ready":
            return ok
        return kserve_error(404, "not_found", f"no route {req.path}")

    async def model_post(req: Request) -> Response:
        name, _, rest = req.path.removeprefix("/v2/models/").partition("/")
        if _strip_version(rest) != "infer":
            return kserve_error(404, "not_found", f"no route {req.path}")
        try:
            api_key = authenticate(req, guard)
            return await _infer(req, _model(name), api_key)
        except HTTP_ERRORS as e:
            return kserve_error_response(e)

    async def _infer(req: Request, b: Batcher, api_key: Key | None) -> Response:
        loop = asyncio.get_running_loop()
        if len(req.body) < OFFLOAD_BYTES:
            p = parse_request(req, b)
        else:  # see OFFLOAD_BYTES
            p = await loop.run_in_executor(codec_thread, parse_request, req, b)
        level, timeout = priority_and_timeout(req, b, p.priority, p.timeout_ms)
        cost = sum(p.lengths) if p.lengths is not None else len(p.items)  # tokens: text models
        level, adm = await admit(req, guard, api_key, b, level, cost)
        done = await infer(req, b, p.items, p.key, level, timeout, adm, p.lengths)
        tensors = answer_tensors(b, p, done)
        extra = telemetry(done) if p.tokenize_s is None else text_headers(done, p.tokenize_s)
        args = (b.name, tensors, extra, p.req_id)
        if sum(t.array.size for t in tensors if not t.binary) <= JSON_CHUNK:
            return encode_outputs(*args)
        return await loop.run_in_executor(codec_thread, encode_outputs, *args)

    router.add(["GET"], "/v2/health/live", live)
    router.add(["GET"], "/v2/health/ready", ready)
    router.add(["GET"], "/v2", server_meta)
    router.add(["GET"], "/v2/models/", model_get, prefix=True)
    router.add(  # the JSON limit is checked when the head arrives, before the body is read
        ["POST"],
        "/v2/models/",
        model_post,
        prefix=True,
        max_body=MAX_JSON_BYTES,
        max_body_unless="Inference-Header-Content-Length",
        too_large=kserve_error(
            413,
            BODY_TOO_LARGE,
            f"the JSON part of an inference request is limited to {MAX_JSON_BYTES} bytes: send "
            "big tensors as binary data (parameters.binary_data_size with "
            "Inference-Header-Content-Length; tritonclient: binary_data=True)",
        ),
    )


def _strip_version(rest: str) -> str:
    """``versions/1/infer`` → ``infer``; any version is served by the one loaded."""
    if rest.startswith("versions/"):
        _, _, after = rest.removeprefix("versions/").partition("/")
        return after
    return rest
