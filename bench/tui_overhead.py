"""Throughput with the dashboard open vs headless, same load (wrk on core 1, server on core 0).

The dashboard runs in a real terminal (tmux, 160x45) refreshing at its default 4 Hz.
Usage: python bench/tui_overhead.py   (needs tmux and wrk)
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CONFIG = """
listen = "127.0.0.1:{port}"
admin_listen = ""
sub_reactors = 1
[[models]]
name = "sim-embed"
executor = "sim"
dim = 384
base_us = 200
per_item_us = 5
[models.batching]
max_batch_size = 64
"""
LOADS = {
    "tiny (/healthz)": ["http://127.0.0.1:{port}/healthz"],
    "embeddings (sim-embed)": ["-s", "bench/embed.lua", "http://127.0.0.1:{port}/v1/embeddings"],
}


def wait_listening(port: int) -> None:
    import socket

    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)  # waiting for the server to start
    raise SystemExit("server did not start")


def start(mode: str, port: int) -> None:
    cfg = Path(tempfile.mkdtemp()) / f"c{port}.toml"
    cfg.write_text(CONFIG.format(port=port))
    cmd = f"taskset -c 0 {PY} -m infergate.app --config {cfg}" + (
        " --headless" if mode == "headless" else ""
    )
    subprocess.run(["tmux", "new-session", "-d", "-s", f"ig{port}", "-x", "160", "-y", "45",
                    f"cd {ROOT} && {cmd}"], check=True)  # fmt: skip
    wait_listening(port)


def stop(port: int) -> None:
    # SIGHUP (what killing a tmux session sends) only reloads a headless server: send SIGTERM
    subprocess.run(["pkill", "-TERM", "-f", f"127.0.0.1:{port}|c{port}.toml"], check=False)
    subprocess.run(["tmux", "kill-session", "-t", f"ig{port}"], check=False)


def wrk(args: list[str], port: int) -> float:
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", "-c64", "-d5s", *[a.format(port=port) for a in args]],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


def main() -> None:
    ports = {"headless": 8611, "dashboard": 8612}
    for mode, port in ports.items():
        start(mode, port)
    results: dict[tuple[str, str], list[float]] = {}
    try:
        for load, args in LOADS.items():
            for _ in range(2):
                for mode, port in ports.items():
                    results.setdefault((load, mode), []).append(wrk(args, port))
        screen = subprocess.run(["tmux", "capture-pane", "-t", "ig8612", "-p"],
                                capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert "sim-embed" in screen, "the dashboard was not on screen"
    finally:
        for port in ports.values():
            stop(port)
    print("| load | headless req/s | dashboard open req/s | change |")
    print("|---|---:|---:|---:|")
    for load in LOADS:
        h, d = mean(results[load, "headless"]), mean(results[load, "dashboard"])
        print(f"| {load} | {h:,.0f} | {d:,.0f} | {(d / h - 1):+.1%} |")


if __name__ == "__main__":
    main()
