"""Admin API: ``GET /admin/models``, ``PATCH /admin/models/{name}/batching``,
``PATCH /admin/models/{name}/priorities`` (``{"default": N}``), ``GET /admin/keys`` (names
and limits, never digests) and ``POST /admin/keys/reload`` (re-read the keys file).

Bodies are small JSON objects: over ``MAX_ADMIN_BODY_BYTES`` is a 413, and anything that does
not decode (invalid JSON or UTF-8, nesting too deep) a 400, always as a JSON error. Every
applied change is audited by ``Control`` with the caller as ``actor``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from infergate.engine.api.common import BODY_TOO_LARGE, ApiError, invalid
from infergate.engine.auth.keys import KeysFileError
from infergate.engine.auth.tenants import Auth
from infergate.engine.control import Control, ControlError
from infergate.engine.http.request import Request
from infergate.engine.http.response import Response, error_response, json_response
from infergate.engine.http.router import Router

MAX_ADMIN_BODY_BYTES = 64 * 1024
"""The largest admin request body: a batching change is well under 1 KiB."""
ADMIN_ACTOR = "admin"
"""Who the audit log names for changes made through this API (one shared admin identity)."""


def decode_body(body: bytes) -> Any:
    """The JSON value of an admin request body.

    Raises:
        ApiError: 413 over ``MAX_ADMIN_BODY_BYTES``; 400 invalid JSON, invalid UTF-8 inside
            a string (msgspec raises UnicodeDecodeError), or nesting deeper than the
            interpreter's recursion limit (RecursionError).
    """
    if len(body) > MAX_ADMIN_BODY_BYTES:
        raise ApiError(
            413, BODY_TOO_LARGE, f"admin request bodies are limited to {MAX_ADMIN_BODY_BYTES} bytes"
        )
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError as e:
        raise invalid(f"invalid JSON: {e}") from None
    except UnicodeDecodeError:
        raise invalid("invalid JSON: strings must be valid UTF-8") from None
    except RecursionError:
        raise invalid("invalid JSON: nested too deeply") from None


def admin_error(e: ApiError | ControlError) -> Response:
    """The admin plane's answer to every error its routes catch (one place)."""
    return error_response(e.status, e.message)


def add_admin_routes(router: Router, control: Control, auth: Auth | None = None) -> None:
    def models(_req: Request) -> Response:
        return json_response({"models": control.models()})

    def model_item(req: Request) -> Response:
        rest = req.path.removeprefix("/admin/models/")
        name, _, what = rest.partition("/")
        if what not in ("batching", "priorities"):
            return error_response(404, f"no admin route {req.path}")
        try:
            changes = decode_body(req.body)
            if what == "priorities":
                if not isinstance(changes, dict) or set(changes) != {"default"}:
                    raise ControlError(400, 'send {"default": LEVEL}: only the default can change')
                level = control.set_default_priority(name, changes["default"], actor=ADMIN_ACTOR)
                return json_response({"model": name, "priorities": {"default": level}})
            cfg = control.update_batching(name, changes, actor=ADMIN_ACTOR)
        except (ApiError, ControlError) as e:
            return admin_error(e)
        return json_response({"model": name, "batching": msgspec.to_builtins(cfg)})

    if auth is not None:
        _add_key_routes(router, auth)
    router.add(["GET"], "/admin/models", models)
    router.add(["PATCH"], "/admin/models/", model_item, prefix=True)


def _add_key_routes(router: Router, auth: Auth) -> None:
    def keys(_req: Request) -> Response:
        rows = []
        for k in auth.keys.keys:
            row = msgspec.to_builtins(k)
            del row["sha256"]
            row["in_flight"] = auth.gate.in_flight(k.name)
            rows.append(row)
        return json_response({"file": auth.keys_file, "keys": rows})

    def reload(_req: Request) -> Response:
        """Re-read the keys file: new requests use the new keys at once, requests in flight
        finish under the key they were admitted with, no connection is touched."""
        try:
            changes = auth.reload(ADMIN_ACTOR)
        except KeysFileError as e:
            return error_response(409 if not auth.keys_file else 400, str(e))
        return json_response({
            "file": auth.keys_file,
            "keys": len(auth.keys.keys),
            "added": list(changes.added),
            "removed": list(changes.removed),
            "changed": list(changes.changed),
        })  # fmt: skip

    router.add(["GET"], "/admin/keys", keys)
    router.add(["POST"], "/admin/keys/reload", reload)
