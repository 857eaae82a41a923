"""A gateway in front of a hostile or broken replica: a raw asyncio server on loopback that
sends what the test asks for (an endless header, a body ended by closing the connection, 1xx
interim answers, a kept-alive connection closed under a request). Every case ends in a
bounded, named answer to the client, and the gateway goes on serving.

The replica picks its behaviour from the first input of an embeddings call (``mode:...``);
anything else (the health checks, the start-up probe, plain inputs) gets a normal answer.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.client import HttpResponse, RawConnection
from tests.support.server import ServerProcess
from tests.support.wait import wait_until

VECTOR = [0.25, -1.5, 3.0, 0.125]
ENDLESS_LIMIT = 64 * 1024 * 1024
"""The endless header stops here if nothing closes the connection first (the test fails)."""

GATEWAY_CONFIG = """
sub_reactors = 1

[[models]]
name = "emb"
executor = "openai"
upstreams = ["http://127.0.0.1:{port}"]
[models.batching]
policy = "off"
[models.upstream]
max_inflight = 1
request_timeout_ms = 15000
health_interval_ms = 60000
consecutive_failures = 1000
"""


def _answer(n: int) -> bytes:
    emb = base64.b64encode(struct.pack("<4f", *VECTOR)).decode()
    data = [{"object": "embedding", "index": i, "embedding": emb} for i in range(n)]
    return json.dumps({"object": "list", "data": data, "usage": {"prompt_tokens": n}}).encode()


class HostileReplica:
    """The replica, on a loop thread of its own. ``events``: what it did, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        """``(what, connection number)``."""
        self.loop = asyncio.new_event_loop()
        self._conns = 0
        ready = threading.Event()
        self.port = 0
        self.server: asyncio.Server | None = None

        async def start() -> None:
            self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()

        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        assert ready.is_set()

    def stop(self) -> None:
        async def close() -> None:
            assert self.server is not None
            self.server.close()
            await self.server.wait_closed()
            tasks = asyncio.all_tasks() - {asyncio.current_task()}
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def seen(self, what: str) -> list[int]:
        """The connections on which ``what`` happened."""
        return [c for w, c in list(self.events) if w == what]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns += 1
        conn = self._conns
        drop_next = False
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                if head.startswith(b"GET "):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                    continue
                inputs: list[Any] = json.loads(body)["input"]
                mode = inputs[0][5:] if str(inputs[0]).startswith("mode:") else "ok"
                if drop_next:
                    self.events.append(("closed-unanswered", conn))
                    return  # the replica's idle close crossing our request
                self.events.append((mode, conn))
                if mode == "drop":
                    return
                if mode == "endless-header":
                    await self._endless_header(writer, conn)
                    return
                payload = _answer(len(inputs))
                if mode == "close-delimited":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
                    writer.write(payload)  # no length, not chunked: the close ends it
                    await writer.drain()
                    return
                if mode == "interim":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    await writer.drain()
                    # the replica's behaviour, not a synchronisation: the final answer comes
                    # later, as from a server that reports progress while it works
                    await asyncio.sleep(0.05)
                    writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n")
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
                )
                if mode == "trailing-junk":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")  # unasked
                await writer.drain()
                drop_next = mode == "close-next"
        finally:
            writer.close()

    async def _endless_header(self, writer: asyncio.StreamWriter, conn: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nX-Junk: ")
        sent = 0
        try:
            while sent < ENDLESS_LIMIT:
                writer.write(b"a" * 16384)
                sent += 16384
                await writer.drain()
        except ConnectionError:
            self.events.append(("endless-header-cut", conn))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HostileReplica, int]]:
    replica = HostileReplica()
    cfg = Path(tmp_path_factory.mktemp("gateway_hostile")) / "gateway.toml"
    cfg.write_text(GATEWAY_CONFIG.format(port=replica.port))
    try:
        with ServerProcess(cfg) as gw:
            yield replica, gw.port
    finally:
        replica.stop()


def embed(port: int, *inputs: str) -> HttpResponse:
    body = json.dumps({"model": "emb", "input": list(inputs)}).encode()
    with RawConnection(port, timeout=30) as c:
        return c.request(
            "POST", "/v1/embeddings", [("Content-Type", "application/json")], body=body
        )


def assert_ok(port: int, *inputs: str) -> None:
    r = embed(port, *inputs)
    assert r.status == 200, r.body[:300]
    data = r.json()["data"]
    assert [d["embedding"] for d in data] == [VECTOR] * len(inputs)


def assert_upstream_failure(r: HttpResponse, reason: str, words: str) -> None:
    assert r.status == 502, r.body[:300]
    assert r.header("x-infergate-drop-reason") == reason
    err = r.json()["error"]
    assert err["code"] == reason
    assert words in err["message"], err["message"]


def test_an_endless_header_is_cut_at_the_cap(setup: tuple[HostileReplica, int]) -> None:
    replica, port = setup
    r = embed(port, "mode:endless-header")
    assert_upstream_failure(r, "upstream_error", "headers exceed 65536 bytes")
    (conn,) = replica.seen("endless-header")
    wait_until(  # the replica learns of the close on its next write after the 502
        lambda: replica.seen("endless-header-cut") == [conn], 10.0, "the connection closed"
    )
    assert_ok(port, "after")


def test_a_body_ended_by_the_close_is_the_answer(setup: tuple[HostileReplica, int]) -> None:
    replica, port = setup
    assert_ok(port, "mode:close-delimited", "second input")
    assert replica.seen("close-delimited")
    assert_ok(port, "after")


def test_interim_answers_are_skipped(setup: tuple[HostileReplica, int]) -> None:
    replica, port = setup
    assert_ok(port, "mode:interim")
    assert replica.seen("interim")
    assert_ok(port, "after")


def test_a_kept_alive_connection_closed_under_a_request_is_retried_once_on_a_new_one(
    setup: tuple[HostileReplica, int],
) -> None:
    replica, port = setup
    assert_ok(port, "mode:close-next")
    (kept,) = replica.seen("close-next")
    before = len(replica.events)
    assert_ok(port, "retried")
    closed, served = replica.events[before:]
    assert closed == ("closed-unanswered", kept)  # the request reached the kept connection
    assert served[0] == "ok"
    assert served[1] > kept  # and was answered on a new one


def test_a_new_connection_closed_unanswered_is_not_retried(
    setup: tuple[HostileReplica, int],
) -> None:
    replica, port = setup
    assert_ok(port, "before")  # a kept-alive connection is idle in the gateway's pool
    before = len(replica.events)
    r = embed(port, "mode:drop")
    assert_upstream_failure(r, "upstream_unavailable", "connection closed by the replica")
    first, second = replica.events[before:]  # the reused connection, then one new one: no more
    assert first[0] == second[0] == "drop"
    assert second[1] > first[1]
    assert_ok(port, "after")


def test_bytes_after_a_whole_answer_retire_the_connection(
    setup: tuple[HostileReplica, int],
) -> None:
    replica, port = setup
    assert_ok(port, "mode:trailing-junk")
    (junk,) = replica.seen("trailing-junk")
    assert_ok(port, "after")  # not read as the answer to the next call
    what, conn = replica.events[-1]
    assert what == "ok"
    assert conn > junk  # on a new connection, whether the junk came with the answer or after
