"""Embeddings through an OpenAI-compatible upstream: one merged ``/v1/embeddings`` call per
batch, the results split back per item.

Outputs per item are ``(vector float32[dim], token count)``, exactly as the ONNX embedding
executor's, so the OpenAI and KServe APIs serve a gateway model unchanged.

Token counts: OpenAI's answer carries only ``usage.prompt_tokens`` for the whole call. It is
apportioned over the items by their size (characters of a text, ``TOKEN_CHARS`` per token id)
with the largest-remainder method, so the counts are whole numbers, each request's count is
its share, and the counts of one upstream call add up to exactly what the upstream reported.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import numpy as np

from infergate.engine.executors.base import Outputs
from infergate.engine.executors.upstream.errors import UPSTREAM_ERROR, UpstreamError
from infergate.engine.executors.upstream.executor import BatchUpstreamExecutor

log = logging.getLogger("infergate.upstream")

EMBEDDINGS_PATH = "/v1/embeddings"
TOKEN_CHARS = 4
"""What one token id weighs against one character when usage is apportioned."""
PROBE_INPUT = "dimension probe"


class _Embedding(msgspec.Struct):
    index: int
    embedding: bytes | list[float]
    """Base64 (msgspec decodes it to bytes) or a float list."""


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0


class _Reply(msgspec.Struct):
    data: list[_Embedding]
    usage: _Usage | None = None


_decoder = msgspec.json.Decoder(_Reply)


class OpenAIEmbeddingsExecutor(BatchUpstreamExecutor):
    """Embeddings on OpenAI-compatible replicas (``executor = "openai"``, task
    ``embeddings``). ``arun`` runs on the loop of the reactor that starts the batch, or the
    client loop (the Batcher starts it with ``run_async``)."""

    kind = "openai"
    default_health_path = "/v1/models"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dim: int | None = None
        """Length of the upstream's vectors, learnt from its first answer (None before)."""

    def embedding_dim(self) -> int | None:
        """The upstream's vector length once known (what the APIs check ``dimensions``
        against); None before its first answer. Any thread."""
        return self.dim

    def after_first_check(self) -> None:
        """Learn the vector length with one tiny call; a failure is only logged."""
        try:
            out = self.run([PROBE_INPUT], 0)
        except UpstreamError as e:
            log.warning("model %s: probing the upstream failed: %s", self.name, e)
            return
        log.info("model %s: upstream %s serves %d-dim vectors", self.name,
                 self.upstream_model, len(out[0][0]))  # fmt: skip

    async def arun(self, items: list[Any], slot: int) -> Outputs:
        """One upstream call per batch (two when the batch mixes texts and token arrays,
        which OpenAI's API does not accept in one ``input``)."""
        texts = [i for i, x in enumerate(items) if isinstance(x, str)]
        if not texts or len(texts) == len(items):
            return await self._call(items, slot)
        tokens = [i for i, x in enumerate(items) if not isinstance(x, str)]
        out: list[Any] = [None] * len(items)
        for group in (texts, tokens):
            done = await self._call([items[i] for i in group], slot)
            for i, o in zip(group, done, strict=True):
                out[i] = o
        return out

    async def _call(self, items: list[Any], slot: int) -> list[tuple[np.ndarray[Any, Any], int]]:
        body = msgspec.json.encode(
            {"model": self.upstream_model, "input": items, "encoding_format": "base64"}
        )
        reply = await self.client.apost(EMBEDDINGS_PATH, body)
        try:
            vectors, total = decode_reply(reply.body, len(items))
        except ValueError as e:
            raise UpstreamError(
                502, UPSTREAM_ERROR, f"replica {reply.replica}: {e}", replica=reply.replica
            ) from None
        self.dim = vectors.shape[1]
        self.record(slot, reply)
        counts = apportion(total, [_weight(x) for x in items])
        return [(vectors[i], counts[i]) for i in range(len(items))]


def decode_reply(body: bytes, n: int) -> tuple[np.ndarray[Any, Any], int]:
    """The ``n`` vectors (float32, in input order) and ``usage.prompt_tokens`` of an
    embeddings answer; base64 (little-endian float32) or float lists.

    Raises:
        ValueError: the answer does not fit the request (count, indices, lengths, JSON).
    """
    try:
        doc = _decoder.decode(body)
    except msgspec.DecodeError as e:
        raise ValueError(f"invalid embeddings answer: {e}") from None
    if len(doc.data) != n:
        raise ValueError(f"{len(doc.data)} embeddings for {n} inputs")
    rows: list[bytes | list[float] | None] = [None] * n
    for item in doc.data:
        if not 0 <= item.index < n or rows[item.index] is not None:
            raise ValueError(f"embedding index {item.index} is out of range or repeated")
        rows[item.index] = item.embedding
    usage = doc.usage.prompt_tokens if doc.usage is not None else 0
    raw = [r for r in rows if isinstance(r, bytes)]
    if len(raw) == n:  # all base64 (what we ask for): one buffer, one copy
        sizes = {len(r) for r in raw}
        size = len(raw[0])
        if len(sizes) != 1 or not size:
            raise ValueError(f"embeddings of different or empty lengths {sorted(sizes)}")
        if size % 4:
            raise ValueError(f"base64 embedding of {size} bytes is not float32")
        vectors = np.frombuffer(b"".join(raw), dtype="<f4").reshape(n, size // 4)
        return vectors.astype(np.float32), usage
    vecs = [_vector(r) for r in rows if r is not None]
    dims = {len(v) for v in vecs}
    if len(dims) != 1 or 0 in dims:
        raise ValueError(f"embeddings of different or empty lengths {sorted(dims)}")
    return np.stack(vecs), usage


def _vector(emb: bytes | list[float]) -> np.ndarray[Any, Any]:
    if isinstance(emb, list):
        return np.asarray(emb, dtype=np.float32)
    if len(emb) % 4:
        raise ValueError(f"base64 embedding of {len(emb)} bytes is not float32")
    return np.frombuffer(emb, dtype="<f4").astype(np.float32)


def _weight(item: Any) -> int:
    return len(item) if isinstance(item, str) else TOKEN_CHARS * len(item)


def apportion(total: int, weights: list[int]) -> list[int]:
    """Split ``total`` into whole shares proportional to ``weights`` (largest remainder,
    ties to the earlier item); the shares add up to ``total`` exactly."""
    if total <= 0 or not weights:
        return [0] * len(weights)
    w = [max(1, x) for x in weights]
    whole = sum(w)
    shares = [total * x // whole for x in w]
    left = total - sum(shares)  # < len(w)
    by_remainder = sorted(range(len(w)), key=lambda i: (-(total * w[i] % whole), i))
    for i in by_remainder[:left]:
        shares[i] += 1
    return shares
