"""Small BERT-shaped text models with known weights, and model folders around them.

Real reranker and classifier weights cannot be downloaded here, so the tests build them: an
embedding lookup (word + token type + position) and one tiny layer that mixes each token with
the masked mean of the sequence (so padding that leaks through the attention mask changes the
answer), then either the token states (an embedder, pooled by infergate) or a masked mean and
a linear head (a cross-encoder with one logit, or a classifier with one logit per label).
Inputs ``input_ids``, ``attention_mask``, ``token_type_ids`` (int64 ``[batch, seq]``); the
tokenizer is MiniLM's real ``tokenizer.json``. ``reference`` runs a graph the plain way
(tokenizers with padding + onnxruntime) for the tests to compare with.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from infergate.engine.models.embeddings import resolve_tokenizer_file

OPSET = 17
IR_VERSION = 8
VOCAB = 30522
"""MiniLM's (BERT uncased) vocabulary size."""
HIDDEN = 8
POSITIONS = 512

Array = np.ndarray[Any, Any]


def minilm_tokenizer() -> str:
    """Path of MiniLM's real tokenizer.json (shipped with infergate)."""
    return resolve_tokenizer_file("builtin:minilm", ".")


def _weights(seed: int, labels: int) -> dict[str, Array]:
    rng = np.random.default_rng(seed)

    def w(*shape: int, scale: float = 1.0) -> Array:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    return {
        "E": w(VOCAB, HIDDEN),
        "T": w(2, HIDDEN),
        "P": w(POSITIONS, HIDDEN, scale=0.5),
        "W1": w(HIDDEN, HIDDEN, scale=0.5),
        "B1": w(HIDDEN),
        "WC": w(HIDDEN, max(1, labels)),
        "BC": w(max(1, labels)),
    }


def _const(name: str, values: int | Sequence[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


def text_graph(
    kind: str, labels: int = 1, seed: int = 0, token_types: bool = True
) -> onnx.ModelProto:
    """``kind``: ``embedder`` (output ``last_hidden_state`` float[batch, seq, 8]),
    ``cross_encoder`` (``logits`` float[batch, 1]) or ``classifier`` (``logits``
    float[batch, labels]). ``token_types=False`` leaves out the ``token_type_ids`` input."""
    w = _weights(seed, labels if kind == "classifier" else 1)
    n = helper.make_node
    nodes = [
        n("Gather", ["E", "input_ids"], ["we"]),
        n("Shape", ["input_ids"], ["shape"]),
        n("Gather", ["shape", "one_s"], ["seq"], axis=0),
        n("Range", ["zero", "seq", "one_s"], ["pos"]),
        n("Gather", ["P", "pos"], ["pe"]),
        n("Add", ["we", "pe"], ["x1"]),
    ]
    if token_types:
        nodes += [n("Gather", ["T", "token_type_ids"], ["te"]), n("Add", ["x1", "te"], ["x"])]
    else:
        nodes.append(n("Identity", ["x1"], ["x"]))
    nodes += [
        n("MatMul", ["x", "W1"], ["h0"]),
        n("Add", ["h0", "B1"], ["h1"]),
        n("Tanh", ["h1"], ["h"]),
        n("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT),
        n("Unsqueeze", ["mf", "two"], ["m"]),
        n("Mul", ["h", "m"], ["hm"]),
        n("ReduceSum", ["hm", "one"], ["hs"], keepdims=1),
        n("ReduceSum", ["m", "one"], ["ms"], keepdims=1),
        n("Div", ["hs", "ms"], ["ctx"]),
        n("Add", ["h", "ctx"], ["last_hidden_state"]),
    ]
    inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "seq"])
              for name in ("input_ids", "attention_mask", "token_type_ids")]  # fmt: skip
    if not token_types:
        inputs = inputs[:2]
    if kind == "embedder":
        out = helper.make_tensor_value_info(
            "last_hidden_state", TensorProto.FLOAT, ["batch", "seq", HIDDEN]
        )
    else:
        nodes += [
            n("Mul", ["last_hidden_state", "m"], ["sm"]),
            n("ReduceSum", ["sm", "one"], ["ss"], keepdims=0),
            n("ReduceSum", ["m", "one"], ["mc"], keepdims=0),
            n("Div", ["ss", "mc"], ["pooled"]),
            n("MatMul", ["pooled", "WC"], ["l0"]),
            n("Add", ["l0", "BC"], ["logits"]),
        ]
        width = labels if kind == "classifier" else 1
        out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", width])
    used = {i for node in nodes for i in node.input}
    inits = [numpy_helper.from_array(v, k) for k, v in w.items() if k in used]
    inits += [_const("zero", 0), _const("one_s", 1), _const("one", [1]), _const("two", [2])]
    graph = helper.make_graph(nodes, kind, inputs, [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def write_text_folder(
    folder: Path,
    kind: str,
    *,
    labels: Sequence[str] = (),
    pooling: str | None = "mean",
    normalize: bool = False,
    max_seq_length: int | None = None,
    prompts: Mapping[str, str] | None = None,
    default_prompt: str | None = None,
    multi_label: bool = False,
    onnx_subfolder: bool = False,
    seed: int = 0,
) -> Path:
    """A sentence-transformers-style model folder: the graph, MiniLM's tokenizer.json, and the
    files that say how to use it (a ``None`` / empty argument leaves its file out)."""
    folder.mkdir(parents=True, exist_ok=True)
    model = text_graph(kind, max(1, len(labels)), seed)
    target = folder / "onnx" if onnx_subfolder else folder
    target.mkdir(exist_ok=True)
    onnx.save(model, str(target / "model.onnx"))
    shutil.copyfile(minilm_tokenizer(), folder / "tokenizer.json")
    modules: list[dict[str, Any]] = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}
    ]
    if pooling is not None:
        (folder / "1_Pooling").mkdir(exist_ok=True)
        flags = {
            "pooling_mode_mean_tokens": pooling == "mean",
            "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_max_tokens": pooling == "max",
            "pooling_mode_lasttoken": pooling == "last_token",
            "pooling_mode_mean_sqrt_len_tokens": False,
            "word_embedding_dimension": HIDDEN,
        }
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(flags))
        modules.append({"idx": 1, "name": "1", "path": "1_Pooling",
                        "type": "sentence_transformers.models.Pooling"})  # fmt: skip
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})  # fmt: skip
    if kind == "embedder":
        (folder / "modules.json").write_text(json.dumps(modules))
    if max_seq_length is not None:
        (folder / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False})
        )
    if prompts:
        (folder / "config_sentence_transformers.json").write_text(
            json.dumps({"prompts": dict(prompts), "default_prompt_name": default_prompt})
        )
    if labels or multi_label:
        hf: dict[str, Any] = {"id2label": {str(i): v for i, v in enumerate(labels)}}
        if multi_label:
            hf["problem_type"] = "multi_label_classification"
        (folder / "config.json").write_text(json.dumps(hf))
    return folder


def reference(
    model_path: str | Path,
    texts: Sequence[str] | Sequence[tuple[str, str]],
    max_length: int = 512,
    output: str | None = None,
) -> tuple[Array, Array]:
    """(first output, attention mask) of the graph on ``texts`` (or pairs) tokenised the plain
    way: MiniLM's tokenizer padded to the longest, one onnxruntime call."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(minilm_tokenizer())
    tok.enable_truncation(max_length)
    tok.enable_padding()
    enc = tok.encode_batch(list(texts))
    feeds = {
        "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
    }
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    out = sess.run([output] if output else None, {k: feeds[k] for k in names})[0]
    return np.asarray(out), feeds["attention_mask"]
