"""The dashboard's top-keys panel: rates from the per-key counters, hidden without keys."""

from __future__ import annotations

from textual.app import App, ComposeResult

from infergate.engine.auth.metrics import KeyLoad, KeyMetrics
from infergate.tui.keys import KeysPanel, key_rates


def test_key_rates_are_deltas_over_the_window_busiest_first() -> None:
    before = {"a": KeyLoad("a", 10, 100, 1, 0)}
    now = [KeyLoad("a", 30, 300, 1, 2), KeyLoad("b", 50, 50, 5, 0)]
    assert key_rates(before, now, 2.0) == [
        ("b", 25.0, 25.0, 2.5, 0),
        ("a", 10.0, 100.0, 0.0, 2),
    ]


class PanelApp(App[None]):
    def __init__(self, metrics: KeyMetrics) -> None:
        super().__init__()
        self.metrics = metrics

    def compose(self) -> ComposeResult:
        yield KeysPanel(self.metrics, id="keys")


async def test_the_panel_appears_once_a_key_has_load() -> None:
    metrics = KeyMetrics()
    app = PanelApp(metrics)
    async with app.run_test(size=(80, 12)) as pilot:
        panel = app.query_one("#keys", KeysPanel)
        panel.refresh_keys(1.0)
        assert not panel.display
        metrics.admitted("team-a", 4)
        metrics.admitted("team-b", 1)
        metrics.admitted("team-a", 4)
        panel.refresh_keys(1.0)
        await pilot.pause()
        assert panel.display
        text = str(panel.render())
        assert text.index("team-a") < text.index("team-b")
