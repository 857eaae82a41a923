"""Answers the protocol gives itself (no route, OPTIONS) and the access-log record."""

from __future__ import annotations

import itertools
import logging
import os
import time

from infergate.engine.http.request import Request
from infergate.engine.http.response import Response, error_response
from infergate.engine.http.router import SUPPORTED_METHODS, Route

access_log = logging.getLogger("infergate.access")
_METHODS = sorted(m.encode() for m in SUPPORTED_METHODS)


def no_handler(req: Request, route: Route | None) -> Response:
    """404, 405 with Allow, or the answer to OPTIONS."""
    method = req.method
    if route is not None:
        if method == "OPTIONS":
            return Response(b"", 204, b"", [(b"Allow", route.allow)])
        allow = [(b"Allow", route.allow)]
        return error_response(405, f"method {method} not allowed", headers=allow)
    if method == "OPTIONS" and req.raw_path == b"*":
        return Response(b"", 204, b"", [(b"Allow", b", ".join(sorted(_METHODS)))])
    return error_response(404, f"no route for {req.path}")


_request_ids = itertools.count(1)


def log_access(req: Request, status: int) -> None:
    """One access-log record; ``fields`` carries the structured data for JSON logging."""
    rid = req.header(b"x-request-id")
    fields: dict[str, object] = {
        "request_id": rid.decode("latin-1") if rid else f"{os.getpid():x}-{next(_request_ids)}",
        "method": req.method,
        "path": req.raw_path.decode("latin-1"),
        "status": status,
        "duration_ms": round((time.perf_counter() - req.t0) * 1000, 3),
    }
    if req.notes:
        fields.update(req.notes)
    access_log.info(
        "%s %s HTTP/%s %d %.3fms",
        req.method,
        fields["path"],
        req.version,
        status,
        fields["duration_ms"],
        extra={"fields": fields},
    )
