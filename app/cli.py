"""The ``infergate`` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from typing import Any

from infergate.app import keys_cli
from infergate.app.config import ConfigError, LoadedConfig, load_config
from infergate.app.runtime import JsonFormatter, ServerView, reload_batching, tune_gc
from infergate.engine import __version__
from infergate.engine.auth.tenants import Auth, AuthConfigError
from infergate.engine.executors.base import ExecutorError
from infergate.engine.models.repository import RepositoryError, check_repository, describe_entry
from infergate.engine.net.tls import ServerTls, TlsError
from infergate.engine.server import Server

log = logging.getLogger("infergate")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="infergate",
        description="Inference appliance: HTTP/1.1 on uvloop reactors with dynamic batching.",
    )
    p.add_argument("--config", metavar="FILE", help="TOML config file (default: built-in)")
    p.add_argument("--listen", metavar="HOST:PORT", help="override `listen` (port 0: any free)")
    p.add_argument(
        "--admin-listen",
        metavar="HOST:PORT",
        help="override `admin_listen` (the admin listener; '' for none, port 0: any free)",
    )
    p.add_argument(
        "--sub-reactors", metavar="N", type=int, help="override `sub_reactors` (0: one per core)"
    )
    p.add_argument(
        "--model-repository",
        metavar="DIR",
        help="override `model_repository` (a folder of model folders, relative to the current "
        "folder)",
    )
    p.add_argument("--headless", action="store_true", help="run without the terminal dashboard")
    p.add_argument(
        "--check-config",
        action="store_true",
        help="validate the config, the TLS certificate and key, the API keys file and the whole "
        "model repository without loading any model, and exit (0 if valid, 2 if not)",
    )
    p.add_argument("--version", action="version", version=f"infergate {__version__}")
    return p


def _setup_logging(json_lines: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("INFERGATE_LOG_LEVEL", "INFO").upper())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "keys":  # infergate keys add|list|remove
        return keys_cli.main(argv[1:])
    args = build_parser().parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.listen is not None:
        overrides["listen"] = args.listen
    if args.admin_listen is not None:
        overrides["admin_listen"] = args.admin_listen
    if args.sub_reactors is not None:
        overrides["sub_reactors"] = args.sub_reactors
    if args.model_repository is not None:
        overrides["model_repository"] = os.path.abspath(args.model_repository)
    try:
        loaded = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"infergate: {e}", file=sys.stderr)
        return 2
    cfg = loaded.server
    if args.check_config:
        return _check_config(loaded)
    tui = not args.headless and sys.stdout.isatty() and sys.stdin.isatty()
    # headless with access logging on: structured JSON lines for log shippers
    _setup_logging(json_lines=not tui and cfg.access_log)
    if loaded.static_root is None:
        log.warning("no static files: folder %r not found", cfg.static_root)
    if loaded.model_repository is not None:
        log.info(
            "model repository %s: %d model(s)", loaded.model_repository, len(loaded.repository)
        )
        for entry in loaded.repository:
            log.info("model repository: %s", describe_entry(entry))
    try:
        server = Server(cfg, loaded.static_root, loaded.base_dir)
        host, port = server.start()
    except (ExecutorError, AuthConfigError) as e:
        print(f"infergate: {e}", file=sys.stderr)
        return 2
    except TlsError as e:
        print(f"infergate: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"infergate: cannot listen on {cfg.listen}: {e.strerror}", file=sys.stderr)
        return 1
    tune_gc()
    shown = f"[{host}]" if ":" in host else host
    models = ", ".join(f"{m.name} ({m.executor})" for m in cfg.models)
    admin = "off"
    if server.admin_address is not None:
        ahost, aport = server.admin_address
        admin = f"{server.admin_scheme}://{f'[{ahost}]' if ':' in ahost else ahost}:{aport}"
    status = (
        f"infergate {__version__} listening on {server.scheme}://{shown}:{port} "
        f"({len(server.subs)} sub-reactors, {cfg.accept_mode}; static: "
        f"{loaded.static_root or 'off'}; models: {models or 'none'}; admin: {admin})"
    )
    if tui:
        return _run_dashboard(server, status, args.config, overrides)

    def ready() -> None:
        print(status, flush=True)

    cut = server.run(
        install_signals=True,
        on_ready=ready,
        on_sighup=lambda: reload_batching(server, args.config, overrides),
    )
    return 0 if cut == 0 else 3


def _check_config(loaded: LoadedConfig) -> int:
    """``--check-config``: the config has validated; load the TLS certificate and key and the
    API keys file as start-up does (``ServerTls.from_config``, ``Auth.from_config``), and check
    every model of the repository (each ``model.toml``, each model file, each ONNX graph's
    tensors) without loading any. Each problem is printed, naming its file; exit 2 if any."""
    cfg = loaded.server
    problems: list[str] = []
    try:
        tls = ServerTls.from_config(cfg, loaded.base_dir)
        if tls is not None:
            print(f"TLS OK: {tls.cert_file} with {tls.key_file}")
    except TlsError as e:
        problems.append(str(e))
    try:
        auth = Auth.from_config(cfg.auth, loaded.base_dir)
        auth.close()
        if auth.keys_file:
            print(f"API keys OK: {auth.keys_file} ({len(auth.keys.names())} key(s))")
    except AuthConfigError as e:
        problems.append(str(e))
    if loaded.model_repository is not None:
        try:
            for line in check_repository(loaded.model_repository):
                print(f"model {line}")
        except RepositoryError as e:
            problems.append(f"model repository {loaded.model_repository}:\n{e}")
    for problem in problems:
        print(f"infergate: {problem}", file=sys.stderr)
    if problems:
        return 2
    print(f"config OK: {loaded.source}")
    return 0


def _run_dashboard(server: Server, status: str, path: str | None, overrides: dict[str, Any]) -> int:
    """Textual owns the main thread (its driver installs the signal handlers); the reactors
    run in a background thread without signal handlers; Ctrl+C / q quit through the app.

    Losing the terminal drains and exits, like SIGTERM in headless mode: nobody can see or
    drive the dashboard any more, and its log lines would go nowhere (``tui.terminal``). A
    SIGHUP while the terminal is still there reloads the config, as in headless mode.
    """
    from infergate.tui.app import Dashboard, RingLogHandler  # noqa: PLC0415 - only in TUI mode
    from infergate.tui.terminal import TerminalWatch, dashboard_driver  # noqa: PLC0415

    ring = RingLogHandler()
    logging.getLogger().handlers[:] = [ring]
    log.info(status)

    stopping = threading.Lock()

    def stop() -> None:
        """Once: a second ``Server.stop`` would cut the drain grace short, and one after
        the reactor has finished would find its loop closed."""
        if stopping.acquire(blocking=False):
            server.stop()

    def terminal_lost(why: str) -> None:  # on the watch's thread
        log.warning("%s: draining, then exiting", why)
        stop()
        app.exit()

    watch = TerminalWatch(terminal_lost, lambda: reload_batching(server, path, overrides))
    app = Dashboard(
        ServerView(server), logs=ring, on_exit=stop, driver_class=dashboard_driver(watch),
        keys=server.auth.metrics,
    )  # fmt: skip
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(server.run(install_signals=False)),
        name="infergate-main-reactor",
    )
    watch.start()
    thread.start()
    try:
        app.run()
    finally:
        stop()
        thread.join()
        watch.stop()
    if not watch.lost:
        print(status.replace("listening on", "served"), file=sys.stderr)
    return 0 if result and result[0] == 0 else 3


if __name__ == "__main__":
    sys.exit(main())
