"""The embeddings answer's vectors: float JSON from the buffer and base64, both bit-exact, the
float text the same as msgspec's for ``tolist()`` (what the API answered before orjson)."""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace
from typing import Any

import msgspec
import numpy as np
import pytest

from infergate.engine.api.openai import embeddings_response


def _done(outputs: list[tuple[Any, int]]) -> Any:
    return SimpleNamespace(
        outputs=outputs, dispatched_at=2.0, enqueued=1.0, batch_items=len(outputs),
        batch_requests=1, compute_s=0.001, lowered=b"", upstream=None,
    )  # fmt: skip


def _vectors(n: int, dim: int) -> list[np.ndarray[Any, Any]]:
    rng = np.random.default_rng(7)
    # unit vectors plus the values that stress shortest-text printing
    vs = [(v / np.linalg.norm(v)).astype(np.float32) for v in rng.standard_normal((n, dim))]
    # 0x15ae43fd: float32's shortest text (7.038531e-26) parses to a float64 midway between two
    # float32 and so rounds to its neighbour; the float64 text does not
    odd = np.array([0x15AE43FD], dtype=np.uint32).view(np.float32)[0]
    vs.append(np.array([1e-45, 3.4028235e38, -0.0, 1 / 3, 0.1, odd], dtype=np.float32))
    return vs


@pytest.mark.parametrize("as_b64", [False, True])
def test_vectors_round_trip_to_the_same_float32(as_b64: bool) -> None:
    vs = _vectors(32, 384)
    resp = embeddings_response(_done([(v, 2) for v in vs]), "m", as_b64)
    out = json.loads(resp.body)
    assert out["model"] == "m"
    assert out["usage"] == {"prompt_tokens": 2 * len(vs), "total_tokens": 2 * len(vs)}
    assert [d["index"] for d in out["data"]] == list(range(len(vs)))
    for d, v in zip(out["data"], vs, strict=True):
        emb = d["embedding"]
        if as_b64:
            got = np.frombuffer(base64.b64decode(emb), dtype="<f4")
        else:
            got = np.asarray(emb, dtype=np.float64).astype(np.float32)  # as a JSON client reads it
            assert msgspec.json.encode(emb) == msgspec.json.encode(v.tolist())
        assert got.tobytes() == v.tobytes()


def test_float_vectors_of_other_shapes_and_types() -> None:
    strided = np.arange(8, dtype=np.float32)[::2]
    f64 = np.array([0.1, 1 / 3])
    resp = embeddings_response(_done([(strided, 1), (f64, 1), ([0.5, 1.0], 1)]), "m", False)
    data = json.loads(resp.body)["data"]
    assert data[0]["embedding"] == [0.0, 2.0, 4.0, 6.0]
    assert data[1]["embedding"] == [0.1, 1 / 3]  # float64 outputs keep their precision
    assert data[2]["embedding"] == [0.5, 1.0]
    assert (b"X-Infergate-Batch-Items", b"3") in (resp.headers or [])
