"""Static files over real sockets: bytes, types, validators, ranges, and no escape from the root."""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

from tests.conftest import BIG_SIZE, SECRET, ServerFactory
from tests.support.client import HttpResponse, RawConnection, assert_json_error, build_request


def get(port: int, target: str, *headers: tuple[str, str], method: str = "GET") -> HttpResponse:
    with RawConnection(port) as c:
        return c.request(method, target, list(headers), head=method == "HEAD")


@pytest.mark.parametrize(
    ("name", "ctype"),
    [
        ("hello.txt", "text/plain; charset=utf-8"),
        ("index.html", "text/html; charset=utf-8"),
        ("data.json", "application/json; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("pixel.png", "image/png"),
        ("blob", "application/octet-stream"),
        ("big.bin", "application/octet-stream"),
    ],
)
def test_file_bytes_and_content_type(
    any_mode_server: int, static_root: Path, name: str, ctype: str
) -> None:
    r = get(any_mode_server, "/" + name)
    assert r.status == 200
    assert r.body == (static_root / name).read_bytes()
    assert r.header("content-type") == ctype
    assert r.header("content-length") == str(len(r.body))
    assert r.header("accept-ranges") == "bytes"


def test_javascript_content_type(app_server: int) -> None:
    r = get(app_server, "/app.js")
    assert r.status == 200
    assert r.header("content-type") in (
        "text/javascript; charset=utf-8",
        "application/javascript; charset=utf-8",
    )


def test_public_mount_serves_the_same_files(app_server: int, static_root: Path) -> None:
    assert get(app_server, "/public/hello.txt").body == (static_root / "hello.txt").read_bytes()


def test_big_file_is_served_intact_on_a_kept_alive_connection(
    app_server: int, static_root: Path
) -> None:
    digest = hashlib.sha256((static_root / "big.bin").read_bytes()).hexdigest()
    with RawConnection(app_server) as c:
        for _ in range(2):
            r = c.request("GET", "/big.bin")
            assert r.status == 200
            assert r.header("content-length") == str(BIG_SIZE)
            assert hashlib.sha256(r.body).hexdigest() == digest
        assert c.request("GET", "/healthz").status == 200


@pytest.mark.parametrize(
    ("spec", "start", "end"),
    [("bytes=100000-100099", 100000, 100099), ("bytes=65000-70000", 65000, 70000)],
)
def test_range_inside_big_file(
    any_mode_server: int, static_root: Path, spec: str, start: int, end: int
) -> None:
    data = (static_root / "big.bin").read_bytes()
    r = get(any_mode_server, "/big.bin", ("Range", spec))
    assert r.status == 206
    assert r.header("content-range") == f"bytes {start}-{end}/{BIG_SIZE}"
    assert r.body == data[start : end + 1]


def test_suffix_range_of_big_file(app_server: int, static_root: Path) -> None:
    r = get(app_server, "/big.bin", ("Range", "bytes=-1000"))
    assert r.status == 206
    assert r.body == (static_root / "big.bin").read_bytes()[-1000:]


def test_range_of_small_file(any_mode_server: int) -> None:
    r = get(any_mode_server, "/digits.txt", ("Range", "bytes=10-19"))
    assert r.status == 206
    assert r.header("content-range") == "bytes 10-19/100"
    assert r.header("content-length") == "10"
    assert r.body == b"0123456789"


def test_open_range_past_the_end_is_416(app_server: int) -> None:
    r = get(app_server, "/digits.txt", ("Range", "bytes=99999-"))
    assert_json_error(r, 416)
    assert r.header("content-range") == "bytes */100"


def test_closed_range_past_the_end_is_416(app_server: int) -> None:
    r = get(app_server, "/big.bin", ("Range", f"bytes={BIG_SIZE}-{BIG_SIZE + 10}"))
    assert_json_error(r, 416)
    assert r.header("content-range") == f"bytes */{BIG_SIZE}"


def test_range_positions_of_thousands_of_digits(start_server: ServerFactory) -> None:
    # int() raises past 4,300 digits: this was a 500 (issue 7.5); the test needs headers
    # longer than the shared servers allow
    port = start_server(limits={"max_header_bytes": 16384}).port
    r = get(port, "/digits.txt", ("Range", "bytes=0-" + "9" * 5000))
    assert r.status == 206
    assert r.header("content-range") == "bytes 0-99/100"
    assert len(r.body) == 100
    r = get(port, "/digits.txt", ("Range", "bytes=" + "9" * 5000 + "-"))
    assert_json_error(r, 416)
    assert r.header("content-range") == "bytes */100"


@pytest.mark.parametrize("spec", ["bytes=0-1,5-6", "pages=1-2", "bytes=9-5", "bytes=x-5"])
def test_unusable_range_serves_the_whole_file(
    app_server: int, static_root: Path, spec: str
) -> None:
    r = get(app_server, "/digits.txt", ("Range", spec))
    assert r.status == 200
    assert r.body == (static_root / "digits.txt").read_bytes()


def test_if_range_mismatch_serves_the_whole_file(app_server: int) -> None:
    r = get(app_server, "/digits.txt", ("Range", "bytes=0-4"), ("If-Range", '"other"'))
    assert r.status == 200
    assert len(r.body) == 100


def test_etag_and_if_none_match(app_server: int) -> None:
    with RawConnection(app_server) as c:
        first = c.request("GET", "/hello.txt")
        etag = first.header("etag")
        assert etag is not None
        assert etag.startswith('"')
        assert etag.endswith('"')
        for inm in (etag, f"W/{etag}", f'"nope", {etag}', "*"):
            r = c.request("GET", "/hello.txt", [("If-None-Match", inm)])
            assert r.status == 304, inm
            assert r.body == b""
            assert r.header("etag") == etag
            assert r.header("content-length") in (None, "0")
        r = c.request("GET", "/hello.txt", [("If-None-Match", '"nope"')])
        assert r.status == 200
        assert r.body == first.body


def test_last_modified_and_if_modified_since(app_server: int) -> None:
    with RawConnection(app_server) as c:
        first = c.request("GET", "/big.bin")
        lm = first.header("last-modified")
        assert lm is not None
        assert lm.endswith(" GMT")
        r = c.request("GET", "/big.bin", [("If-Modified-Since", lm)])
        assert r.status == 304
        assert r.body == b""
        old = "Mon, 01 Jan 1990 00:00:00 GMT"
        r = c.request("GET", "/big.bin", [("If-Modified-Since", old)])
        assert r.status == 200
        assert len(r.body) == BIG_SIZE
        r = c.request("GET", "/big.bin", [("If-Modified-Since", "not a date")])
        assert r.status == 200
        assert len(r.body) == BIG_SIZE


def test_head_of_files_has_length_and_no_body(app_server: int) -> None:
    with RawConnection(app_server) as c:
        for name, size in (("hello.txt", 13), ("big.bin", BIG_SIZE)):
            r = c.request("HEAD", "/" + name, head=True)
            assert r.status == 200
            assert r.header("content-length") == str(size)
        # no body was sent: the next response is parsed right after the heads
        assert c.request("GET", "/hello.txt").body == b"hello, world\n"


def test_directory_serves_its_index(any_mode_server: int, static_root: Path) -> None:
    assert get(any_mode_server, "/").body == (static_root / "index.html").read_bytes()
    r = get(any_mode_server, "/docs/")
    assert r.body == (static_root / "docs" / "index.html").read_bytes()
    assert r.header("content-type") == "text/html; charset=utf-8"


def test_directory_without_slash_redirects(app_server: int) -> None:
    r = get(app_server, "/docs")
    assert r.status == 301
    assert r.header("location") == "./docs/"  # relative: resolves to /docs/
    r = get(app_server, "/docs?x=1")
    assert r.status == 301
    assert r.header("location") == "./docs/?x=1"


def _resolves_to_a_path_on_this_host(location: str, target: str) -> str:
    """``location`` resolved against the request URL, as a browser does; its path."""
    url = urljoin(f"http://infergate.test{target}", location)
    parts = urlsplit(url)
    assert parts.scheme == "http"
    assert parts.netloc == "infergate.test", f"{location!r} leaves the host: {url}"
    return parts.path


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example.com",
        "///evil.example.com",
        "//evil.example.com?next=1",
        "/evil.example.com",
        "/%2fevil.example.com",
        "/%5cevil.example.com",
        "/\\evil.example.com",
        "/public//evil.example.com",
    ],
)
def test_folder_redirect_never_points_at_another_host(
    app_server: int, static_root: Path, target: str
) -> None:
    # issue 7.11: GET //evil.example.com answered 301 Location: //evil.example.com/
    folder = static_root / "evil.example.com"
    folder.mkdir(exist_ok=True)
    r = get(app_server, target)
    assert r.status in (301, 400, 404), r.status
    if r.status == 301:
        location = r.header("location") or ""
        # browsers (WHATWG URL) read all of these as a host, whatever the number of slashes
        assert not location.startswith(("//", "/\\", "\\")), location
        assert "://" not in location
        assert _resolves_to_a_path_on_this_host(location, target).endswith("/evil.example.com/")
    else:
        assert_json_error(r, r.status)


def test_directory_without_index_is_404(app_server: int) -> None:
    assert_json_error(get(app_server, "/empty/"), 404)


def test_dotfile_is_404(app_server: int) -> None:
    assert_json_error(get(app_server, "/.hidden"), 404)


@pytest.mark.parametrize(
    "target",
    [
        "/../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/public/..%2f..%2fetc/passwd",
        "/public/%2e%2e/%2e%2e/etc/passwd",
        "/docs/..%5c..%5cetc/passwd",
        "/a%00b",
        "/hello.txt%00.png",
        "http://x/../../etc/passwd",
    ],
)
def test_traversal_is_refused(app_server: int, target: str) -> None:
    r = get(app_server, target)
    assert r.status in (400, 404)
    assert_json_error(r, r.status)
    assert b"root:" not in r.body


@pytest.mark.parametrize("target", ["/leak.txt", "/leakdir/secret.txt", "/public/leak.txt"])
def test_symlink_to_outside_is_404(app_server: int, target: str) -> None:
    r = get(app_server, target)
    assert_json_error(r, 404)
    assert SECRET not in r.body


def test_symlink_inside_the_root_is_served(app_server: int) -> None:
    assert get(app_server, "/inner-link.txt").body == b"hello, world\n"


def test_post_to_static_is_405(app_server: int) -> None:
    with RawConnection(app_server) as c:
        r = c.request("POST", "/hello.txt", body=b"x")
        assert_json_error(r, 405)
        assert r.header("allow") == "GET, HEAD, OPTIONS"


def test_changed_file_is_served_fresh(app_server: int, static_root: Path) -> None:
    path = static_root / "changing.txt"
    path.write_bytes(b"version one")
    try:
        with RawConnection(app_server) as c:
            first = c.request("GET", "/changing.txt")
            assert first.body == b"version one"
            path.write_bytes(b"version two, longer")
            second = c.request("GET", "/changing.txt")
            assert second.body == b"version two, longer"
            assert second.header("etag") != first.header("etag")
            c.send(
                build_request(
                    "GET", "/changing.txt", [("If-None-Match", first.header("etag") or "")]
                )
            )
            assert c.read_response().status == 200
    finally:
        path.unlink()
