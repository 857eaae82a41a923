"""The served models: one executor and one Batcher each, built from the config and the model
repository, loaded, reloaded and unloaded while serving (Triton's repository extension)."""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import msgspec

from infergate.engine.config import BatchingConfig, ModelConfig
from infergate.engine.executors.base import Executor, ExecutorError, batch_ceiling
from infergate.engine.executors.onnx import OnnxEmbeddingExecutor
from infergate.engine.executors.onnx_tensor import OnnxTensorExecutor
from infergate.engine.executors.onnx_text import TEXT_TASKS, build_text_executor
from infergate.engine.executors.sim import SimExecutor
from infergate.engine.executors.spec import ModelSpec
from infergate.engine.executors.tensorrt import TensorRTEmbeddingExecutor
from infergate.engine.executors.tensorrt_tensor import TensorRTTensorExecutor
from infergate.engine.executors.upstream.generate import GenerateExecutor
from infergate.engine.executors.upstream.kserve import KServeTensorExecutor
from infergate.engine.executors.upstream.openai import OpenAIEmbeddingsExecutor
from infergate.engine.models.embeddings import resolve_model_file, resolve_tokenizer_file
from infergate.engine.models.memory import release_memory
from infergate.engine.models.repository import RepositoryError, model_folders, scan_folder
from infergate.engine.scheduler.batcher import Batcher

log = logging.getLogger("infergate.models")


def build_executor(cfg: ModelConfig, base_dir: str) -> Executor:
    """The executor a model's config asks for (not yet loaded).

    Raises:
        ExecutorError: the combination is not supported or files are missing.
    """
    if cfg.executor == "sim":
        return SimExecutor(
            cfg.instances, cfg.task, cfg.dim, cfg.base_us, cfg.per_item_us, cfg.error_rate
        )
    if cfg.task == "tensor" and cfg.executor in ("onnxruntime", "tensorrt"):
        return build_tensor_executor(cfg, base_dir)
    if cfg.executor == "onnxruntime" and cfg.task in TEXT_TASKS:
        # any text model (MiniLM included): token lengths known at submit, so token budgets
        # work; the outputs equal the MiniLM-only executor's
        return build_text_executor(cfg, base_dir)
    if cfg.executor in ("onnxruntime", "tensorrt"):
        if cfg.task != "embeddings":
            raise ExecutorError(f"model {cfg.name}: {cfg.executor} serves task 'embeddings' only")
        if not cfg.model_file or not cfg.tokenizer_file:
            raise ExecutorError(f"model {cfg.name}: model_file and tokenizer_file are required")
        model = resolve_model_file(cfg.model_file, base_dir)
        tokenizer = resolve_tokenizer_file(cfg.tokenizer_file, base_dir)
        if cfg.executor == "tensorrt":
            return TensorRTEmbeddingExecutor(
                cfg.instances, model, tokenizer, cfg.batching.max_batch_size,
                cfg.max_input_tokens, cfg.trt_cache_dir or None,
            )  # fmt: skip
        return OnnxEmbeddingExecutor(
            cfg.instances, model, tokenizer, cfg.intra_op_threads, cfg.max_input_tokens,
            tuple(cfg.providers),
        )  # fmt: skip
    if cfg.executor == "openai" and cfg.task == "embeddings":
        try:
            return OpenAIEmbeddingsExecutor(
                cfg.name, cfg.upstreams, cfg.upstream_model, cfg.upstream
            )
        except ExecutorError as e:
            raise ExecutorError(f"model {cfg.name}: {e}") from e
    if cfg.executor == "openai" and cfg.task == "generate":
        if cfg.batching.policy == "window":
            raise ExecutorError(
                f"model {cfg.name}: a generate model is never merged (one request per upstream "
                "call): batching.policy 'window' would only delay it; use 'adaptive' or 'off'"
            )
        try:
            return GenerateExecutor(cfg.name, cfg.upstreams, cfg.upstream_model, cfg.upstream)
        except ExecutorError as e:
            raise ExecutorError(f"model {cfg.name}: {e}") from e
    if cfg.executor == "kserve" and cfg.task == "tensor":
        try:
            return KServeTensorExecutor(
                cfg.name, cfg.upstreams, cfg.upstream_model, cfg.upstream,
                max_batch_size=cfg.batching.max_batch_size,
            )  # fmt: skip
        except ExecutorError as e:
            raise ExecutorError(f"model {cfg.name}: {e}") from e
    if cfg.executor in ("openai", "kserve"):
        raise ExecutorError(
            f"model {cfg.name}: executor {cfg.executor!r} with task {cfg.task!r} is not "
            "supported (gateway mode: openai for embeddings and generate, kserve for tensor)"
        )
    raise ExecutorError(f"model {cfg.name}: unknown executor {cfg.executor!r}")


def build_tensor_executor(cfg: ModelConfig, base_dir: str) -> Executor:
    """Any ONNX model (task ``tensor``): ONNX Runtime, or TensorRT (an engine built from the
    ONNX file, or a prebuilt ``.plan``)."""
    if not cfg.model_file:
        raise ExecutorError(f"model {cfg.name}: task 'tensor' needs a model_file")
    model = resolve_model_file(cfg.model_file, base_dir)
    size = cfg.batching.max_batch_size
    if cfg.executor == "tensorrt":
        return TensorRTTensorExecutor(cfg.instances, model, size, cfg.trt_cache_dir or None)
    return OnnxTensorExecutor(
        cfg.instances, model, cfg.intra_op_threads, tuple(cfg.providers), size
    )


def check_ceiling(cfg: ModelConfig, ceiling: int) -> None:
    """Raise ExecutorError (naming the model) if its start-up ``max_batch_size`` is above
    ``ceiling``."""
    size = cfg.batching.max_batch_size
    if size > ceiling:
        source = (
            "its max_batch_size_limit"
            if cfg.max_batch_size_limit
            else "derived from the executor's memory per item; set max_batch_size_limit to "
            "raise it knowingly, or lower max_input_tokens"
        )
        raise ExecutorError(
            f"model {cfg.name}: batching.max_batch_size {size} exceeds the ceiling {ceiling} "
            f"({source})"
        )


def warmup_sizes(batching: BatchingConfig, configured: list[int]) -> list[int]:
    """Batch sizes to warm up: ``configured`` (capped at ``max_batch_size``), else the sizes
    the policy is likely to produce: powers of two up to ``max_batch_size``, the maximum itself
    and the preferred sizes."""
    cap = batching.max_batch_size
    if configured:
        return sorted({min(s, cap) for s in configured})
    sizes = {1 << k for k in range(cap.bit_length()) if 1 << k <= cap}
    return sorted(sizes | {cap} | {p for p in batching.preferred_batch_sizes if p <= cap})


def reconcile(b: Batcher, spec: ModelSpec) -> None:
    """Make the batching config fit the model before its batcher starts: an unbatched model
    (fixed dimension 0) is served one request per call (policy ``off``, max batch 1), and
    the log says so. Called on the loading thread before ``b.start()``."""
    cfg = b.batching
    if spec.batched or (cfg.policy == "off" and cfg.max_batch_size == 1):
        return
    fixed = msgspec.structs.replace(cfg, policy="off", max_batch_size=1, preferred_batch_sizes=[])
    b.batching = fixed
    b.config = msgspec.structs.replace(b.config, batching=fixed)
    log.warning(
        "model %s: dimension 0 is fixed, so requests cannot be batched: batching policy %s "
        "(max %d) -> off (max 1)", b.name, cfg.policy, cfg.max_batch_size,
    )  # fmt: skip


def load_model(b: Batcher) -> None:
    """Load one model's executor, fit its batching to its spec, warm it up when configured,
    fix its batch ceiling and start its batcher; logs the load and warm-up time. The unit a
    registry that loads models while serving calls on its loading thread.

    Raises:
        ExecutorError: naming the model, when its executor cannot load or its configured
            ``max_batch_size`` exceeds its ceiling.
    """
    t0 = time.perf_counter()
    try:
        b.executor.load()
    except ExecutorError as e:
        raise ExecutorError(f"model {b.name}: {e}") from e
    loaded = time.perf_counter() - t0
    if b.executor.spec is not None:
        reconcile(b, b.executor.spec)
    b.ceiling = batch_ceiling(b.config.max_batch_size_limit, b.executor)
    check_ceiling(b.config, b.ceiling)
    warm = 0.0
    if b.config.warmup:
        sizes = warmup_sizes(b.batching, b.config.warmup_batch_sizes)
        t1 = time.perf_counter()
        try:
            b.executor.warmup([s for s in sizes if s <= b.ceiling])
        except Exception as e:  # any runtime error: the model must not serve
            raise ExecutorError(f"model {b.name}: warm-up failed: {e}") from e
        warm = time.perf_counter() - t1
    b.start()
    log.info(
        "model %s ready in %.3f s (load %.3f s, warm-up %.3f s): %s",
        b.name, loaded + warm, loaded, warm, b.executor.describe(),
    )  # fmt: skip


READY = "READY"
UNAVAILABLE = "UNAVAILABLE"
LOADING = "LOADING"
UNLOADED = "unloaded"
"""The reason of a model unloaded on purpose (it stays unloaded until loaded again)."""
NOT_LOADED = "not loaded"
"""The reason of a repository folder that was never loaded."""
CONFIG, REPOSITORY = "config", "repository"
T = TypeVar("T")


class ModelLoadError(Exception):
    """A load or unload that did not happen; ``status`` is its HTTP answer (400 a model that
    cannot be served, 404 no such folder or model, 409 a name of the config file, 500 an
    unexpected error) and the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class ModelState:
    """One model of the index (Triton's ``{"name", "version", "state", "reason"}``)."""

    name: str
    version: int
    """1 for the first load, +1 for each successful reload; 0 if never loaded."""
    state: str
    """READY (serving), UNAVAILABLE (not serving) or LOADING."""
    reason: str
    """Why UNAVAILABLE; for READY, why the last reload failed (the old version serves)."""
    origin: str
    """``repository`` (a folder) or ``config`` (a ``[[models]]`` entry)."""


@dataclass(frozen=True, slots=True)
class FileStamp:
    """A model file's identity, to tell a changed file on SIGHUP: size and mtime first, the
    SHA-256 only when those differ (a touched but identical file is not reloaded)."""

    size: int
    mtime_ns: int
    sha256: str


def file_stamp(path: str) -> FileStamp | None:
    """The stamp of a model file; None for ``builtin:`` models, sim models and missing files."""
    try:
        st = os.stat(path)
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except (OSError, ValueError):
        return None
    return FileStamp(st.st_size, st.st_mtime_ns, h.hexdigest())


def same_file(stamp: FileStamp | None, path: str) -> bool:
    """Whether ``path`` still holds the file ``stamp`` was taken of."""
    if stamp is None:
        return file_stamp(path) is None
    try:
        st = os.stat(path)
    except OSError:
        return False
    if (st.st_size, st.st_mtime_ns) == (stamp.size, stamp.mtime_ns):
        return True
    now = file_stamp(path)
    return now is not None and now.sha256 == stamp.sha256


@dataclass(frozen=True, slots=True)
class _Defined:
    """What a loaded model was built from: its config as defined and its file's stamp."""

    config: ModelConfig
    stamp: FileStamp | None


class ModelRegistry:
    """Name -> Batcher, changed while serving.

    Thread-safe: lookups (``get``, iteration, ``len``) read one dict reference that is never
    changed once published (copy-on-write): a reader sees the models before or after a change,
    never half of one, and iterates a snapshot. Loads, reloads and unloads run one at a time on
    the registry's loading thread (``submit``); ``_lock`` guards the swaps and the state table.
    A reload swaps the model atomically: the old Batcher is retired (queued and running work
    finishes on it, late submits go to the new one) and its executor closed once drained.
    """

    def __init__(
        self, models: list[ModelConfig], base_dir: str, repository: str | None = None
    ) -> None:
        self.base_dir = base_dir
        self.repository = repository
        """Absolute folder of the model repository, None when there is none."""
        self._lock = threading.Lock()
        self._states: dict[str, ModelState] = {}
        self._defined: dict[str, _Defined] = {}
        self._retiring: set[Batcher] = set()
        self._loader = concurrent.futures.ThreadPoolExecutor(1, "infergate-load")
        batchers: dict[str, Batcher] = {}
        for cfg in models:
            batchers[cfg.name] = Batcher(cfg, build_executor(cfg, base_dir))
            origin = REPOSITORY if self._folder(cfg.name) else CONFIG
            self._states[cfg.name] = ModelState(cfg.name, 0, LOADING, "", origin)
            self._defined[cfg.name] = _Defined(cfg, None)
        self._batchers = batchers

    def load(self) -> None:
        """Load every executor, fix each model's batch ceiling, start the batchers (at
        start-up, before serving).

        Raises:
            ExecutorError: naming the model, when its executor cannot load or its configured
                ``max_batch_size`` exceeds its ceiling.
        """
        for b in self._batchers.values():
            load_model(b)
            d = self._defined[b.name]
            self._defined[b.name] = _Defined(d.config, file_stamp(d.config.model_file))
            self._states[b.name] = replace(self._states[b.name], version=1, state=READY)

    # ---- lookups (any thread) ----------------------------------------------------------------

    def get(self, name: str) -> Batcher | None:
        return self._batchers.get(name)

    def __iter__(self) -> Iterator[Batcher]:
        return iter(self._batchers.values())  # a published dict never changes

    def __len__(self) -> int:
        return len(self._batchers)

    def state(self, name: str) -> ModelState | None:
        with self._lock:
            return self._states.get(name)

    def index(self) -> list[ModelState]:
        """Every model and repository folder with its state, by name. Thread-safe (lists the
        repository folder: cheap, but a system call)."""
        with self._lock:
            states = dict(self._states)
        for name in self._folder_names():
            if name not in states:
                states[name] = ModelState(name, 0, UNAVAILABLE, NOT_LOADED, REPOSITORY)
        return [states[n] for n in sorted(states)]

    def _folder(self, name: str) -> str | None:
        if not self.repository or not name or name.startswith(".") or "/" in name:
            return None
        path = os.path.join(self.repository, name)
        return path if os.path.isdir(path) else None

    def _folder_names(self) -> list[str]:
        if not self.repository:
            return []
        try:
            return [os.path.basename(f) for f in model_folders(self.repository)]
        except RepositoryError:
            return []

    # ---- changes (run on the loading thread) -------------------------------------------------

    def submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run ``fn`` on the loading thread, after the changes already asked for. Thread-safe."""
        return self._loader.submit(fn)

    def load_now(self, name: str, override: dict[str, Any] | None = None) -> ModelState:
        """Load model ``name`` (a repository folder, or a ``[[models]]`` entry again), or
        reload it if it is serving: the new instance is built and loaded beside the old one,
        then swapped in. On failure the old version (if any) keeps serving and the state says
        why. Call on the loading thread (``submit``): it blocks for the whole load.

        Raises:
            ModelLoadError: the model was not (re)loaded; the message says why.
        """
        with self._lock:
            prev = self._states.get(name)
            self._states[name] = self._loading(name, prev)
        try:
            cfg, base = self._config_for(name, prev, override)
            b = Batcher(cfg, build_executor(cfg, base))
            try:
                load_model(b)
            except BaseException:
                b.close()
                raise
        except (RepositoryError, ExecutorError) as e:
            raise self._failed(name, prev, 400, str(e)) from None
        except ModelLoadError as e:
            raise self._failed(name, prev, e.status, e.message) from None
        except Exception as e:
            log.exception("model %s: load failed", name)
            raise self._failed(name, prev, 500, f"model {name}: load failed: {e}") from None
        stamp = file_stamp(cfg.model_file)
        with self._lock:
            old = self._batchers.get(name)
            self._batchers = {**self._batchers, name: b}
            version = (prev.version if prev else 0) + 1
            origin = prev.origin if prev else REPOSITORY
            state = ModelState(name, version, READY, "", origin)
            self._states[name] = state
            self._defined[name] = _Defined(cfg, stamp)
        if old is not None:
            self._retire(old, b)
        log.info("model %s: version %d serving", name, version)
        return state

    def _loading(self, name: str, prev: ModelState | None) -> ModelState:
        origin = prev.origin if prev else REPOSITORY
        version = prev.version if prev else 0
        serving = name in self._batchers
        reason = f"loading a new version; version {version} serves meanwhile" if serving else ""
        return ModelState(name, version, LOADING, reason, origin)

    def _config_for(
        self, name: str, prev: ModelState | None, override: dict[str, Any] | None
    ) -> tuple[ModelConfig, str]:
        """The config to load ``name`` from, and the folder its relative paths start at."""
        if prev is not None and prev.origin == CONFIG:
            if override:
                raise ModelLoadError(
                    400,
                    f"model {name} is defined in [[models]] of the config file: it loads "
                    "from there, without a config override",
                )
            return self._defined[name].config, self.base_dir
        folder = self._folder(name)
        if folder is None:
            where = self.repository or "(no model_repository configured)"
            raise ModelLoadError(404, f"no model folder {name!r} in the model repository {where}")
        return scan_folder(folder, override).config, folder

    def _failed(
        self, name: str, prev: ModelState | None, status: int, reason: str
    ) -> ModelLoadError:
        """Record a failed load: the old version keeps serving (READY, with the reason), or
        the model is UNAVAILABLE with it. Returns the error to raise."""
        with self._lock:
            serving = name in self._batchers
            version = prev.version if prev else 0
            origin = prev.origin if prev else REPOSITORY
            if serving:
                why = f"version {version + 1} failed to load, version {version} serves: {reason}"
                self._states[name] = ModelState(name, version, READY, why, origin)
            elif prev is None and status == 404:
                self._states.pop(name, None)
            else:
                self._states[name] = ModelState(name, version, UNAVAILABLE, reason, origin)
        log.error("model %s: %s", name, reason)
        return ModelLoadError(status, reason)

    def _retire(self, old: Batcher, new: Batcher) -> None:
        """Retire ``old`` for ``new`` and free it once drained, on a thread of its own (a
        long queue must not hold up the next load)."""
        old.retire(new)
        with self._lock:
            self._retiring.add(old)

        def drain() -> None:
            old.wait_retired()
            with self._lock:
                self._retiring.discard(old)
            release_memory()  # the closed session's pages back to the OS (bench/reload_rss.py)
            log.info("model %s: previous version drained and closed", old.name)

        threading.Thread(target=drain, name=f"retire-{old.name}", daemon=True).start()

    def retiring(self) -> int:
        """Old versions still finishing their queued work. Thread-safe."""
        with self._lock:
            return len(self._retiring)

    def unload_now(self, name: str) -> ModelState:
        """Stop serving ``name``: new lookups miss at once (404), its queued requests are
        answered 503 ``model_unloaded``, running batches finish, then the executor is freed.
        Call on the loading thread (``submit``).

        Raises:
            ModelLoadError: 404 when the model is not loaded.
        """
        with self._lock:
            b = self._batchers.get(name)
            if b is None:
                raise ModelLoadError(404, f"model {name!r} is not loaded")
            self._batchers = {k: v for k, v in self._batchers.items() if k != name}
            prev = self._states[name]
            state = ModelState(name, prev.version, UNAVAILABLE, UNLOADED, prev.origin)
            self._states[name] = state
        shed = b.unload()
        release_memory()
        log.info("model %s: unloaded (%d queued request(s) answered 503)", name, shed)
        return state

    def repository_changes(self) -> list[tuple[str, str]]:
        """What SIGHUP applies, as ``(action, name)``: ``load`` a folder not loaded (unless
        it was unloaded on purpose), ``reload`` a loaded one whose ``model.toml`` or model
        file changed, ``unload`` a loaded model whose folder is gone. Thread-safe; reads the
        files (call it off the reactors)."""
        with self._lock:
            states = dict(self._states)
            defined = dict(self._defined)
            loaded = set(self._batchers)
        folders = self._folder_names()
        plan: list[tuple[str, str]] = []
        for name in folders:
            st = states.get(name)
            if st is None or (st.state == UNAVAILABLE and st.reason != UNLOADED):
                plan.append(("load", name))
            elif st.origin == REPOSITORY and name in loaded and self._changed(name, defined):
                plan.append(("reload", name))
        for name, st in sorted(states.items()):
            if st.origin == REPOSITORY and name in loaded and name not in folders:
                plan.append(("unload", name))
        return plan

    def _changed(self, name: str, defined: dict[str, _Defined]) -> bool:
        folder = self._folder(name)
        d = defined.get(name)
        if folder is None or d is None:
            return True
        try:
            cfg = scan_folder(folder).config
        except RepositoryError:
            return True  # reloading reports why, and the old version keeps serving
        return cfg != d.config or not same_file(d.stamp, cfg.model_file)

    # ---- shutdown ----------------------------------------------------------------------------

    def shed_queued(self) -> int:
        """Answer 503 ``shutting_down`` to every model's queued work (``Batcher.shed_queued``),
        old versions still draining included; running batches finish. Thread-safe. Returns the
        number of requests shed."""
        with self._lock:
            retiring = list(self._retiring)
        return sum(b.shed_queued() for b in [*self._batchers.values(), *retiring])

    def close(self) -> None:
        """Stop the loading thread (a load in progress finishes), shed what is queued, wait
        for the running batches, stop every model's threads."""
        self._loader.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            retiring = list(self._retiring)
        for b in [*self._batchers.values(), *retiring]:
            b.close()
