"""Router: exact and prefix routes, method matching, 405 information."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from infergate.engine.http.request import Request
from infergate.engine.http.response import Response
from infergate.engine.http.router import Handler, Router


def handler(name: str) -> Handler:
    def h(_req: Request) -> Response:
        return Response(name.encode())

    h.__name__ = name
    return h


@pytest.fixture
def router() -> Router:
    r = Router()
    r.add(["GET"], "/api", handler("api-exact"))
    r.add(["GET", "POST"], "/api/", handler("api-prefix"), prefix=True)
    r.add(["GET"], "/", handler("root-prefix"), prefix=True)
    r.add(["GET"], "/api/v1/", handler("v1-prefix"), prefix=True)
    r.add(["POST"], "/submit", handler("submit"))
    return r


def name_of(router: Router, method: str, path: str) -> str | None:
    h, _route = router.resolve(method, path)
    return None if h is None else h.__name__


def test_exact_route_wins_over_prefix(router: Router) -> None:
    assert name_of(router, "GET", "/api") == "api-exact"


def test_prefix_route_matches_paths_below_it(router: Router) -> None:
    assert name_of(router, "GET", "/api/x") == "api-prefix"
    assert name_of(router, "GET", "/api/") == "api-prefix"


def test_longest_prefix_wins_whatever_the_order_added(router: Router) -> None:
    assert name_of(router, "GET", "/api/v1/models") == "v1-prefix"
    assert name_of(router, "GET", "/api/v2/models") == "api-prefix"
    assert name_of(router, "GET", "/other") == "root-prefix"


def test_exact_route_does_not_match_longer_paths() -> None:
    r = Router()
    r.add(["GET"], "/healthz", handler("h"))
    assert r.resolve("GET", "/healthz/x") == (None, None)
    assert r.resolve("GET", "/health") == (None, None)
    assert r.match("/nothing") is None


def test_wrong_method_gives_route_with_allow(router: Router) -> None:
    h, route = router.resolve("DELETE", "/submit")
    assert h is None
    assert route is not None
    assert route.allow == b"OPTIONS, POST"
    h, route = router.resolve("POST", "/api")
    assert h is None
    assert route is not None
    assert route.allow == b"GET, HEAD, OPTIONS"


def test_prefix_route_allow_lists_all_its_methods(router: Router) -> None:
    _h, route = router.resolve("PUT", "/api/x")
    assert route is not None
    assert route.allow == b"GET, HEAD, OPTIONS, POST"


def test_head_is_served_by_the_get_handler(router: Router) -> None:
    assert router.resolve("HEAD", "/api")[0] is router.resolve("GET", "/api")[0]
    assert name_of(router, "HEAD", "/api/v1/x") == "v1-prefix"
    assert name_of(router, "HEAD", "/submit") is None  # POST-only route: no HEAD


def test_methods_can_be_added_to_a_route_later() -> None:
    r = Router()
    r.add(["GET"], "/x", handler("get"))
    r.add(["PUT"], "/x", handler("put"))
    assert name_of(r, "PUT", "/x") == "put"
    assert name_of(r, "GET", "/x") == "get"
    _h, route = r.resolve("DELETE", "/x")
    assert route is not None
    assert route.allow == b"GET, HEAD, OPTIONS, PUT"


@pytest.mark.parametrize("prefix", [False, True])
def test_duplicate_route_raises(prefix: bool) -> None:
    r = Router()
    r.add(["GET"], "/dup/", handler("a"), prefix=prefix)
    with pytest.raises(ValueError, match="already routed"):
        r.add(["POST", "GET"], "/dup/", handler("b"), prefix=prefix)


def test_same_path_exact_and_prefix_are_distinct_routes() -> None:
    r = Router()
    r.add(["GET"], "/p/", handler("exact"))
    r.add(["GET"], "/p/", handler("prefix"), prefix=True)
    assert name_of(r, "GET", "/p/") == "exact"
    assert name_of(r, "GET", "/p/q") == "prefix"


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS", "TRACE", "CONNECT", "get"])
def test_unroutable_methods_raise(method: str) -> None:
    with pytest.raises(ValueError, match="cannot be routed"):
        Router().add([method], "/x", handler("x"))


def test_path_must_start_with_slash() -> None:
    with pytest.raises(ValueError, match="must start with '/'"):
        Router().add(["GET"], "x", handler("x"))


def test_body_limit_is_kept_per_method_with_its_answer() -> None:
    r = Router()
    r.add(iter(["POST", "PUT"]), "/a", handler("a"), max_body=10, max_body_unless="X-Bin")
    r.add(["GET"], "/a", handler("a-get"))
    route = r.match("/a")
    assert route is not None
    assert route.body_limits is not None
    assert set(route.body_limits) == {"POST", "PUT"}
    limit = route.body_limits["POST"]
    assert (limit.max_bytes, limit.unless, limit.answer.status) == (10, b"x-bin", 413)
    assert b"POST/PUT /a are limited to 10 bytes without X-Bin" in limit.answer.body
    assert limit.applies([(b"host", b"h")])
    assert not limit.applies([(b"host", b"h"), (b"x-bin", b"3")])


def test_routes_without_a_body_limit_have_none() -> None:
    r = Router()
    r.add(["POST"], "/a", handler("a"))
    route = r.match("/a")
    assert route is not None
    assert route.body_limits is None


def test_negative_body_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="max_body"):
        Router().add(["POST"], "/a", handler("a"), max_body=-1)


def test_a_guarded_view_routes_wrapped_handlers_into_the_same_table() -> None:
    """``guarded`` (the admin plane's token check) wraps each handler added through the view;
    the routes, limits and duplicates are the one table's."""
    base = Router()
    base.add(["GET"], "/open", handler("open"))

    def wrap(tag: str) -> Callable[[Handler], Handler]:
        return lambda h: handler(f"{tag}({h.__name__})")

    view = base.guarded(wrap("g"))
    view.add(["POST"], "/admin/", handler("admin"), prefix=True, max_body=5)
    view.guarded(wrap("outer")).add(["GET"], "/both", handler("h"))

    assert name_of(base, "POST", "/admin/x") == "g(admin)"
    assert name_of(view, "POST", "/admin/x") == "g(admin)"
    assert name_of(base, "GET", "/both") == "g(outer(h))"  # the inner guard applies last
    assert name_of(view, "GET", "/open") == "open"  # added before: not wrapped
    _h, route = base.resolve("POST", "/admin/x")
    assert route is not None
    assert route.body_limits is not None
    assert route.body_limits["POST"].max_bytes == 5
    with pytest.raises(ValueError, match="already routed"):
        base.add(["POST"], "/admin/", handler("again"), prefix=True)
