"""Chaos benchmark (not a test): normal clients beside abusive ones, against the default models.

Starts ``infergate --headless`` (``python -m infergate.app``) on 127.0.0.1 from a config written
from app/default.toml (free ports, this repo's public/ folder), pinned to core 0. Then two phases on
that one server, each ``CHAOS_SECONDS`` long (``CALM_SECONDS`` for the first):

1. calm: the normal clients alone (embeddings on minilm and sim-embed, static files; closed
   loop, ``NORMAL_CLIENTS`` per kind, ``NORMAL_THINK_MS`` between requests);
2. chaos: the same normal clients beside slow readers, body tricklers, oversized and malformed
   requests, a priority-1 flood on sim-embed, clients that disconnect mid-request and a
   SIGHUP every 5 s (bench/chaos_clients.py has the knobs).

The normal clients run in a child process of their own (pinned to core 1), so the abusers'
work does not inflate the normal latencies measured. A normal request succeeds with a 2xx, or
with a 429/503 that carries Retry-After. Raw results go to bench/out/chaos-<time>.json.

Usage: bash bench/chaos.sh          (CHAOS_SECONDS=10 for a smoke run)
       python bench/chaos.py normal PORT SECONDS OUT.json     (the normal clients' child)
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chaos_clients import (
    Tally,
    env_float,
    normal_request,
    one_shot,
    request,
    run_abuse,
    run_normal,
)
from chaos_report import report

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
READY_RE = re.compile(
    r"listening on http://127\.0\.0\.1:(\d+) .*admin: (?:http://127\.0\.0\.1:(\d+)|off)"
)
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 40.0
"""SIGTERM to exit: the default drain timeout (10 s) plus a batch, with room to spare."""
RSS_POLL_S = 0.1
KINDS = ("minilm", "sim-embed", "static")


def pin(cpus: str) -> None:
    """Pin this process to ``cpus`` ("0", "1,2"...) where the machine has them."""
    want = {int(c) for c in cpus.split(",") if c}
    have = os.sched_getaffinity(0)
    if want and want <= have and len(have) > 1:
        os.sched_setaffinity(0, want)


def write_config(path: Path) -> None:
    """app/default.toml with 127.0.0.1 and free ports, one sub-reactor, this repo's public/."""
    text = (ROOT / "app" / "default.toml").read_text(encoding="utf-8")
    subs = {
        "listen": '"127.0.0.1:0"',
        "sub_reactors": "1",
        "static_root": json.dumps(str(ROOT / "public")),
    }
    for key, value in subs.items():
        text, n = re.subn(rf"^{key} = .*$", f"{key} = {value}", text, count=1, flags=re.M)
        if n != 1:
            raise SystemExit(f"app/default.toml has no top-level `{key} = ...` line")
    text = 'admin_listen = "127.0.0.1:0"\n' + text
    path.write_text(text, encoding="utf-8")


def start_server(config: Path, log: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    """Start the server; returns it, its port and its admin port (the public port while the
    admin listener is off: then the admin routes are served there)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "INFERGATE_LOG_LEVEL": "WARNING"}
    cpus = os.environ.get("SERVER_CPUS", "0")
    taskset = ["taskset", "-c", cpus] if len(os.sched_getaffinity(0)) > 1 else []
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [*taskset, sys.executable, "-m", "infergate.app", "--config", str(config),
             "--headless"],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
        )  # fmt: skip
    note_pid(proc.pid)
    assert proc.stdout is not None
    fd, seen = proc.stdout.fileno(), b""
    deadline = time.monotonic() + START_TIMEOUT_S
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break  # EOF: the server exited
            seen += chunk
    m = READY_RE.search(seen.decode(errors="replace"))
    if m is None:
        proc.kill()
        raise SystemExit(f"infergate did not start: {seen[:300]!r}; see {log}")
    port = int(m.group(1))
    return proc, port, int(m.group(2)) if m.group(2) else port


def note_pid(pid: int) -> None:
    """Tell bench/chaos.sh's exit trap which processes to stop if this script dies."""
    path = os.environ.get("CHAOS_PIDFILE")
    if path:
        with open(path, "a", encoding="ascii") as f:
            f.write(f"{pid}\n")


def forget_pids() -> None:
    """Every process noted has been reaped: the exit trap must not signal a reused id."""
    path = os.environ.get("CHAOS_PIDFILE")
    if path:
        Path(path).write_text("")


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in kB (empty once it has exited)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {k: int(v.split()[0]) for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(.*)$", text, re.M)}


async def poll_rss(pid: int, seconds: float, peak: dict[str, int]) -> None:
    for _ in range(int(seconds / RSS_POLL_S) + 1):
        mem = memory_kb(pid)
        for k, v in mem.items():
            peak[k] = max(peak.get(k, 0), v)
        await asyncio.sleep(RSS_POLL_S)


def normal_child(port: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """Start the normal clients in their own process; it writes its results to ``out``."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "normal", str(port), str(seconds), str(out)], cwd=ROOT
    )
    note_pid(proc.pid)
    return proc


async def wait_child(proc: subprocess.Popen[bytes], seconds: float) -> None:
    for _ in range(int((seconds + 60) / 0.1)):
        if proc.poll() is not None:
            return
        await asyncio.sleep(0.1)
    proc.kill()
    raise SystemExit("the normal clients did not finish")


async def phase(
    name: str, server: subprocess.Popen[bytes], ports: tuple[int, int], seconds: float, abuse: bool
) -> dict[str, Any]:
    """One phase: the normal clients (and the abusers when ``abuse``), with the RSS polled."""
    out = OUT / f"chaos-{name}-normal.json"
    print(f"{name}: {seconds:.0f} s{' with abuse' if abuse else ''}...", flush=True)
    child = normal_child(ports[0], seconds, out)
    peak: dict[str, int] = {}
    rss = asyncio.create_task(poll_rss(server.pid, seconds + 5, peak))
    tallies: dict[str, Tally] = {}
    if abuse:
        tallies = await run_abuse(ports[0], ports[1], server.pid, seconds)
    await wait_child(child, seconds)
    rss.cancel()
    normal = json.loads(out.read_text())
    alive = server.poll() is None
    health = await one_shot(ports[0], request("GET", "/healthz")) if alive else "server exited"
    return {
        "seconds": seconds,
        "normal": normal,
        "abuse": {k: {"outcomes": t.outcomes, "errors_5xx": t.errors_5xx}
                  for k, t in tallies.items()},
        "peak_kb": peak,
        "server_alive": alive,
        "healthz_after": health if isinstance(health, str) else health.status,
    }  # fmt: skip


def stop(server: subprocess.Popen[bytes]) -> dict[str, Any]:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT_S; the exit code and how long it took."""
    if server.poll() is not None:
        return {"exit_code": server.returncode, "exit_s": 0.0}
    t0 = time.monotonic()
    server.send_signal(signal.SIGTERM)
    try:
        code = server.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        server.kill()
        code = server.wait(10)
    return {"exit_code": code, "exit_s": round(time.monotonic() - t0, 2)}


async def run() -> dict[str, Any]:
    OUT.mkdir(parents=True, exist_ok=True)
    seconds = env_float("CHAOS_SECONDS", 60)
    calm_s = env_float("CALM_SECONDS", seconds)
    config, log = OUT / "chaos.toml", OUT / "chaos-server.log"
    write_config(config)
    server, port, admin = start_server(config, log)
    try:
        for kind in KINDS:  # warm up: one of each (the first minilm batch loads kernels)
            await one_shot(port, normal_request(kind, 0), timeout=30)
        calm = await phase("calm", server, (port, admin), calm_s, abuse=False)
        chaos = await phase("chaos", server, (port, admin), seconds, abuse=True)
    finally:
        stopped = stop(server)
        forget_pids()
    return {
        "config": str(config),
        "server_log": str(log),
        "server_log_bytes": log.stat().st_size,
        "calm": calm,
        "chaos": chaos,
        "stop": stopped,
        "hwm_kb_at_exit": chaos["peak_kb"].get("VmHWM", 0),
    }


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "normal":
        pin(os.environ.get("CLIENT_CPUS", "1"))
        result = uvloop.run(run_normal(int(sys.argv[2]), float(sys.argv[3])))
        Path(sys.argv[4]).write_text(json.dumps(result))
        return
    pin(os.environ.get("CLIENT_CPUS", "1"))
    result = uvloop.run(run())
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = OUT / f"chaos-{stamp}.json"
    path.write_text(json.dumps(result, indent=1))
    print(report(result))
    print(f"\nraw results: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
