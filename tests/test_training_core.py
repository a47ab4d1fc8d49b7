"""The training core keeps good work: exact resume after kill -9, fallback past a damaged checkpoint,
divergence stops with the last good checkpoint intact, one run per folder, no silent overwrite."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from finetune.trainer import TrainConfig, train
from foundation.training import DivergenceError, RunFolderError
from foundation.training.checkpoint import checkpoint_folders

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests" / "scripts"))
from core_run import TinyOperator, dataset, run  # noqa: E402

STEPS = 16  # 4 epochs x 4 batches


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _max_diff(a, b) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    model, result = run(str(out))
    return out, _weights(model), result


def test_in_memory_and_folder_runs_agree(reference):
    _, weights, result = reference
    model, in_memory = run(None)
    assert _max_diff(_weights(model), weights) == 0.0
    assert [r["val_loss"] for r in in_memory.history] == [r["val_loss"] for r in result.history]
    assert result.steps == STEPS and len(result.history) == 5  # epoch 0 + 4 epochs
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]


def test_kill_9_then_resume_equals_uninterrupted(reference, tmp_path):
    out = tmp_path / "killed"
    script = REPO_ROOT / "tests" / "scripts" / "core_run.py"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out), "never", "0.05"], env=env, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while not checkpoint_folders(out) or checkpoint_folders(out)[0].name < "step-00000006":
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    killed_at = json.loads((checkpoint_folders(out)[0] / "trainer_state.json").read_text())["step"]
    assert 6 <= killed_at < STEPS
    model, result = run(str(out), resume="must")
    assert result.steps == STEPS
    assert _max_diff(_weights(model), reference[1]) <= 1e-6
    assert [r["val_loss"] for r in result.history] == pytest.approx(
        [r["val_loss"] for r in reference[2].history]
    )
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))  # a row per checkpointed step: none duplicated or missing


def test_damaged_newest_checkpoint_falls_back_to_previous(reference, tmp_path, caplog):
    import shutil

    out = tmp_path / "damaged"
    shutil.copytree(reference[0], out)
    newest, previous = checkpoint_folders(out)[:2]
    victim = newest / "model.safetensors"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with caplog.at_level("WARNING"):
        model, result = run(str(out), resume="must", epochs=5)
    assert "truncated" in caplog.text and newest.name in caplog.text
    assert result.steps == 20


def test_resume_rules(reference, tmp_path):
    with pytest.raises(RunFolderError, match="no checkpoint to resume"):
        run(str(tmp_path / "empty"), resume="must")
    _, fresh = run(str(tmp_path / "auto"), resume="auto")  # auto starts fresh when there is nothing
    assert fresh.steps == STEPS
    with pytest.raises(RunFolderError, match="already holds a run.*--overwrite"):
        run(str(tmp_path / "auto"))
    before = {p.name for p in checkpoint_folders(tmp_path / "auto")}
    model, _ = run(str(tmp_path / "auto"), overwrite=True, checkpoint_every=None)
    after = {p.name for p in checkpoint_folders(tmp_path / "auto")}
    assert after == {"step-00000016"} and before != after  # the old run's checkpoints are gone, not mixed in


def test_second_run_on_a_folder_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "locked"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from foundation.training.run_folder import RunLock\nimport time\n"
         f"with RunLock({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(60)"],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == b"held"
        with pytest.raises(RunFolderError, match=f"in use by another run \\(pid {holder.pid} on"):
            run(str(out))
    finally:
        holder.kill()
        holder.wait()
    run(str(out))  # released with the holder


def test_divergence_skips_steps_then_stops_keeping_good_checkpoints(tmp_path, monkeypatch):
    import finetune.trainer as trainer_module

    out = tmp_path / "diverged"
    torch.manual_seed(0)
    model = TinyOperator()
    cfg = TrainConfig(
        out=str(out), epochs=4, batch_size=4, lr=3e-2, checkpoint_every=1, max_bad_steps=2, device="cpu"
    )
    # batches in order: 2 clean batches, then 2 whose labels are NaN, in every epoch: steps 3, 4, 7 are bad
    data = dataset(8, 0) + dataset(8, 2, nan_from=0)
    in_order = trainer_module.map_loader
    monkeypatch.setattr(trainer_module, "map_loader", lambda *a, **k: in_order(*a, **{**k, "shuffle": False}))
    with pytest.raises(DivergenceError, match=r"3 steps .* more than --max-bad-steps 2 \(first at step 3\)"):
        train(model, data, dataset(4, 1), config=cfg)
    names = [f.name for f in checkpoint_folders(out)]
    assert names == ["step-00000006", "step-00000005"]  # good steps only; none after a skipped step
    assert not (out / "model").exists()
    for file in out.rglob("*.safetensors"):
        assert all(torch.isfinite(t).all() for t in load_file(file).values()), file
    assert all(torch.isfinite(p).all() for p in model.parameters())  # skipped steps never touched the weights


def test_bf16_autocast_finetuning_runs_on_cpu():
    """Mixed precision as `--mixed-precision bf16` runs it, on the CPU: it trains and records its precision."""
    model, result = run(None, mixed_precision="bf16")
    assert result.mixed_precision == "bf16"
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert result.history[-1]["val_loss"] < 0.9 * result.history[0]["val_loss"]
