"""TerminalWatch on a pty of the test's own: hang-up noticed, descriptors moved off the dead
tty, a SIGHUP with the terminal still there taken as a reload request."""

from __future__ import annotations

import errno
import os
import select
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from infergate.tui.terminal import TerminalWatch, _GuardedOutput, hung_up

EVENT_TIMEOUT_S = 10.0


class Pty:
    def __init__(self) -> None:
        self.master, slave = os.openpty()
        # the watch gets copies, as a process gets 0, 1 and 2 from its terminal
        self.tty_in, self.tty_out = os.dup(slave), os.dup(slave)
        os.close(slave)

    def close(self) -> None:
        for fd in (self.master, self.tty_in, self.tty_out):
            try:
                os.close(fd)
            except OSError:
                pass


class Reports:
    """What the watch reported, from its thread."""

    def __init__(self) -> None:
        self.lost: list[str] = []
        self.lost_event = threading.Event()
        self.sighup = threading.Event()

    def on_lost(self, why: str) -> None:
        self.lost.append(why)
        self.lost_event.set()


@contextmanager
def watching() -> Iterator[tuple[Pty, TerminalWatch, Reports]]:
    pty = Pty()
    got = Reports()
    watch = TerminalWatch(got.on_lost, got.sighup.set, tty_fd=pty.tty_in, out_fds=(pty.tty_out,))
    watch.start()
    try:
        yield pty, watch, got
    finally:
        watch.stop()
        pty.close()


def test_a_hang_up_is_noticed_and_the_descriptors_leave_the_dead_tty() -> None:
    with watching() as (pty, watch, got):
        assert not hung_up(pty.tty_in)
        os.close(pty.master)  # the terminal goes away
        pty.master = os.open(os.devnull, os.O_RDONLY)  # keep close() simple
        assert got.lost_event.wait(EVENT_TIMEOUT_S), "on_lost was not called"
        assert got.lost == ["terminal hung up"]
        assert watch.lost
        # writes no longer fail with EIO, reads neither block nor return end-of-file
        assert os.write(pty.tty_out, b"frame") == 5
        assert select.select([pty.tty_in], [], [], 0)[0] == []
        with pytest.raises(BlockingIOError):
            os.read(pty.tty_in, 1)


def test_sighup_with_the_terminal_there_asks_for_a_reload_and_keeps_the_terminal() -> None:
    with watching() as (pty, watch, got):
        os.kill(os.getpid(), signal.SIGHUP)
        assert got.sighup.wait(EVENT_TIMEOUT_S), "on_sighup was not called"
        assert not watch.lost
        assert got.lost == []
        assert not hung_up(pty.tty_in)


def test_a_failed_write_gives_the_terminal_up_once() -> None:
    class DeadTty:
        def write(self, text: str) -> int:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        def flush(self) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        def fileno(self) -> int:
            return -1

    with watching() as (_pty, watch, got):
        out = _GuardedOutput(DeadTty(), watch)  # type: ignore[arg-type]
        out.write("frame")  # does not raise: Textual's writer thread lives on
        out.flush()
        assert got.lost_event.wait(EVENT_TIMEOUT_S), "on_lost was not called"
        assert got.lost == [f"terminal write failed: {os.strerror(errno.EIO)}"]
        assert watch.lost
