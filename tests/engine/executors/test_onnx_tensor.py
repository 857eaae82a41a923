"""OnnxTensorExecutor on real ONNX models built by the tests: its outputs equal those of an
``onnxruntime.InferenceSession`` run directly on the same inputs, for single rows and for
batches merged from several requests; the spec comes from the model; shape errors name the
input; warm-up runs each size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from infergate.engine.executors.base import ExecutorError
from infergate.engine.executors.onnx_tensor import OnnxTensorExecutor, warmup_items
from infergate.engine.executors.spec import (
    Array,
    InputError,
    ModelSpec,
    ShapeError,
    TensorSpec,
    batch_key,
    check_inputs,
    from_items,
    from_numpy,
    numpy_dtype,
    to_items,
)
from tests.support import onnx_models

Request = dict[str, tuple[str, Array]]


def _executor(tmp_path: Path, model: onnx.ModelProto, **kw: Any) -> OnnxTensorExecutor:
    path = onnx_models.write_model(model, tmp_path / "m")
    ex = OnnxTensorExecutor(kw.pop("instances", 2), str(path), **kw)
    ex.load()
    return ex


def _direct(ex: OnnxTensorExecutor, feeds: dict[str, Array]) -> list[Array]:
    """The reference: the same model file in a session of the test's own."""
    return list(ort.InferenceSession(ex.model_path).run(None, feeds))


def _request(arrays: dict[str, Array]) -> Request:
    return {k: (from_numpy(v.dtype), v) for k, v in arrays.items()}


def _serve(ex: OnnxTensorExecutor, requests: list[dict[str, Array]]) -> list[tuple[Array, ...]]:
    """What the API and the Batcher do: validate, split into items, run all the requests'
    items as ONE batch on slot 1, reassemble each request's outputs."""
    spans: list[tuple[int, int]] = []
    items: list[tuple[Array, ...]] = []
    for r in requests:
        arrays = check_inputs(ex.spec, _request(r))
        its = to_items(ex.spec, arrays)
        spans.append((len(items), len(items) + len(its)))
        items.extend(its)
    outs = list(ex.run(items, 1))
    assert len(outs) == len(items)
    return [from_items(ex.spec, outs[a:b]) for a, b in spans]


def _assert_same(got: tuple[Array, ...], want: list[Array]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype
        assert g.shape == w.shape
        if w.dtype.kind in "biu":
            np.testing.assert_array_equal(g, w)
        else:
            assert np.allclose(g, w, rtol=1e-3, atol=1e-3)


def test_mlp_spec_is_read_from_the_model(tmp_path: Path) -> None:
    ex = _executor(tmp_path, onnx_models.mlp(), max_batch_size=16)
    assert ex.spec == ModelSpec(
        (TensorSpec("x", "FP32", (-1, 4)),), (TensorSpec("y", "FP32", (-1, 3)),), 16, True
    )
    assert ex.max_batch is None
    meta = ex.spec.metadata("mlp", "onnxruntime")
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]


def test_mlp_single_rows_and_mixed_batches_match_onnxruntime(tmp_path: Path) -> None:
    ex = _executor(tmp_path, onnx_models.mlp())
    rng = np.random.default_rng(1)
    requests = [{"x": rng.standard_normal((n, 4)).astype(np.float32)} for n in (1, 3, 1, 5)]
    for r in requests:  # one at a time
        (out,) = _serve(ex, [r])
        _assert_same(out, _direct(ex, r))
        assert np.allclose(out[0], onnx_models.mlp_reference(r["x"]), atol=1e-5)
    for r, out in zip(requests, _serve(ex, requests), strict=True):  # merged into one batch
        _assert_same(out, _direct(ex, r))


def test_two_inputs_two_outputs_fp16_and_int64(tmp_path: Path) -> None:
    ex = _executor(tmp_path, onnx_models.two_io())
    assert [(t.name, t.datatype) for t in ex.spec.inputs] == [("a", "FP16"), ("b", "INT64")]
    assert [(t.name, t.datatype) for t in ex.spec.outputs] == [("c", "FP16"), ("d", "INT64")]
    rng = np.random.default_rng(2)
    requests: list[dict[str, Array]] = [
        {
            "b": rng.integers(-1000, 1000, (n, 2), dtype=np.int64),  # order of keys is free
            "a": rng.standard_normal((n, 3)).astype(np.float16),
        }
        for n in (2, 1, 4)
    ]
    for r, out in zip(requests, _serve(ex, requests), strict=True):
        want = _direct(ex, r)
        _assert_same(out, want)
        # rows stayed aligned across inputs: d depends on b's row and a's row
        np.testing.assert_array_equal(out[1], r["b"] * 3 + r["a"].argmax(1)[:, None])


def test_fixed_first_dimension_is_served_unbatched(tmp_path: Path) -> None:
    ex = _executor(tmp_path, onnx_models.fixed_batch(4), max_batch_size=16)
    assert ex.spec.max_batch_size == 0
    assert not ex.spec.batched
    assert not ex.spec.batch_dynamic
    assert ex.max_batch == 1
    assert ex.spec.inputs == (TensorSpec("x", "FP32", (4, 3)),)
    rng = np.random.default_rng(3)
    requests = [{"x": rng.standard_normal((4, 3)).astype(np.float32)} for _ in range(2)]
    assert len(to_items(ex.spec, check_inputs(ex.spec, _request(requests[0])))) == 1
    for r, out in zip(requests, _serve(ex, requests), strict=True):  # two items in one call
        _assert_same(out, _direct(ex, r))
    with pytest.raises(ShapeError, match=r"input x: expected shape \[4, 3\], got \[2, 3\]"):
        check_inputs(ex.spec, {"x": ("FP32", np.zeros((2, 3), np.float32))})


def test_dynamic_sequence_dimension_batches_by_key(tmp_path: Path) -> None:
    ex = _executor(tmp_path, onnx_models.sequence())
    assert ex.spec.inputs == (TensorSpec("x", "FP32", (-1, -1, 4)),)
    assert ex.spec.outputs[1] == TensorSpec("pooled", "FP32", (-1, 4))
    rng = np.random.default_rng(4)
    short = [{"x": rng.standard_normal((n, 5, 4)).astype(np.float32)} for n in (1, 2)]
    long = {"x": rng.standard_normal((2, 7, 4)).astype(np.float32)}
    keys = {batch_key(ex.spec, check_inputs(ex.spec, _request(r))) for r in [*short, long]}
    assert keys == {(("FP32", (5, 4)),), (("FP32", (7, 4)),)}
    for r, out in zip(short, _serve(ex, short), strict=True):
        _assert_same(out, _direct(ex, r))
    (out,) = _serve(ex, [long])  # the same slot, a different row shape: buffer re-made
    _assert_same(out, _direct(ex, long))


def test_every_numeric_datatype_round_trips(tmp_path: Path) -> None:
    ex = _executor(tmp_path, onnx_models.identity_all())
    assert [t.datatype for t in ex.spec.inputs] == list(onnx_models.IDENTITY_TYPES)
    rng = np.random.default_rng(5)
    request = {}
    for t in ex.spec.inputs:
        dtype = numpy_dtype(t.datatype)
        raw = rng.integers(0, 100, (3, 2))
        request[t.name] = (raw % 2 == 0) if dtype.kind == "b" else raw.astype(dtype)
    (out,) = _serve(ex, [request])
    _assert_same(out, _direct(ex, request))
    for t, arr in zip(ex.spec.inputs, out, strict=True):
        assert from_numpy(arr.dtype) == t.datatype


def test_outputs_of_a_batch_survive_the_next_batch_on_the_same_slot(tmp_path: Path) -> None:
    ex = _executor(tmp_path, onnx_models.identity_all({"FP32": onnx.TensorProto.FLOAT}))
    first = ex.run([(np.full(2, 1.0, np.float32),), (np.full(2, 2.0, np.float32),)], 0)
    ex.run([(np.full(2, 9.0, np.float32),)] * 3, 0)  # reuses slot 0's input buffer
    np.testing.assert_array_equal(first[1][0], [2.0, 2.0])


def test_shape_and_input_errors_name_the_input(tmp_path: Path) -> None:
    ex = _executor(tmp_path, onnx_models.two_io())
    a, b = np.zeros((2, 3), np.float16), np.zeros((2, 2), np.int64)
    with pytest.raises(ShapeError, match=r"input a: expected shape \[-1, 3\], got \[2, 4\]") as e:
        check_inputs(ex.spec, {"a": ("FP16", np.zeros((2, 4), np.float16)), "b": ("INT64", b)})
    assert e.value.input == "a"
    assert e.value.expected == (-1, 3)
    assert e.value.received == (2, 4)
    with pytest.raises(ShapeError, match=r"input b: expected shape \[2, 2\], got \[3, 2\]"):
        check_inputs(ex.spec, {"a": ("FP16", a), "b": ("INT64", np.zeros((3, 2), np.int64))})
    with pytest.raises(ShapeError, match=r"input a: .* got \[3\]"):
        check_inputs(ex.spec, {"a": ("FP16", np.zeros(3, np.float16)), "b": ("INT64", b)})
    with pytest.raises(InputError, match="missing input b") as e2:
        check_inputs(ex.spec, {"a": ("FP16", a)})
    assert e2.value.input == "b"
    with pytest.raises(InputError, match="unknown input z"):
        check_inputs(ex.spec, {"a": ("FP16", a), "b": ("INT64", b), "z": ("FP32", a)})
    with pytest.raises(InputError, match="input a: expected FP16, got FP32"):
        check_inputs(ex.spec, {"a": ("FP32", a.astype(np.float32)), "b": ("INT64", b)})
    with pytest.raises(ShapeError, match="input a"):  # zero rows
        check_inputs(
            ex.spec,
            {"a": ("FP16", np.zeros((0, 3), np.float16)), "b": ("INT64", np.zeros((0, 2)))},
        )


def test_misaligned_outputs_fail_the_batch(tmp_path: Path) -> None:
    """A model that answers a different number of rows than it was given (here: every row
    twice, declared ``[batch, 2]``) must fail the batch, never hand rows to the wrong
    requests."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Concat", ["x", "x"], ["y"], axis=0)],
        "rows_twice",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    ex = _executor(tmp_path, model)
    assert ex.spec.batched
    with pytest.raises(ExecutorError, match=r"output y has shape \[6, 2\] for a batch of 3"):
        ex.run([(np.ones(2, np.float32),)] * 3, 0)
    with pytest.raises(ValueError, match="each item needs 1 outputs"):
        from_items(ex.spec, [(np.zeros(2), np.zeros(2))])


def test_warmup_runs_each_size_and_is_reported(tmp_path: Path) -> None:
    ex = _executor(tmp_path, onnx_models.sequence())
    took = ex.warmup([4, 1, 4, 8])
    assert sorted(took) == [1, 4, 8]
    assert all(s > 0 for s in took.values())
    d = ex.describe()
    assert d["warmup_batch_sizes"] == [1, 4, 8]
    assert d["warmup_s"] > 0
    assert d["load_s"] > 0
    assert d["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, -1, 4]}]
    items = warmup_items(ex.spec, 3)
    assert len(items) == 3
    assert items[0][0].shape == (1, 4)  # dynamic seq -> 1


def test_warmup_of_an_unbatched_model_runs_once(tmp_path: Path) -> None:
    ex = _executor(tmp_path, onnx_models.fixed_batch(1))
    assert ex.warmup([1, 2, 4]).keys() == {1}
    (item,) = warmup_items(ex.spec, 4)
    assert item[0].shape == (1, 3)


def test_unloadable_model_and_bf16_are_executor_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ExecutorError, match="cannot load ONNX model"):
        OnnxTensorExecutor(1, str(bad)).load()
    bf16 = onnx_models.identity_all({"BF16": onnx.TensorProto.BFLOAT16})
    with pytest.raises(ExecutorError, match="in_BF16: BF16"):
        _executor(tmp_path, bf16)


def test_absent_provider_is_refused(tmp_path: Path) -> None:
    path = onnx_models.write_model(onnx_models.mlp(), tmp_path / "m")
    with pytest.raises(ExecutorError, match="has no"):
        OnnxTensorExecutor(1, str(path), providers=("NoSuchExecutionProvider",)).load()
