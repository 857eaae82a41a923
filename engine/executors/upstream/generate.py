"""Chat and completions through OpenAI-compatible upstreams (task ``generate``): forwarded one
request per call, never merged (the upstream batches continuously), admitted by the Batcher's
priority queues and slots, the answer relayed chunk by chunk (see ``relay.py``)."""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from infergate.engine.executors.base import Outputs
from infergate.engine.executors.upstream.executor import UpstreamExecutor
from infergate.engine.executors.upstream.relay import Relay

log = logging.getLogger("infergate.upstream")

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"


class GenerateExecutor(UpstreamExecutor):
    """``executor = "openai"``, ``task = "generate"``. Items are :class:`Relay` objects, one
    per batch (each request has a batch key of its own); ``run`` holds its slot thread until
    the upstream call is over or the client has left."""

    kind = "openai"
    default_health_path = "/v1/models"

    def run(self, items: list[Any], slot: int) -> Outputs:
        for relay in items:
            if not isinstance(relay, Relay):
                raise TypeError(f"a generate model runs Relay items, not {type(relay).__name__}")
            self._call(relay, slot)
        return [None] * len(items)

    def _call(self, relay: Relay, slot: int) -> None:
        self.record(slot, None)
        if relay.cancelled:
            return  # the client left between dispatch and now
        body = dict(relay.body)
        body["model"] = self.upstream_model
        if self.cfg.forward_priority:
            body["priority"] = relay.level  # vLLM: lower runs first, as our levels
        self.record(slot, self.client.stream(relay.path, msgspec.json.encode(body), relay))
