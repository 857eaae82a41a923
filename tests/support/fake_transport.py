"""An in-memory transport for driving ``HttpProtocol`` directly, without sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from infergate.engine.config import Limits
from infergate.engine.http.bounds import ProcessBounds
from infergate.engine.http.protocol import HttpContext, HttpProtocol
from infergate.engine.http.router import Router
from infergate.engine.stats import ReactorStats
from tests.support.client import HttpResponse, parse_responses

FIXED_DATE = b"Date: Thu, 01 Jan 2026 00:00:00 GMT\r\n"


class FakeTransport:
    """Records what the protocol writes and how it drives flow control.

    The peer reads everything at once unless ``peer_reading`` is False: then written bytes stay
    in a write buffer, and the transport calls ``pause_writing`` above the high-water mark like
    uvloop's; ``peer_reads`` empties the buffer (``resume_writing``). ``close`` with bytes
    buffered waits for them, as a real transport does.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.protocol: HttpProtocol | None = None
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False
        self.eof_written = False
        self.reading = True
        self.pause_calls = 0
        self.resume_calls = 0
        self.write_limits: tuple[int | None, int | None] | None = None
        self.peer_reading = True
        self.buffered = 0
        self.writing_paused = False

    @property
    def data(self) -> bytes:
        return b"".join(self.writes)

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        assert not self.eof_written, "write after write_eof"
        self.writes.append(bytes(data))
        if not self.peer_reading:
            self.buffered += len(data)
            high = (self.write_limits or (None, None))[0] or 65536
            if self.buffered > high and not self.writing_paused and self.protocol is not None:
                self.writing_paused = True
                self.protocol.pause_writing()

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def peer_reads(self, n: int | None = None) -> None:
        """The peer reads ``n`` buffered bytes (all by default)."""
        self.buffered = 0 if n is None else max(0, self.buffered - n)
        low = (self.write_limits or (None, None))[1] or 0
        if self.writing_paused and self.buffered <= low:
            self.writing_paused = False
            if self.protocol is not None:
                self.protocol.resume_writing()
        if self.closed and not self.buffered:
            self._lose()

    def _lose(self) -> None:
        if self.protocol is not None:
            protocol, self.protocol = self.protocol, None
            self.loop.call_soon(protocol.connection_lost, None)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if not self.buffered:
                self._lose()

    def abort(self) -> None:
        self.aborted = True
        self.buffered = 0
        self.closed = True
        self._lose()

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.pause_calls += 1
        self.reading = False

    def resume_reading(self) -> None:
        self.resume_calls += 1
        self.reading = True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.write_limits = (high, low)

    def write_eof(self) -> None:
        self.eof_written = True

    def can_write_eof(self) -> bool:
        return True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(
            name, default
        )


class Connection:
    """One ``HttpProtocol`` on a ``FakeTransport``, with a fixed ``Date`` line."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        router: Router,
        executor: ThreadPoolExecutor,
        limits: Limits | None = None,
        bounds: ProcessBounds | None = None,
    ) -> None:
        """``bounds``: shared by several connections of a test; by default one of its own."""
        self.loop = loop
        limits = limits or Limits()
        bounds = bounds or ProcessBounds(limits)
        self.ctx = HttpContext(loop, router, limits, ReactorStats(), executor, bounds=bounds)
        self.ctx.date_line = FIXED_DATE
        self.transport = FakeTransport(loop)
        self.protocol = HttpProtocol(self.ctx)
        self.transport.protocol = self.protocol
        self.protocol.connection_made(self.transport)  # type: ignore[arg-type]

    def feed(self, *chunks: bytes) -> None:
        for c in chunks:
            self.protocol.data_received(c)

    def settle(self) -> None:
        """Run the loop until the protocol's tasks and callbacks are done (bounded)."""

        async def _settle() -> None:
            for _ in range(50):
                tasks = list(self.protocol.tasks)
                if tasks:
                    await asyncio.gather(*tasks, return_exceptions=True)
                for _ in range(3):
                    await asyncio.sleep(0)
                if not self.protocol.tasks:
                    return
            raise AssertionError("protocol tasks did not finish")

        self.loop.run_until_complete(_settle())

    def responses(self, heads: Sequence[bool] = ()) -> list[HttpResponse]:
        return parse_responses(self.transport.data, heads)
