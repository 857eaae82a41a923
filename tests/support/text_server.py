"""The text model folders of the end-to-end text tests and an in-process server over them, shared
by tests/e2e/test_text_models.py (OpenAI, rerank, classify) and tests/e2e/test_text_kserve.py
(KServe v2, prompts, the repository layout)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec

from infergate.engine.config import ModelConfig, ServerConfig
from infergate.engine.server import Server
from tests.support.text_models import write_text_folder

LABELS = ["negative", "neutral", "positive"]
TASKS = {"rerank": "rerank", "classify": "classify", "multi": "classify"}
"""Task of each folder of ``text_folders`` (the others are embeddings)."""


def text_folders(root: Path) -> dict[str, Path]:
    """Embedders (pooling variants, prompts, a short limit), a cross-encoder and two
    classifiers (softmax, multi-label), by model name."""
    return {
        "emb-cls": write_text_folder(
            root / "emb-cls", "embedder", pooling="cls", normalize=True,
            prompts={"query": "query: ", "passage": "passage: "}, default_prompt="query",
        ),
        "emb-max": write_text_folder(root / "emb-max", "embedder", pooling="max"),
        "emb-last": write_text_folder(root / "emb-last", "embedder", pooling="last_token"),
        "emb-short": write_text_folder(root / "emb-short", "embedder", max_seq_length=8),
        "rerank": write_text_folder(root / "rerank", "cross_encoder", pooling=None),
        "classify": write_text_folder(root / "classify", "classifier", labels=LABELS),
        "multi": write_text_folder(
            root / "multi", "classifier", labels=LABELS, multi_label=True, seed=3
        ),
    }  # fmt: skip


def text_model(name: str, path: Path, **keys: Any) -> ModelConfig:
    """The ``[[models]]`` entry of folder ``path`` served as ``name`` (task from TASKS)."""
    raw = {"name": name, "task": TASKS.get(name, "embeddings"), "executor": "onnxruntime",
           "model_file": str(path), "batching": {"max_batch_size": 16}, **keys}  # fmt: skip
    return msgspec.convert(raw, ModelConfig)


@contextmanager
def serving(
    models: Sequence[ModelConfig] = (), config: ServerConfig | None = None, base_dir: str = "."
) -> Iterator[Server]:
    """A server on 127.0.0.1 (an ephemeral port, no admin listener) serving ``models``, or
    ``config`` as loaded from a config file (with ``base_dir``, its folder)."""
    cfg = config or ServerConfig(
        listen="127.0.0.1:0", sub_reactors=2, admin_listen="", models=list(models)
    )
    s = Server(cfg, base_dir=base_dir)
    s.start()
    t = threading.Thread(target=s.run, kwargs={"install_signals": False})
    t.start()
    try:
        yield s
    finally:
        s.stop()
        t.join(20)
