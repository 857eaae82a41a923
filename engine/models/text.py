"""Text models from a folder: what the folder says about using the model, tokenising, pooling
and scores.

A text model folder holds ``model.onnx`` (or ``onnx/model.onnx``) and ``tokenizer.json``, and
where present the sentence-transformers files that say how to use it:

- ``modules.json``: the module chain; a ``sentence_transformers.models.Normalize`` module means
  the vectors are L2-normalised; the ``Pooling`` module's path (usually ``1_Pooling``);
- ``1_Pooling/config.json``: ``pooling_mode_mean_tokens`` / ``_cls_token`` / ``_max_tokens`` /
  ``_lasttoken``;
- ``sentence_bert_config.json``: ``max_seq_length``;
- ``config_sentence_transformers.json``: ``prompts`` (``{"query": "query: "}``) and
  ``default_prompt_name``;
- ``config.json`` (Hugging Face): ``id2label`` and ``problem_type``
  (``multi_label_classification`` → sigmoid scores).

Whatever the folder does not say comes from the model's config keys (``TextOverrides``); a
setting that neither gives is a start-up error that says how to give it. Functions here are pure
(files in, values out) and thread-safe; ``TextEncoder`` is thread-safe too (the ``tokenizers``
library's ``encode_batch`` may be called from several threads at once).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast, runtime_checkable

import numpy as np

from infergate.engine.executors.base import ExecutorError

Array = np.ndarray[Any, Any]
Pooling = Literal["mean", "cls", "max", "last_token"]
Activation = Literal["softmax", "sigmoid", "none"]
TextTask = Literal["embeddings", "rerank", "classify"]

POOLINGS: tuple[str, ...] = ("mean", "cls", "max", "last_token")
ACTIVATIONS: tuple[str, ...] = ("softmax", "sigmoid", "none")
ONNX_CANDIDATES = ("model.onnx", os.path.join("onnx", "model.onnx"))
TOKENIZER_FILE = "tokenizer.json"
POSITION_LIMIT = 512
"""Default truncation when nothing says otherwise: BERT-class encoders have 512 positions."""

# sentence-transformers' pooling flags → our names (the modes we can compute exactly)
_ST_POOLING = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_lasttoken": "last_token",
}
_ST_UNSUPPORTED = ("pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens")
_NORMALIZE = "sentence_transformers.models.Normalize"
_POOLING_MODULE = "sentence_transformers.models.Pooling"


class TextModelError(ExecutorError):
    """A text model folder (or its config keys) that cannot be served; says how to fix it."""


@dataclass(frozen=True, slots=True)
class FolderFacts:
    """What a text model folder says about itself (``None``: the folder does not say)."""

    folder: str
    model_file: str | None
    tokenizer_file: str | None
    pooling: str | None = None
    normalize: bool | None = None
    max_seq_length: int | None = None
    prompts: Mapping[str, str] = field(default_factory=dict)
    default_prompt: str | None = None
    labels: tuple[str, ...] | None = None
    multi_label: bool | None = None


@dataclass(frozen=True, slots=True)
class TextOverrides:
    """The model's config keys (``model.toml`` / ``[[models]]``); empty values say nothing."""

    pooling: str = ""
    normalize: bool | None = None
    max_input_tokens: int | None = None
    prompts: Mapping[str, str] = field(default_factory=dict)
    default_prompt: str = ""
    labels: Sequence[str] = ()
    activation: str = ""
    output: str = ""


@dataclass(frozen=True, slots=True)
class TextSettings:
    """How to serve a text model: the folder's facts completed by its config keys."""

    task: TextTask
    model_file: str
    tokenizer_file: str
    max_tokens: int
    """Inputs (pairs: query + document) are truncated to this many tokens."""
    pooling: Pooling = "mean"
    """embeddings only."""
    normalize: bool = False
    """embeddings only: L2-normalise the pooled vector."""
    prompts: Mapping[str, str] = field(default_factory=dict)
    default_prompt: str | None = None
    """Name of the prompt put before every embeddings input that names none."""
    labels: tuple[str, ...] = ()
    """classify: one label per logit (empty: ``LABEL_i``, as Hugging Face names them)."""
    activation: Activation = "none"
    """rerank / classify: logits → scores."""
    output: str = ""
    """The ONNX output to read (``""``: the first 3-D float output for embeddings, the first
    2-D one for rerank and classify)."""


# ---- the folder --------------------------------------------------------------------------


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TextModelError(f"{path}: cannot read: {e}") from None


def _optional_json(folder: str, name: str) -> Any:
    path = os.path.join(folder, name)
    return _read_json(path) if os.path.isfile(path) else None


def find_model_file(folder: str) -> str | None:
    """``model.onnx`` or ``onnx/model.onnx`` inside ``folder`` (the first that exists)."""
    for rel in ONNX_CANDIDATES:
        path = os.path.join(folder, rel)
        if os.path.isfile(path):
            return path
    return None


def model_folder(model_file: str) -> str:
    """The model folder of a model file: its folder, or the parent of ``onnx/``."""
    folder = os.path.dirname(os.path.abspath(model_file))
    if os.path.basename(folder) == "onnx" and not os.path.isfile(
        os.path.join(folder, TOKENIZER_FILE)
    ):
        return os.path.dirname(folder)
    return folder


def _pooling_from_st(folder: str, modules: Any) -> str | None:
    rel = "1_Pooling"
    if isinstance(modules, list):
        for m in modules:
            if isinstance(m, dict) and m.get("type") == _POOLING_MODULE and m.get("path"):
                rel = str(m["path"])
    path = os.path.join(folder, rel, "config.json")
    if not os.path.isfile(path):
        return None
    cfg = _read_json(path)
    if not isinstance(cfg, dict):
        raise TextModelError(f"{path}: expected a JSON object")
    unsupported = [k for k in _ST_UNSUPPORTED if cfg.get(k)]
    if unsupported:
        raise TextModelError(
            f"{path}: {unsupported[0]} is not supported (mean, cls, max, "
            "last-token are); set pooling in model.toml to override"
        )
    if cfg.get("include_prompt") is False:
        raise TextModelError(
            f"{path}: include_prompt = false (prompt tokens left out of the "
            "pooling) is not supported"
        )
    modes = [name for key, name in _ST_POOLING.items() if cfg.get(key)]
    if len(modes) > 1:
        raise TextModelError(
            f"{path}: several pooling modes ({', '.join(modes)}) would be "
            "concatenated, which is not supported; set one pooling in model.toml"
        )
    return modes[0] if modes else None


def _labels_from_hf(config: Any) -> tuple[tuple[str, ...] | None, bool | None]:
    if not isinstance(config, dict):
        return None, None
    labels = None
    id2label = config.get("id2label")
    if isinstance(id2label, dict) and id2label:
        try:
            ordered = sorted((int(k), str(v)) for k, v in id2label.items())
        except ValueError:
            raise TextModelError(
                f"config.json: id2label keys must be integers: {id2label}"
            ) from None
        if [i for i, _ in ordered] != list(range(len(ordered))):
            raise TextModelError(f"config.json: id2label must number labels 0..n-1: {id2label}")
        labels = tuple(v for _, v in ordered)
    problem = config.get("problem_type")
    multi = None if problem is None else problem == "multi_label_classification"
    return labels, multi


def read_folder(folder: str) -> FolderFacts:
    """What ``folder`` says about its model (nothing is loaded).

    Raises:
        TextModelError: a file is unreadable or asks for something not supported.
    """
    folder = os.path.abspath(folder)
    tokenizer = os.path.join(folder, TOKENIZER_FILE)
    modules = _optional_json(folder, "modules.json")
    normalize = None
    if isinstance(modules, list):
        normalize = any(isinstance(m, dict) and m.get("type") == _NORMALIZE for m in modules)
    sbert = _optional_json(folder, "sentence_bert_config.json")
    max_seq = sbert.get("max_seq_length") if isinstance(sbert, dict) else None
    st_cfg = _optional_json(folder, "config_sentence_transformers.json")
    prompts: dict[str, str] = {}
    default_prompt = None
    if isinstance(st_cfg, dict):
        raw = st_cfg.get("prompts") or {}
        if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
            raise TextModelError(
                f"{folder}/config_sentence_transformers.json: prompts must map names to strings"
            )
        prompts = {str(k): v for k, v in raw.items()}
        default_prompt = st_cfg.get("default_prompt_name") or None
    labels, multi = _labels_from_hf(_optional_json(folder, "config.json"))
    return FolderFacts(
        folder=folder,
        model_file=find_model_file(folder),
        tokenizer_file=tokenizer if os.path.isfile(tokenizer) else None,
        pooling=_pooling_from_st(folder, modules),
        normalize=normalize,
        max_seq_length=int(max_seq) if isinstance(max_seq, int) and max_seq > 0 else None,
        prompts=prompts,
        default_prompt=default_prompt,
        labels=labels,
        multi_label=multi,
    )


def resolve_settings(
    task: TextTask,
    facts: FolderFacts,
    keys: TextOverrides,
    model_file: str = "",
    tokenizer_file: str = "",
) -> TextSettings:
    """``facts`` completed by ``keys`` (config keys win); ``model_file`` / ``tokenizer_file``
    (resolved paths) win over the folder's files.

    Raises:
        TextModelError: something neither says (pooling of an embeddings model, the files), or
            a value that is not valid; the message says where to set it.
    """
    where = facts.folder
    model = model_file or facts.model_file
    if not model:
        raise TextModelError(f"{where}: no model.onnx or onnx/model.onnx (set model_file)")
    tokenizer = tokenizer_file or facts.tokenizer_file
    if not tokenizer:
        raise TextModelError(f"{where}: no tokenizer.json (set tokenizer_file)")
    pooling = keys.pooling or facts.pooling
    if task == "embeddings" and pooling is None:
        raise TextModelError(
            f"{where}: pooling unknown: add 1_Pooling/config.json or set "
            "pooling in model.toml (mean, cls, max or last_token)"
        )
    if pooling is not None and pooling not in POOLINGS:
        raise TextModelError(f"{where}: pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
    limits = [x for x in (keys.max_input_tokens, facts.max_seq_length) if x]
    max_tokens = min(limits) if limits else POSITION_LIMIT
    prompts = {**facts.prompts, **keys.prompts}
    default_prompt = keys.default_prompt or facts.default_prompt
    if default_prompt is not None and default_prompt not in prompts:
        raise TextModelError(
            f"{where}: default prompt {default_prompt!r} is not among the "
            f"prompts ({', '.join(sorted(prompts)) or 'none'})"
        )
    labels = tuple(keys.labels) or facts.labels or ()
    activation = keys.activation or _default_activation(task, facts.multi_label)
    if activation not in ACTIVATIONS:
        raise TextModelError(
            f"{where}: activation {activation!r} is not one of {', '.join(ACTIVATIONS)}"
        )
    normalize = keys.normalize if keys.normalize is not None else bool(facts.normalize)
    return TextSettings(
        task=task,
        model_file=model,
        tokenizer_file=tokenizer,
        max_tokens=max_tokens,
        pooling=cast(Pooling, pooling or "mean"),
        normalize=normalize,
        prompts=prompts,
        default_prompt=default_prompt,
        labels=labels,
        activation=cast(Activation, activation),
        output=keys.output,
    )


def _default_activation(task: TextTask, multi_label: bool | None) -> str:
    """Cross-encoders score with a sigmoid of their one logit (sentence-transformers'
    ``CrossEncoder`` and TEI); classifiers with a softmax, or a sigmoid per label when the
    config says multi-label."""
    if task == "rerank" or (task == "classify" and multi_label):
        return "sigmoid"
    return "softmax" if task == "classify" else "none"


# ---- tokenising --------------------------------------------------------------------------


class Tokens:
    """One tokenised input (or query-document pair), ready to batch: what a queued item is."""

    __slots__ = ("content", "ids", "type_ids")

    def __init__(self, ids: Array, type_ids: Array | None = None, content: int = -1) -> None:
        self.ids = ids
        """int64 token ids, special tokens included, already truncated."""
        self.type_ids = type_ids
        """int64 segment ids (pairs), or None (all zero)."""
        self.content = len(ids) if content < 0 else content
        """Tokens that are not special tokens: 0 means the input tokenised to nothing."""

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"Tokens({self.ids.tolist()})"


@runtime_checkable
class TextPreparer(Protocol):
    """An executor that tokenises its items before they are queued (``OnnxTextExecutor``)."""

    settings: TextSettings
    labels: tuple[str, ...]
    vocab_size: int | None

    def prepare(self, items: Sequence[Any], prompt: str | None = None) -> list[Tokens]:
        """Items (strings, (query, document) pairs, token-id lists) as Tokens. Thread-safe."""
        ...


def settings_of(executor: object) -> TextSettings | None:
    """The ``TextSettings`` an executor serves (its prompts, activation), or None for one that
    is not a text executor (a gateway or simulated model)."""
    return executor.settings if isinstance(executor, TextPreparer) else None


class TextEncoder:
    """A ``tokenizers`` tokenizer with the model's truncation and prompts. Thread-safe."""

    def __init__(
        self, tokenizer_file: str, max_tokens: int, prompts: Mapping[str, str] | None = None
    ) -> None:
        try:
            from tokenizers import Tokenizer  # noqa: PLC0415 - heavy, loaded only when used
        except ImportError as e:
            raise TextModelError("text models need tokenizers: pip install tokenizers") from e
        try:
            tok = Tokenizer.from_file(tokenizer_file)
        except Exception as e:
            raise TextModelError(f"cannot load tokenizer {tokenizer_file}: {e}") from e
        tok.no_padding()
        tok.enable_truncation(max_tokens)
        self.tokenizer = tok
        self.max_tokens = max_tokens
        self.prompts = dict(prompts or {})
        self.vocab_size: int = tok.get_vocab_size()

    def encode(self, texts: Sequence[str], prompt: str | None = None) -> list[Tokens]:
        """Each text (after the named prompt) as Tokens.

        Raises:
            KeyError: ``prompt`` is not one of the model's prompts.
        """
        prefix = self.prompts[prompt] if prompt is not None else ""
        batch = [prefix + t for t in texts] if prefix else list(texts)
        return [_tokens(e, pair=False) for e in self.tokenizer.encode_batch(batch)]

    def encode_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[Tokens]:
        """Each (query, document) pair as one input with segment ids (a cross-encoder's)."""
        return [_tokens(e, pair=True) for e in self.tokenizer.encode_batch(list(pairs))]

    def from_ids(self, ids: Sequence[int]) -> Tokens:
        """Token ids given by a client, truncated to the model's limit."""
        return Tokens(np.asarray(ids[: self.max_tokens], dtype=np.int64))


def _tokens(enc: Any, pair: bool) -> Tokens:
    ids = np.asarray(enc.ids, dtype=np.int64)
    if pair:  # content: the shorter side's, so an empty query or document counts as empty
        seqs = enc.sequence_ids
        content = min(sum(1 for s in seqs if s == 0), sum(1 for s in seqs if s == 1))
        return Tokens(ids, np.asarray(enc.type_ids, dtype=np.int64), content)
    special = enc.special_tokens_mask
    return Tokens(ids, None, len(special) - sum(special))


# ---- pooling and scores (vectorised; states (n, T, d), mask (n, T) right-padded) ------------


def pool(states: Array, mask: Array, method: str) -> Array:
    """One vector per row: ``mean`` / ``max`` over the unmasked tokens, the ``cls`` (first) token,
    or the ``last_token`` (the last unmasked one), as sentence-transformers computes them."""
    if method == "mean":
        m = mask[..., None].astype(np.float32)
        counts = np.clip(m.sum(axis=1), 1e-9, None)
        out: Array = (states * m).sum(axis=1) / counts
    elif method == "cls":
        out = states[:, 0]
    elif method == "max":
        masked = np.where(mask[..., None].astype(bool), states, np.float32(-1e9))
        out = masked.max(axis=1)
    elif method == "last_token":
        last = np.clip(mask.sum(axis=1).astype(np.int64) - 1, 0, None)
        out = states[np.arange(states.shape[0]), last]
    else:
        raise ValueError(f"unknown pooling {method!r}")
    return np.asarray(out, dtype=np.float32)


def l2_normalize(x: Array) -> Array:
    norms = np.clip(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12, None)
    return np.asarray(x / norms, dtype=np.float32)


def softmax(logits: Array) -> Array:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=-1, keepdims=True), dtype=np.float32)


def sigmoid(logits: Array) -> Array:
    # exp of a negative argument only: no overflow for large |logits|
    x = np.asarray(logits, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.asarray(np.where(x >= 0, 1 / (1 + e), e / (1 + e)), dtype=np.float32)


def activate(logits: Array, activation: str) -> Array:
    """Scores from logits (rows x labels)."""
    if activation == "softmax":
        return softmax(logits)
    if activation == "sigmoid":
        return sigmoid(logits)
    return np.asarray(logits, dtype=np.float32)
