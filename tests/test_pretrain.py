"""Pretraining: resume equals an uninterrupted run, SIGKILL loses nothing, damaged checkpoints are refused,
2-process DDP through `accelerate launch`, and the final model goes to the Hub with its card."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from safetensors.torch import load_file
from typer.testing import CliRunner

from foundation.pretrain.config import PretrainConfig
from foundation.pretrain.loop import pretrain
from foundation.pretrain.optimization import parameter_groups
from foundation.training.checkpoint import CheckpointError, checkpoint_folders

REPO_ROOT = Path(__file__).resolve().parents[1]
STEPS = 6


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """A 2-family training corpus (8 trajectories each) and a held-out one from another seed, 32x32 grids."""
    from data_pipelines.corpus import generate_corpus
    from data_pipelines.solvers.registry import resolve_families

    root = tmp_path_factory.mktemp("corpora")
    families = resolve_families("diffusion,advection")
    kw = dict(resolution=32, snapshots=5, progress=False)
    generate_corpus(root / "train", families, trajectories=8, seed=0, shard_size=4, **kw)
    generate_corpus(root / "heldout", families, trajectories=1, seed=1, shard_size=1, **kw)
    return root / "train", root / "heldout"


def _config(corpora, out: Path, **kw) -> PretrainConfig:
    train, heldout = corpora
    base = dict(
        corpus=[str(train)],
        eval_corpus=[str(heldout)],
        eval_every=3,
        out=str(out),
        model_overrides={"image_size": 32},
        max_steps=STEPS,
        batch_size=4,
        warmup_steps=2,
        learning_rate=2e-3,
        pairs_per_trajectory=2,
        checkpoint_every=2,
        log_every=1,
        device="cpu",  # exact comparisons below: fp32 on the CPU even where a GPU is present
        mixed_precision="no",
        log_with="tensorboard",
        progress=False,
    )
    return PretrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def reference_run(corpora, tmp_path_factory):
    """One uninterrupted run (the baseline every resumed run must reproduce)."""
    out = tmp_path_factory.mktemp("reference")
    return out, pretrain(_config(corpora, out))


def test_reference_run_trains_and_logs(reference_run):
    out, summary = reference_run
    losses = summary["loss_history"]
    assert summary["steps"] == STEPS and len(losses) == STEPS
    assert all(torch.isfinite(torch.tensor(losses)))
    assert len({round(x, 8) for x in losses}) > 1  # the weights move
    assert [s for s, _ in summary["eval_history"]] == [3, 6]
    assert list((out / "pdefm-pretrain").rglob("events.out.tfevents*")), "no TensorBoard log written"
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-00000004", "step-00000006"]
    final = load_file(out / "model" / "model.safetensors")
    ckpt = load_file(out / "checkpoints" / "step-00000006" / "model.safetensors")
    assert all(torch.equal(final[k], ckpt[k]) for k in final)
    # the model records the families it learned (fine-tuning's channels="auto" reads them)
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["pde_vocabulary"] == ["advection", "diffusion"] and not config["use_operator_conditioning"]


def test_weight_decay_groups_follow_poseidon():
    from foundation.pretrain.loop import build_model

    model = build_model(
        PretrainConfig(corpus=["unused"], model_overrides={"image_size": 32}), ["u", "v", "s"]
    )
    decay, plain = parameter_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert any(n.endswith("logit_scale") for n in decay["names"])
    assert any(
        n.startswith("residual_blocks") and n.endswith(".weight") and n.count(".") == 3
        for n in decay["names"]
    )
    assert all("norm" in n or n.endswith("bias") for n in plain["names"])
    assert any("layernorm_before.weight.weight" in n for n in plain["names"])  # conditioned norm's scale map
    assert len(decay["names"]) + len(plain["names"]) == len(list(model.parameters()))


def test_resume_matches_uninterrupted_run(corpora, reference_run, tmp_path):
    _, reference = reference_run
    out = tmp_path / "resumed"
    first = pretrain(_config(corpora, out, max_minutes=0.0))  # stops (with a checkpoint) after one step
    assert first["steps"] == 1
    resumed = pretrain(_config(corpora, out, resume=True))
    assert resumed["steps"] == STEPS
    torch.testing.assert_close(
        torch.tensor(resumed["loss_history"]), torch.tensor(reference["loss_history"]), rtol=1e-5, atol=1e-6
    )
    final, ref = (
        load_file(out / "model" / "model.safetensors"),
        load_file(Path(reference_run[0]) / "model" / "model.safetensors"),
    )
    for k in ref:
        torch.testing.assert_close(final[k], ref[k], rtol=1e-4, atol=1e-6)


def test_sigkill_then_resume_loses_nothing(corpora, reference_run, tmp_path):
    out = tmp_path / "killed"
    cfg = _config(corpora, out, checkpoint_every=1, log_with="none")
    cfg_file = tmp_path / "pretrain.yaml"
    import yaml

    cfg_file.write_text(yaml.safe_dump(cfg.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    cmd = [sys.executable, "-m", "eval_suite.command_line", "pretrain", "--config", str(cfg_file)]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not checkpoint_folders(out) or checkpoint_folders(out)[0].name < "step-00000002":
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    killed_at = json.loads((checkpoint_folders(out)[0] / "trainer_state.json").read_text())["step"]
    assert 2 <= killed_at < STEPS
    resumed = pretrain(_config(corpora, out, resume=True, checkpoint_every=1, log_with="none"))
    torch.testing.assert_close(
        torch.tensor(resumed["loss_history"]),
        torch.tensor(reference_run[1]["loss_history"]),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("victim", ["optimizer.bin", "model.safetensors"])
def test_damaged_checkpoints(corpora, reference_run, tmp_path, victim, caplog):
    """A damaged newest checkpoint falls back to the previous one, loudly; all damaged is a clear error."""
    import shutil

    out = tmp_path / "damaged"
    shutil.copytree(reference_run[0] / "checkpoints", out / "checkpoints")
    newest, previous = checkpoint_folders(out)
    path = newest / victim
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with caplog.at_level("WARNING"):
        resumed = pretrain(_config(corpora, out, resume=True, log_with="none"))
    assert f"{victim} is truncated" in caplog.text
    torch.testing.assert_close(
        torch.tensor(resumed["loss_history"]),
        torch.tensor(reference_run[1]["loss_history"]),
        rtol=1e-5,
        atol=1e-6,
    )
    for folder in checkpoint_folders(out):
        (folder / "manifest.json").write_text("{")
    with pytest.raises(CheckpointError, match="no valid checkpoint.*manifest.json is damaged"):
        pretrain(_config(corpora, out, resume=True, log_with="none"))


def test_short_run_with_default_warmup(corpora, tmp_path):
    """The default warmup scales with max_steps (a 4-step run is not refused for warmup 50)."""
    cfg = _config(corpora, tmp_path / "short", max_steps=4, eval_corpus=None, log_with="none")
    cfg = PretrainConfig(**{**cfg.to_dict(), "warmup_steps": None})
    assert cfg.warmup_steps == 0 and pretrain(cfg)["steps"] == 4


def test_divergent_run_exits_with_an_error_and_publishes_nothing(corpora, tmp_path):
    from foundation.training import DivergenceError

    out = tmp_path / "diverged"
    cfg = _config(
        corpora, out, learning_rate=1e4, warmup_steps=0, max_steps=12, checkpoint_every=1, log_with="none"
    )
    with pytest.raises(DivergenceError, match="training diverged.*first at step"):
        pretrain(cfg)
    assert not (out / "model").exists()
    for file in out.rglob("*.safetensors"):
        assert all(torch.isfinite(t).all() for t in load_file(file).values()), file


def test_push_checkpoint_with_model_card(hub_server, reference_run):
    from eval_suite.command_line import main
    from foundation.hub.push import pull
    from foundation.loading import load_model

    out, summary = reference_run
    result = CliRunner().invoke(main, ["push", str(out), "pdefm-tests/pretrained-tiny"])
    assert result.exit_code == 0, result.output
    files = set(HfApi().list_repo_files("pdefm-tests/pretrained-tiny"))
    assert {"config.json", "model.safetensors", "training_args.json", "README.md"} <= files
    card = ModelCard.load("pdefm-tests/pretrained-tiny")
    assert card.data.library_name == "pdefm" and card.data.license == "apache-2.0"
    assert card.data.pde_families == ["advection", "diffusion"]
    assert card.data.training_steps == STEPS and card.data.training_trajectories == 16
    assert card.data.final_eval_loss == pytest.approx(summary["final_eval_loss"])
    assert "pdefm finetune --model" in card.text
    main_sha = HfApi().model_info("pdefm-tests/pretrained-tiny").sha
    result = CliRunner().invoke(main, ["push", str(out), "pdefm-tests/pretrained-tiny", "--revision", "dev"])
    assert result.exit_code == 0, result.output
    refs = HfApi().list_repo_refs("pdefm-tests/pretrained-tiny")
    assert {b.name for b in refs.branches} == {"main", "dev"}
    assert sorted(p.name for p in pull("pdefm-tests/pretrained-tiny", revision=main_sha).iterdir()) == sorted(
        files
    )
    model = load_model("pdefm-tests/pretrained-tiny")
    local = load_file(out / "model" / "model.safetensors")
    assert all(torch.equal(model.state_dict()[k], local[k]) for k in local)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_through_accelerate_launch(corpora, tmp_path):
    out = tmp_path / "ddp"
    out.mkdir()
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [
        str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        str(REPO_ROOT / "tests" / "scripts" / "ddp_pretrain.py"), str(corpora[0]), str(out),
    ]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((out / f"rank-{r}.json").read_text()) for r in range(2)]
    for rank in ranks:
        assert rank["num_processes"] == 2 and rank["distributed_type"] == "MULTI_CPU"
        assert rank["ddp"]
    ids0, ids1 = set(ranks[0]["ids"]), set(ranks[1]["ids"])
    assert ids0 and ids1 and not ids0 & ids1  # disjoint shares ...
    assert len(ids0 | ids1) == 16  # ... covering the corpus (4 steps x 2 ranks x 2 examples = one epoch)
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]


def test_gradient_checkpointing_keeps_the_loss_curve(corpora, reference_run, tmp_path):
    summary = pretrain(_config(corpora, tmp_path / "gc", gradient_checkpointing=True, eval_corpus=None))
    torch.testing.assert_close(
        torch.tensor(summary["loss_history"]),
        torch.tensor(reference_run[1]["loss_history"]),
        rtol=1e-5,
        atol=1e-6,
    )


def test_hub_corpus_and_bf16_first_step(hub_server, corpora, reference_run, tmp_path):
    """The corpus streamed from a Hub dataset repo gives the same first batch as the folder; bf16 autocast
    on CPU gives the same first loss up to bf16 rounding."""
    from data_pipelines.corpus import push_corpus

    push_corpus(corpora[0], "pdefm-tests/pretrain-corpus")
    reference = reference_run[1]["loss_history"][0]
    hub = pretrain(
        _config(corpora, tmp_path / "hub", corpus=["pdefm-tests/pretrain-corpus"], max_minutes=0.0)
    )
    assert hub["loss_history"][0] == pytest.approx(reference, rel=1e-5)
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # the process-wide state fixed fp32 so far
    try:
        bf16_cfg = _config(
            corpora, tmp_path / "bf16", mixed_precision="bf16", max_minutes=0.0, eval_corpus=None
        )
        bf16 = pretrain(bf16_cfg)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert bf16["mixed_precision"] == "bf16"
    assert bf16["loss_history"][0] == pytest.approx(reference, rel=3e-2)


def test_push_writes_downstream_and_sibling_sections(hub_server, corpora, tmp_path):
    """`pdefm push --siblings` writes the run's downstream curve and its rank among sibling runs into the card."""
    from eval_suite.command_line import main

    task = ["diffusion zero-shot n=2 resolution=32 snapshots=5 name=diff"]
    runs = []
    for seed in (0, 1):
        out = tmp_path / f"run{seed}"
        pretrain(_config(corpora, out, seed=seed, downstream=task, downstream_every=3, log_with="none"))
        runs.append(out)
    rows = [json.loads(x) for x in (runs[0] / "model" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "downstream/diff.zero-shot/rel_l1" in r] == [3, 6]
    args = ["push", str(runs[0]), "pdefm-tests/with-siblings", "--siblings", str(runs[1])]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    card = ModelCard.load("pdefm-tests/with-siblings").text
    assert "## Downstream error during pretraining" in card and "| diff.zero-shot |" in card
    assert "## Scaling position among sibling runs" in card and "(this model)" in card
    assert "Rank of this model (1 = lowest error): diff.zero-shot:" in card and "of 2" in card
    assert "metrics.jsonl" in HfApi().list_repo_files("pdefm-tests/with-siblings")
