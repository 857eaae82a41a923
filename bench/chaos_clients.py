"""Traffic for the chaos benchmark (bench/chaos.py): the normal clients and the abusive ones.

Everything goes to 127.0.0.1. Every loop is bounded twice: by the phase's end time and by a
count derived from its rate, so nothing here can run on if the clock or the server misbehaves.
Sleeps pace the offered load; they synchronise nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

HOST = "127.0.0.1"
MAX_BODY = 64 * 1024 * 1024
"""Largest response body a client reads before giving up on it."""
REQUEST_TIMEOUT_S = 30.0
"""A normal request not answered within this long counts as unanswered."""
NO_ANSWER = (TimeoutError, asyncio.IncompleteReadError, OSError, ValueError)
"""What a client sees when no (parsable) response comes: timeout, EOF, reset, garbage."""


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


# ---- HTTP on asyncio streams -------------------------------------------------------------------


@dataclass(slots=True)
class Resp:
    status: int
    headers: dict[str, str]
    body: bytes

    def reason(self) -> str:
        """Why the server refused: X-Infergate-Drop-Reason, else the JSON error's code/type."""
        drop = self.headers.get("x-infergate-drop-reason")
        if drop:
            return drop
        try:
            err = json.loads(self.body)["error"]
            return str(err["code"] if isinstance(err["code"], str) else err["type"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return "-"


def request(
    method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    length = f"Content-Length: {len(body)}\r\n" if body or method == "POST" else ""
    ctype = "Content-Type: application/json\r\n" if body else ""
    return f"{method} {path} HTTP/1.1\r\nHost: chaos\r\n{ctype}{length}{extra}\r\n".encode() + body


async def read_response(reader: asyncio.StreamReader) -> Resp:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if status in (204, 304) or 100 <= status < 200:
        return Resp(status, headers, b"")
    if "content-length" in headers:
        n = int(headers["content-length"])
        if n > MAX_BODY:
            raise ValueError(f"response of {n} bytes")
        return Resp(status, headers, await reader.readexactly(n))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while len(body) <= MAX_BODY:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                    pass
                return Resp(status, headers, bytes(body))
            body += (await reader.readexactly(size + 2))[:-2]
        raise ValueError("chunked response too large")
    return Resp(status, headers, await reader.read(MAX_BODY))  # until EOF


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(HOST, port, limit=1 << 20)


async def one_shot(port: int, data: bytes, timeout: float = 10.0) -> Resp | str:
    """Send ``data`` on a new connection and read one response; a string says why none came."""
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await connect(port)
            writer.write(data)
            await writer.drain()
            return await read_response(reader)
    except TimeoutError:
        return "timeout"
    except asyncio.IncompleteReadError as e:
        return "closed" if not e.partial else "truncated"
    except (ConnectionError, OSError):
        return "reset"
    except ValueError:
        return "unparsable"
    finally:
        if writer is not None:
            writer.close()


@dataclass
class Tally:
    """What one family of clients saw: outcome counts and every 5xx by status and reason."""

    outcomes: Counter[str] = field(default_factory=Counter)
    errors_5xx: Counter[str] = field(default_factory=Counter)

    def add(self, outcome: Resp | str, label: str = "") -> None:
        prefix = f"{label} " if label else ""
        if isinstance(outcome, str):
            self.outcomes[prefix + outcome] += 1
            return
        self.outcomes[f"{prefix}{outcome.status}"] += 1
        if outcome.status >= 500:
            self.errors_5xx[f"{outcome.status} {outcome.reason()}"] += 1


# ---- normal clients ----------------------------------------------------------------------------

WORDS = ["cats", "dogs", "markets", "rain", "music", "code", "tea", "trains", "river", "fox"]


def normal_request(kind: str, i: int) -> bytes:
    if kind == "static":
        return request("GET", ("/4k.txt", "/index.html", "/")[i % 3])
    text = f"sentence {i} about {WORDS[i % len(WORDS)]} and {WORDS[(i * 7) % len(WORDS)]}"
    doc: dict[str, Any] = {"model": kind, "input": text}
    if kind == "sim-embed":
        doc["input"] = [f"{text} {j}" for j in range(4)]
    return request("POST", "/v1/embeddings", json.dumps(doc).encode())


async def normal_client(
    kind: str, port: int, end: float, think_s: float, rows: list[list[Any]], tally: Tally
) -> None:
    """Closed loop on one keep-alive connection (reopened when the server closes it).

    Each row: [kind, latency_s, status (-1: no answer), why, has Retry-After]."""
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    max_requests = int((end - time.monotonic()) / max(think_s, 0.001)) + 1
    for i in range(max_requests):
        if time.monotonic() >= end:
            break
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                if conn is None:
                    conn = await connect(port)
                conn[1].write(normal_request(kind, i))
                resp = await read_response(conn[0])
        except NO_ANSWER as e:
            why = "timeout" if isinstance(e, TimeoutError) else type(e).__name__
            rows.append([kind, time.perf_counter() - t0, -1, why, False])
            tally.add(why, kind)
            if conn is not None:
                conn[1].close()
            conn = None
        else:
            retry = "retry-after" in resp.headers
            rows.append([kind, time.perf_counter() - t0, resp.status, resp.reason(), retry])
            tally.add(resp, kind)
            if resp.headers.get("connection", "").lower() == "close":
                conn[1].close()
                conn = None
        await asyncio.sleep(think_s)
    if conn is not None:
        conn[1].close()


async def run_normal(port: int, seconds: float) -> dict[str, Any]:
    """Every normal client for ``seconds``; returns the rows and the tally."""
    clients = env_int("NORMAL_CLIENTS", 3)
    think_s = env_float("NORMAL_THINK_MS", 20) / 1000
    rows: list[list[Any]] = []
    tally = Tally()
    end = time.monotonic() + seconds
    await asyncio.gather(*(
        normal_client(kind, port, end, think_s, rows, tally)
        for kind in ("minilm", "sim-embed", "static") for _ in range(clients)
    ))  # fmt: skip
    return {"rows": rows, "outcomes": tally.outcomes, "errors_5xx": tally.errors_5xx}


# ---- abusive clients ---------------------------------------------------------------------------


def big_embed_request(n: int) -> bytes:
    body = json.dumps({"model": "sim-embed", "input": [f"w{i}" for i in range(n)]}).encode()
    return request("POST", "/v1/embeddings", body)


async def slow_reader(port: int, end: float, pipelined: int, tally: Tally) -> None:
    """Ask for large responses (2048 sim-embed inputs each) and never read them; hold the
    connection for ``SLOW_HOLD_S``, then start over on a new one."""
    loop = asyncio.get_running_loop()
    hold = env_float("SLOW_HOLD_S", 20)
    data = big_embed_request(env_int("SLOW_INPUTS", 2048)) * pipelined
    for _ in range(int((end - time.monotonic()) / hold) + 1):
        if time.monotonic() >= end:
            break
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (HOST, port))
            await asyncio.wait_for(loop.sock_sendall(sock, data), 10)
            tally.outcomes["sent"] += pipelined
            await asyncio.sleep(max(0.0, min(hold, end - time.monotonic())))
        except (TimeoutError, OSError):
            tally.outcomes["send failed"] += 1
        finally:
            sock.close()


async def trickler(port: int, end: float, tally: Tally) -> None:
    """Announce a 1000-byte body, then send one byte every ``TRICKLE_INTERVAL_S``."""
    interval = env_float("TRICKLE_INTERVAL_S", 3)
    head = b"POST /v1/embeddings HTTP/1.1\r\nHost: chaos\r\nContent-Length: 1000\r\n\r\n"
    for _ in range(int((end - time.monotonic()) / interval) + 1):  # at worst 1 byte per round
        if time.monotonic() >= end:
            break
        t0 = time.monotonic()
        writer = None
        try:
            reader, writer = await connect(port)
            writer.write(head)
            outcome = await _trickle(reader, writer, end, interval)
        except (ConnectionError, OSError):
            outcome = "reset"
        finally:
            if writer is not None:
                writer.close()
        tally.add(outcome)
        if isinstance(outcome, Resp):
            tally.outcomes[f"lasted {min(60, int(time.monotonic() - t0)) // 5 * 5}+ s"] += 1


async def _trickle(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, end: float, interval: float
) -> Resp | str:
    for _ in range(1000):
        if time.monotonic() >= end:
            return "held to the end"
        try:
            return await asyncio.wait_for(read_response(reader), interval)
        except TimeoutError:
            writer.write(b"x")
        except asyncio.IncompleteReadError:
            return "closed"
    return "body complete"


def malformed_cases(admin_port: int, port: int) -> list[tuple[str, int, bytes]]:
    """(name, port, bytes) of each oversized or malformed request."""
    emb = "/v1/embeddings"
    batching = "/admin/models/sim-embed/batching"
    kserve = "/v2/models/sim-tensor/infer"
    deep = b'{"model": "sim-embed", "input": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    big_bad = b'{"model": "sim-embed", "input": [' + b'"a",' * (7 * 1024 * 1024 // 4)

    def tensor(shape: list[int]) -> bytes:
        doc = {"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": [1]}]}
        return json.dumps(doc).encode()

    def raw_post(*fields: str, body: bytes = b"") -> bytes:
        return "\r\n".join([f"POST {emb} HTTP/1.1", "Host: x", *fields, "", ""]).encode() + body

    many = {f"X-H{i}": "v" for i in range(2000)}
    digits = "bytes=0-" + "9" * 5000
    return [
        ("huge header", port, request("GET", "/healthz", headers={"X-Big": "a" * 100_000})),
        ("many headers", port, request("GET", "/healthz", headers=many)),
        ("huge uri", port, request("GET", "/" + "a" * 20_000)),
        ("bad json", port, request("POST", emb, b'{"model": "sim-embed", "input": [')),
        ("utf8 openai", port, request("POST", emb, b'{"model": "sim-embed", "input": "\xff"}')),
        ("utf8 kserve", port, request("POST", kserve, b'{"inputs": [{"name": "\xc3\x28"}]}')),
        ("utf8 admin", admin_port, request("PATCH", batching, b'{"policy": "\xff"}')),
        ("deep json", port, request("POST", emb, deep)),
        ("deep json admin", admin_port, request("PATCH", batching, deep)),
        ("kserve overflow", port, request("POST", kserve, tensor([2**40, 2**40]))),
        ("kserve 65 dims", port, request("POST", kserve, tensor([1] * 65))),
        ("range digits", port, request("GET", "/4k.txt", headers={"Range": digits})),
        ("bad cl", port, raw_post("Content-Length: abc")),
        ("negative cl", port, raw_post("Content-Length: -1")),
        ("two cls", port, raw_post("Content-Length: 2", "Content-Length: 3", body=b"{}")),
        ("huge cl", port, raw_post("Content-Length: 9000000000")),
        ("bad priority", port, request("POST", emb, b'{"model": "sim-embed", "input": "x"}',
                                       {"X-Priority": "+2"})),
        ("not http", port, random.Random(1).randbytes(512) + b"\r\n\r\n"),
        ("7 MB bad json", port, request("POST", emb, big_bad)),
    ]  # fmt: skip


async def malformed(port: int, admin_port: int, end: float, tally: Tally) -> None:
    """``MALFORMED_RPS`` one-shot bad requests, cycling through ``malformed_cases``."""
    cases = malformed_cases(admin_port, port)
    interval = 1 / env_float("MALFORMED_RPS", 20)
    pending: set[asyncio.Task[None]] = set()

    async def one(name: str, p: int, data: bytes) -> None:
        tally.add(await one_shot(p, data), name)

    for i in range(int((end - time.monotonic()) / interval) + 1):
        if time.monotonic() >= end:
            break
        task = asyncio.create_task(one(*cases[i % len(cases)]))
        pending.add(task)
        task.add_done_callback(pending.discard)
        await asyncio.sleep(interval)
    if pending:
        await asyncio.wait(pending, timeout=15)


async def flooder(port: int, end: float, interval: float, tally: Tally) -> None:
    """Priority-1 sim-embed requests of 16 inputs, paced to ``interval``, Retry-After ignored."""
    body = json.dumps({"model": "sim-embed", "input": [f"flood {i}" for i in range(16)]})
    data = request("POST", "/v1/embeddings", body.encode(), {"X-Priority": "1"})
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    next_t = time.monotonic()
    for _ in range(int((end - next_t) / interval) + 1):
        if time.monotonic() >= end:
            break
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                if conn is None:
                    conn = await connect(port)
                conn[1].write(data)
                tally.add(await read_response(conn[0]))
        except NO_ANSWER:
            tally.outcomes["no answer"] += 1
            if conn is not None:
                conn[1].close()
            conn = None
        next_t += interval
        await asyncio.sleep(max(0.0, next_t - time.monotonic()))
    if conn is not None:
        conn[1].close()


def disconnect_cases() -> list[tuple[str, bytes, float]]:
    """(name, bytes sent, seconds before closing)."""
    long_text = " ".join(WORDS * 25)
    minilm = json.dumps({"model": "minilm", "input": [f"{i} {long_text}" for i in range(32)]})
    sim = big_embed_request(256)
    return [
        ("minilm 32 long", request("POST", "/v1/embeddings", minilm.encode()), 0.05),
        ("sim-embed 256", sim, 0.0),
        ("half body", sim[: len(sim) // 2], 0.0),
        ("pipelined 3", sim * 3, 0.01),
    ]


async def disconnector(port: int, end: float, tally: Tally) -> None:
    """``DISCONNECT_RPS`` clients that send a request and leave before the answer."""
    cases = disconnect_cases()
    interval = 1 / env_float("DISCONNECT_RPS", 5)
    for i in range(int((end - time.monotonic()) / interval) + 1):
        if time.monotonic() >= end:
            break
        name, data, linger = cases[i % len(cases)]
        try:
            _, writer = await connect(port)
            writer.write(data)
            await asyncio.wait_for(writer.drain(), 5)
            await asyncio.sleep(linger)
            writer.transport.abort()  # gone without reading
            tally.outcomes[name] += 1
        except (TimeoutError, ConnectionError, OSError):
            tally.outcomes[f"{name} failed"] += 1
        await asyncio.sleep(interval)


async def sighupper(pid: int, end: float, tally: Tally) -> None:
    every = env_float("SIGHUP_EVERY_S", 5)
    for _ in range(int((end - time.monotonic()) / every) + 1):
        await asyncio.sleep(max(0.0, min(every, end - time.monotonic())))
        if time.monotonic() >= end:
            break
        try:
            os.kill(pid, signal.SIGHUP)
            tally.outcomes["sent"] += 1
        except ProcessLookupError:
            tally.outcomes["server gone"] += 1
            return


async def run_abuse(port: int, admin_port: int, pid: int, seconds: float) -> dict[str, Tally]:
    """Every abusive client for ``seconds``; a tally per family."""
    end = time.monotonic() + seconds
    t = {k: Tally() for k in ("slow", "trickle", "malformed", "flood", "disconnect", "sighup")}
    flood_conns = env_int("FLOOD_CONNS", 16)
    flood_interval = flood_conns / env_float("FLOOD_RPS", 200)
    tasks = [
        *(slow_reader(port, end, 1, t["slow"]) for _ in range(env_int("SLOW_READERS", 8))),
        slow_reader(port, end, env_int("SLOW_PIPELINED", 16), t["slow"]),
        *(trickler(port, end, t["trickle"]) for _ in range(env_int("TRICKLERS", 30))),
        malformed(port, admin_port, end, t["malformed"]),
        *(flooder(port, end, flood_interval, t["flood"]) for _ in range(flood_conns)),
        disconnector(port, end, t["disconnect"]),
        sighupper(pid, end, t["sighup"]),
    ]
    try:
        done = await asyncio.wait_for(
            asyncio.gather(*tasks, return_exceptions=True), seconds + REQUEST_TIMEOUT_S + 15
        )
    except TimeoutError:
        t["sighup"].outcomes["abusers still running at the time limit"] += 1
        return t
    for e in done:
        if isinstance(e, BaseException):  # a bug in an abuser must not hide the others' results
            t["sighup"].outcomes[f"abuser crashed: {e!r}"[:120]] += 1
    return t
