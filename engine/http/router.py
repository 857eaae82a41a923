"""Exact and prefix routes with method matching.

Lookup is one dict probe for exact paths, then the prefixes longest first. A path that matches
a route but not its methods answers 405 with ``Allow``; HEAD is served by the GET handler.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from engine.http.request import Request
from engine.http.response import AnyResponse

Handler = Callable[[Request], AnyResponse | Awaitable[AnyResponse]]

# Methods this server implements; any other method a parser accepts gets 501.
SUPPORTED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


class Route:
    """The handlers of one path (or prefix), by method."""

    __slots__ = ("allow", "handlers", "path", "prefix")

    def __init__(self, path: str, prefix: bool) -> None:
        self.path = path
        self.prefix = prefix
        self.handlers: dict[str, Handler] = {}
        self.allow = b""

    def add(self, methods: Iterable[str], handler: Handler) -> None:
        for m in methods:
            if m not in SUPPORTED_METHODS or m in ("HEAD", "OPTIONS"):
                raise ValueError(f"method {m!r} cannot be routed (HEAD and OPTIONS are implied)")
            if m in self.handlers:
                raise ValueError(f"{m} {self.path} is already routed")
            self.handlers[m] = handler
        if "GET" in self.handlers:
            self.handlers["HEAD"] = self.handlers["GET"]
        self.allow = ", ".join(sorted({*self.handlers, "OPTIONS"})).encode()


class Router:
    """Maps (method, path) to a handler. Built before serving, read-only afterwards."""

    def __init__(self) -> None:
        self._exact: dict[str, Route] = {}
        self._prefixes: list[Route] = []

    def add(
        self, methods: Iterable[str], path: str, handler: Handler, *, prefix: bool = False
    ) -> None:
        """Route ``methods`` on ``path`` (or every path starting with it, if ``prefix``)."""
        if not path.startswith("/"):
            raise ValueError(f"route path must start with '/': {path!r}")
        if prefix:
            route = next((r for r in self._prefixes if r.path == path), None)
            if route is None:
                route = Route(path, True)
                self._prefixes.append(route)
                self._prefixes.sort(key=lambda r: len(r.path), reverse=True)
        else:
            route = self._exact.setdefault(path, Route(path, False))
        route.add(methods, handler)

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
