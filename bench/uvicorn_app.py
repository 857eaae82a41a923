"""A minimal ASGI app for uvicorn (httptools + uvloop): the tiny response and the 4 KiB file."""

from pathlib import Path

FILE = (Path(__file__).resolve().parent.parent / "public" / "4k.txt").read_bytes()
HELLO = b"Hello, World!"


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    if scope["path"] == "/public/4k.txt":
        body, ctype = FILE, b"text/plain; charset=utf-8"
    else:
        body, ctype = HELLO, b"text/plain"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
