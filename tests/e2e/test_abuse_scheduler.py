"""Issue 7.1 end to end: one big request neither monopolises its model nor outlives its client
or its deadline. A sim model with 20 ms batches of 4 items: a 400-item request is 100 batches,
about 2 s of executor time, so each test's order of events is fixed by the work, not by timing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.client import RawConnection, build_request
from tests.support.server import ServerProcess
from tests.support.wait import wait_until

ITEMS = 400
WAIT_S = 20.0
CONFIG = """listen = "127.0.0.1:0"
sub_reactors = 1

[[models]]
name = "sim"
task = "embeddings"
executor = "sim"
dim = 4
base_us = 20000
per_item_us = 0
[models.batching]
policy = "adaptive"
max_batch_size = 4
[models.priorities]
levels = 1
default = 1
queue = [{ max_queue_size = 64, timeout_us = 0, allow_override = true }]
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG, encoding="utf-8")
    with ServerProcess(cfg) as s:
        yield s


def embed_request(n: int, headers: list[tuple[str, str]] | None = None) -> bytes:
    body = json.dumps({"model": "sim", "input": [f"text {i}" for i in range(n)]}).encode()
    return build_request(
        "POST", "/v1/embeddings", [("Content-Type", "application/json"), *(headers or [])], body
    )


def stats(s: ServerProcess) -> dict[str, Any]:
    with RawConnection(s.admin_port or s.port) as c:
        (model,) = c.request("GET", "/admin/models").json()["models"]
    return dict(model["stats"])


def first_batch_ran(s: ServerProcess) -> bool:
    return bool(stats(s)["batches"] >= 1)


def test_a_small_request_overtakes_the_rest_of_a_big_one(server: ServerProcess) -> None:
    big = RawConnection(server.port)
    big.send(embed_request(ITEMS))
    wait_until(lambda: first_batch_ran(server), WAIT_S, "the big request's first batch ran")
    with RawConnection(server.port) as small:
        small.send(embed_request(1))
        assert small.read_response().status == 200
    st = stats(server)
    assert (st["submitted"], st["succeeded"]) == (2, 1)  # the big one is still running
    big.close()


def test_a_client_that_leaves_stops_its_request(server: ServerProcess) -> None:
    gone = RawConnection(server.port)
    gone.send(embed_request(ITEMS))
    wait_until(lambda: first_batch_ran(server), WAIT_S, "the request's first batch ran")
    gone.close()
    wait_until(
        lambda: stats(server)["rejected"].get("client_disconnected") == 1,
        WAIT_S,
        "the disconnect dropped the request's unstarted parts",
    )
    with RawConnection(server.port) as after:  # one slot: this runs after any part in flight
        after.send(embed_request(1))
        assert after.read_response().status == 200
    assert stats(server)["items"] - 1 < ITEMS


def test_a_deadline_covers_every_part_of_a_request(server: ServerProcess) -> None:
    with RawConnection(server.port) as c:
        c.send(embed_request(ITEMS, [("X-Request-Timeout-Ms", "200")]))
        r = c.read_response()
    assert r.status == 504
    assert r.header("X-Infergate-Drop-Reason") == "deadline_exceeded"
    assert stats(server)["items"] < ITEMS
