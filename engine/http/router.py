"""Exact and prefix routes with method matching.

Lookup is one dict probe for exact paths, then the prefixes longest first. A path that matches
a route but not its methods answers 405 with ``Allow``; HEAD is served by the GET handler.

A route may cap request bodies below ``limits.max_body_bytes`` (``max_body``): the protocol
resolves the route when the head arrives and refuses a body over the cap before reading it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from infergate.engine.http.request import Request
from infergate.engine.http.response import AnyResponse, Response, error_response

Handler = Callable[[Request], AnyResponse | Awaitable[AnyResponse]]

# Methods this server implements; any other method a parser accepts gets 501.
SUPPORTED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


class BodyLimit:
    """A route's cap on request bodies, checked by the protocol when the head arrives."""

    __slots__ = ("answer", "max_bytes", "unless")

    def __init__(self, max_bytes: int, unless: bytes | None, answer: Response) -> None:
        self.max_bytes = max_bytes
        self.unless = unless
        """A header field name (lower case) whose presence lifts the cap, or None."""
        self.answer = answer
        """The 413 a body over the cap gets (the API's error shape); the connection closes."""

    def applies(self, headers: list[tuple[bytes, bytes]]) -> bool:
        unless = self.unless
        return unless is None or all(name != unless for name, _ in headers)


class Route:
    """The handlers of one path (or prefix), by method."""

    __slots__ = ("allow", "body_limits", "handlers", "path", "prefix")

    def __init__(self, path: str, prefix: bool) -> None:
        self.path = path
        self.prefix = prefix
        self.handlers: dict[str, Handler] = {}
        self.allow = b""
        self.body_limits: dict[str, BodyLimit] | None = None
        """Per method; None (most routes) costs the protocol one attribute test."""

    def add(self, methods: Iterable[str], handler: Handler, limit: BodyLimit | None) -> None:
        for m in methods:
            if m not in SUPPORTED_METHODS or m in ("HEAD", "OPTIONS"):
                raise ValueError(f"method {m!r} cannot be routed (HEAD and OPTIONS are implied)")
            if m in self.handlers:
                raise ValueError(f"{m} {self.path} is already routed")
            self.handlers[m] = handler
            if limit is not None:
                if self.body_limits is None:
                    self.body_limits = {}
                self.body_limits[m] = limit
        if "GET" in self.handlers:
            self.handlers["HEAD"] = self.handlers["GET"]
        self.allow = ", ".join(sorted({*self.handlers, "OPTIONS"})).encode()


class Router:
    """Maps (method, path) to a handler. Built before serving, read-only afterwards."""

    def __init__(self) -> None:
        self._exact: dict[str, Route] = {}
        self._prefixes: list[Route] = []
        self._guard: Callable[[Handler], Handler] | None = None

    def guarded(self, guard: Callable[[Handler], Handler]) -> Router:
        """A view of this router that routes ``guard(handler)`` wherever ``add`` is given
        ``handler``: its routes are this router's (one table). Lets route modules register on a
        guarded plane (``engine.auth.admin``) without knowing about tokens. A view, not a
        subclass: this module may be compiled by mypyc, whose classes interpreted code cannot
        subclass."""
        view = Router()
        view._exact = self._exact
        view._prefixes = self._prefixes
        inner = self._guard
        view._guard = guard if inner is None else (lambda h: inner(guard(h)))
        return view

    def add(
        self,
        methods: Iterable[str],
        path: str,
        handler: Handler,
        *,
        prefix: bool = False,
        max_body: int | None = None,
        max_body_unless: str | None = None,
        too_large: Response | None = None,
    ) -> None:
        """Route ``methods`` on ``path`` (or every path starting with it, if ``prefix``).

        ``max_body`` caps these methods' request bodies (a Content-Length over it is refused
        before any body byte is read, a chunked body as soon as it passes it), unless the
        request carries the header ``max_body_unless``. ``too_large`` is the answer (default:
        a generic JSON 413).
        """
        if not path.startswith("/"):
            raise ValueError(f"route path must start with '/': {path!r}")
        methods = tuple(methods)
        if self._guard is not None:
            handler = self._guard(handler)
        limit = None
        if max_body is not None:
            if max_body < 0:
                raise ValueError(f"max_body must be >= 0: {max_body}")
            if too_large is None:
                unless = f" without {max_body_unless}" if max_body_unless else ""
                msg = f"request bodies of {'/'.join(methods)} {path} are limited to {max_body} "
                too_large = error_response(413, f"{msg}bytes{unless}")
            unless_b = max_body_unless.lower().encode("latin-1") if max_body_unless else None
            limit = BodyLimit(max_body, unless_b, too_large)
        if prefix:
            route = next((r for r in self._prefixes if r.path == path), None)
            if route is None:
                route = Route(path, True)
                self._prefixes.append(route)
                self._prefixes.sort(key=lambda r: len(r.path), reverse=True)
        else:
            route = self._exact.setdefault(path, Route(path, False))
        route.add(methods, handler, limit)

    def match(self, path: str) -> Route | None:
        """The route for ``path``: exact first, then the longest prefix."""
        route = self._exact.get(path)
        if route is not None:
            return route
        for r in self._prefixes:
            if path.startswith(r.path):
                return r
        return None

    def resolve(self, method: str, path: str) -> tuple[Handler | None, Route | None]:
        """``(handler, route)``; handler None with a route means 405, both None means 404."""
        route = self.match(path)
        if route is None:
            return None, None
        return route.handlers.get(method), route
