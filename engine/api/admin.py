"""Admin API: ``GET /admin/models``, ``PATCH /admin/models/{name}/batching`` and
``PATCH /admin/models/{name}/priorities`` (``{"default": N}``)."""

from __future__ import annotations

import msgspec

from engine.control import Control, ControlError
from engine.http.request import Request
from engine.http.response import Response, error_response, json_response
from engine.http.router import Router


def add_admin_routes(router: Router, control: Control) -> None:
    def models(_req: Request) -> Response:
        return json_response({"models": control.models()})

    def model_item(req: Request) -> Response:
        rest = req.path.removeprefix("/admin/models/")
        name, _, what = rest.partition("/")
        if what not in ("batching", "priorities"):
            return error_response(404, f"no admin route {req.path}")
        try:
            changes = msgspec.json.decode(req.body)
        except msgspec.DecodeError as e:
            return error_response(400, f"invalid JSON: {e}")
        try:
            if what == "priorities":
                if not isinstance(changes, dict) or set(changes) != {"default"}:
                    raise ControlError(400, 'send {"default": LEVEL}: only the default can change')
                level = control.set_default_priority(name, changes["default"])
                return json_response({"model": name, "priorities": {"default": level}})
            cfg = control.update_batching(name, changes)
        except ControlError as e:
            return error_response(e.status, e.message)
        return json_response({"model": name, "batching": msgspec.to_builtins(cfg)})

    router.add(["GET"], "/admin/models", models)
    router.add(["PATCH"], "/admin/models/", model_item, prefix=True)
