"""``POST /v1/rerank`` (Cohere / Jina / TEI shape) and ``POST /v1/classify``.

Inputs are tokenised here, on the request's reactor thread, before they are queued: the
scheduler then knows each item's length (token-budget batching) and the executor never
tokenises again. Measured with MiniLM's tokenizer (bench/tokenize_cost.py, shared 2-core box
under load): ~70 µs per short query (~12 tokens), ~0.7 ms per ~180-token passage, 0.7-1.1 ms
per (query, passage) pair; 1.4% and 0.5% of the same items' MiniLM int8 inference. The largest
request the text budget admits (64 Ki characters) holds its reactor ~45 ms. Each (query,
document) pair of a rerank request is one batch item, so rerank requests from many clients
merge into shared batches.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from infergate.engine.api.common import (
    MAX_INPUT_CHARS,
    MAX_INPUTS,
    MAX_REQUEST_CHARS,
    MODEL_NOT_FOUND,
    ApiError,
    admit,
    api_error_response,
    authenticate,
    check_texts,
    decode_json,
    infer,
    invalid,
    priority_and_timeout,
    telemetry,
)
from infergate.engine.auth.tenants import Auth
from infergate.engine.http.request import Request
from infergate.engine.http.response import Headers, Response, json_response
from infergate.engine.http.router import Router
from infergate.engine.models.registry import ModelRegistry
from infergate.engine.models.text import TextPreparer, Tokens
from infergate.engine.scheduler.batcher import Batcher
from infergate.engine.scheduler.queues import InferRequest, Rejection

MAX_RERANK_DOCUMENTS = 1000
"""Documents per rerank request (Cohere's recommended maximum); each is one batch item."""

RERANK_KEY = ("rerank",)
CLASSIFY_KEY = ("classify",)
"""Batch keys: /v1/rerank and KServe pairs share batches, as /v1/classify and KServe texts do."""


class RerankBody(msgspec.Struct, kw_only=True):
    model: str
    query: Any
    documents: Any
    top_n: Any = None
    return_documents: Any = False
    priority: Any = None
    timeout: Any = None


class ClassifyBody(msgspec.Struct, kw_only=True):
    model: str
    input: Any
    top_k: Any = None
    priority: Any = None
    timeout: Any = None


_rerank_body = msgspec.json.Decoder(RerankBody)
_classify_body = msgspec.json.Decoder(ClassifyBody)


def _model(registry: ModelRegistry, name: str, task: str) -> tuple[Batcher, TextPreparer]:
    batcher = registry.get(name)
    if batcher is None:
        raise ApiError(404, MODEL_NOT_FOUND, f"The model '{name}' does not exist")
    if batcher.config.task != task:
        raise invalid(f"model {name} serves task '{batcher.config.task}', not {task}")
    executor = batcher.executor
    if not isinstance(executor, TextPreparer):
        raise invalid(f"model {name} has no tokenizer (executor {executor.kind})")
    return batcher, executor


def _optional_int(value: Any, name: str, low: int, high: int) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise invalid(f"{name} must be an integer")
    if not low <= value <= high:
        raise invalid(f"{name} must be between {low} and {high}, got {value}")
    return value


def parse_rerank(body: RerankBody) -> tuple[str, list[str], int, bool]:
    """(query, documents, top_n, return_documents), validated; top_n defaults to all."""
    if not isinstance(body.query, str) or not body.query.strip():
        raise invalid("query must be a non-empty string")
    docs = body.documents
    if not isinstance(docs, list) or not all(isinstance(d, str) for d in docs):
        raise invalid("documents must be a list of strings")
    if not docs:
        raise invalid("documents must not be empty")
    if len(docs) > MAX_RERANK_DOCUMENTS:
        raise invalid(f"at most {MAX_RERANK_DOCUMENTS} documents per request, got {len(docs)}")
    if len(body.query) > MAX_INPUT_CHARS:
        raise invalid(f"query is longer than {MAX_INPUT_CHARS} characters ({len(body.query)})")
    check_texts(docs, "documents")
    check_pair_chars(len(body.query) * len(docs) + sum(len(d) for d in docs))
    top_n = _optional_int(body.top_n, "top_n", 1, len(docs)) or len(docs)
    if not isinstance(body.return_documents, bool):
        raise invalid("return_documents must be true or false")
    return body.query, docs, top_n, body.return_documents


def check_pair_chars(total: int) -> None:
    """A rerank request's size in characters, each (query, document) pair counted whole: the
    query is tokenised and computed once per document."""
    if total > MAX_REQUEST_CHARS:
        raise invalid(
            f"the request carries {total} characters (the query counts once per document); at "
            f"most {MAX_REQUEST_CHARS} per request: split the documents into several requests"
        )


def parse_classify(body: ClassifyBody) -> list[str]:
    value = body.input
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise invalid("input must be a string or a list of strings")
    if not texts:
        raise invalid("input must not be empty")
    if len(texts) > MAX_INPUTS:
        raise invalid(f"at most {MAX_INPUTS} inputs per request, got {len(texts)}")
    check_texts(texts)
    return texts


def check_tokens(tokens: list[Tokens], what: str) -> None:
    for i, t in enumerate(tokens):
        if t.content == 0:
            raise invalid(f"{what}[{i}] tokenises to nothing (no token besides special ones)")


def text_headers(done: InferRequest, tokenize_s: float) -> Headers:
    """The batching telemetry plus the time spent tokenising on the reactor (TEI's
    ``x-tokenization-time``)."""
    return [*telemetry(done), (b"X-Infergate-Tokenize-Us", b"%d" % round(tokenize_s * 1e6))]


def add_text_routes(router: Router, registry: ModelRegistry, auth: Auth | None = None) -> None:
    """Register ``POST /v1/rerank`` and ``POST /v1/classify`` for the text models in
    ``registry``; with keys configured in ``auth``, each request needs one."""
    guard = auth if auth is not None else Auth()

    async def rerank(req: Request) -> Response:
        try:
            api_key = authenticate(req, guard)
            body: RerankBody = decode_json(_rerank_body, req.body, "request body")
            batcher, executor = _model(registry, body.model, "rerank")
            query, docs, top_n, return_documents = parse_rerank(body)
            t0 = time.perf_counter()
            if executor.prepare([query])[0].content == 0:
                raise invalid("query tokenises to nothing (no token besides special ones)")
            items = executor.prepare([(query, d) for d in docs])
            tokenize_s = time.perf_counter() - t0
            check_tokens(items, "documents")
            level, timeout = priority_and_timeout(req, batcher, body.priority, body.timeout)
            cost = sum(len(t) for t in items)  # tokens, what the key's item bucket counts
            level, adm = await admit(req, guard, api_key, batcher, level, cost)
            done = await infer(req, batcher, list(items), RERANK_KEY, level, timeout, adm)
        except (ApiError, Rejection) as e:
            return api_error_response(e)
        order = sorted(range(len(docs)), key=lambda i: -done.outputs[i][0])[:top_n]
        results: list[dict[str, Any]] = []
        for i in order:
            r: dict[str, Any] = {"index": i, "relevance_score": done.outputs[i][0]}
            if return_documents:
                r["document"] = {"text": docs[i]}
            results.append(r)
        tokens = sum(n for _, n in done.outputs)
        out = {
            "results": results,
            "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return json_response(out, headers=text_headers(done, tokenize_s))

    async def classify(req: Request) -> Response:
        try:
            api_key = authenticate(req, guard)
            body: ClassifyBody = decode_json(_classify_body, req.body, "request body")
            batcher, executor = _model(registry, body.model, "classify")
            texts = parse_classify(body)
            top_k = _optional_int(body.top_k, "top_k", 1, max(1, len(executor.labels)))
            t0 = time.perf_counter()
            items = executor.prepare(texts)
            tokenize_s = time.perf_counter() - t0
            check_tokens(items, "input")
            level, timeout = priority_and_timeout(req, batcher, body.priority, body.timeout)
            cost = sum(len(t) for t in items)
            level, adm = await admit(req, guard, api_key, batcher, level, cost)
            done = await infer(req, batcher, list(items), CLASSIFY_KEY, level, timeout, adm)
        except (ApiError, Rejection) as e:
            return api_error_response(e)
        labels = executor.labels
        data = []
        for i, (scores, *_) in enumerate(done.outputs):
            ranked = sorted(range(len(scores)), key=lambda j: -scores[j])[:top_k]
            data.append({
                "index": i,
                "labels": [{"label": labels[j], "score": float(scores[j])} for j in ranked],
            })  # fmt: skip
        tokens = sum(o[1] for o in done.outputs)
        out = {
            "object": "list",
            "data": data,
            "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return json_response(out, headers=text_headers(done, tokenize_s))

    router.add(["POST"], "/v1/rerank", rerank)
    router.add(["POST"], "/v1/classify", classify)
