"""OpenAI-compatible ``POST /v1/embeddings`` and ``GET /v1/models``.

``prompt_name`` (TEI's and sentence-transformers' name) picks one of a text model's named
prompts for the request's texts; without it the model's default prompt applies.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import msgspec
import numpy as np

from infergate.engine.api.common import (
    BODY_TOO_LARGE,
    HTTP_ERRORS,
    MAX_INPUTS,
    MODEL_NOT_FOUND,
    ApiError,
    admit,
    api_error_response,
    authenticate,
    check_texts,
    decode_json,
    infer,
    infer_then,
    invalid,
    measured,
    priority_and_timeout,
    telemetry,
)
from infergate.engine.auth.keys import Key
from infergate.engine.auth.tenants import Auth
from infergate.engine.http.request import Request
from infergate.engine.http.response import CONTENT_TYPE_JSON, Response, json_response, numpy_json
from infergate.engine.http.router import Router
from infergate.engine.models.registry import ModelRegistry
from infergate.engine.models.text import TextPreparer, settings_of
from infergate.engine.scheduler.batcher import Batcher
from infergate.engine.scheduler.queues import InferRequest

MAX_TOKEN_ID = 2**31 - 1
MAX_BODY_BYTES = 1024 * 1024
"""A request body; beyond it, 413 before decoding. Any request within the text budget fits:
MAX_REQUEST_CHARS characters take at most 12 bytes each in JSON (an escaped surrogate pair)."""

EMBED_KEY = ("embeddings",)
"""The batch key of embeddings texts, from this API and KServe's alike."""


class EmbeddingsBody(msgspec.Struct, kw_only=True):
    input: Any
    model: str
    encoding_format: str = "float"
    dimensions: int | None = None
    user: str | None = None
    priority: Any = None
    timeout: Any = None
    prompt_name: Any = None


_body = msgspec.json.Decoder(EmbeddingsBody)


def prompt_of(batcher: Batcher, name: Any) -> str | None:
    """The validated ``prompt_name`` of a request (None: the model's default prompt).

    Raises:
        ApiError: 400 when it is not a string, or not one of the model's prompts (listed).
    """
    if name is None:
        return None
    if not isinstance(name, str):
        raise invalid("prompt_name must be a string")
    settings = settings_of(batcher.executor)
    prompts = sorted(settings.prompts) if settings is not None else []
    if not prompts:
        raise invalid(f"model {batcher.name} has no prompts, so prompt_name cannot be used")
    if name not in prompts:
        raise invalid(
            f"prompt_name {name!r} is not one of model {batcher.name}'s prompts: "
            f"{', '.join(prompts)}"
        )
    return name


def parse_inputs(value: Any, vocab_size: int | None) -> list[str | list[int]]:
    """Validate ``input``: a string, strings, a token array, or token arrays."""
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, list) and value and all(isinstance(x, int) for x in value):
        items = [value]
    elif isinstance(value, list):
        items = value
    else:
        raise invalid("input must be a string, a list of strings, or token arrays")
    if not items:
        raise invalid("input must not be empty")
    if len(items) > MAX_INPUTS:
        raise invalid(f"at most {MAX_INPUTS} inputs per request, got {len(items)}")
    for i, x in enumerate(items):
        if isinstance(x, str):
            if not x:
                raise invalid(f"input[{i}] is an empty string")
        elif not isinstance(x, list) or not x:
            raise invalid(f"input[{i}] must be a non-empty string or a non-empty token array")
    check_texts(items)  # sizes first: the token checks below then walk a bounded amount
    limit = vocab_size if vocab_size is not None else MAX_TOKEN_ID
    for i, x in enumerate(items):
        if isinstance(x, list) and not all(type(t) is int and 0 <= t < limit for t in x):
            raise invalid(f"input[{i}] must hold token ids in 0..{limit - 1} (integers)")
    return items


def prompted(batcher: Batcher, items: list[Any], prompt: str) -> tuple[list[Any], list[int]]:
    """Text ``items`` tokenised after the prompt ``prompt`` (the model has it: ``prompt_of``),
    and their token counts.

    Raises:
        ApiError: 400 for token arrays (a prompt applies to texts).
    """
    if not all(isinstance(x, str) for x in items):
        raise invalid("prompt_name applies to text inputs, not to token arrays")
    executor = batcher.executor
    if not isinstance(executor, TextPreparer):  # prompt_of found prompts: a text executor
        raise invalid(f"model {batcher.name} has no tokenizer")
    tokens = executor.prepare(items, prompt)
    return list(tokens), [len(t) for t in tokens]


def embeddings_response(done: InferRequest, model: str, as_b64: bool) -> Response:
    """The answer's JSON, built without a Python float per element.

    Float vectors: orjson writes them from the buffer, as float64 (bench/encode_micro.py: one
    384-dim vector 36 -> 12 µs, 32 of them 1.0 -> 0.5 ms). The text is byte for byte what
    msgspec wrote for ``tolist()``. Not float32's own shortest text: it is 40% shorter but
    some values do not survive a float64 parser (0x15ae43fd prints as 7.038531e-26, which
    parses to a float64 exactly halfway between two float32 and rounds to the even one).
    Base64: the raw little-endian float32 bytes, which msgspec writes as base64 itself
    (8.2 -> 5.0 µs): the fast path for clients that can use it.
    """
    data = []
    tokens = 0
    for i, (vec, ntok) in enumerate(done.outputs):
        tokens += ntok
        emb: Any = (
            np.asarray(vec, dtype="<f4").tobytes()
            if as_b64
            else np.ascontiguousarray(vec, dtype=np.float64)
        )
        data.append({"object": "embedding", "index": i, "embedding": emb})
    out = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    if as_b64:
        return json_response(out, headers=telemetry(done))
    return Response(numpy_json(out), 200, CONTENT_TYPE_JSON, telemetry(done))


def add_openai_routes(router: Router, registry: ModelRegistry, auth: Auth | None = None) -> None:
    guard = auth if auth is not None else Auth()

    def embeddings(req: Request) -> Response | Awaitable[Response]:
        try:
            api_key = authenticate(req, guard)
            if len(req.body) > MAX_BODY_BYTES:
                raise ApiError(
                    413, BODY_TOO_LARGE, f"request bodies are limited to {MAX_BODY_BYTES} bytes"
                )
            body: EmbeddingsBody = decode_json(_body, req.body, "request body")
            batcher = registry.get(body.model)
            if batcher is None:
                raise ApiError(404, MODEL_NOT_FOUND, f"The model '{body.model}' does not exist")
            cfg = batcher.config
            if cfg.task != "embeddings":
                raise invalid(f"model {body.model} serves task '{cfg.task}', not embeddings")
            fmt = body.encoding_format
            if fmt not in ("float", "base64"):
                raise invalid("encoding_format must be 'float' or 'base64'")
            dim = batcher.executor.embedding_dim() or cfg.dim
            if body.dimensions is not None and body.dimensions != dim:
                raise invalid(f"model {body.model} only supports dimensions={dim}")
            prompt = prompt_of(batcher, body.prompt_name)
            items = parse_inputs(body.input, batcher.executor.vocab_size)
            level, timeout = priority_and_timeout(req, batcher, body.priority, body.timeout)
            lengths, cost = None, len(items)
            if prompt is not None:  # tokenised here, after the prompt
                items, lengths = prompted(batcher, items, prompt)
                cost = sum(lengths) if api_key is not None else cost
            elif api_key is not None:  # the key's item bucket counts tokens for text models
                items, lengths, cost = measured(batcher, items)
            answer = partial(embeddings_response, model=body.model, as_b64=fmt == "base64")
            if api_key is None:  # nothing to admit: no coroutine, no task
                return infer_then(
                    req,
                    batcher,
                    items,
                    EMBED_KEY,
                    level,
                    timeout,
                    answer,
                    api_error_response,
                    lengths,
                )
        except HTTP_ERRORS as e:
            return api_error_response(e)
        return keyed(req, api_key, batcher, items, level, timeout, lengths, cost, answer)

    async def keyed(
        req: Request,
        api_key: Key,
        batcher: Batcher,
        items: list[Any],
        level: int,
        timeout: float | None,
        lengths: list[int] | None,
        cost: int,
        answer: Callable[[InferRequest], Response],
    ) -> Response:
        """A request under an API key: admitted (concurrency, rate limits) before it queues."""
        try:
            level, adm = await admit(req, guard, api_key, batcher, level, cost)
            done = await infer(req, batcher, items, EMBED_KEY, level, timeout, adm, lengths)
        except HTTP_ERRORS as e:
            return api_error_response(e)
        return answer(done)

    def models(_req: Request) -> Response:
        data = [
            {
                "id": b.name,
                "object": "model",
                "created": 0,
                "owned_by": "infergate",
                "task": b.config.task,
                **b.executor.describe(),
            }
            for b in registry
        ]
        return json_response({"object": "list", "data": data})

    router.add(  # the body limit is checked when the head arrives, before the body is read
        ["POST"],
        "/v1/embeddings",
        embeddings,
        max_body=MAX_BODY_BYTES,
        too_large=api_error_response(
            ApiError(413, BODY_TOO_LARGE, f"request bodies are limited to {MAX_BODY_BYTES} bytes")
        ),
    )
    router.add(["GET"], "/v1/models", models)
