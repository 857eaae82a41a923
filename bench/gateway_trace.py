"""Where one request's time goes inside the gateway at concurrency 1 (not a test): the
gateway of ``gateway_bench.py`` runs with timestamps at each step of an embeddings call
(``time.perf_counter_ns``, the same clock in every process on Linux), and one client on its
core sends one sentence at a time. Prints the p50 of each step, from the client's send to its
receipt of the answer.

Upstream: MiniLM with batching off (default), or the simulator with ``BASE_US`` of sleep per
call (``UPSTREAM=sim``): ``BASE_US=12000`` idles like MiniLM without computing anything, which
tells a cost of MiniLM's from a cost of the pause itself.

Usage: ``flock /tmp/infergate-bench.lock .venv/bin/python bench/gateway_trace.py``
(N requests, default 300; UPSTREAM=minilm|sim; BASE_US for sim, default 0).

The steps (functions wrapped in the gateway process):
P the API layer queues the request (``infer_then``: the reactor has read, parsed and validated
it), A ``Batcher.submit`` (on the loop's next turn), B ``run_async``
called (the batch was taken under the lock) and B2 returned (the call is a task on the
reactor's loop), C ``arun`` starts, D the request is written, E the first bytes of the answer
arrive, G ``arun`` returns (answer parsed, vectors decoded), H the Batcher's callback starts
and I ends (recorded, delivered with one ``call_soon`` on the same loop), J the reactor runs
the delivery, K-L it encodes the answer's JSON (``embeddings_response``), then
the protocol writes it and the client reads it.
"""

from __future__ import annotations

import os
import runpy
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway_bench as gb  # the bench folder is not a package

N = int(os.environ.get("N", "300"))
WARMUP = 20
STEPS = ["P", "A", "B", "B2", "C", "D", "E", "G", "H", "I", "J", "K", "L"]
BODY = b'{"model": "minilm", "input": "The quick brown fox jumps over the lazy dog."}'


def child(trace: str) -> None:
    """Run ``infergate.app`` with the steps wrapped; events go to ``trace``."""
    from infergate.engine.api import openai as api
    from infergate.engine.executors.upstream import executor, lean, openai
    from infergate.engine.scheduler import batcher

    events: list[tuple[str, int]] = []
    now = time.perf_counter_ns

    def mark(tag: str) -> None:
        events.append((tag, now()))
        if len(events) >= 400:
            with open(trace, "a") as f:
                f.writelines(f"{t} {v}\n" for t, v in events)
            events.clear()

    def wrap(obj: Any, name: str, tag: str, after: str | None = None) -> None:
        orig: Callable[..., Any] = getattr(obj, name)

        def w(*a: Any, **k: Any) -> Any:
            mark(tag)
            r = orig(*a, **k)
            if after:
                mark(after)
            return r

        setattr(obj, name, w)

    def awrap(obj: Any, name: str, tag: str, after: str) -> None:
        orig: Callable[..., Any] = getattr(obj, name)

        async def w(*a: Any, **k: Any) -> Any:
            mark(tag)
            r = await orig(*a, **k)
            mark(after)
            return r

        setattr(obj, name, w)

    wrap(api, "infer_then", "P")
    wrap(batcher.Batcher, "submit", "A")
    wrap(executor.BatchUpstreamExecutor, "run_async", "B", "B2")
    awrap(openai.OpenAIEmbeddingsExecutor, "arun", "C", "G")
    wrap(lean._Conn, "call", "D")
    wrap(lean._Conn, "data_received", "E")
    wrap(batcher.Batcher, "_finish", "H", "I")
    wrap(batcher, "_deliver_all", "J")
    wrap(api, "embeddings_response", "K", "L")
    sys.argv = ["infergate.app", *sys.argv[2:]]
    runpy.run_module("infergate.app", run_name="__main__")


def main() -> None:
    import http.client

    os.sched_setaffinity(0, {1})
    base_us = os.environ.get("BASE_US", "0")
    if os.environ.get("UPSTREAM") == "sim":
        upstream = gb.SIM_UPSTREAM.replace("base_us = 0", f"base_us = {base_us}")
    else:
        upstream = gb.MINILM_UPSTREAM
    with tempfile.TemporaryDirectory() as tmp:
        trace = str(Path(tmp) / "trace.txt")
        procs = gb.Procs(tmp)
        marks: list[tuple[int, int]] = []
        try:
            up = procs.infergate("upstream", upstream, core=0)
            cfg = Path(tmp) / "gw.toml"
            cfg.write_text(
                gb.GATEWAY.format(port=up, policy="adaptive", inflight=1, stream_port=up)
            )
            port, admin = gb.free_port(), gb.free_port()
            gb.ENV["GATEWAY_TRACE"] = trace
            cmd = [gb.PY, __file__, "--child", "--config", str(cfg), "--listen",
                   f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}",
                   "--headless"]  # fmt: skip
            procs.start("gw", cmd, port, core=1)
            gb.wait_ready(port)
            c = http.client.HTTPConnection("127.0.0.1", port)
            for _ in range(N + WARMUP):
                t0 = time.perf_counter_ns()
                c.request("POST", "/v1/embeddings", BODY, {"Content-Type": "application/json"})
                r = c.getresponse()
                r.read()
                marks.append((t0, time.perf_counter_ns()))
                assert r.status == 200, r.status
        finally:
            procs.stop()  # a clean stop: the child flushed whole batches of 400 events
        events = []
        if os.path.exists(trace):
            with open(trace) as f:
                events = sorted(((t, int(v)) for t, v in (line.split() for line in f)),
                                key=lambda e: e[1])  # fmt: skip
    steps: dict[str, list[float]] = defaultdict(list)
    for t0, t1 in marks[WARMUP:]:
        seq = [(t, v) for t, v in events if t0 <= v <= t1]
        if [t for t, _ in seq] != STEPS:
            continue  # the answer came in several reads, or the trace was not flushed yet
        prev_t, prev = "send", t0
        for t, v in seq:
            steps[f"{prev_t}->{t}"].append((v - prev) / 1000)
            prev_t, prev = t, v
        steps[f"{prev_t}->received"].append((t1 - prev) / 1000)
        steps["total"].append((t1 - t0) / 1000)
    label = "minilm" if os.environ.get("UPSTREAM") != "sim" else f"sim base_us={base_us}"
    print(f"{label}: load average {os.getloadavg()}, {len(steps['total'])} requests traced")
    for k, xs in steps.items():
        print(f"  {k:14s} p50 {statistics.median(xs):8.0f} µs")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(os.environ["GATEWAY_TRACE"])
    else:
        main()
