"""Text models beyond embeddings over KServe v2 (the real tritonclient, JSON and binary tensors),
per-request prompts on /v1/embeddings (the real openai SDK), and text model folders in the
model repository laid out as sentence-transformers exports them (``onnx/model.onnx``). Every
answer is checked against the same graph run in the test (tests.support.text_models).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from infergate.app.config import load_config
from infergate.engine.models.text import Array, l2_normalize, pool, sigmoid, softmax
from infergate.engine.server import Server
from tests.support.client import HttpResponse, RawConnection
from tests.support.text_models import reference, write_text_folder
from tests.support.text_server import LABELS, serving, text_folders, text_model

QUERY = "what is a cat"
DOCS = [
    "a cat is a small domesticated carnivorous mammal",
    "the weather is sunny",
    "Paris is the capital and largest city of France.",
    "cats",
    "dogs and cats living together",
]
TEXTS = ["a cat", "The quick brown fox jumps over the lazy dog.", "hello there"]
WINDOW_US = 10_000_000
"""A window batcher's wait: two requests that share a batch key fill its batch long before."""


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return text_folders(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def server(folders: dict[str, Path]) -> Iterator[Server]:
    window = {"policy": "window", "max_batch_size": 5, "max_queue_delay_us": WINDOW_US}
    models = [text_model(name, path) for name, path in folders.items()]
    models += [
        text_model("raw", folders["classify"], task="classify", activation="none"),
        text_model("rerank-window", folders["rerank"], task="rerank", batching=window),
        text_model("classify-window", folders["classify"], task="classify", batching=window),
        text_model("emb-window", folders["emb-max"], batching=window),
    ]
    with serving(models) as s:
        yield s


@pytest.fixture(scope="module")
def url(server: Server) -> str:
    assert server.address is not None
    return f"127.0.0.1:{server.address[1]}"


def post(server: Server, path: str, body: dict[str, Any]) -> HttpResponse:
    assert server.address is not None
    with RawConnection(server.address[1]) as c:
        headers = [("Content-Type", "application/json")]
        return c.request("POST", path, headers, json.dumps(body).encode())


def bytes_input(name: str, texts: list[str], binary: bool, column: bool = False) -> Any:
    arr = np.array([t.encode() for t in texts], dtype=np.object_)
    arr = arr.reshape(-1, 1) if column else arr
    inp = triton.InferInput(name, list(arr.shape), "BYTES")
    inp.set_data_from_numpy(arr, binary_data=binary)
    return inp


def rerank_reference(folders: dict[str, Path], pairs: list[tuple[str, str]]) -> Array:
    logits, _ = reference(folders["rerank"] / "model.onnx", pairs)
    return sigmoid(logits[:, 0])


# ---- KServe v2: metadata ------------------------------------------------------------------


def test_metadata_describes_the_text_tensors(url: str) -> None:
    c = triton.InferenceServerClient(url)
    rerank = c.get_model_metadata("rerank")
    assert rerank["inputs"] == [
        {"name": "QUERY", "datatype": "BYTES", "shape": [-1]},
        {"name": "DOCUMENT", "datatype": "BYTES", "shape": [-1]},
    ]
    assert rerank["outputs"] == [{"name": "SCORE", "datatype": "FP32", "shape": [-1]}]
    classify = c.get_model_metadata("classify")
    assert classify["inputs"] == [{"name": "TEXT", "datatype": "BYTES", "shape": [-1]}]
    assert classify["outputs"] == [
        {"name": "LOGITS", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "PROBABILITIES", "datatype": "FP32", "shape": [-1, 3]},
    ]
    raw = c.get_model_metadata("raw")  # activation "none": the logits are all there is
    assert [o["name"] for o in raw["outputs"]] == ["LOGITS"]
    config = c.get_model_config("rerank")
    assert config["max_batch_size"] == 16
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [
        ("QUERY", "TYPE_STRING", []),
        ("DOCUMENT", "TYPE_STRING", []),
    ]
    assert c.get_model_metadata("emb-max")["outputs"][0]["shape"] == [-1, 8]


# ---- KServe v2: rerank and classify -------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True])
def test_rerank_one_query_for_every_document(
    url: str, folders: dict[str, Path], binary: bool
) -> None:
    c = triton.InferenceServerClient(url)
    inputs = [bytes_input("QUERY", [QUERY], binary), bytes_input("DOCUMENT", DOCS, binary)]
    out = [triton.InferRequestedOutput("SCORE", binary_data=binary)]
    got = c.infer("rerank", inputs, outputs=out).as_numpy("SCORE")
    assert got is not None
    assert (got.dtype, got.shape) == (np.float32, (len(DOCS),))
    want = rerank_reference(folders, [(QUERY, d) for d in DOCS])
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("binary", [False, True])
def test_rerank_a_query_per_document_as_columns(
    url: str, folders: dict[str, Path], binary: bool
) -> None:
    queries = ["what is a cat", "capital of france", "weather today", "what is a cat", "dogs"]
    c = triton.InferenceServerClient(url)
    inputs = [
        bytes_input("QUERY", queries, binary, column=True),
        bytes_input("DOCUMENT", DOCS, binary, column=True),
    ]
    got = c.infer("rerank", inputs).as_numpy("SCORE")
    want = rerank_reference(folders, list(zip(queries, DOCS, strict=True)))
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize(("model", "multi"), [("classify", False), ("multi", True)])
@pytest.mark.parametrize("binary", [False, True])
def test_classify_logits_and_probabilities(
    url: str, folders: dict[str, Path], model: str, multi: bool, binary: bool
) -> None:
    c = triton.InferenceServerClient(url)
    outs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("LOGITS", "PROBABILITIES")]
    r = c.infer(model, [bytes_input("TEXT", TEXTS, binary)], outputs=outs)
    logits, _ = reference(folders[model] / "model.onnx", TEXTS)
    got = r.as_numpy("LOGITS")
    assert got is not None
    assert got.shape == (len(TEXTS), len(LABELS))
    np.testing.assert_allclose(got, logits, rtol=1e-4, atol=1e-5)
    want = sigmoid(logits) if multi else softmax(logits)
    np.testing.assert_allclose(r.as_numpy("PROBABILITIES"), want, atol=1e-5)


def test_outputs_selection_and_order(url: str, folders: dict[str, Path]) -> None:
    c = triton.InferenceServerClient(url)
    only = [triton.InferRequestedOutput("PROBABILITIES")]
    r = c.infer("classify", [bytes_input("TEXT", TEXTS, True)], outputs=only)
    assert [o["name"] for o in r.get_response()["outputs"]] == ["PROBABILITIES"]
    assert r.as_numpy("LOGITS") is None
    r = c.infer("classify", [bytes_input("TEXT", TEXTS[:1], False)])  # none named: all
    assert [o["name"] for o in r.get_response()["outputs"]] == ["LOGITS", "PROBABILITIES"]
    logits, _ = reference(folders["classify"] / "model.onnx", TEXTS[:1])
    np.testing.assert_allclose(r.as_numpy("LOGITS"), logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("model", "kserve", "plain_path", "plain"),
    [
        ("rerank-window",
         [{"name": "QUERY", "datatype": "BYTES", "shape": [1], "data": [QUERY]},
          {"name": "DOCUMENT", "datatype": "BYTES", "shape": [3], "data": DOCS[:3]}],
         "/v1/rerank", {"query": QUERY, "documents": DOCS[3:]}),
        ("classify-window",
         [{"name": "TEXT", "datatype": "BYTES", "shape": [3], "data": TEXTS}],
         "/v1/classify", {"input": ["one", "two"]}),
        ("emb-window",
         [{"name": "TEXT", "datatype": "BYTES", "shape": [3, 1], "data": TEXTS}],
         "/v1/embeddings", {"input": ["one", "two"]}),
    ],
)  # fmt: skip
def test_kserve_items_share_batches_with_the_plain_api(
    server: Server, model: str, kserve: list[Any], plain_path: str, plain: dict[str, Any]
) -> None:
    """A window batcher of 5 items: 3 KServe items and 2 /v1 items fill it together at once;
    if they did not share a batch key each would wait the whole window and run alone."""
    with ThreadPoolExecutor(2) as pool_:
        a = pool_.submit(post, server, f"/v2/models/{model}/infer", {"inputs": kserve})
        b = pool_.submit(post, server, plain_path, {"model": model, **plain})
        answers = [a.result(), b.result()]
    for r in answers:
        assert r.status == 200, r.body[:300]
        assert (r.header("X-Infergate-Batch-Items"), r.header("X-Infergate-Batch-Requests")) == (
            "5",
            "2",
        )
    for r in answers if model != "emb-window" else []:  # tokenised before queueing
        tokenize_us = r.header("X-Infergate-Tokenize-Us")
        assert tokenize_us is not None
        assert tokenize_us.isdigit()


def _input(name: str, data: list[Any], datatype: str = "BYTES", shape: Any = None) -> Any:
    return {"name": name, "datatype": datatype, "shape": shape or [len(data)], "data": data}


@pytest.mark.parametrize(
    ("model", "inputs", "message"),
    [
        ("rerank", [_input("QUERY", [QUERY]), _input("DOCUMENT", [1.0, 2.0], "FP32")],
         "input DOCUMENT: expected BYTES, got FP32"),
        ("rerank", [_input("QUERY", ["a", "b"]), _input("DOCUMENT", DOCS[:3])],
         "input QUERY: 2 rows for 3 DOCUMENT rows"),
        ("rerank", [_input("TEXT", ["a cat"])], "rerank models take inputs QUERY and DOCUMENT"),
        ("rerank", [_input("QUERY", [QUERY])], "rerank models take inputs QUERY and DOCUMENT"),
        ("rerank", [_input("QUERY", [QUERY]), _input("DOCUMENT", ["a", ""])],
         "input DOCUMENT[1] is an empty string"),
        ("rerank", [_input("QUERY", [""]), _input("DOCUMENT", ["a"])],
         "input QUERY[0] is an empty string"),
        ("rerank", [_input("QUERY", ["\u200b"]), _input("DOCUMENT", ["a cat", "b"])],
         "QUERY of pair 0 tokenises to nothing"),
        ("rerank", [_input("QUERY", [QUERY]), _input("DOCUMENT", ["a cat", " "])],
         "DOCUMENT of pair 1 tokenises to nothing"),
        ("rerank", [_input("QUERY", [QUERY]), _input("DOCUMENT", ["x"] * 1001)],
         "at most 1000 documents per request"),
        ("rerank", [_input("QUERY", [QUERY]), _input("DOCUMENT", ["a", "b"], shape=[1, 2])],
         "input DOCUMENT: expected shape [-1] or [-1, 1], got [1, 2]"),
        ("classify", [_input("QUERY", ["a cat"])], "classify models take input TEXT"),
        ("classify", [_input("TEXT", ["ok", "\t"])], "TEXT[1] tokenises to nothing"),
        ("classify", [_input("TEXT", [])], "input TEXT holds no strings"),
        ("classify", [_input("TEXT", [1], "INT64")], "input TEXT: expected BYTES, got INT64"),
    ],
)  # fmt: skip
def test_bad_text_tensors_are_a_400_with_a_message(
    server: Server, model: str, inputs: list[Any], message: str
) -> None:
    r = post(server, f"/v2/models/{model}/infer", {"inputs": inputs})
    assert r.status == 400, r.body[:300]
    assert message in r.json()["error"]


def test_an_unknown_output_is_a_400_through_tritonclient(url: str) -> None:
    c = triton.InferenceServerClient(url)
    out = [triton.InferRequestedOutput("EMBEDDING")]
    with pytest.raises(InferenceServerException, match="unknown output EMBEDDING") as e:
        c.infer("rerank", [bytes_input("QUERY", [QUERY], True),
                           bytes_input("DOCUMENT", DOCS, True)], outputs=out)  # fmt: skip
    assert e.value.status() == "400"


# ---- OpenAI embeddings: prompt_name ------------------------------------------------------


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    assert server.address is not None
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server.address[1]}/v1", api_key="unused")


@pytest.mark.parametrize(
    ("prompt_name", "prefix"), [("passage", "passage: "), ("query", "query: "), (None, "query: ")]
)
def test_prompt_name_selects_the_models_prompt(
    client: openai.OpenAI, folders: dict[str, Path], prompt_name: str | None, prefix: str
) -> None:
    extra = {"prompt_name": prompt_name} if prompt_name else None
    out = client.embeddings.create(model="emb-cls", input=TEXTS, extra_body=extra)
    got = np.array([d.embedding for d in out.data], dtype=np.float32)
    states, mask = reference(folders["emb-cls"] / "model.onnx", [prefix + t for t in TEXTS])
    np.testing.assert_allclose(got, l2_normalize(pool(states, mask, "cls")), rtol=1e-4, atol=1e-5)
    assert out.usage.total_tokens == int(mask.sum())


@pytest.mark.parametrize(
    ("model", "body", "message"),
    [
        ("emb-cls", {"prompt_name": "document"},
         "prompt_name 'document' is not one of model emb-cls's prompts: passage, query"),
        ("emb-max", {"prompt_name": "query"}, "model emb-max has no prompts"),
        ("emb-cls", {"prompt_name": 3}, "prompt_name must be a string"),
    ],
)  # fmt: skip
def test_bad_prompt_name_is_a_400(
    client: openai.OpenAI, model: str, body: dict[str, Any], message: str
) -> None:
    with pytest.raises(openai.BadRequestError, match=message.replace("'", ".")):
        client.embeddings.create(model=model, input="a cat", extra_body=body)


def test_prompt_name_with_token_arrays_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="applies to text inputs"):
        client.embeddings.create(model="emb-cls", input=[[101, 102]],
                                 extra_body={"prompt_name": "query"})  # fmt: skip


# ---- the model repository: sentence-transformers' onnx/model.onnx ---------------------------


def test_repository_text_folders_with_onnx_subfolder(tmp_path: Path) -> None:
    """A repository holding exports whose graph is only at onnx/model.onnx: one found by the
    scan, one whose model.toml names the folder (model_file = "onnx")."""
    repo = tmp_path / "models"
    embed = write_text_folder(repo / "st-embed", "embedder", pooling="mean", normalize=True,
                              onnx_subfolder=True)  # fmt: skip
    (embed / "model.toml").write_text('task = "embeddings"\n')
    rerank = write_text_folder(repo / "st-rerank", "cross_encoder", pooling=None,
                               onnx_subfolder=True)  # fmt: skip
    (rerank / "model.toml").write_text('task = "rerank"\nmodel_file = "onnx"\n')
    config = tmp_path / "infergate.toml"
    config.write_text(
        'listen = "127.0.0.1:0"\nsub_reactors = 1\nadmin_listen = ""\nmodel_repository = "models"\n'
    )
    loaded = load_config(str(config))
    with serving(config=loaded.server, base_dir=loaded.base_dir) as s:
        assert s.address is not None
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{s.address[1]}/v1", api_key="unused")
        out = c.embeddings.create(model="st-embed", input=TEXTS)
        got = np.array([d.embedding for d in out.data], dtype=np.float32)
        states, mask = reference(embed / "onnx" / "model.onnx", TEXTS)
        np.testing.assert_allclose(got, l2_normalize(pool(states, mask, "mean")), atol=1e-5)
        r = post(s, "/v1/rerank", {"model": "st-rerank", "query": QUERY, "documents": DOCS})
        assert r.status == 200, r.body[:300]
        logits, _ = reference(rerank / "onnx" / "model.onnx", [(QUERY, d) for d in DOCS])
        scores = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
        got_scores = [scores[i] for i in range(len(DOCS))]
        np.testing.assert_allclose(got_scores, sigmoid(logits[:, 0]), atol=1e-5)
