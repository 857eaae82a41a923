"""What does builtin MiniLM (int8, 1 intra-op thread) cost per input length? The figures behind
MAX_REQUEST_CHARS in engine/api/common.py.

Runs the ONNX executor directly (no server) on batches of 32 inputs of 10..2000 words; bounded
to one batch per length.

Usage: python bench/minilm_cost.py
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infergate.engine.executors.onnx import OnnxEmbeddingExecutor
from infergate.engine.models.embeddings import resolve_model_file, resolve_tokenizer_file

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "wizards",
    "quietly",
    "hex",
]
BATCH = 32


def main() -> None:
    ex = OnnxEmbeddingExecutor(
        1,
        resolve_model_file("builtin:minilm", "."),
        resolve_tokenizer_file("builtin:minilm", "."),
        intra_op_threads=1,
    )
    ex.load()
    rng = random.Random(1)
    for nwords in (10, 50, 100, 200, 300, 2000):
        items = [" ".join(rng.choice(WORDS) for _ in range(nwords)) for _ in range(BATCH)]
        ex.run(items[:2], 0)  # warm up this shape
        t0 = time.perf_counter()
        out = ex.run(items, 0)
        dt = time.perf_counter() - t0
        chars = sum(map(len, items))
        tokens = sum(n for _, n in out)
        print(
            f"{nwords:5d} words: {chars // BATCH:6d} chars, {tokens // BATCH:4d} tokens per item; "
            f"{dt / BATCH * 1e3:7.1f} ms per item, {dt / chars * 1e6:6.1f} µs per character"
        )


if __name__ == "__main__":
    main()
