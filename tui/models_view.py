"""The models view: every model of the repository with its state, and load / unload / reload.

Opened from the dashboard with ``m``. It reads the repository index (``Control.index``) once a
second and sends every change through ``engine.control.Control`` — the same audited path as
``POST /v2/repository/models/{name}/load`` — so a load runs on the engine's loading thread;
this screen waits for its outcome in a Textual thread worker and never blocks the UI.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from infergate.engine.control import Control, ControlError

ACTOR = "dashboard"
"""Who the audit log names for changes made here."""
WAIT_S = 600.0
"""Longest wait for one load in the worker thread (the load itself goes on regardless)."""
_STYLES = {"READY": "green", "LOADING": "yellow", "UNAVAILABLE": "red"}


class ModelsScreen(Screen[None]):
    """Repository models: name, version, state and the reason a model is unavailable or its
    last reload failed. Keys: ``l`` load, ``r`` reload, ``u`` unload, ``escape`` back."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,m", "app.pop_screen", "Back"),
        Binding("l", "load", "Load"),
        Binding("r", "load", "Reload"),
        Binding("u", "unload", "Unload"),
    ]

    def __init__(self, control: Control, refresh_s: float = 1.0) -> None:
        super().__init__()
        self.control = control
        self.refresh_s = refresh_s
        self.rows: list[dict[str, Any]] = []
        """The index as last read (``Control.index`` rows)."""

    def compose(self) -> ComposeResult:
        yield Static(
            "[b]Model repository[/b]   l load   r reload   u unload   esc back", id="title"
        )
        yield DataTable(id="repo", cursor_type="row", zebra_stripes=True)
        yield Static("", id="reason")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#repo", DataTable).add_columns("model", "version", "state", "origin")
        self.refresh_index()
        self.set_interval(self.refresh_s, self.refresh_index)

    def refresh_index(self) -> None:
        self.rows = self.control.index()
        table = self.query_one("#repo", DataTable)
        cursor = table.cursor_row
        table.clear()
        for r in self.rows:
            state = Text(r["state"], style=_STYLES.get(r["state"], ""))
            table.add_row(r["name"], r["version"] or "-", state, r["origin"], key=r["name"])
        if self.rows:
            table.move_cursor(row=min(max(cursor, 0), len(self.rows) - 1))
        self._show_reason()

    def on_data_table_row_highlighted(self, _event: DataTable.RowHighlighted) -> None:
        self._show_reason()

    def _show_reason(self) -> None:
        r = self.selected()
        text = f"[b]{r['name']}[/b]: {r['reason']}" if r is not None and r["reason"] else ""
        self.query_one("#reason", Static).update(text)

    def selected(self) -> dict[str, Any] | None:
        if not self.rows:
            return None
        row = self.query_one("#repo", DataTable).cursor_row
        return self.rows[min(max(row, 0), len(self.rows) - 1)]

    def action_load(self) -> None:
        r = self.selected()
        if r is not None:
            verb = "reload" if r["state"] == "READY" else "load"
            self._follow(f"{verb} {r['name']}", self.control.load_model(r["name"], actor=ACTOR))

    def action_unload(self) -> None:
        r = self.selected()
        if r is not None:
            self._follow(f"unload {r['name']}", self.control.unload_model(r["name"], actor=ACTOR))

    def _follow(self, what: str, fut: concurrent.futures.Future[dict[str, Any]]) -> None:
        """Show LOADING now and the outcome when the engine's loading thread is done."""
        self.notify(f"{what}: started")
        self.refresh_index()

        def wait() -> None:
            try:
                row = fut.result(WAIT_S)
            except ControlError as e:
                self.app.call_from_thread(self._done, f"{what} failed: {e.message}", "error")
            except concurrent.futures.TimeoutError:
                self.app.call_from_thread(self._done, f"{what}: still running", "warning")
            else:
                message = f"{what}: {row['state']} version {row['version'] or '-'}"
                self.app.call_from_thread(self._done, message, "information")

        self.run_worker(wait, thread=True, group="repository", exit_on_error=False)

    def _done(self, message: str, severity: Any) -> None:
        self.notify(message, severity=severity)
        self.refresh_index()
