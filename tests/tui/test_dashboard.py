"""The dashboard against a real engine (sim executor) with Textual's Pilot."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest

from infergate.app.runtime import ServerView
from infergate.engine.config import BatchingConfig, ModelConfig, ServerConfig
from infergate.engine.server import Server
from infergate.tui.app import Dashboard, EditScreen
from tests.support.client import RawConnection

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def server() -> Iterator[Server]:
    cfg = ServerConfig(
        listen="127.0.0.1:0",
        admin_listen="",  # the dashboard needs no admin listener (and no fixed port)
        sub_reactors=1,
        models=[
            ModelConfig(name="sim-a", dim=4, base_us=500, per_item_us=10,
                        batching=BatchingConfig(policy="adaptive", max_batch_size=16)),
            ModelConfig(name="sim-b", dim=4, base_us=500, per_item_us=10),
        ],
    )  # fmt: skip
    s = Server(cfg)
    s.start()
    t = threading.Thread(target=s.run, kwargs={"install_signals": False})
    t.start()
    yield s
    s.stop()
    t.join(20)


def traffic(server: Server, model: str, n: int) -> None:
    assert server.address is not None
    with RawConnection(server.address[1]) as c:
        for i in range(n):
            body = b'{"model": "%s", "input": ["x%d", "y"]}' % (model.encode(), i)
            assert c.request("POST", "/v1/embeddings", body=body).status == 200


async def test_screen_shows_a_models_live_numbers_after_traffic(server: Server) -> None:
    app = Dashboard(ServerView(server), refresh_s=60, clock=False)
    async with app.run_test(size=(160, 40)) as pilot:
        traffic(server, "sim-a", 20)
        app.refresh_stats()
        await pilot.pause()
        row = next(r for r in app.rows if r.name == "sim-a")
        assert row.req_s > 0
        assert row.items_s >= row.req_s * 2 * 0.99  # two inputs per request
        assert row.mean_batch is not None
        assert row.p50_ms is not None
        idle = next(r for r in app.rows if r.name == "sim-b")
        assert idle.req_s == 0
        table = app.query_one("#models")
        rendered = "".join(str(s) for s in table.render_lines(table.region.reset_offset))  # type: ignore[attr-defined]
        assert "sim-a" in rendered


async def test_keys_change_the_engines_batching(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    batcher = server.models.get("sim-a")
    assert batcher is not None
    app = Dashboard(ServerView(server), refresh_s=60, clock=False)
    async with app.run_test(size=(160, 40)) as pilot:
        with caplog.at_level(logging.INFO, logger="infergate.audit"):
            await pilot.press("p")  # adaptive -> off
        [audit] = [r for r in caplog.records if r.name == "infergate.audit"]
        assert audit.fields["actor"] == "dashboard"  # type: ignore[attr-defined]
        assert batcher.batching.policy == "off"
        await pilot.press("p")  # off -> window
        assert batcher.batching.policy == "window"
        await pilot.press("right_square_bracket")
        assert batcher.batching.max_queue_delay_us == 2500
        await pilot.press("plus")
        assert batcher.batching.max_batch_size == 32
        await pilot.press("minus", "minus")
        assert batcher.batching.max_batch_size == 8
        await pilot.press("d")
        assert batcher.config.priorities.default == 2
        assert batcher.stats.config_changes == 7
        # the second row is another model: the cursor chooses what the keys change
        await pilot.press("down", "p")
        other = server.models.get("sim-b")
        assert other is not None
        assert other.batching.policy == "off"
        assert batcher.batching.policy == "window"


async def test_a_bad_value_is_refused_inline_and_changes_nothing(server: Server) -> None:
    batcher = server.models.get("sim-a")
    assert batcher is not None
    before = batcher.batching
    app = Dashboard(ServerView(server), refresh_s=60, clock=False)
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.press("e")
        assert isinstance(app.screen, EditScreen)
        field = app.screen.query_one("#max_batch_size")
        field.value = "0"  # type: ignore[attr-defined]
        await pilot.click("#apply")
        await pilot.pause()
        assert isinstance(app.screen, EditScreen)  # still open, with the reason
        error = str(app.screen.query_one("#error").render())
        assert "max_batch_size" in error
        assert batcher.batching == before
        field.value = "many"  # type: ignore[attr-defined]
        field.focus()
        await pilot.press("enter")  # submitting an input applies too
        await pilot.pause()
        assert "whole number" in str(app.screen.query_one("#error").render())
        field.value = "12"  # type: ignore[attr-defined]
        field.focus()
        await pilot.press("enter")
        await pilot.pause()
        assert not isinstance(app.screen, EditScreen)
        assert batcher.batching.max_batch_size == 12


async def test_help_screen_lists_the_keys(server: Server) -> None:
    app = Dashboard(ServerView(server), refresh_s=60, clock=False)
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.press("question_mark")
        text = str(app.screen.query_one("Static").render())
        assert "cycle the batching policy" in text
        await pilot.press("escape")
        assert app.screen is app.screen_stack[0]
