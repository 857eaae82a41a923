"""The inference front end's ceiling: ``POST /v1/embeddings`` on a zero-cost simulated executor.

``sim-embed`` with ``base_us = 0, per_item_us = 0`` (dim 384, adaptive batching, max batch 64):
what is measured is HTTP, JSON decoding, the queue and slot-thread hand-off, and encoding the
vectors. One sub-reactor; each server pinned to core 0, wrk (-t1 -c64) to core 1. Four cases:
one input or 32 inputs per request, ``encoding_format`` float or base64.

Side by side with other trees: ``TREES="base=/tmp/ig-base,current=."`` runs each tree's
``python -m infergate.app`` (``-m app`` in older trees; same interpreter, ``PYTHONPATH`` and working
directory set to the tree), in
alternating rounds so drift on the box hits every tree alike. Ratios are against the first tree.
Besides req/s, each round reads the server's CPU time (``/proc/PID/stat``, all threads) and
divides it by the requests answered: CPU µs per request is what a change to the per-request
work moves, and it moves much less than req/s when other processes take turns on core 0.

Environment: TREES (default ``current=.``), DURATION (s, default 5), ROUNDS (default 2),
CONNS (default 64), CASES (comma list of 1-float,1-b64,32-float,32-b64; default all).
Usage: bash bench/frontend.sh
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from statistics import mean

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import build, free_port

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
DURATION = int(os.environ.get("DURATION", "5"))
ROUNDS = int(os.environ.get("ROUNDS", "2"))
CONNS = int(os.environ.get("CONNS", "64"))
CASES = os.environ.get("CASES", "1-float,1-b64,32-float,32-b64").split(",")
TREES = [
    (name, Path(path).resolve())
    for name, _, path in (t.partition("=") for t in os.environ.get("TREES", "current=.").split(","))
]

CONFIG = """
listen = "127.0.0.1:{port}"
sub_reactors = 1
[[models]]
name = "sim-embed"
task = "embeddings"
executor = "sim"
dim = 384
base_us = 0
per_item_us = 0
instances = 1
[models.batching]
policy = "adaptive"
max_batch_size = 64
[models.priorities]
levels = 1
queue = [{{ max_queue_size = 4096 }}]
"""

LUA = """
init = function(args)
   wrk.method = "POST"
   wrk.body = {body}
   wrk.headers["Content-Type"] = "application/json"
end
"""


def body(case: str) -> str:
    n, fmt = case.split("-")
    texts = [f"hello world {i}" for i in range(int(n))]
    inp: object = texts[0] if n == "1" else texts
    return json.dumps(
        {"model": "sim-embed", "input": inp, "encoding_format": "base64" if fmt == "b64" else fmt}
    )


def start(tree: Path, tmp: Path, name: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cfg = tmp / f"{name}.toml"
    cfg.write_text(CONFIG.format(port=port))
    env = {**os.environ, "PYTHONPATH": str(tree), "INFERGATE_LOG_LEVEL": "WARNING"}
    argv = [
        "taskset",
        "-c",
        "0",
        PY,
        "-m",
        "infergate.app" if (tree / "infergate").is_dir() else "app",  # trees before issue 10: app
        "--config",
        str(cfg),
        "--headless",
        "--admin-listen",
        "127.0.0.1:0",
    ]
    with open(tmp / f"{name}.log", "wb") as log:
        proc = subprocess.Popen(argv, cwd=tree, env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with {proc.returncode}: see {tmp}/{name}.log")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.sendall(build("/v1/embeddings", body("1-b64").encode()))
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return proc, port
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{name} did not answer within 30 s")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(port: int, script: Path) -> tuple[float, float, int, int]:
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{CONNS}", f"-d{DURATION}s", "--latency",
           "-s", str(script), f"http://127.0.0.1:{port}/v1/embeddings"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"\s50%\s+([\d.]+)(us|ms|s)", out)
    assert m
    p50 = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    assert total
    return rps, p50, int(bad.group(1)) if bad else 0, int(total.group(1))


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="infergate-frontend-"))
    scripts = {}
    for case in CASES:
        scripts[case] = tmp / f"{case}.lua"
        scripts[case].write_text(LUA.format(body=json.dumps(body(case))))
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    results: dict[tuple[str, str], list[tuple[float, float, int, float]]] = defaultdict(list)
    try:
        for name, tree in TREES:
            servers[name] = start(tree, tmp, name)
        for case in CASES:
            for rnd in range(ROUNDS):
                for name, _ in TREES:
                    proc, port = servers[name]
                    cpu0 = cpu_s(proc.pid)
                    rps, p50, bad, total = run_wrk(port, scripts[case])
                    us = (cpu_s(proc.pid) - cpu0) * 1e6 / max(1, total)
                    r = (rps, p50, bad, us)
                    results[case, name].append(r)
                    print(f"{case:9} round {rnd + 1} {name:10} {rps:>9.0f} req/s "
                          f"p50 {p50:.2f} ms CPU {us:.0f} µs/req non-2xx {bad}",
                          file=sys.stderr)  # fmt: skip
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        for proc, _ in servers.values():
            proc.wait(10)
    first = TREES[0][0]
    print(f"\nwrk -t1 -c{CONNS} -d{DURATION}s, {ROUNDS} alternating rounds, server on core 0, "
          f"wrk on core 1 (mean of rounds); sim-embed base_us=0 per_item_us=0\n")  # fmt: skip
    print(f"| case | tree | req/s | items/s | p50 ms | non-2xx | / {first} "
          f"| server CPU µs/req | {first} CPU / tree CPU |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for case in CASES:
        n = int(case.split("-")[0])
        base = mean(r[0] for r in results[case, first])
        base_us = mean(r[3] for r in results[case, first])
        for name, _ in TREES:
            rs = results[case, name]
            rps = mean(r[0] for r in rs)
            us = mean(r[3] for r in rs)
            print(f"| {case} | {name} | {rps:,.0f} | {rps * n:,.0f} | "
                  f"{mean(r[1] for r in rs):.2f} | {sum(r[2] for r in rs)} | "
                  f"{rps / base:.2f}x | {us:.0f} | {base_us / us:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
