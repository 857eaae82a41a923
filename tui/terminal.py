"""Losing the terminal the dashboard runs on: notice it, stop using it, tell the server.

A terminal hang-up (window closed, SSH dropped, tmux pane killed) sends SIGHUP to the session
leader (and, once that leader exits, to the foreground process group) and turns the tty into a
dead file: reads return end-of-file, writes fail with EIO. Textual 8.2.8 handles none of it:
its input thread loops on the end-of-file (a core at 100%), its writer thread dies on the
first EIO (after which 30 queued writes block the app), and SIGHUP's default action kills the
process with every in-flight request. Started by ``make run``, make is the session leader and
infergate gets no signal at all, so the hang-up is detected on the tty itself.

``TerminalWatch`` notices the hang-up three ways (stdin polls POLLHUP, a write fails, SIGHUP
with the tty hung up), points descriptors 0-2 away from the dead tty (stdin at a pipe that
never becomes readable, stdout/stderr at /dev/null) so nothing spins or blocks, and then calls
``on_lost`` once from its own thread. ``dashboard_driver`` is Textual's Linux driver wired to
it.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import IO, Any, cast

from textual.app import App
from textual.drivers.linux_driver import LinuxDriver

log = logging.getLogger("infergate")

_HUNG = select.POLLHUP | select.POLLERR | select.POLLNVAL
_LOST = b"l"
_SIGHUP = b"h"
_QUIT = b"q"


def hung_up(fd: int) -> bool:
    """True if ``fd`` (a tty) has been hung up. Never blocks."""
    p = select.poll()
    p.register(fd, 0)  # POLLHUP and POLLERR are reported whatever is asked
    return any(ev & _HUNG for _, ev in p.poll(0))


class TerminalWatch:
    """Watches the controlling terminal and detaches from it when it hangs up.

    ``on_lost(why)`` runs once, on the watch's thread, after the descriptors have been moved
    off the dead tty. ``on_sighup()`` runs on the watch's thread for a SIGHUP while the
    terminal is still there (someone sent it by hand). The descriptors are parameters so that
    tests can watch a pty of their own rather than the test runner's stdio.
    """

    def __init__(
        self,
        on_lost: Callable[[str], None],
        on_sighup: Callable[[], None] | None = None,
        tty_fd: int = 0,
        out_fds: tuple[int, ...] = (1, 2),
    ) -> None:
        # configuration
        self._on_lost = on_lost
        self._on_sighup = on_sighup
        self._tty_fd = tty_fd
        self._out_fds = out_fds
        # state: taken once, by the first to notice the loss (never released)
        self._once = threading.Lock()
        self.why: str | None = None
        """Why the terminal was given up, once it has been."""
        self._wake_r, self._wake_w = os.pipe()
        # stdin after the loss: never readable, and non-blocking for a reader that was
        # already between its select and its read when the descriptor was swapped
        self._never_r, self._never_w = os.pipe()
        os.set_blocking(self._never_r, False)
        self._thread = threading.Thread(target=self._run, name="infergate-terminal", daemon=True)
        self._previous_sighup: Any = None

    def start(self) -> None:
        """Start watching. Installs the SIGHUP handler, so call it on the main thread."""
        self._previous_sighup = signal.signal(signal.SIGHUP, self._sighup)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching and restore the SIGHUP handler (main thread)."""
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
        if self._thread.is_alive():
            os.write(self._wake_w, _QUIT)
            self._thread.join()

    @property
    def lost(self) -> bool:
        return self.why is not None

    def give_up(self, why: str) -> None:
        """The terminal is gone: move the descriptors off it now, and have the watch's thread
        call ``on_lost``. Thread-safe, safe in a signal handler, idempotent."""
        if not self._once.acquire(blocking=False):
            return
        self.why = why
        null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.dup2(self._never_r, self._tty_fd)
            for fd in self._out_fds:
                os.dup2(null, fd)
        finally:
            os.close(null)
        os.write(self._wake_w, _LOST)

    def _sighup(self, _signum: int, _frame: FrameType | None) -> None:
        # On the main thread, between two bytecodes of whatever ran: decide and hand over.
        # Textual's SIGCONT handler (the kernel sends SIGCONT right after SIGHUP) runs after
        # this one and must already see the loss, so the check is made here.
        if self.lost:
            return
        if hung_up(self._tty_fd):
            self.give_up("SIGHUP, terminal hung up")
        else:
            os.write(self._wake_w, _SIGHUP)

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._tty_fd, 0)
        poller.register(self._wake_r, select.POLLIN)
        while True:
            events = dict(poller.poll())
            if events.get(self._tty_fd, 0) & _HUNG and not self.lost:
                self.give_up("terminal hung up")
            if self._wake_r in events:
                wake = os.read(self._wake_r, 64)
                if _QUIT in wake:
                    return
                if _SIGHUP in wake and not self.lost and self._on_sighup is not None:
                    self._on_sighup()
            if self.why is not None:
                self._on_lost(self.why)
                return


class _GuardedOutput:
    """The driver's output file: a write that fails (EIO on a hung-up tty) gives the terminal
    up instead of killing Textual's writer thread."""

    def __init__(self, file: IO[str], watch: TerminalWatch) -> None:
        self._file = file
        self._watch = watch

    def write(self, text: str) -> None:
        try:
            self._file.write(text)
        except OSError as e:
            self._watch.give_up(f"terminal write failed: {e.strerror}")

    def flush(self) -> None:
        try:
            self._file.flush()
        except OSError as e:
            self._watch.give_up(f"terminal write failed: {e.strerror}")

    def fileno(self) -> int:
        return self._file.fileno()


def dashboard_driver(watch: TerminalWatch) -> type[LinuxDriver]:
    """Textual's Linux driver, with its terminal failures reported to ``watch``."""

    class DashboardDriver(LinuxDriver):
        def __init__(
            self,
            app: App[Any],
            *,
            debug: bool = False,
            mouse: bool = True,
            size: tuple[int, int] | None = None,
        ) -> None:
            super().__init__(app, debug=debug, mouse=mouse, size=size)
            out = self._file
            assert out is not None  # the dashboard only runs with a terminal on stderr
            # Textual's writer thread only calls write, flush and fileno on it
            self._file = cast(Any, _GuardedOutput(out, watch))

        def run_input_thread(self) -> None:
            try:
                super().run_input_thread()
            except OSError as e:  # EIO from the pty, or EAGAIN from stdin's stand-in
                watch.give_up(f"terminal read failed: {e.strerror}")

        def _sigcont_application(self, *args: Any) -> None:
            # the kernel sends SIGCONT with a hang-up's SIGHUP: do not restart the terminal
            if not watch.lost:
                super()._sigcont_application(*args)

    return DashboardDriver
