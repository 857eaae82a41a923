"""Smoke-test a built executable: start it from an empty folder, headless, on a free loopback
port with the built-in config; check /healthz, an embedding from minilm and a static file;
stop it with SIGTERM. Prints the size of the build and the cold-start time.

Usage: python packaging/smoke_test.py dist/infergate/infergate [--runs N]
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def size_mb(path: Path) -> float:
    root = path.parent if path.parent.name == "infergate" else path
    files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def start(exe: Path) -> tuple[subprocess.Popen[str], int, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [str(exe), "--headless", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
         "--sub-reactors", "1"],
        cwd=tempfile.mkdtemp(prefix="infergate-smoke-"),  # an empty folder
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    ready = time.perf_counter() - t0
    if "listening on http://127.0.0.1:" not in line:
        proc.kill()
        raise SystemExit(f"did not start: {line!r}\n{proc.stderr.read() if proc.stderr else ''}")
    return proc, int(line.split("http://127.0.0.1:")[1].split()[0]), ready


def get(url: str, body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, r.read()


def main() -> None:
    exe = Path(sys.argv[1]).resolve()
    runs = int(sys.argv[sys.argv.index("--runs") + 1]) if "--runs" in sys.argv else 3
    starts = []
    for i in range(runs):
        proc, port, ready = start(exe)
        starts.append(ready)
        base = f"http://127.0.0.1:{port}"
        try:
            if i == 0:
                assert get(f"{base}/healthz") == (200, b'{"status":"ok"}')
                status, body = get(
                    f"{base}/v1/embeddings", json.dumps({"model": "minilm", "input": "hi"}).encode()
                )
                emb = json.loads(body)["data"][0]["embedding"]
                assert status == 200
                assert len(emb) == 384
                status, page = get(f"{base}/")
                assert status == 200
                assert b"infergate" in page
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
        assert code == 0, f"exit code {code}"
    starts.sort()
    print(f"{exe}: {size_mb(exe):.0f} MB; cold start to listening: "
          f"median {starts[len(starts) // 2]:.2f} s (min {starts[0]:.2f}, max {starts[-1]:.2f}, "
          f"{runs} runs); /healthz, minilm embedding, static file: OK")  # fmt: skip


if __name__ == "__main__":
    if os.environ.get("INFERGATE_LOG_LEVEL") is None:
        os.environ["INFERGATE_LOG_LEVEL"] = "WARNING"
    main()
