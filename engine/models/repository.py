"""The model repository: one folder per model, as Triton lays it out.

``<repository>/<name>/model.onnx`` (or ``onnx/model.onnx``, the sentence-transformers export
layout; or ``model.plan``, a prebuilt TensorRT engine) and an optional ``<name>/model.toml``
holding the keys of a ``[[models]]`` entry; the name is the folder's. Keys
the file leaves out are read from the model itself: task ``tensor``, executor ``onnxruntime``
(``tensorrt`` for a lone ``model.plan``), batching ``adaptive`` when dimension 0 of every input
and output is dynamic, else ``off`` with one item per call. Paths in ``model.toml`` are relative
to the model's folder; the ``ModelConfig`` of a ``RepoEntry`` holds absolute paths, so it can be
built with any base folder.

Nothing here loads a model: the inputs and outputs come from the ONNX file's graph header
(``engine.models.onnx_io``), never from an ONNX Runtime session. Functions are pure (files in,
values out) and may run on any thread: start-up, ``--check-config``, the admin plane, SIGHUP.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from infergate.engine.config import ModelConfig
from infergate.engine.executors.spec import batch_dynamic
from infergate.engine.models.onnx_io import OnnxFormatError, read_onnx_io
from infergate.engine.models.text import find_model_file

MODEL_TOML = "model.toml"
ONNX_FILE = "model.onnx"
ONNX_SUBFOLDER_FILE = "onnx/model.onnx"
"""Where a sentence-transformers export keeps its graph; used when there is no ``model.onnx``."""
PLAN_FILE = "model.plan"
TOKENIZER_FILE = "tokenizer.json"
BUILTIN_PREFIX = "builtin:"


class RepositoryError(Exception):
    """A repository, folder or ``model.toml`` that cannot be served; the message names the
    folder or file and the problem (several, one per line, when a whole repository is
    checked)."""


@dataclass(frozen=True, slots=True)
class RepoEntry:
    """One model folder, validated (nothing loaded)."""

    name: str
    folder: str
    """Absolute path of the model's folder."""
    config: ModelConfig
    """The ``[[models]]`` equivalent; ``model_file`` and ``tokenizer_file`` are absolute
    (or ``builtin:...``)."""
    toml: str | None
    """Absolute path of the folder's ``model.toml``, if it has one."""
    derived: tuple[str, ...]
    """Keys whose values were read from the model rather than given (``task``,
    ``executor``, ``model_file``, ``batching.policy``...), for the log and the index."""

    @property
    def source(self) -> str:
        """Where the model is defined, for messages: its ``model.toml`` or its folder."""
        return self.toml or self.folder


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise RepositoryError(f"{path}: invalid TOML: {e}") from None
    except OSError as e:
        raise RepositoryError(f"{path}: cannot read: {e.strerror or e}") from None
    return raw


def _resolve(folder: str, value: str, key: str, source: str) -> str:
    """``value`` (relative to the model folder, or ``builtin:...``) as an existing file. A
    ``model_file`` may name a folder, as for text models (``engine.models.text``): its
    ``model.onnx``, else its ``onnx/model.onnx``."""
    if value.startswith(BUILTIN_PREFIX):
        return value
    path = os.path.normpath(os.path.join(folder, value))
    if key == "model_file" and os.path.isdir(path):
        found = find_model_file(path)
        if found is None:
            raise RepositoryError(
                f"{source}: model_file {value!r} is a folder without {ONNX_FILE} or "
                f"{ONNX_SUBFOLDER_FILE} ({path})"
            )
        return found
    if not os.path.isfile(path):
        raise RepositoryError(f"{source}: {key} {value!r} does not exist ({path})")
    return path


def _default_model_file(folder: str, executor: str | None) -> tuple[str, str]:
    """(model file, executor) when ``model.toml`` names no model file: ``model.onnx`` (else
    ``onnx/model.onnx``, as ``engine.models.text.find_model_file`` looks) for ONNX Runtime,
    ``model.plan`` (else the ONNX file, to build an engine from) for TensorRT, and a lone
    ``model.plan`` implies TensorRT."""
    onnx_path = find_model_file(folder)
    plan_path = os.path.join(folder, PLAN_FILE)
    has_plan = os.path.isfile(plan_path)
    if executor == "tensorrt" and has_plan:
        return plan_path, executor
    if onnx_path is not None:
        return onnx_path, executor or "onnxruntime"
    if has_plan and executor is None:
        return plan_path, "tensorrt"
    want = f"{ONNX_FILE} or {ONNX_SUBFOLDER_FILE}"
    want = want if executor != "tensorrt" else f"{PLAN_FILE}, {want}"
    raise RepositoryError(f"{folder}: no {want} (and model.toml names no model_file)")


def batching_from_model(path: str) -> dict[str, Any]:
    """The ``[batching]`` keys an ONNX file implies: ``adaptive`` when dimension 0 of every
    input and output is dynamic, else ``off`` with one item per call (unbatched).

    Raises:
        RepositoryError: the file is not a readable ONNX model.
    """
    try:
        inputs, outputs = read_onnx_io(path)
    except (OSError, OnnxFormatError) as e:
        raise RepositoryError(f"{path}: not a readable ONNX model: {e}") from None
    if batch_dynamic(inputs, outputs):
        return {"policy": "adaptive"}
    return {"policy": "off", "max_batch_size": 1}


def _with_defaults(
    folder: str, given: dict[str, Any], source: str
) -> tuple[dict[str, Any], list[str]]:
    """``given`` (the folder's ``model.toml``, possibly empty) completed from the model
    itself: task, executor, model file, batching policy. Returns (keys, derived key names)."""
    raw = dict(given)
    derived: list[str] = []
    if "task" not in raw:
        raw["task"] = "tensor"
        derived.append("task")
    executor = raw.get("executor")
    if isinstance(raw.get("model_file"), str):
        raw["model_file"] = _resolve(folder, raw["model_file"], "model_file", source)
        if executor is None:
            raw["executor"] = "tensorrt" if raw["model_file"].endswith(".plan") else "onnxruntime"
            derived.append("executor")
    elif "model_file" not in raw and executor != "sim":
        raw["model_file"], raw["executor"] = _default_model_file(folder, executor)
        derived.append("model_file")
        if executor is None:
            derived.append("executor")
    if isinstance(raw.get("tokenizer_file"), str):
        raw["tokenizer_file"] = _resolve(folder, raw["tokenizer_file"], "tokenizer_file", source)
    elif raw["task"] == "embeddings" and os.path.isfile(os.path.join(folder, TOKENIZER_FILE)):
        raw["tokenizer_file"] = os.path.join(folder, TOKENIZER_FILE)
        derived.append("tokenizer_file")
    batching = raw.get("batching", {})
    if isinstance(batching, dict) and "policy" not in batching and _reads_onnx(raw):
        implied = batching_from_model(raw["model_file"])
        raw["batching"] = {**implied, **batching}
        derived.extend(f"batching.{k}" for k in implied if k not in batching)
    return raw, derived


def _overlay(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``; tables (``batching``, ``priorities``) merge key by key."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def _reads_onnx(raw: dict[str, Any]) -> bool:
    """Whether the batching policy comes from the ONNX file: a tensor model with an ONNX
    file (a TensorRT plan cannot be read without TensorRT; it keeps the default policy and
    its executor publishes the real limits at load)."""
    model_file = raw.get("model_file")
    return (
        raw.get("task") == "tensor"
        and raw.get("executor") in ("onnxruntime", "tensorrt")
        and isinstance(model_file, str)
        and model_file.endswith(".onnx")
    )


def scan_folder(folder: str, override: dict[str, Any] | None = None) -> RepoEntry:
    """The model in ``folder`` (its name is the folder's), validated without loading it.

    ``override``: ``[[models]]`` keys applied over ``model.toml`` (the body of a repository
    ``load`` request). Raises RepositoryError naming the folder or file and the problem.
    """
    folder = os.path.abspath(folder)
    name = os.path.basename(folder)
    toml_path = os.path.join(folder, MODEL_TOML)
    has_toml = os.path.isfile(toml_path)
    source = toml_path if has_toml else folder
    given = _read_toml(toml_path) if has_toml else {}
    if override:
        given = _overlay(given, override)
    if "name" in given and given["name"] != name:
        raise RepositoryError(
            f"{source}: name {given['name']!r} differs from the folder's name {name!r} "
            "(the folder names the model; drop the key or rename the folder)"
        )
    raw, derived = _with_defaults(folder, given, source)
    raw["name"] = name
    try:
        config = msgspec.convert(raw, ModelConfig)
    except msgspec.ValidationError as e:
        raise RepositoryError(f"{source}: {e}") from None
    return RepoEntry(name, folder, config, toml_path if has_toml else None, tuple(derived))


def model_folders(path: str) -> list[str]:
    """The model folders of a repository, by name (hidden folders and files are skipped).

    Raises:
        RepositoryError: ``path`` is not a readable folder.
    """
    if not os.path.isdir(path):
        raise RepositoryError(f"model repository {path}: not a folder")
    try:
        names = sorted(os.listdir(path))
    except OSError as e:
        raise RepositoryError(f"model repository {path}: {e.strerror or e}") from None
    return [
        os.path.join(path, n)
        for n in names
        if not n.startswith(".") and os.path.isdir(os.path.join(path, n))
    ]


def scan_repository(path: str) -> list[RepoEntry]:
    """Every model of the repository at ``path`` (absolute, or relative to the working
    folder: the caller resolves it against the config file), by name.

    Raises:
        RepositoryError: one line per broken folder, each naming it and the problem.
    """
    entries: list[RepoEntry] = []
    problems: list[str] = []
    for folder in model_folders(path):
        try:
            entries.append(scan_folder(folder))
        except RepositoryError as e:
            problems.append(str(e))
    if problems:
        raise RepositoryError("\n".join(problems))
    return entries


def check_repository(path: str) -> list[str]:
    """``--check-config``: validate every ``model.toml`` and that every model file exists and
    (for ONNX) has a readable graph whose tensors KServe can carry, without loading any
    model. Returns one line per model, for the operator.

    Raises:
        RepositoryError: one line per problem, each naming the folder or file.
    """
    lines: list[str] = []
    problems: list[str] = []
    for folder in model_folders(path):
        try:
            entry = scan_folder(folder)
            cfg = entry.config
            if cfg.model_file.endswith(".onnx"):
                batching_from_model(cfg.model_file)  # the graph parses, every type is known
        except RepositoryError as e:
            problems.append(str(e))
            continue
        lines.append(describe_entry(entry))
    if problems:
        raise RepositoryError("\n".join(problems))
    return lines


def describe_entry(entry: RepoEntry) -> str:
    """One line for the log and ``--check-config``: what will be served and from where."""
    cfg = entry.config
    given = "model.toml" if entry.toml else "no model.toml"
    derived = f"; from the model: {', '.join(entry.derived)}" if entry.derived else ""
    return (
        f"{entry.name}: task {cfg.task}, executor {cfg.executor}, batching "
        f"{cfg.batching.policy} (max {cfg.batching.max_batch_size}), {cfg.model_file or '-'} "
        f"({given}{derived})"
    )


def merge_models(
    config_models: Sequence[ModelConfig],
    repo_entries: Iterable[RepoEntry],
    config_source: str = "the config file",
) -> list[ModelConfig]:
    """``[[models]]`` entries followed by the repository's models.

    Raises:
        RepositoryError: a name defined in both, naming both places (one line per name).
    """
    defined = {m.name for m in config_models}
    merged = list(config_models)
    clashes: list[str] = []
    for entry in repo_entries:
        if entry.name in defined:
            clashes.append(
                f"model {entry.name!r} is defined twice: in [[models]] of {config_source} and "
                f"in the model repository at {entry.source}"
            )
            continue
        defined.add(entry.name)
        merged.append(entry.config)
    if clashes:
        raise RepositoryError("\n".join(clashes))
    return merged
