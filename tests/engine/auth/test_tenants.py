"""engine.auth.tenants (Auth: start-up errors, reloads and their audit line) and
engine.auth.metrics (per-key counters bounded by the configured keys, the collector)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from prometheus_client.registry import CollectorRegistry

from infergate.engine.auth.keys import KeysFileError, add_key, remove_key
from infergate.engine.auth.metrics import KeyCollector, KeyMetrics
from infergate.engine.auth.tenants import Auth, AuthConfigError, check_store_url
from infergate.engine.config import AuthConfig


def test_no_keys_file_means_no_keys() -> None:
    auth = Auth.from_config(AuthConfig(), "/nowhere")
    assert not auth.enabled
    assert auth.keys_file == ""
    with pytest.raises(KeysFileError, match="no \\[auth\\] keys_file"):
        auth.reload("admin")
    assert auth.reload_logged("sighup") is None


def test_keys_file_is_relative_to_the_config(tmp_path: Path) -> None:
    add_key(str(tmp_path / "k.toml"), "a")
    auth = Auth.from_config(AuthConfig(keys_file="k.toml"), str(tmp_path))
    assert auth.enabled
    assert auth.keys.names() == ("a",)
    assert auth.keys_file == str(tmp_path / "k.toml")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[[keys]\n", "not valid TOML"),
        ('[[keys]]\nname = "a"\nsha256 = "xyz"\n', "$.keys[0].sha256"),
        ('[[keys]]\nname = "a"\nsha256 = "' + "0" * 64 + '"\ncolour = 1\n', "colour"),
    ],
)
def test_a_malformed_keys_file_names_the_file_and_the_problem(
    tmp_path: Path, text: str, problem: str
) -> None:
    (tmp_path / "k.toml").write_text(text)
    with pytest.raises(AuthConfigError) as e:
        Auth.from_config(AuthConfig(keys_file="k.toml"), str(tmp_path))
    assert str(tmp_path / "k.toml") in str(e.value)
    assert problem in str(e.value)


@pytest.mark.parametrize(
    "url",
    ["http://h:6379", "redis://", "redis://h:port/0", "redis://h/zero", "unix://"],
)
def test_a_malformed_store_url_is_refused(url: str) -> None:
    with pytest.raises(AuthConfigError, match="rate_limit_store"):
        check_store_url(url)


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://h:6380", "redis://h", "unix:///run/r.sock"]
)
def test_usable_store_urls(url: str) -> None:
    check_store_url(url)


def test_reload_swaps_the_store_and_audits_the_names(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = str(tmp_path / "k.toml")
    add_key(path, "a")
    add_key(path, "b")
    auth = Auth.from_config(AuthConfig(keys_file="k.toml"), str(tmp_path))
    auth.metrics.admitted("b", 1)
    remove_key(path, "b")
    add_key(path, "c")
    with caplog.at_level(logging.INFO, logger="infergate.audit"):
        changes = auth.reload("admin")
    assert (changes.added, changes.removed, changes.changed) == (("c",), ("b",), ())
    assert auth.keys.names() == ("a", "c")
    assert "b" not in auth.metrics.snapshot()  # state bounded by the configured keys
    [record] = [r for r in caplog.records if r.name == "infergate.audit"]
    fields = record.fields  # type: ignore[attr-defined]
    assert fields["actor"] == "admin"
    assert (fields["added"], fields["removed"], fields["changed"]) == (["c"], ["b"], [])


def test_a_broken_file_on_reload_keeps_the_current_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "k.toml"
    add_key(str(path), "a")
    auth = Auth.from_config(AuthConfig(keys_file="k.toml"), str(tmp_path))
    path.write_text("not toml [")
    with caplog.at_level(logging.ERROR, logger="infergate.auth"):
        assert auth.reload_logged("sighup") is None
    assert auth.keys.names() == ("a",)
    assert "keys not reloaded" in caplog.text


def test_key_metrics_and_collector() -> None:
    m = KeyMetrics()
    m.admitted("a", 3)
    m.admitted("a", 2)
    m.finished("a", 0.002, None)
    m.finished("a", None, "deadline_exceeded")
    m.rejected("b", "rate_limit_requests")
    top = m.top()
    assert [(r.name, r.requests, r.items, r.rejected, r.in_flight) for r in top] == [
        ("a", 2, 5, 1, 0),
        ("b", 0, 0, 1, 0),
    ]
    reg = CollectorRegistry()
    reg.register(KeyCollector(m, lambda: 7))
    assert reg.get_sample_value("infergate_key_requests_total", {"key": "a"}) == 2
    assert reg.get_sample_value("infergate_key_items_total", {"key": "a"}) == 5
    assert (
        reg.get_sample_value(
            "infergate_key_rejections_total", {"key": "b", "reason": "rate_limit_requests"}
        )
        == 1
    )
    assert reg.get_sample_value("infergate_key_queue_wait_seconds_count", {"key": "a"}) == 1
    assert reg.get_sample_value("infergate_rate_limit_store_errors_total") == 7
