"""The model repository: folders become model configs, defaults come from the model file,
``model.toml`` overrides them, and every problem names the folder or file."""

from __future__ import annotations

from pathlib import Path

import onnxruntime
import pytest

from infergate.engine.config import ModelConfig
from infergate.engine.executors.onnx_text import text_settings
from infergate.engine.models.repository import (
    RepositoryError,
    check_repository,
    merge_models,
    scan_folder,
    scan_repository,
)
from tests.support import onnx_models
from tests.support.text_models import write_text_folder


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """mlp (dynamic batch), fixed (dim 0 = 4), seq (dynamic seq), no model.toml anywhere;
    plus a hidden folder and a stray file that are not models."""
    root = tmp_path / "models"
    onnx_models.write_model(onnx_models.mlp(), root / "mlp")
    onnx_models.write_model(onnx_models.fixed_batch(4), root / "fixed")
    onnx_models.write_model(onnx_models.sequence(), root / "seq")
    (root / ".cache").mkdir()
    (root / "README.txt").write_text("not a model")
    return root


def _toml(folder: Path, text: str) -> Path:
    path = folder / "model.toml"
    path.write_text(text)
    return path


def test_folders_become_models_with_defaults_from_the_model(repo: Path) -> None:
    entries = scan_repository(str(repo))
    assert [e.name for e in entries] == ["fixed", "mlp", "seq"]
    by = {e.name: e for e in entries}
    mlp = by["mlp"].config
    assert (mlp.task, mlp.executor) == ("tensor", "onnxruntime")
    assert mlp.model_file == str(repo / "mlp" / "model.onnx")
    assert mlp.batching.policy == "adaptive"
    assert by["seq"].config.batching.policy == "adaptive"
    fixed = by["fixed"].config
    assert (fixed.batching.policy, fixed.batching.max_batch_size) == ("off", 1)
    assert by["mlp"].toml is None
    assert by["mlp"].source == str(repo / "mlp")
    assert set(by["mlp"].derived) == {"task", "executor", "model_file", "batching.policy"}


def test_model_toml_overrides_and_paths_are_relative_to_the_folder(repo: Path) -> None:
    folder = repo / "two"
    onnx_models.write_model(onnx_models.two_io(), folder / "weights", "net.onnx")
    toml = _toml(
        folder,
        'model_file = "weights/net.onnx"\ninstances = 3\nwarmup = true\n'
        "warmup_batch_sizes = [1, 8]\n[batching]\nmax_batch_size = 8\n",
    )
    entry = scan_folder(str(folder))
    cfg = entry.config
    assert cfg.name == "two"
    assert cfg.model_file == str(folder / "weights" / "net.onnx")
    assert (cfg.instances, cfg.warmup, cfg.warmup_batch_sizes) == (3, True, [1, 8])
    # the policy is still read from the model; the size is the file's
    assert (cfg.batching.policy, cfg.batching.max_batch_size) == ("adaptive", 8)
    assert entry.toml == str(toml)
    assert "model_file" not in entry.derived
    assert "batching.policy" in entry.derived
    # a given policy wins over the model's; a same-valued name key is allowed
    _toml(repo / "fixed", 'name = "fixed"\n[batching]\npolicy = "window"\nmax_batch_size = 4\n')
    fixed = scan_folder(str(repo / "fixed")).config
    assert (fixed.batching.policy, fixed.batching.max_batch_size) == ("window", 4)


def test_an_override_applies_over_model_toml(repo: Path) -> None:
    _toml(repo / "mlp", "instances = 2\n[batching]\nmax_batch_size = 16\n")
    cfg = scan_folder(str(repo / "mlp"), {"batching": {"max_queue_delay_us": 5}}).config
    assert cfg.instances == 2
    assert (cfg.batching.max_batch_size, cfg.batching.max_queue_delay_us) == (16, 5)


def test_a_name_that_differs_from_the_folder_is_an_error(repo: Path) -> None:
    toml = _toml(repo / "mlp", 'name = "other"\n')
    with pytest.raises(RepositoryError, match=r"name 'other' differs.*'mlp'") as e:
        scan_repository(str(repo))
    assert str(toml) in str(e.value)


def test_missing_model_files_name_the_folder_or_file(repo: Path) -> None:
    empty = repo / "empty"
    empty.mkdir()
    with pytest.raises(RepositoryError, match=r"empty: no model\.onnx") as e:
        scan_repository(str(repo))
    assert str(empty) in str(e.value)
    toml = _toml(repo / "mlp", 'model_file = "gone.onnx"\n')
    with pytest.raises(RepositoryError, match=r"model_file 'gone\.onnx' does not exist") as e2:
        scan_folder(str(repo / "mlp"))
    assert str(toml) in str(e2.value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("instances = \n", "invalid TOML"),
        ("no_such_key = 1\n", r"no_such_key"),
        ("instances = 0\n", r"instances"),
        ('[batching]\npolicy = "fastest"\n', r"batching\.policy"),
    ],
)
def test_invalid_model_toml_names_the_file_and_the_key(repo: Path, text: str, problem: str) -> None:
    toml = _toml(repo / "seq", text)
    with pytest.raises(RepositoryError, match=problem) as e:
        scan_repository(str(repo))
    assert str(e.value).startswith(str(toml))


def test_every_broken_folder_is_reported_at_once(repo: Path) -> None:
    (repo / "empty").mkdir()
    _toml(repo / "seq", "instances = 0\n")
    with pytest.raises(RepositoryError) as e:
        scan_repository(str(repo))
    lines = str(e.value).splitlines()
    assert len(lines) == 2
    assert "empty" in lines[0]
    assert "seq" in lines[1]


def test_a_lone_plan_is_a_tensorrt_model(repo: Path) -> None:
    (repo / "trt").mkdir()
    (repo / "trt" / "model.plan").write_bytes(b"serialized engine")
    cfg = scan_folder(str(repo / "trt")).config
    assert (cfg.task, cfg.executor) == ("tensor", "tensorrt")
    assert cfg.model_file == str(repo / "trt" / "model.plan")


def test_a_tensorrt_model_may_build_from_its_onnx_file(repo: Path) -> None:
    _toml(repo / "mlp", 'executor = "tensorrt"\n')
    cfg = scan_folder(str(repo / "mlp")).config
    assert (cfg.executor, cfg.model_file) == ("tensorrt", str(repo / "mlp" / "model.onnx"))
    assert cfg.batching.policy == "adaptive"


def test_the_repository_must_be_a_folder(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="not a folder"):
        scan_repository(str(tmp_path / "nowhere"))


def test_merge_keeps_config_models_first_and_refuses_a_name_defined_twice(repo: Path) -> None:
    entries = scan_repository(str(repo))
    sim = ModelConfig(name="sim-embed")
    merged = merge_models([sim], entries, "/etc/infergate.toml")
    assert [m.name for m in merged] == ["sim-embed", "fixed", "mlp", "seq"]
    with pytest.raises(RepositoryError) as e:
        merge_models([ModelConfig(name="mlp")], entries, "/etc/infergate.toml")
    msg = str(e.value)
    assert "'mlp' is defined twice" in msg
    assert "[[models]] of /etc/infergate.toml" in msg
    assert str(repo / "mlp") in msg


def test_check_repository_validates_without_loading_models(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_session(*_a: object, **_k: object) -> None:
        raise AssertionError("check_repository must not load a model")

    monkeypatch.setattr(onnxruntime, "InferenceSession", no_session)
    lines = check_repository(str(repo))
    assert len(lines) == 3
    assert lines[1].startswith("mlp: task tensor, executor onnxruntime, batching adaptive")
    # a model.toml naming its file skips the defaults, but the file must still be ONNX
    _toml(repo / "seq", '[batching]\npolicy = "off"\n')
    (repo / "seq" / "model.onnx").write_bytes(b"\x08\x08garbage that is not a model")
    (repo / "broken").mkdir()
    _toml(repo / "broken", "instances = -1\n")
    with pytest.raises(RepositoryError) as e:
        check_repository(str(repo))
    problems = str(e.value).splitlines()
    assert len(problems) == 2
    assert "broken" in problems[0]
    assert "not a readable ONNX model" in problems[1]
    assert str(repo / "seq" / "model.onnx") in problems[1]


def test_a_text_export_with_its_graph_only_in_onnx_subfolder(tmp_path: Path) -> None:
    """sentence-transformers' export layout: the scan finds onnx/model.onnx as the text
    model's own loader does for a folder, and both resolve to the same settings."""
    folder = write_text_folder(tmp_path / "models" / "st", "embedder", onnx_subfolder=True)
    graph = str(folder / "onnx" / "model.onnx")
    assert scan_folder(str(folder)).config.model_file == graph  # no model.toml: a tensor model
    _toml(folder, 'task = "embeddings"\n')
    entry = scan_folder(str(folder))
    assert (entry.config.task, entry.config.model_file) == ("embeddings", graph)
    assert "model_file" in entry.derived
    by_folder = ModelConfig(
        name="st", task="embeddings", executor="onnxruntime", model_file=str(folder)
    )
    assert text_settings(entry.config, str(tmp_path)) == text_settings(by_folder, ".")


@pytest.mark.parametrize("value", ["onnx", "."])
def test_model_file_may_name_a_folder(tmp_path: Path, value: str) -> None:
    folder = write_text_folder(tmp_path / "rr", "cross_encoder", pooling=None, onnx_subfolder=True)
    _toml(folder, f'task = "rerank"\nmodel_file = "{value}"\n')
    entry = scan_folder(str(folder))
    assert entry.config.model_file == str(folder / "onnx" / "model.onnx")
    assert text_settings(entry.config, str(tmp_path)).tokenizer_file == str(
        folder / "tokenizer.json"
    )


def test_a_model_file_folder_without_a_graph_is_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    (folder / "weights").mkdir(parents=True)
    toml = _toml(folder, 'model_file = "weights"\n')
    with pytest.raises(RepositoryError, match=r"model_file 'weights' is a folder without") as e:
        scan_folder(str(folder))
    assert str(toml) in str(e.value)
    assert "onnx/model.onnx" in str(e.value)
