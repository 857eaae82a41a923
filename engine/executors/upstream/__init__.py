"""Gateway mode: executors whose model runs on upstream servers (replicas) over HTTP.

``replicas.py`` routes and ejects, ``client.py`` owns the event loop thread and aiohttp
session, ``executor.py`` is the shared executor; ``openai.py`` the embeddings executor,
``generate.py`` chat/completions (relayed through ``relay.py``), ``kserve.py`` tensors.
"""

from infergate.engine.executors.upstream.errors import (
    UPSTREAM_ERROR,
    UPSTREAM_TIMEOUT,
    UPSTREAM_UNAVAILABLE,
    UpstreamError,
)

__all__ = ["UPSTREAM_ERROR", "UPSTREAM_TIMEOUT", "UPSTREAM_UNAVAILABLE", "UpstreamError"]
