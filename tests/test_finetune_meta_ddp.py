"""Meta-learning runs on the training core under `accelerate launch --num_processes 2` (the tasks of an outer
step split over the ranks, meta-gradients all-reduced) and its validation curve equals the 1-process one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from finetune_helpers import pretrained_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO_ROOT / "tests" / "scripts" / "meta_finetune.py")
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))


def _run(checkpoint: Path, out: Path, processes: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, SCRIPT, str(checkpoint), str(out)]
    if processes > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env["ACCELERATE_USE_CPU"] = "true"
        cmd = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port), *cmd[1:]]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_two_process_meta_matches_one_process(tmp_path):
    checkpoint = pretrained_checkpoint(tmp_path / "ckpt")
    one, two = _run(checkpoint, tmp_path / "one", 1), _run(checkpoint, tmp_path / "two", 2)
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert len(one["val"]) == 3 and one["val"][-1] < one["val"][0]
    np.testing.assert_allclose(two["val"], one["val"], rtol=1e-4)  # fp32 all-reduce vs local mean
