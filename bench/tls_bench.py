"""TLS cost: the same infergate served over plain HTTP and over HTTPS, side by side.

Two servers (one sub-reactor each, reuseport, the ``sim-embed`` simulator with ``base_us = 0``)
are pinned to core 0 and wrk to core 1; runs alternate between them so drift on the box hits
both alike. Scenarios: ``tiny`` (GET /healthz, keep-alive), ``embed`` (POST /v1/embeddings,
keep-alive, bench/embed.lua) and ``churn`` (GET /healthz with ``Connection: close``: one TCP
connection, and for https one full handshake, per request). The certificate is an ECDSA P-256
one made by ``openssl`` (tests/support/certs.py); wrk negotiates TLS 1.3 with it.

Environment: DURATION (s, default 5), ROUNDS (default 2), CONNS (default 64),
SCENARIOS (comma list of tiny,embed,churn; default all).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from statistics import mean

from http_bench import _ms, wait_port
from loadgen import free_port

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.support.certs import make_certs  # noqa: E402

PY = sys.executable
DURATION = int(os.environ.get("DURATION", "5"))
ROUNDS = int(os.environ.get("ROUNDS", "2"))
CONNS = int(os.environ.get("CONNS", "64"))
SCENARIOS = os.environ.get("SCENARIOS", "tiny,embed,churn").split(",")
CONFIG = """
sub_reactors = 1
accept_mode = "reuseport"
admin_listen = ""
{tls}
[[models]]
name = "sim-embed"
executor = "sim"
dim = 384
base_us = 0
per_item_us = 0
"""
PLAN = {
    "tiny": ("/healthz", []),
    "embed": ("/v1/embeddings", ["-s", "bench/embed.lua"]),
    "churn": ("/healthz", ["-H", "Connection: close"]),
}


def start(tmp: Path, name: str, tls: str) -> tuple[int, subprocess.Popen[bytes]]:
    cfg = tmp / f"{name}.toml"
    cfg.write_text(CONFIG.format(tls=tls), encoding="utf-8")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "INFERGATE_LOG_LEVEL": "WARNING"}
    cmd = ["taskset", "-c", "0", PY, "-m", "infergate.app", "--config", str(cfg), "--headless",
           "--listen", f"127.0.0.1:{port}"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    wait_port(port, proc, name)
    return port, proc


def run_wrk(url: str, extra: list[str]) -> tuple[float, float, float, int]:
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{CONNS}", f"-d{DURATION}s", "--latency",
           *extra, url]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors or non2xx:
        print(f"  warning: {url}: {errors and errors.group(1)} {non2xx and non2xx.group(0)}",
              file=sys.stderr)  # fmt: skip
    return rps, p50, p99, int(non2xx.group(1)) if non2xx else 0


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="infergate-tls-") as tmp_s:
        tmp = Path(tmp_s)
        certs = make_certs(tmp / "certs")
        servers = {
            "http": start(tmp, "http", ""),
            "https": start(tmp, "https", f'tls_cert_file = "{certs.cert_a}"\n'
                           f'tls_key_file = "{certs.key_a}"'),
        }  # fmt: skip
        results: dict[tuple[str, str], list[tuple[float, float, float, int]]] = defaultdict(list)
        try:
            for rnd in range(ROUNDS):
                for scenario in SCENARIOS:
                    path, extra = PLAN[scenario]
                    for scheme, (port, _) in servers.items():
                        r = run_wrk(f"{scheme}://127.0.0.1:{port}{path}", extra)
                        results[(scenario, scheme)].append(r)
                        print(f"round {rnd + 1} {scenario:6} {scheme:5} {r[0]:9.0f} req/s "
                              f"p50 {r[1]:.2f} ms p99 {r[2]:.2f} ms", file=sys.stderr)  # fmt: skip
        finally:
            for _, proc in servers.values():
                proc.terminate()
                proc.wait(10)
    print(f"\nwrk -t1 -c{CONNS} -d{DURATION}s --latency, {ROUNDS} alternating rounds, server on "
          f"core 0 (1 sub-reactor), wrk on core 1 (mean of rounds)\n")  # fmt: skip
    print("| scenario | scheme | req/s | p50 ms | p99 ms | https / http req/s |")
    print("|---|---|---:|---:|---:|---:|")
    for scenario in SCENARIOS:
        base = mean(r[0] for r in results[(scenario, "http")])
        for scheme in ("http", "https"):
            rs = results[(scenario, scheme)]
            rps = mean(r[0] for r in rs)
            ratio = f"{rps / base:.2f}" if scheme == "https" else ""
            print(f"| {scenario} | {scheme} | {rps:,.0f} | {mean(r[1] for r in rs):.2f} | "
                  f"{mean(r[2] for r in rs):.2f} | {ratio} |")  # fmt: skip


if __name__ == "__main__":
    main()
