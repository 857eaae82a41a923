"""KServe v2 for text models: their tensor contract, their requests as batch items, their answers.

- ``embeddings``: ``TEXT`` (BYTES ``[n]`` or ``[n, 1]``) → ``EMBEDDING`` (FP32 ``[n, dim]``).
- ``rerank``: ``QUERY`` and ``DOCUMENT`` (BYTES ``[n]`` or ``[n, 1]``; equal ``n``, or a
  ``QUERY`` of one row that applies to every document) → ``SCORE`` (FP32 ``[n]``): each pair's
  relevance score, as ``/v1/rerank`` gives it (after the model's activation).
- ``classify``: ``TEXT`` → ``LOGITS`` (FP32 ``[n, labels]``, the raw logits) and, unless the
  model's activation is ``none``, ``PROBABILITIES`` (FP32 ``[n, labels]``: softmax, or a sigmoid
  per label for a multi-label model, as ``/v1/classify``'s scores).

Each text or (query, document) pair is one batch item under the same batch key as
``/v1/embeddings``, ``/v1/classify`` and ``/v1/rerank`` (``engine.api.openai``,
``engine.api.text``), so requests of both APIs share batches. Rerank and classify inputs are
tokenised while the request is parsed (on the reactor, or on the codec thread for big bodies),
before queueing; embeddings texts are tokenised by the Batcher at submit, as ``/v1/embeddings``
texts are. Thread-safe: reads frozen configs, the executor's settings and its thread-safe
tokenizer.
"""

from __future__ import annotations

import time
from collections.abc import Hashable
from typing import Any, NamedTuple

import numpy as np

from infergate.engine.api.common import check_texts, invalid
from infergate.engine.api.kserve_codec import OutputTensor, OutputWanted, Tensors
from infergate.engine.api.openai import EMBED_KEY
from infergate.engine.api.text import (
    CLASSIFY_KEY,
    MAX_RERANK_DOCUMENTS,
    RERANK_KEY,
    check_pair_chars,
    check_tokens,
)
from infergate.engine.executors.spec import InputError, ModelSpec, TensorSpec
from infergate.engine.models.text import TextPreparer
from infergate.engine.scheduler.batcher import Batcher

TEXT_TASKS = ("embeddings", "rerank", "classify")
_INPUT_NAMES = {"embeddings": ("TEXT",), "rerank": ("QUERY", "DOCUMENT"), "classify": ("TEXT",)}


class TextItems(NamedTuple):
    """A text request's batch items: texts (embeddings) or Tokens (rerank, classify)."""

    items: list[Any]
    key: Hashable
    lengths: list[int] | None
    """Token counts when tokenised here (rerank, classify), else None (the Batcher measures)."""
    tokenize_s: float | None


def text_spec(b: Batcher) -> ModelSpec | None:
    """The KServe contract of a rerank or classify model with a tokenizer (None otherwise).
    A classifier's label count is its executor's (``-1`` before it is known)."""
    task = b.config.task
    executor = b.executor
    if task not in ("rerank", "classify") or not isinstance(executor, TextPreparer):
        return None
    settings = executor.settings
    rows = max(1, b.batching.max_batch_size)
    if task == "rerank":
        inputs = (TensorSpec("QUERY", "BYTES", (-1,)), TensorSpec("DOCUMENT", "BYTES", (-1,)))
        return ModelSpec(inputs, (TensorSpec("SCORE", "FP32", (-1,)),), rows, True)
    labels = len(executor.labels) or -1
    outputs = [TensorSpec("LOGITS", "FP32", (-1, labels))]
    if settings.activation != "none":
        outputs.append(TensorSpec("PROBABILITIES", "FP32", (-1, labels)))
    return ModelSpec((TensorSpec("TEXT", "BYTES", (-1,)),), tuple(outputs), rows, True)


def strings(tensors: Tensors, name: str) -> list[str]:
    """The non-empty strings of input ``name`` (BYTES ``[n]`` or ``[n, 1]``)."""
    datatype, value = tensors[name]
    if datatype != "BYTES":
        raise InputError(name, f"input {name}: expected BYTES, got {datatype}")
    if value.ndim > 2 or (value.ndim == 2 and value.shape[1] != 1):
        raise InputError(
            name, f"input {name}: expected shape [-1] or [-1, 1], got {list(value.shape)}"
        )
    texts: list[str] = value.reshape(-1).tolist()
    if not texts:
        raise InputError(name, f"input {name} holds no strings")
    empty = next((i for i, t in enumerate(texts) if not t), None)
    if empty is not None:
        raise InputError(name, f"input {name}[{empty}] is an empty string")
    return texts


def _check_names(task: str, tensors: Tensors) -> None:
    want = _INPUT_NAMES[task]
    if set(tensors) != set(want):
        names = ", ".join(sorted(tensors))
        first = next((n for n in tensors if n not in want), want[0])
        raise InputError(
            first, f"{task} models take input{'s' if len(want) > 1 else ''} "
            f"{' and '.join(want)} (got {names})",
        )  # fmt: skip


def text_items(b: Batcher, tensors: Tensors) -> TextItems:
    """A text model's request as batch items, validated (and tokenised for rerank, classify).

    Raises:
        InputError: wrong input names, datatypes or shapes, empty strings (400 naming the
            input).
        ApiError: over a size limit, or a text that tokenises to nothing (400).
    """
    task = b.config.task
    _check_names(task, tensors)
    if task == "embeddings":
        texts = strings(tensors, "TEXT")
        check_texts(texts, "TEXT")
        return TextItems(list(texts), EMBED_KEY, None, None)
    executor = b.executor
    if not isinstance(executor, TextPreparer):  # text_spec already refused it
        raise invalid(f"model {b.name} has no tokenizer (executor {executor.kind})")
    if task == "classify":
        texts = strings(tensors, "TEXT")
        check_texts(texts, "TEXT")
        t0 = time.perf_counter()
        tokens = executor.prepare(texts)
        tokenize_s = time.perf_counter() - t0
        check_tokens(tokens, "TEXT")
        return TextItems(list(tokens), CLASSIFY_KEY, [len(t) for t in tokens], tokenize_s)
    pairs = _pairs(strings(tensors, "QUERY"), strings(tensors, "DOCUMENT"))
    t0 = time.perf_counter()
    tokens = executor.prepare(pairs)
    tokenize_s = time.perf_counter() - t0
    for i, t in enumerate(tokens):
        if t.content == 0:
            side = "QUERY" if executor.prepare([pairs[i][0]])[0].content == 0 else "DOCUMENT"
            raise invalid(f"{side} of pair {i} tokenises to nothing (no token but special ones)")
    return TextItems(list(tokens), RERANK_KEY, [len(t) for t in tokens], tokenize_s)


def _pairs(queries: list[str], docs: list[str]) -> list[tuple[str, str]]:
    """(query, document) pairs: one query per document, or one query for all of them."""
    if len(queries) not in (1, len(docs)):
        raise InputError(
            "QUERY",
            f"input QUERY: {len(queries)} rows for {len(docs)} DOCUMENT rows (give one query "
            "per document, or one query for all of them)",
        )
    if len(docs) > MAX_RERANK_DOCUMENTS:
        raise invalid(f"at most {MAX_RERANK_DOCUMENTS} documents per request, got {len(docs)}")
    check_texts(queries, "QUERY")
    check_texts(docs, "DOCUMENT")
    pairs = [(queries[0 if len(queries) == 1 else i], d) for i, d in enumerate(docs)]
    check_pair_chars(sum(len(q) + len(d) for q, d in pairs))
    return pairs


def text_answer(task: str, outputs: list[Any], wanted: list[OutputWanted]) -> list[OutputTensor]:
    """The requested output tensors of a finished text request, from its items' outputs:
    ``(vector, tokens)`` (embeddings), ``(score, tokens)`` (rerank), ``(scores, tokens,
    logits)`` (classify)."""
    if task == "embeddings":
        by_name = {"EMBEDDING": np.stack([o[0] for o in outputs]).astype(np.float32)}
    elif task == "rerank":
        by_name = {"SCORE": np.array([o[0] for o in outputs], dtype=np.float32)}
    else:
        by_name = {
            "LOGITS": np.stack([o[2] for o in outputs]).astype(np.float32),
            "PROBABILITIES": np.stack([o[0] for o in outputs]).astype(np.float32),
        }
    return [OutputTensor(w.name, "FP32", by_name[w.name], w.binary) for w in wanted]
