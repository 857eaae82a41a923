"""Dashboard mode, terminal lost: the in-flight requests are answered and the process exits.

infergate runs with its dashboard in a real pseudo-terminal that is its controlling terminal.
Closing the pty's master side hangs the terminal up, as closing a terminal window, a dropped
SSH session or a killed tmux pane does: the kernel sends SIGHUP to the session leader, reads
then return end-of-file and writes fail with EIO. Two launch styles, because they differ in who
gets the SIGHUP: infergate itself as the session leader, and infergate as a child of ``make``
(``make run``), where make is the leader and infergate gets no signal at all.
"""

from __future__ import annotations

import fcntl
import os
import re
import selectors
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest

from tests.support.client import ConnectionClosedError, RawConnection, build_request
from tests.support.server import REPO_ROOT
from tests.support.wait import wait_until

IN_FLIGHT = 20
BATCH_S = 0.15
"""One simulated executor call; batches of one, so the 20 requests take 3 s to compute."""
DRAIN_TIMEOUT_MS = 20_000
"""Far above the 3 s of queued work: every request is answered 200, none is cut."""
START_TIMEOUT_S = 30.0
QUEUED_TIMEOUT_S = 15.0
EXIT_TIMEOUT_S = DRAIN_TIMEOUT_MS / 1000 + 10
"""The process must exit within the drain timeout (plus start-up of nothing: a margin)."""
PORT_ATTEMPTS = 3
ALT_SCREEN = b"\x1b[?1049h"
"""Textual switches to the alternate screen when the dashboard starts."""

CONFIG = """\
listen = "127.0.0.1:{port}"
admin_listen = ""
sub_reactors = 1
static_root = "{static}"
[limits]
drain_timeout_ms = {drain}
[[models]]
name = "sim"
executor = "sim"
dim = 4
base_us = {base_us}
per_item_us = 0
[models.batching]
policy = "off"
max_batch_size = 1
"""

MAKEFILE = """\
run:
\t{python} -m infergate.app --config {config}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_config(tmp: Path, port: int) -> Path:
    static = tmp / "www"
    static.mkdir(exist_ok=True)
    path = tmp / "c.toml"
    path.write_text(
        CONFIG.format(port=port, static=static, drain=DRAIN_TIMEOUT_MS, base_us=int(BATCH_S * 1e6))
    )
    return path


class Terminal:
    """The master side of a pty, read continuously as a terminal emulator would (a pty whose
    output nobody reads blocks its writer), and hung up on ``hang_up``."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self._stop_r, self._stop_w = os.pipe()
        self.output = bytearray()
        self._reader = threading.Thread(target=self._read, name="pty-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self.master, selectors.EVENT_READ)
            sel.register(self._stop_r, selectors.EVENT_READ)
            while True:
                ready = {key.fd for key, _ in sel.select()}
                if self._stop_r in ready:
                    break
                try:
                    data = os.read(self.master, 65536)
                except OSError:  # EIO: every slave descriptor is closed
                    break
                if not data:
                    break
                self.output += data
        os.close(self.master)  # the hang-up, when the stop came first

    def hang_up(self) -> None:
        """Close the master side: the kernel hangs the terminal up."""
        os.write(self._stop_w, b"x")
        self._reader.join(timeout=10)
        assert not self._reader.is_alive(), "the pty reader did not stop"

    def close(self) -> None:
        if self._reader.is_alive():
            self.hang_up()
        for fd in (self.slave, self._stop_r, self._stop_w):
            os.close(fd)


def _become_controlling_terminal() -> None:
    """In the child, after setsid: stdin (the pty slave) becomes the controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def spawn(argv: Sequence[str], term: Terminal, cwd: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TERM": "xterm-256color"}
    env.pop("TEXTUAL_ALLOW_SIGNALS", None)
    return subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=term.slave,
        stdout=term.slave,
        stderr=term.slave,
        start_new_session=True,
        preexec_fn=_become_controlling_terminal,  # noqa: PLW1509 - only ioctl, no locks
    )


def _metric(text: str, name: str) -> float:
    total = 0.0
    for m in re.finditer(rf'^{name}\{{[^}}]*model="sim"[^}}]*\}} (\S+)$', text, re.M):
        total += float(m.group(1))
    return total


def queued_or_done(port: int) -> float:
    """Requests the server holds: queued, plus finished (one more may be computing)."""
    with RawConnection(port) as c:
        text = c.request("GET", "/metrics").body.decode()
    return _metric(text, "infergate_model_queue_depth") + _metric(
        text, "infergate_model_requests_total"
    )


def accepting(port: int, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        return True  # exited: stop waiting, the caller looks at why
    try:
        with RawConnection(port, timeout=2) as c:
            return c.request("GET", "/healthz").status == 200
    except OSError:
        return False


def answer(c: RawConnection) -> int | str:
    """The response's status, or why there was none."""
    try:
        return c.read_response().status
    except (OSError, ConnectionClosedError) as e:
        return type(e).__name__


def drawn(term: Terminal, proc: subprocess.Popen[bytes]) -> bool:
    return ALT_SCREEN in term.output or proc.poll() is not None


def session_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


@contextmanager
def dashboard(tmp: Path, via_make: bool) -> Iterator[tuple[subprocess.Popen[bytes], int, Terminal]]:
    """infergate with its dashboard on a fresh pty, serving; killed with its session after."""
    for attempt in range(PORT_ATTEMPTS):
        port = free_port()
        config = write_config(tmp, port)
        if via_make:
            makefile = tmp / "Makefile"
            makefile.write_text(MAKEFILE.format(python=sys.executable, config=config))
            argv = ["make", "-s", "-f", str(makefile), "run"]
        else:
            argv = [sys.executable, "-m", "infergate.app", "--config", str(config)]
        term = Terminal()
        proc = spawn(argv, term, REPO_ROOT)
        try:
            wait_until(partial(accepting, port, proc), START_TIMEOUT_S, "the server serves")
            wait_until(partial(drawn, term, proc), START_TIMEOUT_S, "the dashboard is drawn")
            if proc.poll() is not None:
                # the port picked was taken in the meantime: pick another
                assert attempt < PORT_ATTEMPTS - 1, f"infergate exited: {term.output[-2000:]!r}"
                continue
            yield proc, port, term
            return
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(10)
            term.close()


@pytest.mark.slow
@pytest.mark.parametrize("via_make", [False, True], ids=["direct", "make-run"])
def test_terminal_hang_up_answers_in_flight_requests_and_exits(
    tmp_path: Path, via_make: bool
) -> None:
    with dashboard(tmp_path, via_make) as (proc, port, term):
        body = b'{"model": "sim", "input": "x"}'
        clients = [RawConnection(port, timeout=EXIT_TIMEOUT_S) for _ in range(IN_FLIGHT)]
        try:
            for c in clients:
                c.send(build_request("POST", "/v1/embeddings", body=body))
            # all 20 are in the server (batches of one: one computing, the rest queued or done)
            wait_until(
                lambda: queued_or_done(port) >= IN_FLIGHT - 1,
                QUEUED_TIMEOUT_S,
                "the server holds every request",
            )
            term.hang_up()
            statuses = [answer(c) for c in clients]
        finally:
            for c in clients:
                c.close()
        assert statuses == [200] * IN_FLIGHT
        # ...and the process (with make, its whole session) exits: no spinning on a dead pty
        wait_until(
            lambda: proc.poll() is not None and session_gone(proc.pid),
            EXIT_TIMEOUT_S,
            "infergate has exited",
        )
        if not via_make:  # make re-raises the SIGHUP it got on itself
            assert proc.returncode == 0
