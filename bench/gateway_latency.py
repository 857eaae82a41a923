"""Where the gateway's latency goes at concurrency 1 (not a test): the merging setup of
``gateway_bench.py`` (MiniLM with batching off on core 0, the gateway on core 1), then one
client on core 1 sending one sentence at a time, interleaving three paths:

- ``direct``: the client's body straight to the upstream;
- ``direct-as-gw``: the body the gateway sends upstream (a one-item list, base64);
- ``gateway``: the client's body through the gateway;
- ``nginx``: the client's body through nginx (``proxy_pass`` with upstream keep-alive, on the
  gateway's core), what a plain reverse proxy adds on this machine (the target's yardstick).

Per path: p50 / p90 of the round trip at the client, and of the telemetry headers (the
upstream's ``X-Infergate-Compute-Us``/``-Queue-Us``; through the gateway its
``X-Infergate-Upstream-Us``, ``-Queue-Us`` and ``-Compute-Us``).

Usage: ``flock /tmp/infergate-bench.lock .venv/bin/python bench/gateway_latency.py``
(N requests per path, default 300; UPSTREAM=minilm|sim).
"""

from __future__ import annotations

import http.client
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway_bench as gb  # the bench folder is not a package

N = int(os.environ.get("N", "300"))
CLIENT_BODY = b'{"model": "minilm", "input": "The quick brown fox jumps over the lazy dog."}'
GATEWAY_BODY = (
    b'{"model":"minilm","input":["The quick brown fox jumps over the lazy dog."],'
    b'"encoding_format":"base64"}'
)
HEADERS = (
    "x-infergate-queue-us",
    "x-infergate-compute-us",
    "x-infergate-upstream-us",
)


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    os.sched_setaffinity(0, {1})
    upstream = gb.SIM_UPSTREAM if os.environ.get("UPSTREAM") == "sim" else gb.MINILM_UPSTREAM
    with tempfile.TemporaryDirectory() as tmp:
        procs = gb.Procs(tmp)
        try:
            up = procs.infergate("upstream", upstream, core=0)
            config = gb.GATEWAY.format(port=up, policy="adaptive", inflight=1, stream_port=up)
            gw = procs.infergate("gw", config, core=1)
            paths = {
                "direct": (up, CLIENT_BODY),
                "direct-as-gw": (up, GATEWAY_BODY),
                "gateway": (gw, CLIENT_BODY),
                "nginx": (gb.start_nginx(procs, Path(tmp), up), CLIENT_BODY),
            }
            conns = {k: http.client.HTTPConnection("127.0.0.1", p) for k, (p, _) in paths.items()}
            rtt: dict[str, list[float]] = {k: [] for k in paths}
            hdr: dict[str, dict[str, list[float]]] = {k: {h: [] for h in HEADERS} for k in paths}
            for i in range(N + 20):
                for k, (_, body) in paths.items():
                    c = conns[k]
                    t0 = time.perf_counter()
                    c.request("POST", "/v1/embeddings", body, {"Content-Type": "application/json"})
                    r = c.getresponse()
                    r.read()
                    dt = time.perf_counter() - t0
                    assert r.status == 200, (k, r.status)
                    if i < 20:
                        continue  # warm-up
                    rtt[k].append(dt * 1e6)
                    for h in HEADERS:
                        v = r.getheader(h)
                        if v is not None:
                            hdr[k][h].append(float(v))
            print(f"load average {os.getloadavg()}; N={N} per path\n")
            print("| path | p50 µs | p90 µs | mean µs | added p50 µs | headers (p50 µs) |")
            print("|---|---:|---:|---:|---:|---|")
            base = _pct(rtt["direct"], 0.5)
            for k in paths:
                hs = ", ".join(
                    f"{h[12:]} {statistics.median(v):.0f}" for h, v in hdr[k].items() if v
                )
                p50 = _pct(rtt[k], 0.5)
                print(f"| {k} | {p50:.0f} | {_pct(rtt[k], 0.9):.0f} | "
                      f"{statistics.mean(rtt[k]):.0f} | {p50 - base:+.0f} | {hs} |")  # fmt: skip
        finally:
            procs.stop()


if __name__ == "__main__":
    main()
