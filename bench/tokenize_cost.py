"""What does tokenising cost on the reactor thread? The figures behind engine/api/text.py's
docstring (text inputs are tokenised before they are queued).

MiniLM's tokenizer (``tokenizers``), truncation at 256 as served: short queries of 6-12 words
(~8-16 tokens), passages of 150-200 words (~200-256 tokens), and (query, passage) pairs as a
rerank request sends them, per item, one request of 1 and of 32 items; best of 5 rounds. Also
the inference of the same items (builtin MiniLM int8, 1 intra-op thread) for comparison.

Usage: python bench/tokenize_cost.py
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infergate.engine.config import ModelConfig
from infergate.engine.executors.onnx_text import build_text_executor
from infergate.engine.models.embeddings import resolve_tokenizer_file
from infergate.engine.models.text import TextEncoder

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "his",
    "her",
    "it",
    "an",
    "were",
    "are",
    "which",
    "this",
    "be",
    "or",
    "has",
    "had",
    "not",
    "their",
    "but",
    "also",
    "its",
    "first",
    "new",
    "one",
    "after",
    "two",
    "time",
    "who",
    "they",
    "been",
    "city",
    "year",
    "school",
    "team",
    "war",
    "state",
    "during",
    "world",
    "when",
    "other",
    "people",
    "known",
    "between",
    "most",
    "united",
    "season",
    "university",
    "series",
    "film",
    "album",
    "river",
    "music",
    "national",
    "county",
    "house",
    "company",
    "game",
    "government",
    "under",
    "since",
    "made",
    "called",
    "them",
    "later",
    "well",
    "high",
    "early",
    "best",
    "group",
]


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def per_item(f: Callable[[Sequence[Any]], Any], data: Sequence[Any], batch: int) -> float:
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for i in range(0, len(data), batch):
            f(data[i : i + batch])
        best = min(best, (time.perf_counter() - t) / len(data))
    return best * 1e6


def main() -> None:
    rng = random.Random(0)
    queries = [text(rng, rng.randint(6, 12)) for _ in range(640)]
    passages = [text(rng, rng.randint(150, 200)) for _ in range(128)]
    pairs = [(queries[i], passages[i]) for i in range(128)]
    enc = TextEncoder(resolve_tokenizer_file("builtin:minilm", "."), 256)
    ex = build_text_executor(
        ModelConfig(name="minilm", task="embeddings", executor="onnxruntime",
                    model_file="builtin:minilm", tokenizer_file="builtin:minilm"), ".",
    )  # fmt: skip
    ex.load()
    print("input     tokens  tokenise µs/item (1 / 32 per request)  infer µs/item (32)")
    cases: list[tuple[str, Sequence[Any], Callable[[Any], Any]]] = [
        ("query", queries, enc.encode),
        ("passage", passages, enc.encode),
        ("pair", pairs, enc.encode_pairs),
    ]
    for name, data, f in cases:
        toks = f(data[:64])
        mean_len = sum(len(t) for t in toks) / len(toks)
        one, many = per_item(f, data, 1), per_item(f, data, 32)
        infer = per_item(lambda b: ex.run(list(b), 0), toks, 32) if name != "pair" else 0.0
        print(f"{name:8s} {mean_len:7.0f}  {one:10.0f} / {many:<10.0f}               {infer:8.0f}")


if __name__ == "__main__":
    main()
