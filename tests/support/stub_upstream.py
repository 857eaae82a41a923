"""A stand-in OpenAI-compatible generating server for gateway tests: SSE chunks with timing
the test controls, and a record of what it saw (arrivals, priorities, closed connections).

Run as a child process (``StubUpstream`` below, or ``python tests/support/stub_upstream.py
--port 0``); it prints ``stub listening on http://127.0.0.1:PORT`` once bound.

A request says how to answer in the extra body field ``stub`` (the gateway forwards the body
unchanged; the openai SDK sends it with ``extra_body={"stub": {...}}``):

- ``tag``: a name for the record (default ``"-"``);
- ``chunks``: number of content chunks (default 3), each ``"tok{i} "``;
- ``gate`` and ``gate_at``: before chunk ``gate_at`` (default 0: before the answer's head),
  wait until ``POST /_stub/release`` with ``{"gate": name}``;
- ``status`` and ``message``: answer this error status instead (OpenAI's error shape);
- ``abort_after``: cut the connection after this many chunks (a replica dying mid-stream);
- ``interval_ms``: pause between chunks, as a generating server does (benchmarks only).

``GET /_stub/log`` returns the events: ``arrive`` (with ``priority`` and ``model`` as
received), ``wait`` (blocked on a gate), ``closed`` (the client closed the connection before
the answer was complete: aiohttp cancelled the handler) and ``done``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

READY_RE = re.compile(r"^stub listening on http://127\.0\.0\.1:(\d+)$")
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
GATE_TIMEOUT_S = 60.0
"""A gate never released (a failed test) ends its request after this long."""


class Stub:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.gates: dict[str, asyncio.Event] = {}

    def gate(self, name: str) -> asyncio.Event:
        return self.gates.setdefault(name, asyncio.Event())

    def note(self, event: str, tag: str, **extra: Any) -> None:
        self.events.append({"event": event, "tag": tag, "t": time.monotonic(), **extra})

    async def models(self, _req: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "stub", "object": "model"}]})

    async def release(self, req: web.Request) -> web.Response:
        self.gate((await req.json())["gate"]).set()
        return web.json_response({"ok": True})

    async def log(self, _req: web.Request) -> web.Response:
        return web.json_response(self.events)

    async def generate(self, req: web.Request) -> web.StreamResponse:
        body = await req.json()
        opts = body.get("stub") or {}
        tag = str(opts.get("tag", "-"))
        self.note("arrive", tag, priority=body.get("priority"), model=body.get("model"),
                  path=req.path)  # fmt: skip
        try:
            return await self._answer(req, body, opts, tag)
        except asyncio.CancelledError:
            self.note("closed", tag)
            raise

    async def _wait_gate(self, opts: dict[str, Any], tag: str, at: int) -> None:
        if opts.get("gate") and int(opts.get("gate_at", 0)) == at:
            self.note("wait", tag, at=at)
            await asyncio.wait_for(self.gate(str(opts["gate"])).wait(), GATE_TIMEOUT_S)

    async def _answer(
        self, req: web.Request, body: dict[str, Any], opts: dict[str, Any], tag: str
    ) -> web.StreamResponse:
        await self._wait_gate(opts, tag, 0)
        if "status" in opts:
            err = {"message": opts.get("message", "stub error"), "type": "stub", "code": None}
            self.note("done", tag)
            return web.json_response({"error": err}, status=int(opts["status"]))
        n = int(opts.get("chunks", 3))
        chat = req.path.endswith("/chat/completions")
        if not body.get("stream"):
            text = "".join(f"tok{i} " for i in range(n))
            choice = {"index": 0, "finish_reason": "stop"}
            choice.update({"message": {"role": "assistant", "content": text}} if chat
                          else {"text": text})  # fmt: skip
            self.note("done", tag)
            return web.json_response(
                {"id": "stub-1", "object": "chat.completion" if chat else "text_completion",
                 "created": 0, "model": body.get("model"), "choices": [choice],
                 "usage": {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}}
            )  # fmt: skip
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(req)
        for i in range(n):
            if i and i == opts.get("abort_after"):
                assert req.transport is not None
                req.transport.abort()
                self.note("aborted", tag)
                return resp
            await self._wait_gate(opts, tag, i) if i else None
            if i and opts.get("interval_ms"):
                await asyncio.sleep(float(opts["interval_ms"]) / 1000)  # generation time
            delta = {"delta": {"content": f"tok{i} "}} if chat else {"text": f"tok{i} "}
            chunk = {"id": "stub-1", "object": "chat.completion.chunk" if chat else
                     "text_completion", "created": 0, "model": body.get("model"),
                     "choices": [{"index": 0, "finish_reason": None, **delta}]}  # fmt: skip
            await resp.write(b"data: %s\n\n" % json.dumps(chunk).encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        self.note("done", tag)
        return resp


def make_app() -> web.Application:
    stub = Stub()
    app = web.Application()
    app.router.add_get("/v1/models", stub.models)
    app.router.add_post("/v1/chat/completions", stub.generate)
    app.router.add_post("/v1/completions", stub.generate)
    app.router.add_post("/_stub/release", stub.release)
    app.router.add_get("/_stub/log", stub.log)
    return app


async def serve(port: int) -> None:
    # handler_cancellation: a client that closes its connection cancels the handler, which is
    # how the stub sees (and records) a gateway aborting its upstream request.
    runner = web.AppRunner(make_app(), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, reuse_address=True)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.Server)
    bound = server.sockets[0].getsockname()[1]
    print(f"stub listening on http://127.0.0.1:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


class StubUpstream:
    """The stub as a child process on loopback."""

    def __init__(self, port: int = 0, log_path: Path | None = None) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._log = log_path.open("wb") if log_path else None
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log if self._log else subprocess.DEVNULL,
            env=env,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        line = b""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            m = READY_RE.match(line.decode().strip())
            if m:
                self.port = int(m.group(1))
                break
            if not line and self.proc.poll() is not None:
                break
        else:
            self.stop()
            raise RuntimeError("the stub upstream did not start")
        if not hasattr(self, "port"):
            raise RuntimeError(f"the stub upstream did not start: {line!r}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)
        self._close()

    def kill(self) -> None:
        """SIGKILL: a replica dying with its connections open."""
        self.proc.kill()
        self.proc.wait(STOP_TIMEOUT_S)
        self._close()

    def _close(self) -> None:
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self._log is not None:
            self._log.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
