"""CPU per request of each gateway thread (not a test): the pass-through setup of
``gateway_bench.py`` (sim upstream on core 0, the gateway and wrk on core 1), one wrk run,
then every thread's CPU time over that run divided by the requests it served, with the thread
names from ``py-spy dump``. CPU time is the scheduler's own count (``/proc/PID/task/*/
schedstat``, nanoseconds): the tick-sampled ``stat`` fields misattribute short bursts that
start with a timer, as every request does at concurrency 1 behind a sleeping simulator.

Usage: ``flock /tmp/infergate-bench.lock .venv/bin/python bench/gateway_cpu.py``
(POLICY, INFLIGHT, CONNS, DURATION, BASE_US: default off, 64, 64, 5, 0; concurrency 1 behind
a 12 ms upstream: ``POLICY=adaptive INFLIGHT=1 CONNS=1 BASE_US=12000``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway_bench as gb  # the bench folder is not a package

PY_SPY = Path(sys.executable).parent / "py-spy"


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of every thread of ``pid``, by thread id."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            ns = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0]
        except OSError:
            continue  # the thread ended
        out[int(tid)] = int(ns) / 1e9
    return out


def thread_names(pid: int) -> dict[int, str]:
    dump = subprocess.run(
        [str(PY_SPY), "dump", "-p", str(pid)], capture_output=True, text=True, check=False
    )
    return {
        int(t): n for t, n in re.findall(r'^Thread (\d+) \([^)]*\): "([^"]*)"', dump.stdout, re.M)
    }


def main() -> None:
    policy = os.environ.get("POLICY", "off")
    inflight = int(os.environ.get("INFLIGHT", "64"))
    conns = int(os.environ.get("CONNS", "64"))
    base_us = int(os.environ.get("BASE_US", "0"))
    with tempfile.TemporaryDirectory() as tmp:
        procs = gb.Procs(tmp)
        try:
            sim = gb.SIM_UPSTREAM.replace("base_us = 0", f"base_us = {base_us}")
            up = procs.infergate("sim", sim, core=0)
            config = gb.GATEWAY.format(port=up, policy=policy, inflight=inflight, stream_port=up)
            gw = procs.infergate("gw", config, core=1)
            lua = Path(tmp) / "body.lua"
            lua.write_text(gb.BODY_LUA)
            gb.wrk(gw, 8, lua)  # warm the pools
            pids = {"upstream": procs.procs[0].pid, "gateway": procs.procs[1].pid}
            before = {k: thread_cpu(p) for k, p in pids.items()}
            r = gb.wrk(gw, conns, lua)
            after = {k: thread_cpu(p) for k, p in pids.items()}
            n = r[0] * gb.DURATION
            print(f"wrk -c{conns}: {r[0]:,.0f} req/s, p50 {r[1]:.2f} ms ({n:,.0f} requests)")
            for label, pid in pids.items():
                names = thread_names(pid)
                used = {t: v - before[label].get(t, 0.0) for t, v in after[label].items()}
                total = sum(used.values())
                parts = ", ".join(
                    f"{names.get(t, t)} {v / n * 1e6:.0f}"
                    for t, v in sorted(used.items(), key=lambda kv: -kv[1])
                    if v > 0
                )
                print(f"{label}: {total / n * 1e6:.0f} µs of CPU per request ({parts})")
        finally:
            procs.stop()


if __name__ == "__main__":
    main()
