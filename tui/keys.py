"""The dashboard's "top keys" panel: the API keys with the most load, from the per-key counters
(``engine.auth.metrics.KeyMetrics``). Hidden while no key has sent anything (no keys
configured: every client is the anonymous tenant, shown by the model rows)."""

from __future__ import annotations

from collections.abc import Sequence

from textual.widgets import Static

from infergate.engine.auth.metrics import KeyLoad, KeyMetrics

TOP = 5
"""Keys shown."""


def key_rates(
    before: dict[str, KeyLoad], now: Sequence[KeyLoad], seconds: float
) -> list[tuple[str, float, float, float, int]]:
    """(name, requests/s, items/s, rejections/s, in flight) of each key in ``now``, from the
    totals ``before`` (same names; a key seen for the first time counts from zero), busiest
    first."""
    out = []
    dt = max(seconds, 1e-9)
    for k in now:
        b = before.get(k.name)
        req, items, rej = (b.requests, b.items, b.rejected) if b else (0, 0, 0)
        out.append(
            (
                k.name,
                (k.requests - req) / dt,
                (k.items - items) / dt,
                (k.rejected - rej) / dt,
                k.in_flight,
            )
        )
    out.sort(key=lambda r: (-r[1], -r[4], r[0]))
    return out


class KeysPanel(Static):
    """Top keys by load: requests/s, items/s, rejections/s, in flight."""

    DEFAULT_CSS = "KeysPanel { height: auto; padding: 0 1; }"

    def __init__(self, metrics: KeyMetrics, id: str | None = None) -> None:
        super().__init__("", id=id)
        self.metrics = metrics
        self._before: dict[str, KeyLoad] = {}
        self.display = False

    def refresh_keys(self, seconds: float) -> None:
        """Re-read the counters; rates over the ``seconds`` since the last call."""
        now = self.metrics.top(n=1_000_000)
        if not now:
            self.display = False
            return
        rows = key_rates(self._before, now, seconds)[:TOP]
        self._before = {k.name: k for k in now}
        lines = ["[b]top keys[/b]   req/s   items/s   rejected/s   in flight"]
        for name, rps, ips, rej, inflight in rows:
            lines.append(f"  {name:<16} {rps:7,.1f} {ips:9,.0f} {rej:12,.1f} {inflight:11d}")
        self.update("\n".join(lines))
        self.display = True
