"""Reload memory check (issue 8): does reloading a model while serving leak memory?

Builds the 3.9M-parameter MLP of ``bench/tensor_bench.py`` (a 15 MB ONNX file) into a model
repository, starts infergate on it, keeps CLIENTS client threads sending one-row KServe
requests, and reloads the model CYCLES times through ``POST /v2/repository/models/mlp/load``
(each cycle writes the file again with new weights, so every reload really builds a new
ONNX Runtime session). The server's RSS (``VmRSS`` of ``/proc/PID/status``) is read after
WARMUP reloads (the baseline: allocator arenas and ONNX Runtime's first-session caches
settled), after each cycle and at the end once the load stops; the report gives the growth in
total and per cycle, the first half against the second half (a leak grows steadily; noise
does not), and the failed requests (there must be none).

Usage: python bench/reload_rss.py   (CYCLES=20 WARMUP=5 CLIENTS=4 to override)
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.support.server import ServerProcess  # noqa: E402

CYCLES = int(os.environ.get("CYCLES", "20"))
WARMUP = int(os.environ.get("WARMUP", "5"))
CLIENTS = int(os.environ.get("CLIENTS", "4"))
TIMEOUT_S = 120.0
D_IN, D_HIDDEN, D_OUT = 512, 1536, 512
"""``bench/tensor_bench.py``'s MLP: 3.9M parameters."""


def build_mlp(path: Path, seed: int) -> None:
    """``x: FP32[batch, 512] -> y: FP32[batch, 512]``, two hidden layers of 1536, weights
    from ``seed``; written to a temporary file and renamed (a reader never sees half)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    dims = [(D_IN, D_HIDDEN), (D_HIDDEN, D_HIDDEN), (D_HIDDEN, D_OUT)]
    inits, nodes, prev = [], [], "x"
    for i, (a, b) in enumerate(dims):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"),
                  numpy_helper.from_array(np.zeros(b, np.float32), f"B{i}")]  # fmt: skip
        out = "y" if i == len(dims) - 1 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"B{i}"], [out]))
        if out != "y":
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"]))
            out = f"r{i}"
        prev = out
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", D_IN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", D_OUT])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MiB, from ``/proc/PID/status``."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def settled_rss(pid: int, samples: int = 5) -> float:
    """The median of a few RSS reads 50 ms apart (an executor thread may be mid-batch)."""
    values = []
    for _ in range(samples):
        values.append(rss_mb(pid))
        time.sleep(0.05)
    return statistics.median(values)


class Load:
    """CLIENTS threads sending one-row requests on keep-alive connections until stopped."""

    def __init__(self, port: int) -> None:
        row = [0.01 * (i % 100) for i in range(D_IN)]
        doc = {"inputs": [{"name": "x", "shape": [1, D_IN], "datatype": "FP32", "data": row}]}
        self.body = json.dumps(doc).encode()
        self.port = port
        self.stop = threading.Event()
        self.ok = 0
        self.failed: dict[int, int] = {}
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.client) for _ in range(CLIENTS)]

    def client(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self.stop.is_set():
            conn.request("POST", "/v2/models/mlp/infer", self.body)
            resp = conn.getresponse()
            resp.read()
            with self.lock:
                if resp.status == 200:
                    self.ok += 1
                else:
                    self.failed[resp.status] = self.failed.get(resp.status, 0) + 1
        conn.close()

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(TIMEOUT_S)


def reload(admin_port: int, model: Path, seed: int) -> float:
    """Rewrite the model with new weights and reload it; returns the call's seconds."""
    build_mlp(model, seed)
    conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=TIMEOUT_S)
    t0 = time.perf_counter()
    conn.request("POST", "/v2/repository/models/mlp/load", b"")
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    if resp.status != 200:
        raise RuntimeError(f"reload {seed}: {resp.status} {body[:300]!r}")
    return time.perf_counter() - t0


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="reload-rss-"))
    model = work / "models" / "mlp" / "model.onnx"
    build_mlp(model, 0)
    (model.parent / "model.toml").write_text("intra_op_threads = 1\n")
    config = work / "infergate.toml"
    config.write_text('sub_reactors = 1\nmodel_repository = "models"\n')
    with ServerProcess(config) as server:
        pid, admin = server.proc.pid, server.admin_port
        assert admin is not None
        start = settled_rss(pid)
        with Load(server.port) as load:
            for seed in range(1, WARMUP + 1):
                reload(admin, model, seed)
            base = settled_rss(pid)
            after: list[float] = []
            took: list[float] = []
            for seed in range(WARMUP + 1, WARMUP + CYCLES + 1):
                took.append(reload(admin, model, seed))
                after.append(settled_rss(pid))
        time.sleep(1.0)  # the last old version drains and closes on its retire thread
        end = settled_rss(pid)
    half = CYCLES // 2
    first, second = after[half - 1] - base, after[-1] - after[half - 1]
    failed = sum(load.failed.values())
    print(f"model file {model.stat().st_size / 2**20:.1f} MiB, {CLIENTS} clients, "
          f"{load.ok} requests ok, failed {failed} {load.failed or ''}")  # fmt: skip
    print(f"reload call: median {statistics.median(took) * 1000:.0f} ms, "
          f"max {max(took) * 1000:.0f} ms")  # fmt: skip
    print(f"RSS at start (idle)            {start:8.1f} MiB")
    print(f"RSS after {WARMUP} warm-up reloads     {base:8.1f} MiB (baseline)")
    print(f"RSS after cycle {half:2d}              {after[half - 1]:8.1f} MiB ({first:+.1f})")
    print(f"RSS after cycle {CYCLES:2d}              {after[-1]:8.1f} MiB ({second:+.1f})")
    print(f"RSS at the end (load stopped)  {end:8.1f} MiB")
    print(f"per cycle over {CYCLES}: {(after[-1] - base) / CYCLES:+.2f} MiB; "
          f"min..max after each cycle {min(after):.1f}..{max(after):.1f} MiB")  # fmt: skip


if __name__ == "__main__":
    main()
