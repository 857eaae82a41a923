"""Answers from a replica are read with a size cap: a misbehaving upstream cannot make the
gateway hold an unbounded body in memory."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from infergate.engine.executors.upstream.client import ReplyTooLarge, read_reply

BODY = b"x" * 1000


async def _serve(chunked: bool) -> web.AppRunner:
    async def handler(request: web.Request) -> web.StreamResponse:
        if not chunked:
            return web.Response(body=BODY)
        resp = web.StreamResponse()  # no Content-Length: the cap must hold while reading
        await resp.prepare(request)
        for i in range(0, len(BODY), 100):
            await resp.write(BODY[i : i + 100])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_reply_over_the_cap_is_refused_and_one_within_it_read_whole(
    chunked: bool,
) -> None:
    runner = await _serve(chunked)
    try:
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/") as resp:
                with pytest.raises(ReplyTooLarge):
                    await read_reply(resp, len(BODY) - 1)
            async with session.get(f"http://127.0.0.1:{port}/") as resp:
                assert await read_reply(resp, len(BODY)) == BODY
    finally:
        await runner.cleanup()
