"""Request-smuggling vectors: each is refused with a JSON error and the connection is closed.

Every vector carries a second request after the ambiguous one; a server that parsed the first
request differently from its intended meaning would answer that second request too.
"""

from __future__ import annotations

import pytest

from tests.support.client import RawConnection, assert_json_error

SMUGGLED = b"GET /healthz?smuggled HTTP/1.1\r\nHost: x\r\n\r\n"

VECTORS: list[tuple[str, bytes, int]] = [
    (
        "content-length-and-transfer-encoding",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n" + SMUGGLED,
        400,
    ),
    (
        "transfer-encoding-and-content-length",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n"
        b"0\r\n\r\n" + SMUGGLED,
        400,
    ),
    (
        "two-different-content-lengths",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 44\r\n\r\n" + SMUGGLED,
        400,
    ),
    (
        "content-length-list",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0, 44\r\n\r\n" + SMUGGLED,
        400,
    ),
    (
        "content-length-not-a-number",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4x\r\n\r\n" + SMUGGLED,
        400,
    ),
    (
        "chunked-not-final",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"
        + SMUGGLED,
        400,
    ),
    (
        "unsupported-coding-before-chunked",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
        + SMUGGLED,
        501,
    ),
    (
        "transfer-encoding-in-http10",
        b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
        400,
    ),
    (
        "space-before-colon",
        b"GET / HTTP/1.1\r\nHost : x\r\n\r\n" + SMUGGLED,
        400,
    ),
    (
        "space-before-colon-in-transfer-encoding",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n"
        b"0\r\n\r\n" + SMUGGLED,
        400,
    ),
    (
        "obs-fold",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n" + SMUGGLED,
        400,
    ),
    (
        "obs-fold-transfer-encoding",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
        400,
    ),
    (
        "bare-cr-in-header",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rX-B: b\r\n\r\n" + SMUGGLED,
        400,
    ),
    (
        "control-byte-in-header-value",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n" + SMUGGLED,
        400,
    ),
    (
        "missing-host-in-http11",
        b"GET / HTTP/1.1\r\nX-A: a\r\n\r\n" + SMUGGLED,
        400,
    ),
    (
        "duplicate-host",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" + SMUGGLED,
        400,
    ),
    (
        "bare-lf-line-endings",
        b"GET / HTTP/1.1\nHost: x\n\n" + SMUGGLED,
        400,
    ),
    (
        "space-after-version",
        b"GET / HTTP/1.1 \r\nHost: x\r\n\r\n" + SMUGGLED,
        400,
    ),
    (
        "bad-chunk-size",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n" + SMUGGLED,
        400,
    ),
]


@pytest.mark.parametrize(("data", "status"), [v[1:] for v in VECTORS], ids=[v[0] for v in VECTORS])
def test_smuggling_vector_is_refused_and_closes(app_server: int, data: bytes, status: int) -> None:
    with RawConnection(app_server) as c:
        c.send(data)
        assert_json_error(c.read_response(), status)
        c.assert_closed()  # nothing else: in particular no answer to the smuggled request


def test_refused_request_after_a_good_one_keeps_the_good_answer(app_server: int) -> None:
    with RawConnection(app_server) as c:
        c.send(SMUGGLED + b"GET / HTTP/1.1\r\nHost : x\r\n\r\n")
        assert c.read_response().status == 200
        assert_json_error(c.read_response(), 400)
        c.assert_closed()
