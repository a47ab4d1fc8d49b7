"""`pdefm finetune` unchanged under `accelerate launch --num_processes 2` (real DDP over gloo): it runs to
the end for LoRA and full fine-tuning, records the world size and precision, and its validation curve
matches a 1-process run with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from finetune_helpers import family_trajectories, pretrained_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]
PDEFM = str(Path(sys.executable).with_name("pdefm"))
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
# fp32 on CPU; two half-batch means averaged by DDP equal the global-batch mean up to summation order
RTOL = 1e-3


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    trajs = family_trajectories("allen_cahn", 5)
    data = root / "allen_cahn.npz"
    np.savez(data, u=np.stack([t.u for t in trajs]), t=trajs[0].t, fields=np.array(trajs[0].fields))
    return pretrained_checkpoint(root / "ckpt"), data


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _finetune(inputs, out: Path, method: str, processes: int) -> dict:
    ckpt, data = inputs
    args = ["finetune", "--model", str(ckpt), "--data", str(data), "--shots", "3", "--method", method]
    args += ["--out", str(out), "--epochs", "2", "--batch-size", "10", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    if processes == 1:
        cmd = [PDEFM, *args]
    else:
        env["ACCELERATE_USE_CPU"] = "true"
        cmd = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
               PDEFM, *args]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "finetune.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])
def test_two_process_finetune_matches_one_process(inputs, tmp_path, method):
    one = _finetune(inputs, tmp_path / "one", method, 1)
    two = _finetune(inputs, tmp_path / "two", method, 2)
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert two["mixed_precision"] == "no"
    curve_one = [row["val_loss"] for row in one["history"]]
    curve_two = [row["val_loss"] for row in two["history"]]
    assert len(curve_one) == len(curve_two) == 3  # epoch 0 and 2 epochs
    assert curve_one[-1] < curve_one[0]
    np.testing.assert_allclose(curve_two, curve_one, rtol=RTOL)
