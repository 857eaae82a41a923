"""Any-ONNX-model benchmark (issue 8): an MLP of ~3.9M parameters with a dynamic batch
dimension, built here with ``onnx``, served by infergate from a model repository (KServe v2,
``adaptive`` and ``off``) and by MLServer (a custom ONNX Runtime runtime with its adaptive
batching, ``max_batch_size`` and ``max_batch_time`` matched), plus the in-process ceiling (rows/s
at batch 32 on ONNX Runtime, no HTTP). Servers on core 0, the closed-loop client on core 1;
one row per request, 1 intra-op thread everywhere.

infergate gets binary tensors (KServe's binary tensor extension) and, for comparison, the same
request as JSON. MLServer 1.7's REST server does not implement the binary tensor extension
(``Inference-Header-Content-Length`` is not read), so it gets the JSON request.

Usage: python bench/tensor_bench.py [MLSERVER_PYTHON]
       (CONCURRENCY=1,8,64 and SECONDS=3 to override; no MLServer column without its python)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import Result, build, closed_loop, free_port, start_infergate_admin

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from infergate.engine.executors.onnx_tensor import OnnxTensorExecutor  # noqa: E402

CONCURRENCY = [int(c) for c in os.environ.get("CONCURRENCY", "1,8,64").split(",")]
SECONDS = float(os.environ.get("SECONDS", "3"))
D_IN, D_HIDDEN, D_OUT = 512, 1536, 512
MAX_BATCH = 32
MAX_BATCH_TIME_S = 0.002
"""MLServer's ``max_batch_time``; infergate's adaptive policy has no wait."""
MLSERVER_RUNTIME = """
import os
import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxModel(MLModel):
    async def load(self) -> bool:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        path = os.path.join(os.path.dirname(__file__), "model.onnx")
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.log = open(os.path.join(os.path.dirname(__file__), "batches.txt"), "a")
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32)
        y = self.session.run(None, {"x": x})[0]
        self.log.write(f"{x.shape[0]}\\n")
        self.log.flush()
        return InferenceResponse(
            model_name=self.name, outputs=[NumpyCodec.encode_output("y", y)]
        )
"""


def build_mlp(path: Path) -> None:
    """``x: FP32[batch, 512] -> y: FP32[batch, 512]``, two hidden layers of 1536 (3.9M
    parameters), seeded weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    dims = [(D_IN, D_HIDDEN), (D_HIDDEN, D_HIDDEN), (D_HIDDEN, D_OUT)]
    inits, nodes, prev = [], [], "x"
    for i, (a, b) in enumerate(dims):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(
            np.zeros(b, np.float32), f"B{i}")]  # fmt: skip
        out = "y" if i == len(dims) - 1 else f"h{i}"
        nodes.append(
            helper.make_node("Gemm", [prev, f"W{i}", f"B{i}"], [f"g{i}" if out != "y" else "y"])
        )
        if out != "y":
            nodes.append(helper.make_node("Relu", [f"g{i}"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", D_IN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", D_OUT])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def ceiling(model: Path) -> float:
    """Rows/s at batch MAX_BATCH in-process on core 0, where the servers run."""
    os.sched_setaffinity(0, {0})
    ex = OnnxTensorExecutor(1, str(model), max_batch_size=MAX_BATCH)
    ex.load()
    row = (np.ones(D_IN, np.float32),)
    items = [row] * MAX_BATCH
    for _ in range(5):
        ex.run(items, 0)
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < 2.0:
        ex.run(items, 0)
        n += 1
    return n * MAX_BATCH / (time.perf_counter() - t)


def bodies(path: str) -> tuple[bytes, bytes]:
    """(binary, JSON) requests of one row."""
    x = np.random.default_rng(1).standard_normal((1, D_IN)).astype(np.float32)
    head = json.dumps({
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, D_IN],
                    "parameters": {"binary_data_size": x.nbytes}}],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
    }).encode()  # fmt: skip
    binary = build(path, head + x.tobytes(), {"Inference-Header-Content-Length": str(len(head))})
    doc = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [1, D_IN], "data": x.ravel().tolist()}
        ]
    }
    return binary, build(path, json.dumps(doc).encode())


def run(port: int, data: bytes, conc: int) -> Result:
    """About SECONDS of closed-loop traffic, sized by a short warm-up run's rate."""
    warm = uvloop.run(closed_loop(port, data, conc, conc * 10))
    rate = warm.ok / warm.elapsed if warm.elapsed > 0 else 100.0
    total = max(conc * 10, int(rate * SECONDS) // conc * conc)
    return uvloop.run(closed_loop(port, data, conc, total))


def patch(admin: int, policy: str) -> None:
    req = urllib.request.Request(
        f"http://127.0.0.1:{admin}/admin/models/mlp/batching",
        data=json.dumps({"policy": policy}).encode(), method="PATCH",
    )  # fmt: skip
    with urllib.request.urlopen(req) as r:
        assert r.status == 200


def start_mlserver(python: str, work: Path) -> tuple[subprocess.Popen[bytes], int]:
    folder = work / "mlserver" / "mlp"
    folder.mkdir(parents=True)
    (folder / "model.onnx").symlink_to(work / "models" / "mlp" / "model.onnx")
    (folder / "runtime.py").write_text(MLSERVER_RUNTIME)
    (folder / "model-settings.json").write_text(json.dumps({
        "name": "mlp", "implementation": "runtime.OnnxModel",
        "max_batch_size": MAX_BATCH, "max_batch_time": MAX_BATCH_TIME_S,
    }))  # fmt: skip
    port = free_port()
    (work / "mlserver" / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": port, "grpc_port": free_port(),
        "metrics_port": free_port(),
        "debug": False, "parallel_workers": 0,
    }))  # fmt: skip
    mlserver = str(Path(python).parent / "mlserver")
    proc = subprocess.Popen(
        ["taskset", "-c", "0", mlserver, "start", str(work / "mlserver")], cwd=folder,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/mlp/ready", timeout=2):
                return proc, port
        except OSError:
            time.sleep(0.1)  # waiting for MLServer and its worker to start
    os.killpg(proc.pid, signal.SIGTERM)
    raise SystemExit("MLServer did not start")


def main() -> None:
    mlserver_python = sys.argv[1] if len(sys.argv) > 1 else ""
    work = Path(tempfile.mkdtemp(prefix="tensor-bench-"))
    model = work / "models" / "mlp" / "model.onnx"
    build_mlp(model)
    top = ceiling(model)
    os.sched_setaffinity(0, {1})
    config = f'listen = "127.0.0.1:0"\nsub_reactors = 1\nmodel_repository = "{work / "models"}"\n'
    (model.parent / "model.toml").write_text(
        f'intra_op_threads = 1\nwarmup = true\n[batching]\npolicy = "adaptive"\n'
        f"max_batch_size = {MAX_BATCH}\n[priorities]\nlevels = 1\n"
        "queue = [{ max_queue_size = 4096 }]\n"
    )
    ig_bin, ig_json = bodies("/v2/models/mlp/infer")
    results: dict[tuple[str, int], tuple[Result, float | None]] = {}
    ig, port, admin = start_infergate_admin(config)
    try:
        for policy, data, label in (("adaptive", ig_bin, "infergate adaptive, binary"),
                                    ("off", ig_bin, "infergate off, binary"),
                                    ("adaptive", ig_json, "infergate adaptive, JSON")):  # fmt: skip
            patch(admin, policy)
            for c in CONCURRENCY:
                r = run(port, data, c)
                results[label, c] = (r, None)
                print(f"{label} c={c}: {r.ok / r.elapsed:.0f} req/s", file=sys.stderr)
    finally:
        ig.terminate()
        ig.wait(20)
    if mlserver_python:
        ml, ml_port = start_mlserver(mlserver_python, work)
        log = work / "mlserver" / "mlp" / "batches.txt"
        _, ml_json = bodies("/v2/models/mlp/infer")
        try:
            for c in CONCURRENCY:
                before = _batches(log)
                r = run(ml_port, ml_json, c)
                sizes = _batches(log)[len(before) :]
                results["MLServer 1.7 adaptive, JSON", c] = (r, _mean(sizes))
                print(f"MLServer c={c}: {r.ok / r.elapsed:.0f} req/s {r.statuses}", file=sys.stderr)
        finally:
            os.killpg(ml.pid, signal.SIGTERM)
            ml.wait(20)
    report(top, results)


def _batches(log: Path) -> list[int]:
    return [int(x) for x in log.read_text().split()] if log.exists() else []


def _mean(xs: list[int]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def report(top: float, results: dict[tuple[str, int], tuple[Result, Any]]) -> None:
    params = D_IN * D_HIDDEN + D_HIDDEN * D_HIDDEN + D_HIDDEN * D_OUT + 2 * D_HIDDEN + D_OUT
    print(f"\nMLP {D_IN}-{D_HIDDEN}-{D_HIDDEN}-{D_OUT} ({params / 1e6:.1f}M parameters, FP32), "
          f"ONNX Runtime 1 intra-op thread, max batch {MAX_BATCH}; in-process ceiling at batch "
          f"{MAX_BATCH}: {top:,.0f} rows/s. Closed loop, one row per request.\n")  # fmt: skip
    print("| server | concurrency | req/s | % of ceiling | p50 ms | p99 ms | mean batch | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for (name, c), (r, counted) in results.items():
        rps = r.ok / r.elapsed
        batch = _mean(r.batch_items) if counted is None else counted
        bad = sum(n for s, n in r.statuses.items() if s != 200)
        print(f"| {name} | {c} | {rps:,.0f} | {rps / top:.0%} | {r.pct(50) * 1e3:.2f} | "
              f"{r.pct(99) * 1e3:.2f} | {batch:.1f} | {bad} |")  # fmt: skip


if __name__ == "__main__":
    main()
