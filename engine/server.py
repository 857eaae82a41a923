"""The serving engine assembled: router, reactors, listeners, metrics."""

from __future__ import annotations

import concurrent.futures
import logging
import os
from collections.abc import Callable

from prometheus_client.registry import CollectorRegistry

from engine.api.admin import add_admin_routes
from engine.api.health import add_health_routes
from engine.api.kserve import add_kserve_routes
from engine.api.openai import add_openai_routes
from engine.config import ServerConfig
from engine.control import Control
from engine.http.router import Router
from engine.http.static import StaticFiles
from engine.models.metrics import ModelCollector
from engine.models.registry import ModelRegistry
from engine.net.reactor import MainReactor, SubReactor, open_listeners
from engine.stats import HttpCollector

log = logging.getLogger("infergate")


class Server:
    """Binds, starts the sub-reactors, and runs the main reactor until stopped.

    ``static_root`` must be absolute (``app.config`` resolves it against the config file);
    model files are resolved against ``base_dir``. Extra routes can be added to ``router``
    before ``start``.
    """

    def __init__(
        self, config: ServerConfig, static_root: str | None = None, base_dir: str = "."
    ) -> None:
        self.config = config
        self.router = Router()
        self.registry = CollectorRegistry(auto_describe=True)
        n = config.sub_reactors or os.cpu_count() or 1
        self.file_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=4, thread_name_prefix="infergate-file"
        )
        self.subs = [
            SubReactor(i, self.router, config.limits, self.file_executor, config.access_log)
            for i in range(n)
        ]
        self.registry.register(HttpCollector([s.stats for s in self.subs]))
        add_health_routes(self.router, self.registry, self.is_draining)
        self.models = ModelRegistry(config.models, base_dir)
        self.control = Control(self.models)
        self.registry.register(ModelCollector(self.models))
        add_openai_routes(self.router, self.models)
        add_kserve_routes(self.router, self.models)
        add_admin_routes(self.router, self.control)
        if static_root is not None:
            if not os.path.isdir(static_root):
                raise FileNotFoundError(f"static_root {static_root!r} is not a folder")
            self.router.add(["GET"], "/public/", StaticFiles(static_root, "/public/"), prefix=True)
            self.router.add(["GET"], "/", StaticFiles(static_root, "/"), prefix=True)
        self.main: MainReactor | None = None
        self.address: tuple[str, int] | None = None
        self.admin_address: tuple[str, int] | None = None

    def start(self) -> tuple[str, int]:
        """Load the models, bind the listener(s), start the sub-reactors; returns (host, port).

        Raises:
            ExecutorError: a model cannot load (the message names it).
            OSError: the address cannot be bound.
        """
        cfg = self.config
        self.models.load()
        reuseport = cfg.accept_mode == "reuseport"
        listeners = open_listeners(cfg.host, cfg.port, len(self.subs), reuseport)
        for sub in self.subs:
            sub.start()
        if reuseport:
            for sub, sock in zip(self.subs, listeners, strict=True):
                sub.serve_reuseport(sock)
        self.main = MainReactor(
            self.subs, listeners, cfg.accept_mode, cfg.limits.drain_timeout_ms / 1000
        )
        host, port = listeners[0].getsockname()[:2]
        self.address = (host, port)
        return host, port

    def run(
        self,
        install_signals: bool = True,
        on_ready: Callable[[], None] | None = None,
        on_sighup: Callable[[], None] | None = None,
    ) -> int:
        """Serve on the calling thread until stopped; returns connections cut at the drain.

        With ``install_signals`` (main thread only), SIGTERM/SIGINT drain and stop, and SIGHUP
        calls ``on_sighup``. Without (the TUI owns the main thread), call ``stop``.
        """
        if self.main is None:
            self.start()
        assert self.main is not None
        self.main.on_sighup = on_sighup
        try:
            return self.main.run(install_signals, on_ready=on_ready)
        finally:
            self.models.close()
            self.file_executor.shutdown(wait=False, cancel_futures=True)

    def is_draining(self) -> bool:
        """True once graceful shutdown has begun. Thread-safe (reads flags)."""
        return any(s.ctx.shutting_down for s in self.subs)

    def stop(self) -> None:
        """Begin graceful shutdown. Thread-safe."""
        if self.main is not None:
            self.main.request_stop()
