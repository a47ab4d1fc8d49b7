"""One source of settings: every config dataclass field is a command-line option (pretrain and finetune),
YAML files are deep-merged under the flags, and flags given on the command line win over the file."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest
import yaml
from typer.testing import CliRunner

from data_pipelines.settings import dataclass_params, deep_merge, from_mapping, resolve
from eval_suite.command_line import main
from finetune.api import InputOptions
from finetune.cli import FinetuneJob, _params
from finetune.methods.registry import get_method, method_names
from finetune.trainer import TrainConfig
from foundation.cli import _pretrain_params
from foundation.pretrain.config import PretrainConfig


def _dests(params) -> set[tuple[str, ...]]:
    return {p.dest for p in params}


def test_every_pretrain_field_has_an_option():
    dests = _dests(_pretrain_params())
    missing = [f.name for f in dataclasses.fields(PretrainConfig) if (f.name,) not in dests]
    assert missing == []
    flags = {f for p in _pretrain_params() for f in p.flags}
    assert {"--lr", "--corpus", "--image-size", "--max-steps", "--progress/--no-progress"} <= flags


def test_every_finetune_field_has_an_option():
    dests = _dests(_params())
    for section, cls in (("inputs", InputOptions), ("train", TrainConfig)):
        missing = [f.name for f in dataclasses.fields(cls) if (section, f.name) not in dests]
        assert missing == [], section
    job = [f.name for f in dataclasses.fields(FinetuneJob) if f.name not in ("inputs", "train", "options")]
    assert all((name,) in dests for name in job)
    for name in method_names():
        options = get_method(name).Options
        assert all(("options", f.name) in dests for f in dataclasses.fields(options)), name


@dataclass
class Inner:
    depth: int = 2
    """How deep."""


@dataclass
class Example:
    name: str
    """Required name."""
    sizes: list[int] = field(default_factory=lambda: [1, 2])
    tags: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)
    flag: bool = False
    inner: Inner = field(default_factory=Inner)


def test_deep_merge_and_from_mapping():
    base = {"a": 1, "m": {"x": 1, "y": {"p": 1, "q": 2}}}
    assert deep_merge(base, {"m": {"y": {"q": 3}, "z": 4}}) == {
        "a": 1,
        "m": {"x": 1, "y": {"p": 1, "q": 3}, "z": 4},
    }
    assert base["m"]["y"]["q"] == 2  # inputs are not modified
    built = from_mapping(Example, {"name": "n", "tags": ["a"], "inner": {"depth": 5}}, "test.yaml")
    assert built.tags == ("a",) and built.inner == Inner(5) and built.sizes == [1, 2]
    with pytest.raises(ValueError, match=r"test.yaml: unknown settings \['nme'\] for Example"):
        from_mapping(Example, {"nme": "n"}, "test.yaml")
    with pytest.raises(ValueError, match="test.yaml: Example needs name"):
        from_mapping(Example, {}, "test.yaml")
    with pytest.raises(ValueError, match="test.yaml: inner: unknown settings"):
        from_mapping(Example, {"name": "n", "inner": {"width": 1}}, "test.yaml")


def test_params_parse_lists_mappings_and_help_from_docstrings():
    params = {p.dest[-1]: p for p in dataclass_params(Example)}
    assert params["name"].help == "Required name." and params["name"].show_default == "required"
    assert params["sizes"].convert("3, 4") == [3, 4] and params["tags"].convert("a,b") == ("a", "b")
    assert params["extra"].convert(["k=64", "l=[1, 2]"]) == {"k": 64, "l": [1, 2]}
    assert params["flag"].flags == ("--flag/--no-flag",)
    assert params["inner"].convert("{depth: 3}") == {"depth": 3}


@pytest.fixture
def captured(monkeypatch):
    """Runs commands without training: records the config they would run."""
    seen = {}

    def fake_pretrain(config):
        seen["pretrain"] = config
        return {"steps": 0, "final_train_loss": 0.0}

    monkeypatch.setattr("foundation.pretrain.loop.pretrain", fake_pretrain)
    return seen


def test_pretrain_flags_override_yaml_and_mappings_merge(tmp_path, captured):
    config = tmp_path / "run.yaml"
    settings = {
        "corpus": ["c1"],
        "learning_rate": 0.1,
        "batch_size": 4,
        "model_overrides": {"image_size": 32, "depths": [1, 1, 1, 1]},
    }
    config.write_text(yaml.safe_dump(settings))
    args = ["pretrain", "--config", str(config), "--image-size", "64", "--lr", "0.5", "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    cfg = captured["pretrain"]
    assert cfg.model_overrides == {"image_size": 64, "depths": [1, 1, 1, 1]}  # deep merge, flag wins
    assert cfg.learning_rate == 0.5 and cfg.batch_size == 4 and cfg.progress is False
    assert cfg.corpus == ["c1"] and cfg.max_steps == PretrainConfig(corpus=["x"]).max_steps


def test_bare_resume_means_must_and_mappings_take_comma_lists(captured):
    base = ["pretrain", "--corpus", "c"]
    for extra, expected in (([], "never"), (["--resume"], "must"), (["--resume", "auto"], "auto")):
        result = CliRunner().invoke(main, [*base, *extra, "--weights", "a=0.5,b=0.25", "--seed", "3"])
        assert result.exit_code == 0, result.output
        assert captured["pretrain"].resume == expected and captured["pretrain"].seed == 3
        assert captured["pretrain"].weights == {"a": 0.5, "b": 0.25}
    result = CliRunner().invoke(main, [*base, "--model-overrides", "depths=[1, 1],image_size=32", "--resume"])
    assert result.exit_code == 0, result.output
    assert captured["pretrain"].model_overrides == {"depths": [1, 1], "image_size": 32}
    assert captured["pretrain"].resume == "must"


def test_pretrain_without_yaml_and_bad_settings(tmp_path, captured):
    result = CliRunner().invoke(main, ["pretrain", "--corpus", "a,b", "--model-overrides", "embed_dim=16"])
    assert result.exit_code == 0, result.output
    assert captured["pretrain"].corpus == ["a", "b"]
    assert captured["pretrain"].model_overrides == {"embed_dim": 16}
    result = CliRunner().invoke(main, ["pretrain"])
    assert result.exit_code == 2 and "PretrainConfig needs corpus" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("corpus: [a]\nlearning_rat: 1\n")
    result = CliRunner().invoke(main, ["pretrain", "--config", str(bad)])
    assert result.exit_code == 2 and "unknown settings ['learning_rat']" in result.output


def test_finetune_yaml_sections_merge_with_flags(tmp_path, monkeypatch):
    seen = {}

    def fake_finetune(model, data, shots, method, out, **kwargs):
        seen.update(kwargs, model=model, method=method, out=out)
        raise SystemExit(0)

    monkeypatch.setattr("finetune.api.finetune", fake_finetune)
    config = tmp_path / "ft.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": "m",
                "data": "d",
                "shots": 2,
                "method": "lora",
                "train": {"epochs": 3, "batch_size": 2},
                "inputs": {"n_val": 2},
                "options": {"rank": 4, "alpha": 2.0},
            }
        )
    )
    args = ["finetune", "--config", str(config), "--lora-alpha", "8", "--lr", "0.01", "--epochs", "5"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert seen["method"] == "lora" and seen["model"] == "m"
    assert seen["options"].rank == 4 and seen["options"].alpha == 8.0 and seen["options"].lr == 0.01
    assert seen["train"].epochs == 5 and seen["train"].batch_size == 2 and seen["train"].lr == 0.01
    assert seen["train"].out == "finetune-out/run" and seen["inputs"].n_val == 2


def test_resolve_reads_yaml_and_names_the_file(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("- not a mapping\n")
    with pytest.raises(ValueError, match="x.yaml: expected a mapping"):
        resolve(Example, {}, path)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        resolve(Example, {}, tmp_path / "missing.yaml")
    path.write_text("name: a\nflag: true\n")
    assert resolve(Example, {"flag": False}, path) == Example(name="a", flag=False)
