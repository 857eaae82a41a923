"""The admin plane: which listener serves the routes that change state, and their token.

State-changing routes (``/admin/*``, the model repository's ``/v2/repository/*``) are served
on the admin listener (``admin_listen``, loopback by default). The public listener answers
them 404 unless ``admin_on_public`` is set, and then only to requests that carry
``admin_token`` as a Bearer token. When a token is configured, the admin listener asks for it
too.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable

from infergate.engine.http.request import Request
from infergate.engine.http.response import AnyResponse, error_response
from infergate.engine.http.router import Handler, Router

ADMIN_PREFIX = "/admin/"
REPOSITORY_PREFIX = "/v2/repository/"
_ALL_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")


def bearer_token(req: Request) -> bytes | None:
    """The token of an ``Authorization: Bearer TOKEN`` header, or None."""
    raw = req.header(b"authorization")
    if raw is None:
        return None
    scheme, _, token = raw.strip().partition(b" ")
    if scheme.lower() != b"bearer" or not token.strip():
        return None
    return token.strip()


def require_token(handler: Handler, token: str) -> Handler:
    """``handler`` behind a Bearer token check, compared in constant time (401 otherwise)."""
    expected = token.encode()

    def guarded(req: Request) -> AnyResponse | Awaitable[AnyResponse]:
        given = bearer_token(req)
        if given is None or not hmac.compare_digest(given, expected):
            return error_response(
                401,
                "admin routes need 'Authorization: Bearer <admin_token>'",
                headers=[(b"WWW-Authenticate", b'Bearer realm="infergate-admin"')],
            )
        return handler(req)

    return guarded


def hide_admin_routes(router: Router) -> None:
    """Answer every method under ``/admin/`` and ``/v2/repository/`` with 404 on a public
    router, so the static files' catch-all ``/`` route does not turn them into 405s that
    reveal nothing useful but differ from an unknown path."""

    def not_here(req: Request) -> AnyResponse:
        return error_response(404, f"no route for {req.path}")

    for prefix in (ADMIN_PREFIX, REPOSITORY_PREFIX):
        router.add(_ALL_METHODS, prefix, not_here, prefix=True)
        router.add(_ALL_METHODS, prefix.rstrip("/"), not_here)


def admin_planes(
    public: Router,
    admin: Router | None,
    token: str,
    on_public: bool,
) -> list[Router]:
    """The routers the admin routes are to be added to: the admin listener's (guarded when a
    token is set) and, with ``on_public``, the public one behind the token. The public router
    hides ``/admin/`` and ``/v2/repository/`` otherwise."""
    planes: list[Router] = []
    if admin is not None:
        planes.append(admin.guarded(lambda h: require_token(h, token)) if token else admin)
    if on_public:
        planes.append(public.guarded(lambda h: require_token(h, token)))
    else:
        hide_admin_routes(public)
    return planes
