"""Adaptation methods are registered plugins: a method defined here (not in the package) is usable by
`pdefm finetune --plugin ... --method` (options, model card, saving) and by the few-shot study; entry points
are discovered; the registry rejects malformed or clashing methods."""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from finetune_helpers import family_trajectories, pretrained_checkpoint
from torch import nn
from typer.testing import CliRunner

from eval_suite.command_line import main
from finetune.methods import registry
from finetune.methods.registry import Method, MethodContext, get_method, method_names, register_method
from foundation.loading import load_model

HEAD_KEYS = ("embeddings", "patch_recovery")


@dataclass
class HeadOnlyOptions:
    """Options of the test method."""

    lr: float = 1e-3
    """Learning rate of the embedding and recovery layers."""
    train_norms: bool = False
    """Also train the time-conditioned norms."""


@register_method
class HeadOnly(Method):
    """Trains only the embedding and recovery layers (a linear-probe-like method, defined in a test file)."""

    name = "head_only"
    Options = HeadOnlyOptions
    summary = "only the embedding and recovery layers trained; the backbone frozen."
    lr_field = "lr"

    def prepare(self, model: nn.Module, options: HeadOnlyOptions, context: MethodContext):
        for name, p in model.named_parameters():
            p.requires_grad_(any(k in name for k in HEAD_KEYS) or (options.train_norms and ".norm" in name))
        params = [p for p in model.parameters() if p.requires_grad]
        return model, [{"name": "head", "params": params, "lr": options.lr, "weight_decay": 0.0}]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    trajs = family_trajectories("allen_cahn", 7)
    data = root / "allen_cahn.npz"
    np.savez(data, u=np.stack([t.u for t in trajs]), t=trajs[0].t, fields=np.array(trajs[0].fields))
    return pretrained_checkpoint(root / "ckpt"), data


def test_plugin_method_runs_from_the_command_line(inputs, tmp_path):
    ckpt, data = inputs
    out = tmp_path / "run"
    args = ["finetune", "--plugin", __name__, "--model", str(ckpt), "--data", str(data), "--shots", "3"]
    args += ["--method", "head_only", "--out", str(out), "--epochs", "2", "--batch-size", "10"]
    args += ["--lr", "5e-3", "--device", "cpu", "--train-norms"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "finetune.json").read_text())
    assert record["method"] == "head_only" and record["best_val_loss"] < record["initial_val_loss"]
    before, after = load_model(ckpt).state_dict(), load_model(out / "model").state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(any(h in k for h in HEAD_KEYS) or ".norm" in k for k in changed)
    assert any("embeddings" in k for k in changed)
    card = (out / "model" / "README.md").read_text()
    assert "head_only" in card and HeadOnly.summary in card


def test_plugin_options_appear_in_help_and_bad_ones_are_one_line_errors(inputs, tmp_path):
    ckpt, data = inputs
    help_text = CliRunner().invoke(main, ["finetune", "--plugin", __name__, "--help"]).output
    assert "head_only" in help_text and "--train-norms" in help_text and "--head-only-lr" in help_text
    base = ["finetune", "--model", str(ckpt), "--data", str(data), "--shots", "3", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, [*base, "--method", "full", "--train-norms"])
    assert result.exit_code == 2 and "unknown settings ['train_norms'] for FullOptions" in result.output
    result = CliRunner().invoke(main, [*base, "--plugin", "no_such_module_xyz"])
    assert result.exit_code == 2 and "no_such_module_xyz" in result.output


def test_plugin_method_is_a_few_shot_candidate(inputs, tmp_path):
    from eval_suite.studies.candidates import Budget, study_methods
    from eval_suite.studies.few_shot import FewShotConfig, run_few_shot

    ckpt, data = inputs
    assert "head_only" in study_methods() and "meta" not in study_methods()
    config = FewShotConfig(
        shots=[2],
        seeds=[0],
        candidates=["head_only"],
        n_val=1,
        n_test=2,
        budget=Budget(epochs=1, max_steps=2),
    )
    metrics = run_few_shot(str(data), tmp_path / "study", model=str(ckpt), config=config)
    assert metrics["results"]["head_only"][2]["seeds"][0]["train"]["steps"] == 2


def test_entry_points_are_discovered(monkeypatch):
    @dataclass
    class NoOptions:
        """Nothing to set."""

    class FromEntryPoint(Method):
        name = "from_entry_point"
        Options = NoOptions
        summary = "registered when its entry point loads."

    method_names()  # the built-ins are imported into the real registry, not into the copy below
    point = SimpleNamespace(name="from_entry_point", load=lambda: register_method(FromEntryPoint))
    monkeypatch.setattr(registry, "entry_points", lambda group: [point] if group == "pdefm.methods" else [])
    monkeypatch.setattr(registry, "_discovered", False)
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    assert "from_entry_point" in method_names()
    assert get_method("from_entry_point").card(NoOptions()).startswith("Method `from_entry_point`")


def test_registry_rejects_malformed_and_clashing_methods():
    class NoSummary(Method):
        name = "no_summary"
        Options = HeadOnlyOptions

    with pytest.raises(TypeError, match="summary"):
        register_method(NoSummary)

    class Clash(HeadOnly):
        pass

    with pytest.raises(ValueError, match="registered twice"):
        register_method(Clash)
    with pytest.raises(ValueError, match="unknown method 'nope'; choose from full, lora, meta, physguard"):
        get_method("nope")
