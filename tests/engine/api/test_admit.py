"""engine.api.common admission: authenticate, then admit (403, priority ceiling, concurrency
slot before the rate check and given back when it refuses, exact Retry-After, items over the
burst, store unavailable), with an injected clock; drop_headers rounds up and never sends inf."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable

import msgspec
import pytest

from infergate.engine.api.common import (
    ANONYMOUS,
    Admission,
    ApiError,
    admit,
    authenticate,
    drop_headers,
)
from infergate.engine.auth.keys import Key, KeyStore, hash_secret
from infergate.engine.auth.limits import STORE_UNAVAILABLE, Decision
from infergate.engine.auth.tenants import Auth
from infergate.engine.config import ModelConfig, PrioritiesConfig
from infergate.engine.executors.sim import SimExecutor
from infergate.engine.http.request import Request
from infergate.engine.scheduler.batcher import Batcher


def key(name: str, **kw: object) -> Key:
    return msgspec.convert({"name": name, "sha256": hash_secret(name), **kw}, Key)


def request(*headers: tuple[bytes, bytes]) -> Request:
    return Request("POST", b"/", "/", b"", "1.1", list(headers), b"", True, None)


BATCHER = Batcher(
    ModelConfig(name="m", priorities=PrioritiesConfig(levels=3)),
    SimExecutor(1, "embeddings", 4, 0, 0),
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def auth(*keys: Key, clock: Clock | None = None) -> Auth:
    return Auth(KeyStore(keys), clock=clock or Clock())


def run_admit(a: Auth, k: Key | None, level: int = 1, cost: int = 1) -> tuple[int, Admission]:
    return asyncio.run(admit(request(), a, k, BATCHER, level, cost))


def refused(a: Auth, k: Key, cost: int = 1) -> ApiError:
    with pytest.raises(ApiError) as e:
        run_admit(a, k, cost=cost)
    return e.value


def test_no_keys_admits_everyone_as_the_anonymous_tenant() -> None:
    a = Auth()
    assert authenticate(request(), a) is None
    assert run_admit(a, None, 2) == (2, ANONYMOUS)


def test_authenticate_reads_bearer_or_x_api_key() -> None:
    a = auth(key("s1"))
    assert authenticate(request((b"authorization", b"Bearer s1")), a) == key("s1")
    assert authenticate(request((b"x-api-key", b"s1")), a) == key("s1")
    for headers in ((), ((b"authorization", b"Bearer nope"),), ((b"authorization", b"Basic s1"),)):
        with pytest.raises(ApiError) as e:
            authenticate(request(*headers), a)
        assert (e.value.status, e.value.reason) == (401, "invalid_api_key")
    assert (b"WWW-Authenticate", b'Bearer realm="infergate"') in drop_headers("invalid_api_key")


def test_model_not_allowed_is_403() -> None:
    k = key("a", models=["other"])
    e = refused(auth(k), k)
    assert (e.status, e.reason) == (403, "model_not_allowed")


def test_priority_is_lowered_to_the_ceiling_and_the_model_levels() -> None:
    k = key("a", max_priority=2)
    level, adm = run_admit(auth(k), k, 1)
    assert level == 2
    assert adm.lowered == b"1->2"
    k9 = key("b", max_priority=9)
    assert run_admit(auth(k9), k9, 1)[0] == 3  # the model has 3 levels


def test_concurrency_slot_is_held_until_release_and_given_back_on_refusal() -> None:
    k = key("a", max_concurrency=1, requests_per_second=1.0, requests_burst=1)
    a = auth(k)
    _, adm = run_admit(a, k)
    assert a.gate.in_flight("a") == 1
    e = refused(a, k)
    assert (e.status, e.reason, e.retry_after) == (429, "concurrency_limit", 1.0)
    adm.release()
    adm.release()  # idempotent
    assert a.gate.in_flight("a") == 0
    e = refused(a, k)  # the request bucket is empty now: the slot goes back
    assert e.reason == "rate_limit_requests"
    assert a.gate.in_flight("a") == 0


def test_retry_after_is_the_buckets_exact_wait_rounded_up() -> None:
    clock = Clock()
    k = key("a", requests_per_second=0.4, requests_burst=1)
    a = auth(k, clock=clock)
    run_admit(a, k)
    clock.now += 0.1
    e = refused(a, k)
    assert e.retry_after == pytest.approx(2.4)
    assert (b"Retry-After", b"3") in drop_headers(e.reason, e.retry_after)


def test_items_over_the_burst_is_400_and_never_sends_inf() -> None:
    k = key("a", items_per_minute=60.0, items_burst=4)
    e = refused(auth(k), k, cost=5)
    assert (e.status, e.reason, e.retry_after) == (400, "items_exceed_burst", None)
    assert "split" in e.message
    assert all(name != b"Retry-After" for name, _ in drop_headers("x", math.inf))


class DownStore:
    async def check(self, key: Key, requests: int, items: int, now: float) -> Decision:
        return Decision(False, 0.4, STORE_UNAVAILABLE)

    def retain(self, keys: Iterable[Key]) -> None:
        pass

    def close(self) -> None:
        pass


def test_store_unavailable_with_fail_closed_is_503() -> None:
    k = key("a", requests_per_second=1.0, requests_burst=1, max_concurrency=2)
    a = Auth(KeyStore([k]), DownStore())
    e = refused(a, k)
    assert (e.status, e.reason) == (503, STORE_UNAVAILABLE)
    assert a.gate.in_flight("a") == 0
    assert a.metrics.snapshot()["a"].rejected == {STORE_UNAVAILABLE: 1}
