"""The serving engine assembled: router, reactors, listeners, metrics."""

from __future__ import annotations

import concurrent.futures
import logging
import os
from collections.abc import Callable

from prometheus_client.registry import CollectorRegistry

from infergate.engine.api.admin import add_admin_routes
from infergate.engine.api.chat import add_chat_routes
from infergate.engine.api.health import add_health_routes, add_metrics_route
from infergate.engine.api.kserve import add_kserve_routes
from infergate.engine.api.openai import add_openai_routes
from infergate.engine.api.repository import add_repository_routes
from infergate.engine.api.text import add_text_routes
from infergate.engine.auth.admin import admin_planes
from infergate.engine.auth.metrics import KeyCollector
from infergate.engine.auth.tenants import Auth
from infergate.engine.config import ServerConfig, parse_listen
from infergate.engine.control import Control
from infergate.engine.http.router import Router
from infergate.engine.http.static import StaticFiles
from infergate.engine.models.metrics import ModelCollector
from infergate.engine.models.registry import ModelRegistry
from infergate.engine.net.reactor import MainReactor, SubReactor, open_listeners
from infergate.engine.net.tls import ServerTls
from infergate.engine.stats import HttpCollector

log = logging.getLogger("infergate")

_LOOPBACK = ("127.", "::1", "localhost")


class Server:
    """Binds, starts the sub-reactors, and runs the main reactor until stopped.

    ``static_root`` must be absolute (``app.config`` resolves it against the config file);
    model files are resolved against ``base_dir``. Extra routes can be added to ``router``
    (the public listener) or ``admin_router`` (the admin listener, None when there is none)
    before ``start``. Routes that change state go to the admin plane only
    (``engine.auth.admin``).
    """

    def __init__(
        self, config: ServerConfig, static_root: str | None = None, base_dir: str = "."
    ) -> None:
        self.config = config
        # HTTPS (engine.net.tls); TlsError names a bad file
        self.tls: ServerTls | None = ServerTls.from_config(config, base_dir)
        public_tls = self.tls.context if self.tls else None
        self.scheme = "https" if self.tls else "http"
        self.admin_scheme = "https" if config.admin_tls else "http"
        self.router = Router()
        self.registry = CollectorRegistry(auto_describe=True)
        n = config.sub_reactors or os.cpu_count() or 1
        self.file_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=4, thread_name_prefix="infergate-file"
        )
        self.subs = [
            SubReactor(
                i, self.router, config.limits, self.file_executor, config.access_log, tls=public_tls
            )
            for i in range(n)
        ]
        self.registry.register(HttpCollector([s.stats for s in self.subs]))
        # the admin listener: its own sub-reactor, so a busy public side never delays it
        self.admin_router: Router | None = None
        self.admin_sub: SubReactor | None = None
        if config.admin_listen:
            self.admin_router = Router()
            self.admin_sub = SubReactor(
                n,
                self.admin_router,
                config.limits,
                self.file_executor,
                config.access_log,
                tls=public_tls if config.admin_tls else None,
            )
        add_health_routes(self.router, self.is_draining)
        if not config.metrics_on_admin:
            add_metrics_route(self.router, self.registry)
        if self.admin_router is not None:
            add_health_routes(self.admin_router, self.is_draining)
            add_metrics_route(self.admin_router, self.registry)
        repository = config.model_repository or None
        self.models = ModelRegistry(
            config.models,
            base_dir,
            repository and os.path.abspath(os.path.join(base_dir, repository)),
        )
        self.control = Control(self.models)
        self.registry.register(ModelCollector(self.models))
        self.auth = Auth.from_config(config.auth, base_dir)  # keys, gate, limiter, key metrics
        self.registry.register(KeyCollector(self.auth.metrics, self.auth.store_errors))
        add_openai_routes(self.router, self.models, self.auth)
        add_chat_routes(self.router, self.models, self.auth)
        add_text_routes(self.router, self.models, self.auth)
        add_kserve_routes(self.router, self.models, self.auth)
        for plane in admin_planes(
            self.router, self.admin_router, config.admin_token, config.admin_on_public
        ):
            add_admin_routes(plane, self.control, self.auth)
            add_repository_routes(plane, self.control)
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
        if self.admin_sub is not None:
            ahost, aport = parse_listen(cfg.admin_listen)
            try:
                [admin_sock] = open_listeners(ahost, aport, 1, reuseport=False)
            except OSError:
                for sock in listeners:
                    sock.close()
                raise
            self.admin_sub.start()
            self.admin_sub.serve_reuseport(admin_sock)
            self.admin_address = admin_sock.getsockname()[:2]
        self.auth.check_store()  # unreachable: logged; checks then fail open or closed
        if not cfg.host.startswith(_LOOPBACK) and not self.auth.enabled:
            log.warning(
                "the public listener %s is not loopback and no API keys are configured: "
                "anyone who can reach it can use every model",
                cfg.listen,
            )
        for sub in self.subs:
            sub.start()
        if reuseport:
            for sub, sock in zip(self.subs, listeners, strict=True):
                sub.serve_reuseport(sock)
        self.main = MainReactor(
            self.subs, listeners, cfg.accept_mode, cfg.limits.drain_timeout_ms / 1000
        )
        self.main.on_cutoff = self._shed_queued
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
            if self.admin_sub is not None:
                # the public side has drained; admin requests in flight get a moment too
                self.admin_sub.drain(1.0).result()
                self.admin_sub.stop()
            self.models.close()
            self.auth.close()
            self.file_executor.shutdown(wait=False, cancel_futures=True)

    def reload_tls(self) -> None:
        """SIGHUP: re-read the TLS certificate and key; new connections get them, open ones
        keep theirs; files that cannot be used are logged and the old ones keep serving.
        Thread-safe (the reload thread)."""
        if self.tls is not None:
            self.tls.reload()

    def is_draining(self) -> bool:
        """True once graceful shutdown has begun (during ``drain_grace_ms`` too, while the
        listener still accepts). Thread-safe (reads flags)."""
        main = self.main
        return (main is not None and main.draining) or any(s.ctx.shutting_down for s in self.subs)

    def _shed_queued(self) -> None:
        """The drain cut-off: answer every queued request 503 ``shutting_down`` so nothing
        computes for a client that is about to be cut; running batches finish."""
        shed = self.models.shed_queued()
        if shed:
            log.info("drain cut-off: answered %d queued request(s) 503 shutting_down", shed)

    def stop(self) -> None:
        """Begin graceful shutdown; a second call skips what is left of ``drain_grace_ms``.
        Thread-safe, and harmless once the server has stopped."""
        main = self.main
        if main is not None and not main.loop.is_closed():
            try:
                main.request_stop()
            except RuntimeError:
                pass  # the loop closed between the check and the call: already stopped
