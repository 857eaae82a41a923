"""ModelSpec helpers: the datatype table, batch keys, items in and out, and their errors."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from infergate.engine.executors.onnx_tensor import OnnxTensorExecutor
from infergate.engine.executors.spec import (
    BY_KSERVE,
    DATATYPES,
    ModelSpec,
    SpecError,
    TensorSpec,
    batch_dynamic,
    batch_key,
    dims_from,
    from_items,
    from_numpy,
    from_onnx_type,
    from_ort_type,
    numpy_dtype,
    to_items,
)
from tests.support import onnx_models

X = TensorSpec("x", "FP32", (-1, 4))
Y = TensorSpec("y", "INT64", (-1,))


def test_one_table_maps_all_three_names() -> None:
    assert len({d.kserve for d in DATATYPES}) == len(DATATYPES)
    assert from_ort_type("tensor(float)", "x") == "FP32"
    assert from_ort_type("tensor(float16)", "x") == "FP16"
    assert from_ort_type("tensor(bool)", "x") == "BOOL"
    assert from_onnx_type(7, "x") == "INT64"
    assert numpy_dtype("UINT16") == np.dtype(np.uint16)
    assert from_numpy(np.dtype(np.float64)) == "FP64"
    assert from_numpy(np.array(["a"]).dtype) == "BYTES"
    for d in DATATYPES:
        if d.numpy is not None and d.kserve != "BYTES":
            assert from_numpy(d.numpy) == d.kserve
    assert BY_KSERVE["BF16"].numpy is None


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: from_ort_type("seq(tensor(float))", "s"), "tensor s: type seq"),
        (lambda: from_onnx_type(14, "c"), "tensor c: ONNX element type 14"),
        (lambda: numpy_dtype("BF16"), "BF16"),
        (lambda: numpy_dtype("FP8"), "FP8"),
        (lambda: from_numpy(np.dtype(">f4")), "no KServe"),
        (lambda: from_numpy(np.dtype(np.complex64)), "no KServe"),
    ],
)
def test_untranslatable_types_are_spec_errors(call: object, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        call()  # type: ignore[operator]


def test_dims_and_batch_dynamic() -> None:
    assert dims_from(["batch", None, 3, 0]) == (-1, -1, 3, -1)
    assert batch_dynamic([X], [Y])
    assert not batch_dynamic([X], [TensorSpec("y", "FP32", (1, 4))])
    assert not batch_dynamic([X], [TensorSpec("scalar", "FP32", ())])
    assert not batch_dynamic([], [Y])


def test_model_spec_invariants() -> None:
    with pytest.raises(SpecError, match="needs a dynamic dimension 0"):
        ModelSpec((X,), (Y,), 8, False)
    with pytest.raises(SpecError, match="input names must be unique"):
        ModelSpec((X, X), (Y,))
    with pytest.raises(SpecError, match=">= 0"):
        ModelSpec((X,), (Y,), -1, True)
    spec = ModelSpec((X,), (Y,), 8, True)
    assert spec.input("x") == X
    assert spec.output("nope") is None
    meta = spec.metadata("m", "onnxruntime", simulated=False)
    assert meta["parameters"] == {"simulated": False}
    assert meta["outputs"] == [{"name": "y", "datatype": "INT64", "shape": [-1]}]


def test_items_round_trip_and_keys() -> None:
    batched = ModelSpec((X,), (Y,), 8, True)
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    items = to_items(batched, [x])
    assert len(items) == 3
    assert items[1][0].base is not None  # a view, not a copy
    np.testing.assert_array_equal(items[2][0], x[2])
    (y,) = from_items(batched, [(np.asarray(i, np.int64),) for i in range(3)])
    np.testing.assert_array_equal(y, [0, 1, 2])
    assert batch_key(batched, [x]) == batch_key(batched, [x[:1]])  # rows do not matter
    unbatched = ModelSpec((TensorSpec("x", "FP32", (3, 4)),), (Y,))
    assert batch_key(unbatched, [x]) == (("FP32", (3, 4)),)
    assert to_items(unbatched, [x])[0][0] is x
    with pytest.raises(ValueError, match="answered 2 items"):
        from_items(unbatched, [(x,), (x,)])


def test_slots_share_one_session_concurrently(tmp_path: Path) -> None:
    """Two slot threads run at once on the shared session; each gets its own rows back."""
    path = onnx_models.write_model(onnx_models.mlp(), tmp_path)
    ex = OnnxTensorExecutor(2, str(path))
    ex.load()
    rng = np.random.default_rng(6)
    inputs = [rng.standard_normal((16, 4)).astype(np.float32) for _ in range(2)]
    results: list[list[np.ndarray]] = [[], []]
    barrier = threading.Barrier(2)

    def slot(k: int) -> None:
        barrier.wait()
        for _ in range(20):
            out = ex.run([(row,) for row in inputs[k]], k)
            results[k].append(np.stack([o[0] for o in out]))

    threads = [threading.Thread(target=slot, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ref = ort.InferenceSession(str(path))
    for k in range(2):
        (want,) = ref.run(None, {"x": inputs[k]})
        assert len(results[k]) == 20
        for got in results[k]:
            assert np.allclose(got, want, atol=1e-5)
