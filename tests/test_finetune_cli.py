"""`pdefm finetune` end to end: a numpy file of a generated family, LoRA with --merge, pushed to pdefm's Hub
server and loaded back from it; bad input gives a clear error and exit code 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from finetune_helpers import family_trajectories, pretrained_checkpoint
from typer.testing import CliRunner

from eval_suite.command_line import main
from foundation.loading import load_model


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    trajs = family_trajectories("allen_cahn", 5)
    data = root / "allen_cahn.npz"
    np.savez(data, u=np.stack([t.u for t in trajs]), t=trajs[0].t, fields=np.array(trajs[0].fields))
    return pretrained_checkpoint(root / "ckpt"), data


def test_cli_lora_merge_push_and_load_back(inputs, tmp_path, hub_server):
    ckpt, data = inputs
    out = tmp_path / "run"
    args = ["finetune", "--model", str(ckpt), "--data", str(data), "--shots", "3", "--method", "lora"]
    args += ["--out", str(out), "--epochs", "1", "--batch-size", "10", "--lr", "5e-3", "--lora-rank", "4"]
    args += ["--merge", "--push-to", "pdefm-test/allen-cahn-lora", "--device", "cpu"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "best validation loss" in result.output and "pushed to pdefm-test/allen-cahn-lora" in result.output
    record = json.loads((out / "finetune.json").read_text())
    assert record["method"] == "lora" and len(record["split"]["train"]) == 3
    local = load_model(out / "merged")
    remote = load_model("pdefm-test/allen-cahn-lora")
    x = {"pixel_values": torch.randn(1, 2, 32, 32), "time": torch.tensor([0.5])}
    with torch.no_grad():
        assert torch.equal(local(**x).output, remote(**x).output)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--shots", "5"], "needs 7"),
        (["--shots", "3", "--method", "physguard"], "needs protected bases"),
        (["--shots", "3", "--method", "lora", "--tau", "0.5"], "unknown settings ['tau'] for LoraOptions"),
        (["--shots", "3", "--method", "nope"], "unknown method"),
    ],
)
def test_cli_bad_input_is_a_clear_error(inputs, tmp_path, extra, message):
    ckpt, data = inputs
    args = ["finetune", "--model", str(ckpt), "--data", str(data), "--out", str(tmp_path), *extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert message in result.output
