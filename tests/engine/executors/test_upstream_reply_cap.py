"""Answers from a replica are read with a size cap: a misbehaving upstream cannot make the
gateway hold an unbounded body in memory."""

from __future__ import annotations

import pytest
from aiohttp import web

from infergate.engine.executors.upstream.lean import LeanPool, TooLarge

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
        base = f"http://127.0.0.1:{port}"
        small = LeanPool(5.0, len(BODY) - 1)
        with pytest.raises(TooLarge):
            await small.request(base, "GET", "/", None, {}, 5.0)
        pool = LeanPool(5.0, len(BODY))
        for _ in range(2):  # the second call reuses the kept-alive connection
            assert await pool.request(base, "GET", "/", None, {}, 5.0) == (200, BODY, None)
        assert len(pool._replicas[base].idle) == 1
        pool.close()
        small.close()
    finally:
        await runner.cleanup()
