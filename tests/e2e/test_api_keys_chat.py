"""API keys on chat/completions (issue 11): the openai SDK's ``api_key`` authenticates, a wrong
one is an AuthenticationError, the key's ceiling lowers the priority (and says so), and the
key's concurrency slot is held for the upstream call and released when it is over, streamed
or not."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from infergate.engine.auth.keys import add_key
from tests.support.client import RawConnection
from tests.support.server import ServerProcess
from tests.support.stub_upstream import StubUpstream
from tests.support.wait import wait_until

WAIT_S = 10.0
CONFIG = """
sub_reactors = 1

[auth]
keys_file = "keys.toml"

[[models]]
name = "chat"
executor = "openai"
task = "generate"
upstreams = ["{a}"]
[models.upstream]
max_inflight = 2
health_interval_ms = 100
[models.priorities]
levels = 2
"""
MESSAGES: Any = [{"role": "user", "content": "hello"}]


class Box:
    def __init__(self, base: Path) -> None:
        self.stub = StubUpstream(log_path=base / "stub.log")
        keys = str(base / "keys.toml")
        self.secret = add_key(keys, "team", max_priority=2, max_concurrency=1)
        cfg = base / "c.toml"
        cfg.write_text(CONFIG.format(a=self.stub.url))
        self.server = ServerProcess(cfg)

    def sdk(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"http://127.0.0.1:{self.server.port}/v1", api_key=key, max_retries=0
        )

    def in_flight(self) -> int:
        assert self.server.admin_port is not None
        with RawConnection(self.server.admin_port) as c:
            keys = c.request("GET", "/admin/keys").json()["keys"]
        return int(next(k["in_flight"] for k in keys if k["name"] == "team"))


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    b = Box(tmp_path_factory.mktemp("keys_chat"))
    try:
        yield b
    finally:
        b.server.stop()
        b.stub.stop()


def test_a_wrong_key_is_an_authentication_error(box: Box) -> None:
    with pytest.raises(openai.AuthenticationError) as e:
        box.sdk("ig-wrong").chat.completions.create(model="chat", messages=MESSAGES)
    assert e.value.code == "invalid_api_key"


def test_the_key_is_served_and_its_slot_released_after_each_call(box: Box) -> None:
    client = box.sdk(box.secret)
    for _ in range(2):  # a slot that leaked would refuse the second call with 429
        raw = client.chat.completions.with_raw_response.create(
            model="chat", messages=MESSAGES, extra_headers={"X-Priority": "1"}
        )
        assert raw.headers.get("x-infergate-priority-lowered") == "1->2"
        assert raw.parse().choices
        wait_until(lambda: box.in_flight() == 0, WAIT_S, "the key's slot is released")
    for _ in range(2):
        chunks = list(
            client.chat.completions.create(
                model="chat", messages=MESSAGES, stream=True, extra_body={"stub": {"chunks": 3}}
            )
        )
        assert chunks
        wait_until(lambda: box.in_flight() == 0, WAIT_S, "the stream's slot is released")
