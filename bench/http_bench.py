"""Side-by-side HTTP benchmark: infergate vs nginx vs uvicorn vs a minimal uvloop+httptools floor.

``infergate`` is the default accept mode (reuseport); ``infergate-handoff`` the other one.

Every server is pinned to core 0 and wrk to core 1; runs alternate between servers (A B C A B C)
so drift on the box hits all of them alike. Prints a markdown table with req/s, p50, p99 and the
ratios infergate/uvicorn, infergate/nginx and infergate/minimal.

Environment: DURATION (s, default 5), ROUNDS (default 2), CONNS (default 64),
SCENARIOS (comma list of tiny,file4k,pipelined,churn; default all).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from statistics import mean

from loadgen import free_port

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
DURATION = int(os.environ.get("DURATION", "5"))
ROUNDS = int(os.environ.get("ROUNDS", "2"))
CONNS = int(os.environ.get("CONNS", "64"))
SCENARIOS = os.environ.get("SCENARIOS", "tiny,file4k,pipelined,churn").split(",")

NGINX_CONF = """
worker_processes 1;
daemon off;
user root;
error_log {tmp}/error.log warn;
pid {tmp}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    include /etc/nginx/mime.types;
    default_type text/plain;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /hello {{ return 200 "Hello, World!"; }}
        location /public/ {{ alias {root}/public/; }}
    }}
}}
"""


def wait_port(port: int, proc: subprocess.Popen[bytes], name: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{name} did not listen on {port} within 20 s")


def start_servers(tmp: str) -> tuple[dict[str, int], list[subprocess.Popen[bytes]]]:
    names = ("infergate", "infergate-handoff", "uvicorn", "nginx", "minimal")
    ports = {n: free_port() for n in names}
    conf = Path(tmp) / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=ports["nginx"], root=ROOT))
    pin = ["taskset", "-c", "0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "INFERGATE_LOG_LEVEL": "WARNING"}
    cmds = {
        "infergate": [PY, "bench/infergate_app.py", str(ports["infergate"]), "reuseport"],
        "infergate-handoff": [
            PY, "bench/infergate_app.py", str(ports["infergate-handoff"]), "handoff"
        ],
        "uvicorn": [
            PY, "-m", "uvicorn", "bench.uvicorn_app:app", "--port", str(ports["uvicorn"]),
            "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
            "--backlog", "4096",
        ],
        "nginx": [shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(conf), "-p", tmp],
        "minimal": [PY, "bench/minimal.py", str(ports["minimal"])],
    }  # fmt: skip
    procs = []
    for name, cmd in cmds.items():
        p = subprocess.Popen(pin + cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        procs.append(p)
        wait_port(ports[name], p, name)
    return ports, procs


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    assert m, text
    return float(m.group(1)) * _UNITS[m.group(2)]


def run_wrk(port: int, path: str, extra: list[str]) -> tuple[float, float, float]:
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{CONNS}", f"-d{DURATION}s", "--latency", *extra]
    cmd.append(f"http://127.0.0.1:{port}{path}")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    if "Non-2xx" in out or "Socket errors" in out:
        print(f"  warning: {out.strip().splitlines()[-4:]}", file=sys.stderr)
    return rps, p50, p99


PLAN = {
    # scenario: (path, wrk extra args, servers)
    "tiny": ("/hello", [], ["infergate", "infergate-handoff", "uvicorn", "nginx", "minimal"]),
    "file4k": ("/public/4k.txt", [], ["infergate", "uvicorn", "nginx"]),
    "pipelined": (
        "/hello",
        ["-s", "bench/pipeline.lua"],
        ["infergate", "uvicorn", "nginx", "minimal"],
    ),
    "churn": (
        "/hello",
        ["-H", "Connection: close"],
        ["infergate", "infergate-handoff", "uvicorn", "nginx"],
    ),
}


def main() -> None:
    tmp = tempfile.mkdtemp(prefix="infergate-bench-")
    ports, procs = start_servers(tmp)
    results: dict[tuple[str, str], list[tuple[float, float, float]]] = defaultdict(list)
    try:
        for scenario in SCENARIOS:
            path, extra, servers = PLAN[scenario]
            for rnd in range(ROUNDS):
                for name in servers:
                    r = run_wrk(ports[name], path, extra)
                    results[scenario, name].append(r)
                    print(f"{scenario:9} round {rnd + 1} {name:20} {r[0]:>10.0f} req/s "
                          f"p50 {r[1]:.2f} ms p99 {r[2]:.2f} ms", file=sys.stderr)  # fmt: skip
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
    print(f"\nwrk -t1 -c{CONNS} -d{DURATION}s, {ROUNDS} alternating rounds, servers on core 0, "
          f"wrk on core 1 (mean of rounds)\n")  # fmt: skip
    print("| scenario | server | req/s | p50 ms | p99 ms | infergate / this |")
    print("|---|---|---:|---:|---:|---:|")
    for scenario in SCENARIOS:
        _, _, servers = PLAN[scenario]
        ig = mean(r[0] for r in results[scenario, "infergate"])
        for name in servers:
            rs = results[scenario, name]
            rps = mean(r[0] for r in rs)
            ratio = "" if name == "infergate" else f"{ig / rps:.2f}x"
            print(f"| {scenario} | {name} | {rps:,.0f} | {mean(r[1] for r in rs):.2f} | "
                  f"{mean(r[2] for r in rs):.2f} | {ratio} |")  # fmt: skip


if __name__ == "__main__":
    main()
