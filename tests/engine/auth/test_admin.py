"""The admin plane's routing and token guard, at the router seam."""

from __future__ import annotations

import json

from infergate.engine.auth.admin import admin_planes, bearer_token, require_token
from infergate.engine.http.request import Request
from infergate.engine.http.response import Response
from infergate.engine.http.router import Router

TOKEN = "t" * 20


def _req(method: str, path: str, headers: list[tuple[bytes, bytes]] | None = None) -> Request:
    return Request(method, path.encode(), path, b"", "1.1", headers or [], b"", True, None)


def _ok(_req: Request) -> Response:
    return Response(b"done")


def _call(router: Router, req: Request) -> Response | None:
    handler, _ = router.resolve(req.method, req.path)
    if handler is None:
        return None
    resp = handler(req)
    assert isinstance(resp, Response)
    return resp


def _add_admin(router: Router) -> None:
    router.add(["PATCH"], "/admin/models/", _ok, prefix=True)


def test_bearer_token_parsing() -> None:
    assert bearer_token(_req("GET", "/", [(b"authorization", b"Bearer abc")])) == b"abc"
    assert bearer_token(_req("GET", "/", [(b"authorization", b"bearer  abc ")])) == b"abc"
    assert bearer_token(_req("GET", "/", [(b"authorization", b"Basic abc")])) is None
    assert bearer_token(_req("GET", "/", [(b"authorization", b"Bearer ")])) is None
    assert bearer_token(_req("GET", "/")) is None


def test_require_token_refuses_missing_and_wrong_tokens() -> None:
    guarded = require_token(_ok, TOKEN)
    for headers in ([], [(b"authorization", b"Bearer nope")]):
        resp = guarded(_req("GET", "/", headers))
        assert isinstance(resp, Response)
        assert resp.status == 401
        assert json.loads(resp.body)["error"]["code"] == 401
    resp = guarded(_req("GET", "/", [(b"authorization", b"Bearer " + TOKEN.encode())]))
    assert isinstance(resp, Response)
    assert resp.body == b"done"


def test_default_plane_hides_admin_routes_on_public() -> None:
    public, admin = Router(), Router()
    public.add(["GET"], "/", _ok, prefix=True)  # the static files' catch-all
    for plane in admin_planes(public, admin, "", on_public=False):
        _add_admin(plane)
    resp = _call(public, _req("PATCH", "/admin/models/m/batching"))
    assert resp is not None
    assert resp.status == 404
    resp = _call(admin, _req("PATCH", "/admin/models/m/batching"))
    assert resp is not None
    assert resp.body == b"done"


def test_token_guards_both_planes_when_admin_is_public() -> None:
    public, admin = Router(), Router()
    for plane in admin_planes(public, admin, TOKEN, on_public=True):
        _add_admin(plane)
    auth = [(b"authorization", b"Bearer " + TOKEN.encode())]
    for router in (public, admin):
        resp = _call(router, _req("PATCH", "/admin/models/m/batching"))
        assert resp is not None
        assert resp.status == 401
        resp = _call(router, _req("PATCH", "/admin/models/m/batching", auth))
        assert resp is not None
        assert resp.body == b"done"
