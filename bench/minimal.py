"""The floor: the least a uvloop + httptools server can do to answer GET with 13 bytes.

No routing, no limits, no metrics. All responses produced by one read leave in one write.
Usage: python bench/minimal.py PORT
"""

import asyncio
import sys

import httptools
import uvloop

RESP = (
    b"HTTP/1.1 200 OK\r\nServer: minimal\r\nDate: Tue, 24 Nov 2026 00:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!"
)


class Minimal(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self.out: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()
            return
        if self.out:
            self.transport.write(b"".join(self.out))  # type: ignore[attr-defined]
            self.out.clear()

    def on_message_complete(self) -> None:
        self.out.append(RESP)


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Minimal, "127.0.0.1", port, backlog=4096)
    print(f"minimal listening on {port}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
