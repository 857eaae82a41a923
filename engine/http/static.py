"""Static files from one root folder, with validators, ranges and a small-file cache.

No path escapes the root: encoded slashes, backslashes, NUL, ``.``/``..`` segments and dotfiles
are refused before touching the file system, and the resolved real path (symlinks followed) must
stay inside the real root.

uvloop does not implement ``loop.sendfile`` (it raises NotImplementedError, even with the
fallback), so files above ``SMALL_FILE_BYTES`` are streamed by the protocol in chunks read off
the reactor thread; small files are kept in memory, revalidated by one ``stat`` per request, and
sent with their headers in one write.
"""

from __future__ import annotations

import mimetypes
import os
import stat
import time
from email.utils import formatdate, parsedate_to_datetime
from typing import NamedTuple

from infergate.engine.http.request import Request
from infergate.engine.http.response import (
    AnyResponse,
    FileResponse,
    Headers,
    Response,
    error_response,
)

SMALL_FILE_BYTES = 64 * 1024
CACHE_MAX_BYTES = 32 * 1024 * 1024
RESOLVE_TTL_S = 1.0
"""How long a request path's checked real path is reused. ``realpath`` costs 4+ ``lstat`` calls
(measured: 13 of 18 µs per cached 4 KiB file); a symlink changed inside the root is therefore
followed within one second. A reused result is a path that was inside the root when checked."""
RESOLVE_CACHE_ENTRIES = 4096


class StaticError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Meta(NamedTuple):
    key: tuple[int, int, int]  # (inode, size, mtime_ns): the file's identity and version
    etag: bytes
    last_modified: bytes
    mtime: int
    content_type: bytes
    data: bytes | None  # in-memory body for small files


def content_type_for(path: str) -> bytes:
    ctype, encoding = mimetypes.guess_type(path, strict=False)
    if ctype is None or encoding is not None:
        return b"application/octet-stream"
    if ctype.startswith("text/") or ctype in ("application/javascript", "application/json"):
        ctype += "; charset=utf-8"
    return ctype.encode("latin-1")


def resolve_path(root: str, raw_rel: bytes, rel: str) -> str:
    """Map a request path below a mount to a file path inside ``root`` (a real path).

    Args:
        root: the real, absolute root folder.
        raw_rel: the path below the mount as sent (percent-encoded).
        rel: the same path percent-decoded.

    Raises:
        StaticError: 400 for a path that tries to escape, 404 for hidden or missing files.
    """
    lowered = raw_rel.lower()
    if b"%2f" in lowered or b"%5c" in lowered or b"%00" in lowered:
        raise StaticError(400, "encoded '/', '\\' or NUL is not allowed in a file path")
    if "\x00" in rel or "\\" in rel:
        raise StaticError(400, "NUL or '\\' is not allowed in a file path")
    parts = [p for p in rel.split("/") if p]
    for p in parts:
        if p in (".", ".."):
            raise StaticError(400, "'.' and '..' segments are not allowed in a file path")
        if p.startswith("."):
            raise StaticError(404, "not found")
    real = os.path.realpath(os.path.join(root, *parts))
    if real != root and not real.startswith(root + os.sep):
        raise StaticError(404, "not found")
    return real


def parse_range(value: bytes, size: int) -> tuple[int, int] | None:
    """One ``bytes=`` range as (start, end inclusive); None if the header is not usable.

    Raises:
        StaticError: 416 when the range is valid but not satisfiable.
    """
    unit, _, spec = value.partition(b"=")
    if unit.strip().lower() != b"bytes" or b"," in spec:
        return None  # other units or multiple ranges: serve the whole file (RFC 9110 §14.2)
    first, dash, last = spec.strip().partition(b"-")
    # bytes.isdigit() accepts ASCII digits only (no signs, underscores or spaces)
    if not dash or (first and not first.isdigit()) or (last and not last.isdigit()):
        return None
    if not first:
        if not last:
            return None
        n = _position(last)
        if n == 0 or size == 0:
            raise StaticError(416, "range not satisfiable")
        return max(0, size - n), size - 1
    start = _position(first)
    if start >= size:
        raise StaticError(416, "range not satisfiable")
    end = _position(last) if last else size - 1
    if end < start:
        return None
    return start, min(end, size - 1)


def _position(digits: bytes) -> int:
    """A byte position of ASCII digits; any past 18 significant digits is beyond every file.

    ``int()`` refuses more than 4,300 digits (ValueError), and RFC 9110 §14.1.2 asks a server to
    accept positions of any length (an end past the file means "to the end").
    """
    significant = digits.lstrip(b"0")
    return int(significant or b"0") if len(significant) <= 18 else 1 << 62


class StaticFiles:
    """Route handler serving files below ``root`` for requests under ``mount``.

    Thread-safe: called from every sub-reactor; the cache is a dict whose get/set are atomic
    under the GIL, and a race only reads the same file twice.
    """

    def __init__(self, root: str, mount: str = "/") -> None:
        self.root = os.path.realpath(root)
        self.mount = mount
        self._cache: dict[str, _Meta] = {}
        self._cache_bytes = 0
        self._resolved: dict[bytes, tuple[float, str]] = {}

    def __call__(self, req: Request) -> AnyResponse:
        try:
            return self._serve(req)
        except StaticError as e:
            return error_response(e.status, e.message)

    def _serve(self, req: Request) -> AnyResponse:
        path = self._resolve(req)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise StaticError(404, "not found") from None
        except OSError as e:
            raise StaticError(403, f"cannot read file: {e.strerror}") from None
        if stat.S_ISDIR(st.st_mode):
            if not req.path.endswith("/"):
                return Response(b"", 301, b"", [(b"Location", _slash_redirect(req))])
            path = os.path.join(path, "index.html")
            try:
                st = os.stat(path)
            except OSError:
                raise StaticError(404, "not found") from None
        if not stat.S_ISREG(st.st_mode):
            raise StaticError(404, "not found")
        meta = self._meta(path, st)
        validators: Headers = [
            (b"ETag", meta.etag),
            (b"Last-Modified", meta.last_modified),
            (b"Accept-Ranges", b"bytes"),
        ]
        if self._not_modified(req, meta):
            return Response(b"", 304, b"", validators)
        size = st.st_size
        rng = None
        range_h = req.header(b"range")
        if range_h is not None and req.method in ("GET", "HEAD"):
            if_range = req.header(b"if-range")
            if if_range is None or if_range in (meta.etag, meta.last_modified):
                try:
                    rng = parse_range(range_h, size)
                except StaticError:
                    unsatisfiable = [(b"Content-Range", b"bytes */%d" % size)]
                    return error_response(416, "range not satisfiable", headers=unsatisfiable)
        start, end, status = (rng[0], rng[1], 206) if rng else (0, size - 1, 200)
        if rng:
            validators.append((b"Content-Range", b"bytes %d-%d/%d" % (start, end, size)))
        if meta.data is not None:
            return Response(meta.data[start : end + 1], status, meta.content_type, validators)
        f = open(path, "rb")  # noqa: SIM115 - closed by the protocol after streaming
        return FileResponse(f, start, end - start + 1, status, meta.content_type, validators)

    def _resolve(self, req: Request) -> str:
        now = time.monotonic()
        hit = self._resolved.get(req.raw_path)
        if hit is not None and now - hit[0] < RESOLVE_TTL_S:
            return hit[1]
        n = len(self.mount)
        path = resolve_path(self.root, req.raw_path[n:], req.path[n:])
        if len(self._resolved) >= RESOLVE_CACHE_ENTRIES:
            self._resolved.clear()
        self._resolved[req.raw_path] = (now, path)
        return path

    def _meta(self, path: str, st: os.stat_result) -> _Meta:
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        meta = self._cache.get(path)
        if meta is not None and meta.key == key:
            return meta
        data = None
        if st.st_size <= SMALL_FILE_BYTES:
            with open(path, "rb") as f:
                data = f.read(SMALL_FILE_BYTES + 1)
            if len(data) != st.st_size:  # changed while reading: serve it, do not cache it
                st = os.stat(path)
                key = (st.st_ino, len(data), st.st_mtime_ns)
        mtime = int(st.st_mtime)
        meta = _Meta(
            key,
            b'"%x-%x"' % (st.st_mtime_ns, st.st_size),
            formatdate(mtime, usegmt=True).encode("latin-1"),
            mtime,
            content_type_for(path),
            data,
        )
        if data is not None:
            if self._cache_bytes + len(data) > CACHE_MAX_BYTES:
                self._cache.clear()
                self._cache_bytes = 0
            self._cache[path] = meta
            self._cache_bytes += len(data)
        return meta

    @staticmethod
    def _not_modified(req: Request, meta: _Meta) -> bool:
        inm = req.header(b"if-none-match")
        if inm is not None:
            tags = [t.strip().removeprefix(b"W/") for t in inm.split(b",")]
            return b"*" in tags or meta.etag in tags
        ims = req.header(b"if-modified-since")
        if ims is not None:
            try:
                since = parsedate_to_datetime(ims.decode("latin-1")).timestamp()
            except (TypeError, ValueError, IndexError):
                return False
            return meta.mtime <= since
        return False


def _slash_redirect(req: Request) -> bytes:
    """``Location`` for a folder asked without its trailing slash: ``./name/``, relative.

    Never built from the whole request path: ``GET //evil.example.com`` would become the
    scheme-relative ``//evil.example.com/``, another host (an open redirect). ``./`` plus the
    last segment resolves against the request URL to the same path plus ``/`` (RFC 3986 §5.2),
    cannot name a host, and ``./`` keeps a segment like ``a:b`` from reading as a scheme.
    """
    location = b"./" + req.raw_path.rpartition(b"/")[2] + b"/"
    return location + b"?" + req.query if req.query else location
