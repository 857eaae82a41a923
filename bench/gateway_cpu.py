"""CPU per request of each gateway thread (not a test): the pass-through setup of
``gateway_bench.py`` (zero-latency sim upstream on core 0, the gateway and wrk on core 1), one
wrk run, then every thread's CPU time (``/proc/PID/task/*/stat``) over that run divided by the
requests it served, with the thread names from ``py-spy dump``.

Usage: ``flock /tmp/infergate-bench.lock .venv/bin/python bench/gateway_cpu.py``
(POLICY, INFLIGHT, CONNS, DURATION: default off, 64, 64, 5).
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
    """CPU seconds (user + system) of every thread of ``pid``, by thread id."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # the thread ended
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
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
    with tempfile.TemporaryDirectory() as tmp:
        procs = gb.Procs(tmp)
        try:
            up = procs.infergate("sim", gb.SIM_UPSTREAM, core=0)
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
