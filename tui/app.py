"""The live dashboard: models, queues, batches, latency, and batching controls.

The dashboard reads engine snapshots a few times a second (``engine.snapshot.take``: no lock
the request path holds) and sends every change through ``engine.control.Control`` — the same
validated, atomic, logged path as the admin API.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.driver import Driver
from textual.screen import ModalScreen
from textual.widgets import (
    Button,
    DataTable,
    Footer,
    Header,
    Input,
    Label,
    RichLog,
    Sparkline,
    Static,
)

from infergate.engine.auth.metrics import KeyMetrics
from infergate.engine.control import Control, ControlError
from infergate.engine.snapshot import EngineSnapshot
from infergate.tui.keys import KeysPanel
from infergate.tui.models_view import ModelsScreen
from infergate.tui.view import ModelRow, fmt_ms, http_row, replica_lines, rows

POLICIES = ("off", "window", "adaptive")
HISTORY = 60
ACTOR = "dashboard"
"""Who the audit log names for changes made here."""


class EngineView(Protocol):
    """What the dashboard needs from the engine."""

    control: Control

    def snapshot(self) -> EngineSnapshot: ...


class RingLogHandler(logging.Handler):
    """Keeps the last log lines for the dashboard (Textual owns stdout/stderr while it runs)."""

    def __init__(self, capacity: int = 500) -> None:
        super().__init__()
        self.lines: deque[str] = deque(maxlen=capacity)
        self.total = 0
        self.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
        self.total += 1


HELP = """\
[b]infergate dashboard[/b]

  up/down   select a model
  p         cycle the batching policy (off, window, adaptive)
  + / -     double / halve max_batch_size
  ] / [     max_queue_delay_us +500 / -500 (window policy)
  d         cycle the default priority
  e         edit the selected model's batching values
  m         the model repository: load / unload / reload models
  ?         this help      q  quit (stops the server)

Changes go through the same control path as PATCH /admin/models/{name}/batching:
validated, applied between batches, logged, counted in metrics.
Red queue: at least 80% of max_queue_size.  Yellow rejections: rising.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(HELP)
            yield Button("Close", id="close")

    def on_button_pressed(self, _event: Button.Pressed) -> None:
        self.dismiss()


class EditScreen(ModalScreen[str | None]):
    """Edit one model's batching values; errors are shown inline and the dialog stays open."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, control: Control, row: ModelRow) -> None:
        super().__init__()
        self.control = control
        self.row = row

    def compose(self) -> ComposeResult:
        r = self.row
        with Vertical(id="dialog"):
            yield Label(f"Batching of [b]{r.name}[/b]")
            yield Label("policy (off, window, adaptive)")
            yield Input(r.policy, id="policy")
            yield Label("max_batch_size")
            yield Input(str(r.max_batch_size), id="max_batch_size")
            yield Label("max_queue_delay_us")
            yield Input(str(r.max_queue_delay_us), id="max_queue_delay_us")
            yield Label("default priority")
            yield Input(str(r.default_priority), id="default_priority")
            yield Label("", id="error")
            with Horizontal():
                yield Button("Apply", id="apply", variant="primary")
                yield Button("Cancel", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "apply":
            self.apply()
        else:
            self.dismiss(None)

    def on_input_submitted(self, _event: Input.Submitted) -> None:
        self.apply()

    def action_cancel(self) -> None:
        self.dismiss(None)

    def apply(self) -> None:
        values = {i.id: i.value.strip() for i in self.query(Input) if i.id}
        error = self.query_one("#error", Label)
        changes: dict[str, Any] = {"policy": values["policy"]}
        try:
            for key in ("max_batch_size", "max_queue_delay_us", "default_priority"):
                changes[key] = int(values[key])
        except ValueError:
            error.update(f"[red]{key} must be a whole number[/red]")
            return
        default = changes.pop("default_priority")
        try:
            self.control.update_batching(self.row.name, changes, actor=ACTOR)
            if default != self.row.default_priority:
                self.control.set_default_priority(self.row.name, default, actor=ACTOR)
        except ControlError as e:
            error.update(f"[red]{e.message}[/red]")
            return
        self.dismiss(f"{self.row.name}: batching updated")


DETAIL_HEIGHT = 9
"""Rows of the detail pane (dashboard.tcss) for a model without upstream replicas."""


class Dashboard(App[None]):
    """Live view of one infergate engine."""

    CSS_PATH = "dashboard.tcss"
    TITLE = "infergate"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("ctrl+c", "quit", "Quit", show=False),
        Binding("p", "cycle_policy", "Policy"),
        Binding("plus,equals_sign", "batch(2)", "+batch"),
        Binding("minus", "batch(0.5)", "-batch"),
        Binding("right_square_bracket", "window(500)", "+window"),
        Binding("left_square_bracket", "window(-500)", "-window"),
        Binding("d", "cycle_priority", "Default prio"),
        Binding("e", "edit", "Edit"),
        Binding("m", "models", "Models"),
        Binding("question_mark", "help", "Help"),
    ]

    def __init__(
        self,
        engine: EngineView,
        refresh_s: float = 0.25,
        logs: RingLogHandler | None = None,
        on_exit: Callable[[], None] | None = None,
        clock: bool = True,
        driver_class: type[Driver] | None = None,
        keys: KeyMetrics | None = None,
    ) -> None:
        super().__init__(driver_class=driver_class)
        self.keys = keys  # per-key counters for the top-keys panel (None: no panel)
        self.clock = clock
        self.engine = engine
        self.refresh_s = refresh_s
        self.logs = logs
        self._logs_seen = 0
        self._on_exit = on_exit
        self._last = engine.snapshot()
        self._window_start = self._last
        self.rows: list[ModelRow] = []
        self.history: dict[str, tuple[deque[float], deque[float]]] = {}

    def compose(self) -> ComposeResult:
        yield Header(show_clock=self.clock)
        yield Static("", id="http")
        yield DataTable(id="models", cursor_type="row", zebra_stripes=True)
        with Horizontal(id="detail"):
            with Vertical():
                yield Label("requests/s", classes="caption")
                yield Sparkline([], id="spark-rps")
                yield Label("mean batch size (items)", classes="caption")
                yield Sparkline([], id="spark-batch")
            yield Static("", id="info")
        if self.keys is not None:
            yield KeysPanel(self.keys, id="keys")
        yield RichLog(id="log", max_lines=200, wrap=False)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#models", DataTable)
        table.add_columns(
            "model", "executor", "policy", "max batch", "window µs", "req/s", "items/s",
            "queue by prio", "p50 ms", "p99 ms", "wait p50", "batch", "util", "rejections/s",
        )  # fmt: skip
        self.refresh_stats()
        self.set_interval(self.refresh_s, self.refresh_stats)

    # ---- refresh -----------------------------------------------------------------------------

    def refresh_stats(self) -> None:
        snap = self.engine.snapshot()
        # Rates over at least one second, so a 4 Hz refresh does not make them jitter.
        if snap.at - self._window_start.at >= 1.0:
            if self.keys is not None:
                self.query_one("#keys", KeysPanel).refresh_keys(snap.at - self._window_start.at)
            self._last, self._window_start = self._window_start, snap
        base = self._last if self._last is not snap else snap
        self.rows = rows(base, snap)
        http = http_row(base, snap)
        classes = "  ".join(f"{i + 1}xx {v:,.0f}/s" for i, v in enumerate(http.by_class_s) if i)
        self.query_one("#http", Static).update(
            f"connections [b]{http.connections}[/b]   requests [b]{http.req_s:,.0f}/s[/b]   "
            f"{classes}   p50 {fmt_ms(http.p50_ms)} ms  p99 {fmt_ms(http.p99_ms)} ms"
        )
        for r in self.rows:
            rps, batch = self.history.setdefault(
                r.name, (deque(maxlen=HISTORY), deque(maxlen=HISTORY))
            )
            rps.append(r.req_s)
            batch.append(r.mean_batch or 0.0)
        self._fill_table()
        self._fill_detail()
        self._fill_log()

    def _fill_table(self) -> None:
        table = self.query_one("#models", DataTable)
        cursor = table.cursor_row
        table.clear()
        for r in self.rows:
            queue = Text(
                "/".join(str(d) for d in r.depths), style="bold red" if r.near_full else ""
            )
            rej = ", ".join(f"{k} {v:.0f}" for k, v in r.rejections_s.items())
            table.add_row(
                r.name, r.executor, r.policy, str(r.max_batch_size), str(r.max_queue_delay_us),
                f"{r.req_s:,.0f}", f"{r.items_s:,.0f}", queue, fmt_ms(r.p50_ms), fmt_ms(r.p99_ms),
                fmt_ms(r.wait_p50_ms), "-" if r.mean_batch is None else f"{r.mean_batch:.1f}",
                f"{r.utilisation:.0%}", Text(rej or "-", style="yellow" if rej else ""),
                key=r.name,
            )  # fmt: skip
        if self.rows:
            table.move_cursor(row=min(max(cursor, 0), len(self.rows) - 1))

    def _fill_detail(self) -> None:
        r = self.selected()
        if r is None:
            return
        rps, batch = self.history[r.name]
        self.query_one("#spark-rps", Sparkline).data = list(rps)
        self.query_one("#spark-batch", Sparkline).data = list(batch)
        rej = "\n".join(f"  {k}: {v:.1f}/s" for k, v in r.rejections_s.items()) or "  none"
        # a gateway model's replicas get a line each below the rest
        self.query_one("#detail").styles.height = DETAIL_HEIGHT + (
            len(r.replicas) + 1 if r.replicas else 0
        )
        self.query_one("#info", Static).update(
            f"[b]{r.name}[/b]  {r.executor}\n"
            f"policy {r.policy}, max_batch_size {r.max_batch_size}, "
            f"max_queue_delay_us {r.max_queue_delay_us}, default priority {r.default_priority}\n"
            f"queue wait p50 {fmt_ms(r.wait_p50_ms)} ms, p99 {fmt_ms(r.wait_p99_ms)} ms\n"
            f"rejections:\n{rej}" + (f"\n{replica_lines(r.replicas)}" if r.replicas else "")
        )

    def _fill_log(self) -> None:
        if self.logs is None:
            return
        new = self.logs.total - self._logs_seen
        if new <= 0:
            return
        lines = list(self.logs.lines)[-min(new, len(self.logs.lines)) :]
        log = self.query_one("#log", RichLog)
        for line in lines:
            log.write(line)
        self._logs_seen = self.logs.total

    def selected(self) -> ModelRow | None:
        if not self.rows:
            return None
        row = self.query_one("#models", DataTable).cursor_row
        return self.rows[min(max(row, 0), len(self.rows) - 1)]

    # ---- controls ----------------------------------------------------------------------------

    def _change(self, changes: dict[str, Any]) -> None:
        r = self.selected()
        if r is None:
            return
        try:
            cfg = self.engine.control.update_batching(r.name, changes, actor=ACTOR)
        except ControlError as e:
            self.notify(e.message, title="not applied", severity="error")
            return
        self.notify(
            f"{r.name}: policy {cfg.policy}, max_batch_size {cfg.max_batch_size}, "
            f"max_queue_delay_us {cfg.max_queue_delay_us}"
        )
        self.refresh_stats()

    def action_cycle_policy(self) -> None:
        r = self.selected()
        if r is not None:
            self._change({"policy": POLICIES[(POLICIES.index(r.policy) + 1) % len(POLICIES)]})

    def action_batch(self, factor: float) -> None:
        r = self.selected()
        if r is not None:
            self._change({"max_batch_size": max(1, int(r.max_batch_size * factor))})

    def action_window(self, step: int) -> None:
        r = self.selected()
        if r is not None:
            self._change({"max_queue_delay_us": r.max_queue_delay_us + step})

    def action_cycle_priority(self) -> None:
        r = self.selected()
        if r is None:
            return
        levels = next(m.levels for m in self.engine.snapshot().models if m.name == r.name)
        try:
            self.engine.control.set_default_priority(
                r.name, r.default_priority % levels + 1, actor=ACTOR
            )
        except ControlError as e:
            self.notify(e.message, severity="error")
            return
        self.refresh_stats()

    def action_edit(self) -> None:
        r = self.selected()
        if r is None:
            return

        def done(message: str | None) -> None:
            if message:
                self.notify(message)
                self.refresh_stats()

        self.push_screen(EditScreen(self.engine.control, r), done)

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_models(self) -> None:
        self.push_screen(ModelsScreen(self.engine.control))

    async def action_quit(self) -> None:
        if self._on_exit is not None:
            self._on_exit()
        self.exit()
