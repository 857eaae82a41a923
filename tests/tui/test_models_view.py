"""The dashboard's models view with Textual's Pilot over a real engine (sim models in a
repository folder): states and reasons listed, load / unload keys audited as the dashboard."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from infergate.app.runtime import ServerView
from infergate.engine.config import ModelConfig, ServerConfig
from infergate.engine.models.repository import scan_folder
from infergate.engine.server import Server
from infergate.tui.app import Dashboard
from infergate.tui.models_view import ModelsScreen

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SIM_TOML = 'task = "embeddings"\nexecutor = "sim"\ndim = 4\nbase_us = 0\n'


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    repo = tmp_path / "models"
    for name in ("served", "extra"):
        (repo / name).mkdir(parents=True)
        (repo / name / "model.toml").write_text(SIM_TOML)
    (repo / "broken").mkdir()
    cfg = ServerConfig(
        listen="127.0.0.1:0",
        sub_reactors=1,
        admin_listen="",  # the fixed default port may be taken
        model_repository=str(repo),
        models=[ModelConfig(name="sim-a", dim=4), scan_folder(str(repo / "served")).config],
    )
    s = Server(cfg)
    s.start()
    t = threading.Thread(target=s.run, kwargs={"install_signals": False})
    t.start()
    yield s
    s.stop()
    t.join(20)


def states(screen: ModelsScreen) -> dict[str, tuple[str, str]]:
    return {r["name"]: (r["state"], r["reason"]) for r in screen.rows}


async def test_models_view_lists_states_and_loads_and_unloads_with_keys(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    app = Dashboard(ServerView(server), refresh_s=60, clock=False)
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.press("m")
        screen = app.screen
        assert isinstance(screen, ModelsScreen)
        assert states(screen) == {
            "broken": ("UNAVAILABLE", "not loaded"),
            "extra": ("UNAVAILABLE", "not loaded"),
            "served": ("READY", ""),
            "sim-a": ("READY", ""),
        }
        with caplog.at_level(logging.INFO, logger="infergate.audit"):
            # rows by name: broken, extra, served, sim-a
            await pilot.press("down")  # extra
            await pilot.press("l")
            await app.workers.wait_for_complete()
            await pilot.pause()
            assert states(screen)["extra"] == ("READY", "")
            assert server.models.get("extra") is not None
            await pilot.press("u")
            await app.workers.wait_for_complete()
            await pilot.pause()
            assert states(screen)["extra"] == ("UNAVAILABLE", "unloaded")
            assert server.models.get("extra") is None
            await pilot.press("up")  # broken: no model file
            await pilot.press("l")
            await app.workers.wait_for_complete()
            await pilot.pause()
        state, reason = states(screen)["broken"]
        assert state == "UNAVAILABLE"
        assert "no model.onnx" in reason
        assert "no model.onnx" in str(screen.query_one("#reason").render())
        audits = [r.fields for r in caplog.records if r.name == "infergate.audit"]  # type: ignore[attr-defined]
        assert [(a["actor"], a["model"]) for a in audits] == [("dashboard", "extra")] * 2 + [
            ("dashboard", "broken")
        ]
        await pilot.press("escape")
        assert not isinstance(app.screen, ModelsScreen)
