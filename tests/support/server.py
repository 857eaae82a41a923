"""Start the real server (or ``slow_app``) as a child process and find the port it bound."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
SLOW_APP = Path(__file__).resolve().parent / "slow_app.py"
READY_RE = re.compile(r"^infergate (\S+) listening on (https?)://127\.0\.0\.1:(\d+) \((.*)\)$")
ADMIN_RE = re.compile(r"admin: (https?)://127\.0\.0\.1:(\d+)")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def write_config(path: Path, static_root: Path | None = None, **settings: Any) -> Path:
    """Write a TOML config. Keyword ``limits`` (a dict) becomes the ``[limits]`` table."""
    limits = settings.pop("limits", {})
    if static_root is not None:
        settings["static_root"] = str(static_root)
    lines = [f"{k} = {_toml(v)}" for k, v in settings.items()]
    if limits:
        lines.append("[limits]")
        lines += [f"{k} = {_toml(v)}" for k, v in limits.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(f"no TOML encoding for {value!r}")


class ServerProcess:
    """A running server child process. Use as a context manager, or call ``stop``."""

    def __init__(
        self,
        config: Path,
        *,
        slow_app: bool = False,
        extra_args: Sequence[str] = (),
        log_path: Path | None = None,
    ) -> None:
        target = [str(SLOW_APP)] if slow_app else ["-m", "infergate.app"]
        argv = [
            sys.executable,
            *target,
            "--config",
            str(config),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            *([] if slow_app else ["--headless"]),
            *extra_args,
        ]
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO_ROOT)
        env["PYTHONUNBUFFERED"] = "1"
        self.log_path = log_path or config.with_suffix(".log")
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        assert self.proc.stdout is not None
        self._fd = self.proc.stdout.fileno()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._fd, selectors.EVENT_READ)
        self._partial = b""
        self._lines: list[str] = []
        self.returncode: int | None = None
        try:
            line = self.wait_for_line(READY_RE.pattern, START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        match = READY_RE.match(line)
        assert match is not None
        self.version = match.group(1)
        self.scheme = match.group(2)
        """``http``, or ``https`` when the public listener serves TLS."""
        self.port = int(match.group(3))
        admin = ADMIN_RE.search(match.group(4))
        self.admin_port: int | None = int(admin.group(2)) if admin else None
        """The admin listener's port (``/admin/*``), None when it is off."""
        self.admin_scheme: str | None = admin.group(1) if admin else None
        self.ready_line = line

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_line(self, pattern: str, timeout: float) -> str:
        """The next stdout line matching ``pattern`` (a regex); earlier lines are consumed."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            while self._lines:
                line = self._lines.pop(0)
                if rx.search(line):
                    return line
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"no stdout line matching {pattern!r}; log:\n{self.log_text()}"
                )
            if not self._sel.select(left):
                continue
            data = os.read(self._fd, 65536)
            if not data:
                code = self.proc.wait(STOP_TIMEOUT)
                raise AssertionError(
                    f"server exited ({code}) before printing {pattern!r}; log:\n{self.log_text()}"
                )
            *done, self._partial = (self._partial + data).split(b"\n")
            self._lines += [d.decode("utf-8", "replace").rstrip("\r") for d in done]

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        self.returncode = self.proc.wait(timeout)
        return self.returncode

    def stop(self) -> int:
        """SIGTERM, wait up to STOP_TIMEOUT, then SIGKILL. Returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        self.returncode = self.proc.returncode
        self._sel.close()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self._log.close()
        return self.returncode
