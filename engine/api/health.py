"""``/healthz`` (readiness for load balancers) and ``/metrics`` (Prometheus text)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from infergate.engine.http.request import Request
from infergate.engine.http.response import Response, json_response
from infergate.engine.http.router import Router

_OK = json_response({"status": "ok"})
_DRAINING = json_response({"status": "draining"}, 503, [(b"Retry-After", b"1")])


def add_health_routes(router: Router, is_draining: Callable[[], bool]) -> None:
    """Route ``GET /healthz``.

    ``/healthz`` answers 503 while the server drains, so a load balancer stops sending new
    requests before the connections close.
    """

    def healthz(_req: Request) -> Response:
        return _DRAINING if is_draining() else _OK

    router.add(["GET"], "/healthz", healthz)


def add_metrics_route(router: Router, registry: CollectorRegistry) -> None:
    """Route ``GET /metrics`` (Prometheus text)."""
    content_type = CONTENT_TYPE_LATEST.encode("latin-1")

    def metrics(_req: Request) -> Response:
        return Response(generate_latest(registry), 200, content_type)

    router.add(["GET"], "/metrics", metrics)
