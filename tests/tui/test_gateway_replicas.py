"""The dashboard shows a gateway model's replicas: state, in flight, latency, errors,
ejections. A real gateway engine in front of a real upstream engine (sim), plus a replica
that refuses connections; Textual's Pilot."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from infergate.app.runtime import ServerView
from infergate.engine.config import ModelConfig, ServerConfig, UpstreamConfig
from infergate.engine.server import Server
from infergate.tui.app import Dashboard
from tests.support.client import RawConnection

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def run(cfg: ServerConfig) -> tuple[Server, threading.Thread]:
    s = Server(cfg)
    s.start()
    t = threading.Thread(target=s.run, kwargs={"install_signals": False})
    t.start()
    return s, t


def refused_url() -> str:
    """A loopback port nobody listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def gateway() -> Iterator[tuple[Server, str, str]]:
    upstream, ut = run(
        ServerConfig(
            listen="127.0.0.1:0",
            admin_listen="",
            sub_reactors=1,
            models=[ModelConfig(name="sim", dim=4, base_us=100)],
        )
    )
    assert upstream.address is not None
    up, down = f"http://127.0.0.1:{upstream.address[1]}", refused_url()
    gw, gt = run(
        ServerConfig(
            listen="127.0.0.1:0",
            admin_listen="",
            sub_reactors=1,
            models=[
                ModelConfig(
                    name="emb",
                    executor="openai",
                    upstreams=[up, down],
                    upstream_model="sim",
                    upstream=UpstreamConfig(max_inflight=2),
                )
            ],
        )
    )
    try:
        yield gw, up, down
    finally:
        gw.stop()
        gt.join(20)
        upstream.stop()
        ut.join(20)


async def test_the_detail_pane_lists_each_replica_with_its_state_and_counters(
    gateway: tuple[Server, str, str],
) -> None:
    gw, up, down = gateway
    assert gw.address is not None
    with RawConnection(gw.address[1]) as c:
        for i in range(5):
            body = b'{"model": "emb", "input": ["x%d"]}' % i
            assert c.request("POST", "/v1/embeddings", body=body).status == 200
    app = Dashboard(ServerView(gw), refresh_s=60, clock=False)
    async with app.run_test(size=(160, 40)) as pilot:
        app.refresh_stats()
        await pilot.pause()
        [row] = app.rows
        states = {r.url: r for r in row.replicas}
        assert states[up].state == "healthy"
        assert states[up].requests >= 5
        assert states[down].state == "ejected"  # its start-up health check was refused
        info = app.query_one("#info")
        text = "\n".join(str(s.text) for s in info.render_lines(info.region.reset_offset))  # type: ignore[attr-defined]
        # one line each, the scheme left out
        [up_line] = [line for line in text.splitlines() if up.removeprefix("http://") in line]
        assert "healthy" in up_line
        assert "in flight 0" in up_line
        assert "errors 0" in up_line
        [down_line] = [line for line in text.splitlines() if down.removeprefix("http://") in line]
        assert "ejected" in down_line
        assert "ejections 1" in down_line
        await pilot.pause()  # the pane's new height is laid out
        assert app.query_one("#detail").outer_size.height == 9 + 3  # a line per replica
