"""Micro-benchmark: encoding an embeddings answer (1 or 32 vectors of 384 float32).

Before (``tolist()`` + msgspec, base64 via ``b64encode().decode()``) against orjson on float32
and float64 arrays and msgspec's own base64 of raw bytes; asserts that orjson on float64 writes
the same bytes as before. Usage: python bench/encode_micro.py
"""

from __future__ import annotations

import base64
import hashlib
import timeit
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
import orjson

ENC = msgspec.json.Encoder()
OPT = orjson.OPT_SERIALIZE_NUMPY


def vec(i: int, dim: int = 384) -> np.ndarray[Any, Any]:
    raw = hashlib.shake_128(str(i).encode()).digest(2 * dim)
    v = np.frombuffer(raw, dtype="<i2").astype(np.float32)
    return v / np.linalg.norm(v)


def wrap(embs: list[Any]) -> dict[str, Any]:
    data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(embs)]
    usage = {"prompt_tokens": 1, "total_tokens": 1}
    return {"object": "list", "data": data, "model": "m", "usage": usage}


def cases(vs: list[np.ndarray[Any, Any]]) -> dict[str, Callable[[], bytes]]:
    return {
        "before": lambda: ENC.encode(wrap([v.tolist() for v in vs])),
        "orjson f32": lambda: orjson.dumps(wrap(list(vs)), option=OPT),
        "orjson f64": lambda: orjson.dumps(wrap([v.astype(np.float64) for v in vs]), option=OPT),
        "b64 before": lambda: ENC.encode(
            wrap([base64.b64encode(v.tobytes()).decode() for v in vs])
        ),
        "b64 msgspec": lambda: ENC.encode(wrap([v.tobytes() for v in vs])),
    }


def main() -> None:
    for n in (1, 32):
        fns = cases([vec(i) for i in range(n)])
        for name, f in fns.items():
            ts = sorted(timeit.repeat(f, number=200, repeat=15))
            print(f"n={n:2} {name:12} best {ts[0] / 200 * 1e6:8.1f} µs "
                  f"median {ts[7] / 200 * 1e6:8.1f} µs {len(f()):7} bytes")  # fmt: skip
        assert fns["before"]() == fns["orjson f64"](), "float64 text differs from before"
        assert fns["b64 before"]() == fns["b64 msgspec"](), "base64 differs from before"
    print("orjson on float64 and msgspec's base64 write the same bytes as before")


if __name__ == "__main__":
    main()
