"""Control: runtime changes bounded by each model's ceiling, refused at start-up above it, and
audited; the admin routes over it: small bodies, every decode error a JSON 4xx."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import pytest

from infergate.engine.api.admin import MAX_ADMIN_BODY_BYTES, add_admin_routes
from infergate.engine.config import BatchingConfig, ModelConfig
from infergate.engine.control import Control, ControlError
from infergate.engine.executors.base import ExecutorError
from infergate.engine.executors.onnx import OnnxEmbeddingExecutor
from infergate.engine.executors.sim import SIM_BATCH_LIMIT
from infergate.engine.http.request import Request
from infergate.engine.http.response import Response
from infergate.engine.http.router import Router
from infergate.engine.models.registry import ModelRegistry


def sim(name: str = "m", **kw: Any) -> ModelConfig:
    return ModelConfig(name=name, executor="sim", dim=4, base_us=0, per_item_us=0, **kw)


@pytest.fixture
def control() -> Control:
    """Two sim models, not started (Control never needs the threads)."""
    registry = ModelRegistry([sim("m"), sim("capped", max_batch_size_limit=64)], ".")
    return Control(registry)


def test_runtime_max_batch_size_above_the_ceiling_is_400_naming_it(control: Control) -> None:
    with pytest.raises(ControlError) as e:
        control.update_batching("capped", {"max_batch_size": 512})
    assert e.value.status == 400
    assert "ceiling 64" in e.value.message
    assert control.update_batching("capped", {"max_batch_size": 64}).max_batch_size == 64


def test_the_sim_executor_ceiling_is_its_fixed_bound(control: Control) -> None:
    with pytest.raises(ControlError) as e:
        control.update_batching("m", {"max_batch_size": 4096})
    assert f"ceiling {SIM_BATCH_LIMIT}" in e.value.message
    assert control.update_batching("m", {"max_batch_size": SIM_BATCH_LIMIT}).max_batch_size == (
        SIM_BATCH_LIMIT
    )


def test_check_applies_the_ceiling_too(control: Control) -> None:
    """The SIGHUP reload validates a whole file through ``check`` before applying any of it."""
    with pytest.raises(ControlError):
        control.check("capped", batching=BatchingConfig(max_batch_size=65))
    control.check("capped", batching=BatchingConfig(max_batch_size=64))


def test_a_huge_preferred_batch_sizes_list_is_400(control: Control) -> None:
    with pytest.raises(ControlError) as e:
        control.update_batching("m", {"policy": "window", "preferred_batch_sizes": [1] * 1_000_000})
    assert e.value.status == 400
    assert "preferred_batch_sizes" in e.value.message


def test_start_up_max_batch_size_above_the_ceiling_is_an_error_naming_the_model() -> None:
    cfg = sim("big", max_batch_size_limit=16, batching=BatchingConfig(max_batch_size=32))
    registry = ModelRegistry([cfg], ".")
    with pytest.raises(ExecutorError) as e:
        registry.load()
    assert "model big" in str(e.value)
    assert "ceiling 16" in str(e.value)
    assert not any(t.is_alive() for b in registry for t in b._threads)


def test_start_up_within_the_ceiling_loads() -> None:
    registry = ModelRegistry([sim(batching=BatchingConfig(max_batch_size=SIM_BATCH_LIMIT))], ".")
    registry.load()
    try:
        assert [b.ceiling for b in registry] == [SIM_BATCH_LIMIT]
    finally:
        registry.close()


@pytest.mark.parametrize(("tokens", "ceiling"), [(128, 334), (256, 88), (512, 22)])
def test_the_onnx_ceiling_follows_its_memory_per_item(tokens: int, ceiling: int) -> None:
    """MiniLM (hidden 384): 2 GiB per batch over (350 T^2 + 5300 T) bytes per item."""
    ex = OnnxEmbeddingExecutor(1, "model.onnx", "tokenizer.json", 1, tokens)
    ex.dim = 384
    assert ex.batch_limit() == ceiling
    ex.dim = 768  # a larger encoder: half the batch
    assert ex.batch_limit() == ceiling // 2


def test_the_explicit_limit_overrides_the_derived_ceiling() -> None:
    registry = ModelRegistry([sim(max_batch_size_limit=2048)], ".")
    assert [b.ceiling for b in registry] == [2048]


# ---- audit -------------------------------------------------------------------------------------


def audit_fields(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.fields for r in caplog.records if r.name == "infergate.audit"]  # type: ignore[attr-defined]


def test_a_batching_change_is_one_audit_record(
    control: Control, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="infergate.audit")
    control.update_batching("m", {"max_batch_size": 8, "policy": "window"}, actor="ops@10.0.0.1")
    assert audit_fields(caplog) == [
        {
            "actor": "ops@10.0.0.1",
            "model": "m",
            "setting": "batching",
            "before": {"max_batch_size": 32, "policy": "adaptive"},
            "after": {"max_batch_size": 8, "policy": "window"},
        }
    ]
    (record,) = [r for r in caplog.records if r.name == "infergate.audit"]
    assert record.created > 0  # when: the record's time
    assert "ops@10.0.0.1" in record.getMessage()


def test_a_default_priority_change_is_audited_with_the_default_actor(
    control: Control, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="infergate.audit")
    control.set_default_priority("m", 2)
    assert audit_fields(caplog) == [
        {"actor": "admin", "model": "m", "setting": "priorities.default", "before": 1, "after": 2}
    ]


def test_a_refused_change_is_not_audited(
    control: Control, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="infergate.audit")
    with pytest.raises(ControlError):
        control.update_batching("m", {"max_batch_size": 100_000})
    with pytest.raises(ControlError):
        control.set_default_priority("m", 9)
    assert audit_fields(caplog) == []


# ---- admin routes ------------------------------------------------------------------------------


def patch(control: Control, path: str, body: bytes) -> Response:
    router = Router()
    add_admin_routes(router, control)
    handler, _ = router.resolve("PATCH", path)
    assert handler is not None
    req = Request("PATCH", path.encode(), path, b"", "1.1", [], body, True, None)
    resp = handler(req)
    assert isinstance(resp, Response)
    return resp


def error_message(resp: Response) -> str:
    body = msgspec.json.decode(resp.body)
    return str(body["error"]["message"])


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"a": "\xff"}', "UTF-8"),
        (b"[" * 5000 + b"]" * 5000, "nested"),
        (b'{"max_batch_size": ', "invalid JSON"),
    ],
)
def test_undecodable_admin_bodies_are_400_json(
    control: Control, body: bytes, expected: str
) -> None:
    resp = patch(control, "/admin/models/m/batching", body)
    assert resp.status == 400
    assert expected in error_message(resp)


def test_an_admin_body_over_64_kib_is_413_json(control: Control) -> None:
    body = b'{"preferred_batch_sizes": [' + b"1," * MAX_ADMIN_BODY_BYTES + b"1]}"
    resp = patch(control, "/admin/models/m/batching", body)
    assert resp.status == 413
    assert str(MAX_ADMIN_BODY_BYTES) in error_message(resp)


def test_admin_batching_above_the_ceiling_is_400_naming_it(control: Control) -> None:
    resp = patch(control, "/admin/models/capped/batching", b'{"max_batch_size": 4096}')
    assert resp.status == 400
    assert "ceiling 64" in error_message(resp)


def test_admin_changes_are_audited_as_the_admin(
    control: Control, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="infergate.audit")
    assert patch(control, "/admin/models/m/priorities", b'{"default": 2}').status == 200
    assert patch(control, "/admin/models/m/batching", b'{"max_batch_size": 4}').status == 200
    assert [(f["actor"], f["setting"]) for f in audit_fields(caplog)] == [
        ("admin", "priorities.default"),
        ("admin", "batching"),
    ]
