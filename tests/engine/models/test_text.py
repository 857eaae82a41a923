"""Text model folders, settings resolution, tokenising, pooling and scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from infergate.engine.models.text import (
    Array,
    FolderFacts,
    TextEncoder,
    TextModelError,
    TextOverrides,
    activate,
    find_model_file,
    l2_normalize,
    model_folder,
    pool,
    read_folder,
    resolve_settings,
    sigmoid,
    softmax,
)
from tests.support.text_models import minilm_tokenizer, write_text_folder

# ---- folders ---------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["mean", "cls", "max", "last_token"])
def test_folder_pooling_modes(tmp_path: Path, pooling: str) -> None:
    folder = write_text_folder(tmp_path / "m", "embedder", pooling=pooling)
    facts = read_folder(str(folder))
    assert facts.pooling == pooling
    assert facts.model_file == str(folder / "model.onnx")
    assert facts.tokenizer_file == str(folder / "tokenizer.json")
    assert facts.normalize is False  # modules.json without a Normalize module


def test_folder_sentence_transformers_files(tmp_path: Path) -> None:
    folder = write_text_folder(
        tmp_path / "m", "embedder", normalize=True, max_seq_length=128,
        prompts={"query": "query: ", "passage": "passage: "}, onnx_subfolder=True,
    )  # fmt: skip
    facts = read_folder(str(folder))
    assert facts.normalize is True
    assert facts.max_seq_length == 128
    assert facts.prompts == {"query": "query: ", "passage": "passage: "}
    assert facts.model_file == str(folder / "onnx" / "model.onnx")
    assert find_model_file(str(folder)) == str(folder / "onnx" / "model.onnx")
    assert model_folder(str(folder / "onnx" / "model.onnx")) == str(folder)


def test_folder_labels_and_problem_type(tmp_path: Path) -> None:
    folder = write_text_folder(
        tmp_path / "c", "classifier", labels=["neg", "pos", "neu"], pooling=None, multi_label=True
    )
    facts = read_folder(str(folder))
    assert facts.labels == ("neg", "pos", "neu")
    assert facts.multi_label is True
    settings = resolve_settings("classify", facts, TextOverrides())
    assert settings.activation == "sigmoid"
    assert settings.labels == ("neg", "pos", "neu")


def test_id2label_in_numeric_order(tmp_path: Path) -> None:
    folder = write_text_folder(tmp_path / "c", "classifier", labels=["a", "b"], pooling=None)
    ids = {str(i): f"L{i}" for i in range(11)}
    (folder / "config.json").write_text(json.dumps({"id2label": ids}))
    assert read_folder(str(folder)).labels == tuple(f"L{i}" for i in range(11))
    (folder / "config.json").write_text(json.dumps({"id2label": {"0": "a", "2": "b"}}))
    with pytest.raises(TextModelError, match=r"0\.\.n-1"):
        read_folder(str(folder))


def test_pooling_unknown_is_a_clear_error(tmp_path: Path) -> None:
    folder = write_text_folder(tmp_path / "m", "embedder", pooling=None)
    facts = read_folder(str(folder))
    with pytest.raises(TextModelError, match=r"pooling unknown: add 1_Pooling/config.json or set"):
        resolve_settings("embeddings", facts, TextOverrides())
    # a config key says it instead
    assert resolve_settings("embeddings", facts, TextOverrides(pooling="cls")).pooling == "cls"
    # rerank and classify need no pooling
    assert resolve_settings("rerank", facts, TextOverrides()).activation == "sigmoid"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"pooling_mode_mean_sqrt_len_tokens": True}, "not supported"),
        ({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True}, "several"),
        ({"pooling_mode_mean_tokens": True, "include_prompt": False}, "include_prompt"),
    ],
)
def test_unsupported_pooling_files(tmp_path: Path, flags: dict[str, bool], message: str) -> None:
    folder = write_text_folder(tmp_path / "m", "embedder")
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(flags))
    with pytest.raises(TextModelError, match=message):
        read_folder(str(folder))


def test_config_keys_win_over_the_folder(tmp_path: Path) -> None:
    folder = write_text_folder(
        tmp_path / "m", "embedder", pooling="mean", normalize=True, max_seq_length=128,
        prompts={"query": "query: "},
    )  # fmt: skip
    facts = read_folder(str(folder))
    keys = TextOverrides(
        pooling="max", normalize=False, max_input_tokens=64, prompts={"doc": "doc: "},
        default_prompt="query",
    )  # fmt: skip
    s = resolve_settings("embeddings", facts, keys)
    assert (s.pooling, s.normalize, s.max_tokens, s.default_prompt) == ("max", False, 64, "query")
    assert s.prompts == {"query": "query: ", "doc": "doc: "}
    # the smaller of the model's limit and the config's
    s = resolve_settings("embeddings", facts, TextOverrides(max_input_tokens=256))
    assert s.max_tokens == 128


def test_bad_values_name_the_key(tmp_path: Path) -> None:
    facts = read_folder(str(write_text_folder(tmp_path / "m", "embedder")))
    with pytest.raises(TextModelError, match="pooling 'median'"):
        resolve_settings("embeddings", facts, TextOverrides(pooling="median"))
    with pytest.raises(TextModelError, match="default prompt 'query'"):
        resolve_settings("embeddings", facts, TextOverrides(default_prompt="query"))
    with pytest.raises(TextModelError, match="activation"):
        resolve_settings("classify", facts, TextOverrides(activation="relu"))
    empty = FolderFacts(str(tmp_path), None, None)
    with pytest.raises(TextModelError, match=r"no model\.onnx"):
        resolve_settings("rerank", empty, TextOverrides())


# ---- tokenising --------------------------------------------------------------------------


def test_encoder_prompts_truncation_and_empty_inputs() -> None:
    enc = TextEncoder(minilm_tokenizer(), 8, {"query": "query: "})
    plain, prompted, long, blank = (
        *enc.encode(["a cat"]), *enc.encode(["a cat"], "query"), *enc.encode(["word " * 50]),
        *enc.encode(["   "]),
    )  # fmt: skip
    assert len(plain) == 4  # [CLS] a cat [SEP]
    assert len(prompted) == 6  # [CLS] query : a cat [SEP]
    assert plain.ids[1:-1].tolist() == prompted.ids[3:-1].tolist()
    assert len(long) == 8
    assert (plain.content, blank.content) == (2, 0)
    with pytest.raises(KeyError):
        enc.encode(["x"], "passage")


def test_encoder_pairs_have_segments_and_count_each_side() -> None:
    enc = TextEncoder(minilm_tokenizer(), 512)
    (pair,) = enc.encode_pairs([("a cat", "a small dog")])
    assert pair.type_ids is not None
    assert pair.type_ids.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert pair.content == 2  # the shorter side
    (empty_doc,) = enc.encode_pairs([("a cat", " ")])
    assert empty_doc.content == 0
    ids = enc.from_ids(list(range(1000)))
    assert len(ids) == 512


# ---- pooling and scores ------------------------------------------------------------------


def _loops(states: Array, mask: Array, method: str) -> Array:
    out = []
    for s, m in zip(states, mask, strict=True):
        tokens = s[m.astype(bool)]
        out.append(
            {"mean": tokens.mean(0), "max": tokens.max(0), "cls": s[0], "last_token": tokens[-1]}[
                method
            ]
        )
    return np.stack(out)


@pytest.mark.parametrize("method", ["mean", "cls", "max", "last_token"])
def test_pooling_matches_a_loop(method: str) -> None:
    rng = np.random.default_rng(1)
    states = rng.standard_normal((3, 5, 4)).astype(np.float32) - 3  # all negative: max vs pad 0
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    np.testing.assert_allclose(pool(states, mask, method), _loops(states, mask, method), rtol=1e-6)


def test_normalize_and_activations() -> None:
    v = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(v, [[0.6, 0.8], [0.0, 0.0]])
    logits = np.array([[1.0, 2.0, 3.0], [1000.0, 0.0, -1000.0]])
    p = softmax(logits)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(p[0], np.exp([1, 2, 3]) / np.exp([1, 2, 3]).sum(), rtol=1e-6)
    s = sigmoid(logits)
    assert np.isfinite(s).all()
    np.testing.assert_allclose(s[0], 1 / (1 + np.exp(-np.array([1.0, 2.0, 3.0]))), rtol=1e-6)
    np.testing.assert_allclose(s[1], [1.0, 0.5, 0.0], atol=1e-7)
    np.testing.assert_allclose(activate(logits, "none"), logits.astype(np.float32))
