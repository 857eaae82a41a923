"""Gateway mode: executors whose model runs on upstream servers (replicas) over HTTP.

``replicas.py`` routes and ejects, ``client.py`` owns the model's event loop thread and
aiohttp session, ``pools.py`` the keep-alive pools on the reactors' loops, ``lean.py`` the
client those use, ``executor.py`` is the shared executor; ``openai.py`` the embeddings executor,
``generate.py`` chat/completions (relayed through ``relay.py``), ``kserve.py`` tensors.
"""

from infergate.engine.executors.upstream.errors import (
    UPSTREAM_ERROR,
    UPSTREAM_TIMEOUT,
    UPSTREAM_UNAVAILABLE,
    UpstreamError,
)

__all__ = ["UPSTREAM_ERROR", "UPSTREAM_TIMEOUT", "UPSTREAM_UNAVAILABLE", "UpstreamError"]
