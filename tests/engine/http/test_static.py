"""Static file path resolution (no escape from the root) and Range parsing."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote

import pytest

from infergate.engine.http.static import StaticError, content_type_for, parse_range, resolve_path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/ with files and links; outside/secret.txt next to it."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("a")
    (root / "sub" / "b.txt").write_text("b")
    (root / ".env").write_text("hidden")
    (root / "sub" / ".git").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "outside" / "secret.txt", root / "out-link.txt")
    os.symlink(tmp_path / "outside", root / "out-dir")
    os.symlink(root / "sub" / "b.txt", root / "in-link.txt")
    os.symlink("sub/b.txt", root / "rel-in-link.txt")
    os.symlink("../outside/secret.txt", root / "rel-out-link.txt")
    return root


def resolve(root: Path, raw: str) -> str:
    """resolve_path as the handler calls it: the raw path and its decoded form."""
    return resolve_path(os.path.realpath(root), raw.encode(), unquote(raw))


def status_of(root: Path, raw: str) -> int:
    with pytest.raises(StaticError) as info:
        resolve(root, raw)
    return info.value.status


def test_plain_files_resolve_inside_the_root(tree: Path) -> None:
    real = os.path.realpath(tree)
    assert resolve(tree, "a.txt") == os.path.join(real, "a.txt")
    assert resolve(tree, "sub/b.txt") == os.path.join(real, "sub", "b.txt")
    assert resolve(tree, "sub//b.txt") == os.path.join(real, "sub", "b.txt")
    assert resolve(tree, "") == real
    assert resolve(tree, "%61.txt") == os.path.join(real, "a.txt")


@pytest.mark.parametrize(
    "raw",
    [
        "..",
        "../outside/secret.txt",
        "sub/../../outside/secret.txt",
        "sub/./b.txt",
        "%2e%2e/outside/secret.txt",
        "%2E%2E/%2e%2e/etc/passwd",
        "sub/%2e%2e/a.txt",
        "..%2f..%2fetc/passwd",
        "sub%2fb.txt",
        "sub%2Fb.txt",
        "..%5c..%5cetc",
        "sub%5Cb.txt",
        "a%00.txt",
        "a.txt%00",
    ],
)
def test_escapes_and_encoded_separators_are_refused_with_400(tree: Path, raw: str) -> None:
    assert status_of(tree, raw) == 400


def test_nul_and_backslash_in_decoded_path_are_refused(tree: Path) -> None:
    root = os.path.realpath(tree)
    for rel in ("a\x00.txt", "sub\\b.txt"):
        with pytest.raises(StaticError) as info:
            resolve_path(root, rel.encode(), rel)
        assert info.value.status == 400


@pytest.mark.parametrize("raw", [".env", "sub/.git", "sub/.git/config", ".%2e%2e", "%2eenv"])
def test_dotfiles_are_hidden(tree: Path, raw: str) -> None:
    assert status_of(tree, raw) in (400, 404)
    if "%2e%2e" not in raw:
        assert status_of(tree, raw) == 404


@pytest.mark.parametrize(
    "raw", ["out-link.txt", "out-dir/secret.txt", "out-dir", "rel-out-link.txt"]
)
def test_symlink_pointing_outside_the_root_is_refused(tree: Path, raw: str) -> None:
    assert status_of(tree, raw) == 404


def test_symlink_inside_the_root_is_allowed(tree: Path) -> None:
    target = os.path.join(os.path.realpath(tree), "sub", "b.txt")
    assert resolve(tree, "in-link.txt") == target
    assert resolve(tree, "rel-in-link.txt") == target


def test_sibling_folder_sharing_the_root_prefix_is_outside(tmp_path: Path) -> None:
    root = tmp_path / "www"
    root.mkdir()
    (tmp_path / "www-private").mkdir()
    (tmp_path / "www-private" / "key").write_text("k")
    os.symlink(tmp_path / "www-private" / "key", root / "key")
    assert status_of(root, "key") == 404


# ---- Range -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "size", "expected"),
    [
        (b"bytes=0-9", 100, (0, 9)),
        (b"bytes=10-19", 100, (10, 19)),
        (b"bytes=-5", 100, (95, 99)),
        (b"bytes=5-", 100, (5, 99)),
        (b"bytes=99-", 100, (99, 99)),
        (b"bytes=0-0", 1, (0, 0)),
        (b"bytes=90-200", 100, (90, 99)),
        (b"bytes=0-99999", 100, (0, 99)),
        (b"bytes=-500", 100, (0, 99)),
        (b"BYTES=1-2", 100, (1, 2)),
    ],
)
def test_parse_range_satisfiable(value: bytes, size: int, expected: tuple[int, int]) -> None:
    assert parse_range(value, size) == expected


@pytest.mark.parametrize(
    ("value", "size"),
    [(b"bytes=100-", 100), (b"bytes=100-200", 100), (b"bytes=99999-", 100), (b"bytes=-0", 100)],
)
def test_parse_range_unsatisfiable_is_416(value: bytes, size: int) -> None:
    with pytest.raises(StaticError) as info:
        parse_range(value, size)
    assert info.value.status == 416


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"bytes=0-" + b"9" * 5000, (0, 99)),  # an end past the file: to the end
        (b"bytes=-" + b"9" * 5000, (0, 99)),  # a suffix longer than the file: all of it
        (b"bytes=" + b"0" * 5000 + b"7-" + b"0" * 4999 + b"9", (7, 9)),  # leading zeros
    ],
)
def test_positions_of_thousands_of_digits_are_read_as_numbers(
    value: bytes, expected: tuple[int, int]
) -> None:
    # int() raises ValueError past 4,300 digits: this was a 500 (issue 7.5)
    assert parse_range(value, 100) == expected


def test_start_of_thousands_of_digits_is_past_the_end() -> None:
    with pytest.raises(StaticError) as info:
        parse_range(b"bytes=" + b"9" * 5000 + b"-", 100)
    assert info.value.status == 416


def test_suffix_range_of_empty_file_is_416() -> None:
    with pytest.raises(StaticError):
        parse_range(b"bytes=-5", 0)


@pytest.mark.parametrize("value", [b"bytes=0-1,5-6", b"bytes=0-1, 3-4", b"bytes=-1,-2"])
def test_multiple_ranges_are_ignored(value: bytes) -> None:
    assert parse_range(value, 100) is None


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"bytes",
        b"bytes=",
        b"bytes=-",
        b"bytes=abc",
        b"bytes=5",
        b"bytes=9-5",
        b"items=0-5",
        b"bytes=a-b",
        b"bytes=5-x",
        b"bytes=x-5",
        b"bytes=1x-5",
        b"bytes=0x1-5",
    ],
)
def test_garbage_range_is_ignored(value: bytes) -> None:
    assert parse_range(value, 100) is None


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("a.html", b"text/html; charset=utf-8"),
        ("a.txt", b"text/plain; charset=utf-8"),
        ("a.css", b"text/css; charset=utf-8"),
        ("a.json", b"application/json; charset=utf-8"),
        ("a.png", b"image/png"),
        ("a", b"application/octet-stream"),
        ("a.tar.gz", b"application/octet-stream"),
    ],
)
def test_content_type_for(path: str, expected: bytes) -> None:
    assert content_type_for(path) == expected
