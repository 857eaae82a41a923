"""Triton's model repository extension, on the admin plane.

- ``POST /v2/repository/index`` (body optional, ``{"ready": true}`` lists READY models only):
  a JSON list of ``{"name", "version", "state", "reason"}``, every model and repository folder;
  state READY, UNAVAILABLE (with the reason) or LOADING. A model whose reload failed stays
  READY with its old version and says why in ``reason`` (as Triton keeps it serving).
- ``POST /v2/repository/models/{name}/load`` loads a new folder or reloads a changed one. The
  body may carry a config override as Triton writes it, ``{"parameters": {"config": "<JSON
  object as a string>"}}``, whose keys are those of a ``[[models]]`` entry, applied over the
  folder's ``model.toml``.
- ``POST /v2/repository/models/{name}/unload``: queued requests get 503 ``model_unloaded``.

Synchronous like Triton's: the call answers once the model serves (200 and its index row) or
failed (400/404/409/500 with the reason, in KServe's ``{"error": "..."}`` shape). The work runs
on the registry's loading thread, never on the reactor; a load that takes longer than
``WAIT_S`` is answered 202 with the row as it stands (LOADING) and goes on: poll the index.
These routes change state, so they are registered only on the admin plane
(``engine.auth.admin``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

import msgspec

from infergate.engine.api.admin import decode_body
from infergate.engine.api.common import ApiError, invalid
from infergate.engine.api.kserve import kserve_error
from infergate.engine.control import Control, ControlError
from infergate.engine.http.request import Request
from infergate.engine.http.response import Response, json_response
from infergate.engine.http.router import Router

PREFIX = "/v2/repository/"
WAIT_S = 120.0
"""How long a load or unload call waits for the loading thread before answering 202."""
ACTOR = "admin"
"""Who the audit log names for changes made through these routes."""
_FAILED = "model_load_failed"
"""The reason header of a refused load or unload."""


def load_override(body: bytes) -> dict[str, Any] | None:
    """The config override of a load request's body (empty: none).

    Raises:
        ApiError: 400 when the body or ``parameters.config`` is not what Triton sends.
    """
    if not body.strip():
        return None
    doc = decode_body(body)
    if not isinstance(doc, dict):
        raise invalid("the body of a load request is a JSON object")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise invalid("parameters must be a JSON object")
    config = params.get("config")
    if config is None:
        return None
    if isinstance(config, str):
        try:
            config = msgspec.json.decode(config)
        except msgspec.DecodeError as e:
            raise invalid(f"parameters.config is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise invalid("parameters.config must be a JSON object (as a string) of model keys")
    return config


def add_repository_routes(router: Router, control: Control, wait_s: float = WAIT_S) -> None:
    """Register the repository routes on ``router`` (an admin plane)."""

    def index(req: Request) -> Response:
        try:
            doc = decode_body(req.body) if req.body.strip() else {}
        except ApiError as e:
            return kserve_error(e.status, e.reason, e.message)
        rows = control.index()
        if isinstance(doc, dict) and doc.get("ready") is True:
            rows = [r for r in rows if r["state"] == "READY"]
        return json_response(rows)

    async def model(req: Request) -> Response:
        name, _, action = req.path.removeprefix(PREFIX + "models/").partition("/")
        if not name or action not in ("load", "unload"):
            return kserve_error(404, "not_found", f"no route {req.path}")
        try:
            if action == "load":
                fut = control.load_model(name, load_override(req.body), actor=ACTOR)
            else:
                fut = control.unload_model(name, actor=ACTOR)
        except ApiError as e:
            return kserve_error(e.status, e.reason, e.message)
        return await _answer(name, fut, wait_s)

    async def _answer(
        name: str, fut: concurrent.futures.Future[dict[str, Any]], wait_s: float
    ) -> Response:
        try:
            row = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(fut)), wait_s)
        except ControlError as e:
            return kserve_error(e.status, _FAILED, e.message)
        except TimeoutError:
            rows = [r for r in control.index() if r["name"] == name]
            return json_response(rows[0] if rows else {"name": name, "state": "LOADING"}, 202)
        return json_response(row)

    router.add(["POST"], PREFIX + "index", index)
    router.add(["POST"], PREFIX + "models/", model, prefix=True)
