"""The keys file, the KeyStore's checks and the file edits behind ``infergate keys``."""

from __future__ import annotations

import os
import stat
import threading
import tomllib
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from infergate.engine.auth.keys import (
    SECRET_PREFIX,
    Key,
    KeysFileError,
    KeyStore,
    add_key,
    diff_stores,
    hash_secret,
    list_keys,
    presented_secret,
    read_keys_file,
    remove_key,
    render_keys_file,
    toml_string,
)

SECRET_A = b"ig-secret-a"
SECRET_B = b"ig-secret-b"


def _key(name: str, secret: bytes, **kw: object) -> Key:
    return msgspec.convert({"name": name, "sha256": hash_secret(secret), **kw}, Key)


def _write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "keys.toml"
    p.write_text(text)
    return str(p)


# -- parsing and validation -------------------------------------------------------------------


def test_full_entry_parses(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        f"""
[[keys]]
name = "team-a"
sha256 = "{hash_secret(SECRET_A)}"
models = ["minilm", "rerank"]
max_priority = 2
requests_per_second = 20.5
requests_burst = 40
items_per_minute = 60000
items_burst = 5000
max_concurrency = 8
weight = 3
""",
    )
    (k,) = read_keys_file(path).keys
    assert k.name == "team-a"
    assert k.models == ("minilm", "rerank")
    assert (k.max_priority, k.requests_per_second, k.requests_burst) == (2, 20.5, 40)
    assert (k.items_per_minute, k.items_burst, k.max_concurrency, k.weight) == (
        60000.0,
        5000,
        8,
        3.0,
    )


def test_defaults_allow_everything(tmp_path: Path) -> None:
    path = _write(tmp_path, f'[[keys]]\nname = "a"\nsha256 = "{hash_secret(SECRET_A)}"\n')
    (k,) = read_keys_file(path).keys
    assert k.models is None
    assert (k.max_priority, k.requests_per_second, k.items_per_minute) == (1, 0.0, 0.0)
    assert (k.max_concurrency, k.weight) == (0, 1.0)


def test_empty_file_has_no_keys(tmp_path: Path) -> None:
    assert read_keys_file(_write(tmp_path, "")).keys == ()
    assert not KeyStore.load(_write(tmp_path, "# nothing yet\n")).enabled


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('name = "a"\nsha256 = "abc"', "$.keys[0].sha256"),
        ('name = "a b"\nsha256 = "HASH"', "$.keys[0].name"),
        ('name = "a"\nsha256 = "HASH"\nsecret = "x"', "secret"),
        ('name = "a"\nsha256 = "HASH"\nmodels = []', "$.keys[0].models"),
        ('name = "a"\nsha256 = "HASH"\nmodels = [""]', "$.keys[0].models[0]"),
        ('name = "a"\nsha256 = "HASH"\nmax_priority = 0', "$.keys[0].max_priority"),
        ('name = "a"\nsha256 = "HASH"\nweight = 0', "$.keys[0].weight"),
        ('name = "a"\nsha256 = "HASH"\nrequests_per_second = -1', "requests_per_second"),
        ('name = "a"\nsha256 = "HASH"\nrequests_per_second = 5', "requests_burst must be"),
        ('name = "a"\nsha256 = "HASH"\nitems_per_minute = 5', "items_burst must be"),
        ('name = "a"\nsha256 = "HASH"\nmax_concurrency = "8"', "$.keys[0].max_concurrency"),
        ("sha256 = 'HASH'", "name"),
    ],
)
def test_malformed_entry_names_file_and_key_path(tmp_path: Path, body: str, needle: str) -> None:
    path = _write(tmp_path, "[[keys]]\n" + body.replace("HASH", hash_secret(SECRET_A)) + "\n")
    with pytest.raises(KeysFileError) as e:
        read_keys_file(path)
    assert str(e.value).startswith(f"keys file {path}: ")
    assert needle in str(e.value)


def test_unknown_top_level_table_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path, '[key]\nname = "a"\n')
    with pytest.raises(KeysFileError, match=r"unknown field `key`"):
        read_keys_file(path)


def test_duplicate_names_and_secrets_are_errors(tmp_path: Path) -> None:
    one = f'[[keys]]\nname = "a"\nsha256 = "{hash_secret(SECRET_A)}"\n'
    two = f'[[keys]]\nname = "a"\nsha256 = "{hash_secret(SECRET_B)}"\n'
    with pytest.raises(KeysFileError, match="key names must be unique: a"):
        read_keys_file(_write(tmp_path, one + two))
    same = f'[[keys]]\nname = "b"\nsha256 = "{hash_secret(SECRET_A).upper()}"\n'
    with pytest.raises(KeysFileError, match="keys a, b have the same sha256"):
        read_keys_file(_write(tmp_path, one + same))


def test_syntax_error_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(KeysFileError, match=r"keys\.toml is not valid TOML"):
        read_keys_file(_write(tmp_path, "[[keys]\n"))
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(KeysFileError, match=f"cannot read keys file {missing}: no such file"):
        KeyStore.load(missing)
    assert read_keys_file(missing, missing_ok=True).keys == ()
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(KeysFileError, match="is not UTF-8"):
        read_keys_file(str(tmp_path / "bin.toml"))


# -- authentication ---------------------------------------------------------------------------


def test_authenticate_matches_only_the_right_secret() -> None:
    store = KeyStore([_key("a", SECRET_A), _key("b", SECRET_B)])
    a = store.authenticate(SECRET_A)
    b = store.authenticate(SECRET_B)
    assert a is not None
    assert a.name == "a"
    assert b is not None
    assert b.name == "b"
    assert store.authenticate(b"ig-secret-c") is None
    assert store.authenticate(SECRET_A[:-1]) is None
    assert store.authenticate(b"") is None
    assert store.authenticate(bytes.fromhex(hash_secret(SECRET_A))) is None  # digest ≠ secret
    assert store.authenticate(b"x" * 100_000) is None


def test_uppercase_digest_in_file_still_matches() -> None:
    store = KeyStore([msgspec.convert({"name": "a", "sha256": hash_secret(SECRET_A).upper()}, Key)])
    k = store.authenticate(SECRET_A)
    assert k is not None
    assert k.name == "a"


@pytest.mark.parametrize(
    ("authorization", "x_api_key", "expected"),
    [
        (b"Bearer s3cret", None, b"s3cret"),
        (b"bearer   s3cret  ", None, b"s3cret"),
        (b"BEARER s3cret", b"other", b"s3cret"),
        (None, b" s3cret ", b"s3cret"),
        (b"Basic dXNlcjpwYXNz", b"s3cret", b"s3cret"),
        (b"Basic dXNlcjpwYXNz", None, None),
        (b"Bearer ", None, None),
        (b"Bearer", b"", None),
        (None, None, None),
    ],
)
def test_presented_secret(
    authorization: bytes | None, x_api_key: bytes | None, expected: bytes | None
) -> None:
    assert presented_secret(authorization, x_api_key) == expected
    assert KeyStore.from_request_headers(authorization, x_api_key) == expected


def test_authenticate_headers() -> None:
    store = KeyStore([_key("a", SECRET_A)])
    k = store.authenticate_headers(b"Bearer " + SECRET_A, None)
    assert k is not None
    assert k.name == "a"
    k = store.authenticate_headers(None, SECRET_A)
    assert k is not None
    assert k.name == "a"
    assert store.authenticate_headers(b"Bearer wrong", SECRET_A) is None  # Bearer wins
    assert store.authenticate_headers(None, None) is None


def test_may_use_and_effective_priority() -> None:
    free = _key("free", SECRET_A)
    capped = _key("capped", SECRET_B, models=["minilm"], max_priority=2)
    assert KeyStore.may_use(free, "anything")
    assert KeyStore.may_use(capped, "minilm")
    assert not KeyStore.may_use(capped, "rerank")
    assert KeyStore.effective_priority(free, 1) == (1, False)
    assert KeyStore.effective_priority(capped, 1) == (2, True)
    assert KeyStore.effective_priority(capped, 2) == (2, False)
    assert KeyStore.effective_priority(capped, 3) == (3, False)


def test_store_is_validated_and_diffed() -> None:
    with pytest.raises(msgspec.ValidationError, match="unique"):
        KeyStore([_key("a", SECRET_A), _key("a", SECRET_B)])
    old = KeyStore([_key("a", SECRET_A), _key("b", SECRET_B)])
    new = KeyStore([_key("a", SECRET_A, max_priority=2), _key("c", b"ig-c")])
    changes = diff_stores(old, new)
    assert (changes.added, changes.removed, changes.changed) == (("c",), ("b",), ("a",))
    assert changes
    assert not diff_stores(old, KeyStore(list(old.keys)))
    assert new.get("c") is not None
    assert new.get("b") is None
    assert new.names() == ("a", "c")


# -- writing ----------------------------------------------------------------------------------


@given(st.text(max_size=40))
def test_toml_string_round_trips(s: str) -> None:
    assert tomllib.loads(f"v = {toml_string(s)}\n")["v"] == s


def test_render_round_trips_every_field() -> None:
    keys = [
        _key(
            "a",
            SECRET_A,
            models=['we"ird\\model\n', "ü"],
            max_priority=3,
            requests_per_second=0.1,
            requests_burst=1,
            items_per_minute=1e-3,
            items_burst=7,
            max_concurrency=2,
            weight=2.5,
        ),
        _key("b", SECRET_B),
    ]
    parsed = msgspec.convert(tomllib.loads(render_keys_file(keys)), dict[str, list[Key]])
    assert parsed["keys"] == keys


def test_add_list_remove(tmp_path: Path) -> None:
    path = str(tmp_path / "keys.toml")
    assert list_keys(path) == ()
    secret = add_key(path, "team-a", models=["minilm"], max_priority=2, requests_per_second=5,
                     requests_burst=10, items_per_minute=600, items_burst=100,
                     max_concurrency=4, weight=2)  # fmt: skip
    assert secret.startswith(SECRET_PREFIX)
    assert len(secret) >= len(SECRET_PREFIX) + 43  # 32 random bytes, base64url
    text = Path(path).read_text()
    assert secret not in text
    assert hash_secret(secret) in text
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    second = add_key(path, "team-b")
    assert second != secret
    (a, b) = list_keys(path)
    assert (a.name, a.models, a.max_priority, a.requests_burst, a.items_burst) == (
        "team-a",
        ("minilm",),
        2,
        10,
        100,
    )
    assert b.models is None
    store = KeyStore.load(path)
    found = store.authenticate(secret.encode())
    assert found is not None
    assert found.name == "team-a"
    found = store.authenticate(second.encode())
    assert found is not None
    assert found.name == "team-b"

    removed = remove_key(path, "team-a")
    assert removed.name == "team-a"
    assert [k.name for k in list_keys(path)] == ["team-b"]
    assert KeyStore.load(path).authenticate(secret.encode()) is None
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == [".keys.toml.lock", "keys.toml"]  # no temp files


def test_add_refuses_duplicates_and_bad_values_without_touching_the_file(tmp_path: Path) -> None:
    path = str(tmp_path / "keys.toml")
    add_key(path, "a")
    before = Path(path).read_bytes()
    with pytest.raises(KeysFileError, match="already has a key named 'a'"):
        add_key(path, "a")
    with pytest.raises(KeysFileError, match=r"key 'b c': .*\$\.name"):
        add_key(path, "b c")
    with pytest.raises(KeysFileError, match="requests_burst must be at least 1"):
        add_key(path, "b", requests_per_second=3)
    with pytest.raises(KeysFileError, match="no key named 'zz'"):
        remove_key(path, "zz")
    assert Path(path).read_bytes() == before


def test_add_refuses_to_overwrite_a_broken_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "[[keys]]\nname = 'a'\nsha256 = 'short'\n")
    with pytest.raises(KeysFileError, match=r"\$\.keys\[0\]\.sha256"):
        add_key(path, "b")
    assert "short" in Path(path).read_text()


def test_concurrent_adds_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "keys.toml")
    errors: list[BaseException] = []

    def add(i: int) -> None:
        try:
            add_key(path, f"k{i}")
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(k.name for k in list_keys(path)) == [f"k{i}" for i in range(8)]
