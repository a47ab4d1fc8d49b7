"""Miniature studies end to end (tiny models, 16-32 grids, a few steps): reports, figures, metrics.json."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from data_pipelines.solvers import get_family
from eval_suite.baselines.registry import build_baseline
from eval_suite.cli import eval_app
from eval_suite.protocol import forecast, score
from eval_suite.studies.candidates import Budget, fit_candidate, physguard_bases
from eval_suite.studies.scaling import ScalingConfig, run_scaling
from eval_suite.studies.splits import draw_shots, split_test
from eval_suite.studies.zero_shot import ZeroShotConfig, run_zero_shot
from finetune.data import load_trajectories
from finetune.methods.physguard import PhysGuardOptions
from foundation.configuration_scot import ScOTConfig
from foundation.loss import relative_group_loss
from foundation.modeling_scot import ScOT


@pytest.fixture(scope="module")
def study_inputs(tmp_path_factory):
    """Ten 16x16 Navier-Stokes trajectories in an .npz and a tiny random scOT checkpoint with fields u, v."""
    root = tmp_path_factory.mktemp("study")
    family = get_family("ns_sines")
    batch = family.generate(10, 16, 5, seed=0)
    data = root / "ns.npz"
    np.savez(data, u=batch.u.numpy(), t=batch.t.numpy(), fields=np.array(family.fields))
    torch.manual_seed(0)
    config = ScOTConfig.from_preset(
        "tiny", image_size=32, num_channels=2, num_out_channels=2, field_names=["u", "v"],
        channel_slice_list_normalized_loss=[0, 2],
    )  # fmt: skip
    ScOT(config).save_pretrained(root / "ckpt")
    return data, root / "ckpt"


def test_baselines_have_scots_forward_signature_and_loss():
    x, y = torch.randn(3, 2, 16, 16), torch.randn(3, 2, 16, 16)
    mask = torch.tensor([[False, True]] * 3)
    for name in ("fno", "unet"):
        net = build_baseline(name, 2, channel_slices=[0, 1, 2], seed=0)
        out = net(x, torch.full((3,), 0.5), pixel_mask=mask, labels=y)
        assert torch.equal(out.output[:, 1], y[:, 1])  # masked channel takes the label
        assert float(out.loss.detach()) == pytest.approx(
            float(relative_group_loss(out.output, y, [0, 1, 2]).detach())
        )
        later = net(x, torch.full((3,), 1.0)).output
        assert not torch.allclose(later[:, 0], out.output[:, 0])  # the lead time is an input
        same = build_baseline(name, 2, channel_slices=[0, 1, 2], seed=0).state_dict()
        tensors = {k: v for k, v in net.state_dict().items() if isinstance(v, torch.Tensor)}
        assert all(torch.equal(v, same[k]) for k, v in tensors.items())  # seeded initialisation


def test_few_shot_cli_writes_report_figures_and_gains(study_inputs, tmp_path):
    data, ckpt = study_inputs
    out = tmp_path / "few"
    args = ["few-shot", "--data", str(data), "--model", str(ckpt), "--out", str(out), "--shots", "2,4"]
    args += ["--seeds", "0,1", "--candidates", "full,fno,unet", "--val", "1", "--test", "3"]
    args += ["--epochs", "1", "--max-steps", "2", "--batch-size", "8"]
    result = CliRunner().invoke(eval_app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("full", "fno", "unet"):
        for n in ("2", "4"):
            runs = metrics["results"][name][n]["seeds"]
            assert set(runs) == {"0", "1"} and all(r["train"]["steps"] == 2 for r in runs.values())
            medians = [r["summary"]["rel_l1"]["median"] for r in runs.values()]
            assert all(math.isfinite(m) and m > 0 for m in medians)
            assert metrics["results"][name][n]["mean"]["rel_l1"] == pytest.approx(np.mean(medians))
    curves = metrics["curves"]
    assert set(curves) == {"full", "fno", "unet", "scot_scratch"}  # scratch joins a pretrained method
    still = metrics["persistence"]["rel_l1"]
    assert still == metrics["persistence"]["summary"]["rel_l1"]["median"] and still > 0
    assert metrics["horizon"] == {"mode": "direct", "input_index": 0, "target_index": 4, "lead_time": 1.0}
    versus = metrics["pretrained_vs_scratch"]
    assert versus["method"] == "full" and set(versus["relative_change_per_seed"]) == {"0", "1"}
    assert versus["mean"] == pytest.approx(
        np.mean([
            r["summary"]["rel_l1"]["median"] / metrics["results"]["scot_scratch"]["4"]["seeds"][s]["summary"]["rel_l1"]["median"] - 1
            for s, r in metrics["results"]["full"]["4"]["seeds"].items()
        ])
    )  # fmt: skip
    first = (out / "report.md").read_text().splitlines()[0]
    assert first.startswith("Pretraining helped" if versus["mean"] < 0 else "Pretraining hurt by")
    assert (
        "% ± " in first
        and "over 2 seeds" in first
        and first.rstrip(".") == metrics["verdict"][0].upper() + metrics["verdict"][1:]
    )
    for name in ("full", "unet"):
        assert metrics["accuracy_gain_over_fno"][name] == pytest.approx(
            curves["fno"]["4"] / curves[name]["4"]
        )
        assert metrics["efficiency_gain_over_fno"][name]["samples"] == 4
    assert "summary" in metrics["zero_shot"]  # the checkpoint knows u, v: scored as it is
    report = (out / "report.md").read_text()
    assert "AG_4 over FNO" in report and "| fno |" in report and "zero-shot" in report
    assert "| persistence (input as prediction) |" in report and "Pretrained against scratch" in report
    for png in (
        "few_shot_curve.png",
        "error_spectra.png",
        "fields_full.png",
        "fields_fno.png",
        "fields_unet.png",
    ):
        assert (out / png).stat().st_size > 1000

    # seeded: the same run again gives the same test error
    trajs = load_trajectories(data)
    pool, test = split_test(trajs, 3, 0)
    train, val = draw_shots(pool, 2, 1, 0)
    op, _ = fit_candidate("fno", train, val, budget=Budget(epochs=1, max_steps=2), seed=0)
    again = score(forecast(op, test))[0]["rel_l1"]["median"]
    assert again == pytest.approx(
        metrics["results"]["fno"]["2"]["seeds"]["0"]["summary"]["rel_l1"]["median"], rel=1e-5
    )


def test_zero_shot_scores_known_fields_and_explains_unknown_ones(study_inputs, tmp_path):
    _, ckpt = study_inputs
    cfg = ZeroShotConfig(trajectories=2, resolution=16, snapshots=3, seed=5)
    metrics = run_zero_shot(
        str(ckpt), tmp_path / "zero", families=["ns_gauss", "ns_gauss:nu=0.01:0.02", "wave_gauss"], config=cfg
    )
    assert math.isfinite(metrics["results"]["ns_gauss:nu=0.01:0.02"]["summary"]["vrmse"]["median"])
    assert "channel mismatch" in metrics["results"]["wave_gauss"]["unavailable"]
    assert (tmp_path / "zero" / "error_spectra.png").exists()
    with pytest.raises(ValueError, match=r"coef in \['nu'\]"):
        run_zero_shot(str(ckpt), tmp_path / "bad", families=["ns_gauss:mu=1:2"], config=cfg)


def test_horizon_options_change_what_is_scored_beside_persistence(study_inputs, tmp_path):
    data, ckpt = study_inputs
    horizons = {
        "default": [],
        "chosen": ["--input-index", "1", "--target-index", "3"],
        "lead": ["--input-index", "1", "--lead-time", "0.5"],  # 2 of the 4 snapshot intervals
    }
    scored = {}
    for name, extra in horizons.items():
        out = tmp_path / name
        args = ["zero-shot", "--model", str(ckpt), "--data", str(data), "--out", str(out), *extra]
        result = CliRunner().invoke(eval_app, args)
        assert result.exit_code == 0, result.output
        metrics = json.loads((out / "metrics.json").read_text())
        entry = metrics["results"][str(data)]
        scored[name] = (entry["persistence"]["rel_l1"]["median"], entry["summary"]["rel_l1"]["median"])
        first = (out / "report.md").read_text().splitlines()[0]
        assert first.rstrip(".").lower() == metrics["verdict"].lower() and "persistence" in first
        assert "| persistence |" in (out / "report.md").read_text()
    assert scored["chosen"] == scored["lead"]
    assert scored["chosen"][0] != pytest.approx(scored["default"][0])
    assert scored["chosen"][1] != pytest.approx(scored["default"][1])
    # persistence is the input snapshot as the prediction: relative L1 of u[1] against u[3], (u, v) jointly
    u = np.load(data)["u"].astype(np.float64)
    by_hand = np.abs(u[:, 3] - u[:, 1]).sum(axis=(1, 2, 3)) / np.abs(u[:, 3]).sum(axis=(1, 2, 3))
    assert scored["chosen"][0] == pytest.approx(float(np.median(by_hand)), rel=1e-5)

    bad = ["zero-shot", "--model", str(ckpt), "--data", str(data), "--out", str(tmp_path / "bad")]
    result = CliRunner().invoke(eval_app, [*bad, "--input-index", "3", "--target-index", "2"])
    assert result.exit_code != 0 and "target_index must be in [4, 4]" in str(result.exception)
    result = CliRunner().invoke(eval_app, [*bad, "--lead-time", "0.3"])
    assert "multiple of the snapshot spacing 1/4" in str(result.exception)


def test_few_shot_learning_rate_factors_are_chosen_on_validation(study_inputs, tmp_path):
    data, _ = study_inputs
    out = tmp_path / "tuned"
    args = ["few-shot", "--data", str(data), "--out", str(out), "--shots", "2", "--seeds", "0,1"]
    args += ["--candidates", "fno", "--val", "1", "--test", "3", "--epochs", "1", "--max-steps", "2"]
    args += ["--lr-grid", "0.5,2"]
    result = CliRunner().invoke(eval_app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    choice = metrics["lr_search"]["fno"]["2"]
    assert {"0.5", "2"} <= set(choice["val_loss"]) and choice["val_loss"][f"{choice['scale']:.4g}"] == min(
        choice["val_loss"].values()
    )
    runs = metrics["results"]["fno"]["2"]["seeds"]
    assert {r["train"]["lr_scale"] for r in runs.values()} == {choice["scale"]}
    assert "Learning rates chosen on the validation split" in (out / "report.md").read_text()
    # seed 0 keeps the chosen trial: the same as training it again with that factor
    pool, test = split_test(load_trajectories(data), 3, 0)
    train, val = draw_shots(pool, 2, 1, 0)
    budget = Budget(epochs=1, max_steps=2)
    op, _ = fit_candidate("fno", train, val, budget=budget, seed=0, lr_scale=choice["scale"])
    assert score(forecast(op, test))[0]["rel_l1"]["median"] == pytest.approx(
        runs["0"]["summary"]["rel_l1"]["median"], rel=1e-5
    )


def test_a_report_says_first_when_no_candidate_beats_persistence(tmp_path):
    """On frozen dynamics (every snapshot equal) persistence is exact, so no trained candidate can beat it."""
    batch = get_family("ns_sines").generate(6, 16, 2, seed=3)
    u = np.repeat(batch.u.numpy()[:, :1], 3, axis=1)
    data = tmp_path / "frozen.npz"
    np.savez(data, u=u, fields=np.array(["u", "v"]))
    out = tmp_path / "frozen"
    args = ["few-shot", "--data", str(data), "--out", str(out), "--shots", "2", "--seeds", "0"]
    args += ["--candidates", "fno", "--val", "1", "--test", "2", "--epochs", "1", "--max-steps", "1"]
    args += ["--target-index", "2"]
    result = CliRunner().invoke(eval_app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["persistence"]["rel_l1"] == 0.0 and metrics["versus_persistence"]["2"]["none_better"]
    assert set(metrics["curves"]) == {"fno"}  # no pretrained method: no scratch comparison needed
    first = (out / "report.md").read_text().splitlines()[0]
    assert first.startswith("Every candidate is no better than persistence")


def test_in_process_scaling_study_pretrains_real_runs_and_fits_them(tmp_path):
    cfg = ScalingConfig(
        axis="data", values=[1, 2, 4], families=["ns_sines"], embed_dim=8, resolution=32, snapshots=3, n_test=2,
        steps=4, evaluations=2, batch_size=4,
    )  # fmt: skip
    metrics = run_scaling(tmp_path / "scaling", config=cfg)
    assert [metrics["runs"][f"data-{v}-seed0"]["trajectories"] for v in (1, 2, 4)] == [1, 2, 4]
    assert metrics["tasks"] == ["ns_sines.zero-shot"] and metrics["flags"] == {}
    fit = metrics["fit"]
    assert fit["n_points"] == 3 and fit["c"] == 0.0 and np.isfinite(fit["alpha"])
    for v in (1, 2, 4):  # real pretraining runs with their downstream records
        rows = (tmp_path / "scaling" / "runs" / f"data-{v}-seed0" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(r)["step"] for r in rows if "downstream/ns_sines.zero-shot/rel_l1" in r] == [2, 4]
    report = (tmp_path / "scaling" / "report.md").read_text()
    assert "Power-law fit" in report and "pretrained here" in report
    assert (tmp_path / "scaling" / "scaling_data.png").exists()


def test_physguard_candidate_protects_its_bases_and_needs_simulation_data(study_inputs):
    data, ckpt = study_inputs
    trajs = load_trajectories(data)
    train, val = trajs[:2], trajs[2:3]
    budget = Budget(epochs=1, max_steps=2)
    with pytest.raises(ValueError, match="needs protected bases"):
        fit_candidate("physguard", train, val, budget=budget, seed=0, model=str(ckpt))

    bases = physguard_bases(str(ckpt), ["u", "v"], trajs[3:], PhysGuardOptions(n_samples=8, max_rank=4))
    assert bases and all(U.shape[1] <= 4 for U in bases.values())
    guarded, result = fit_candidate(
        "physguard", train, val, budget=budget, seed=0, model=str(ckpt), bases=bases
    )
    plain, _ = fit_candidate("full", train, val, budget=budget, seed=0, model=str(ckpt))
    assert result.steps == 2
    name = next(iter(bases))
    after = {n: p.detach() for n, p in guarded.model.named_parameters()}[name]
    unguarded = {n: p.detach() for n, p in plain.model.named_parameters()}[name]
    assert not torch.allclose(after, unguarded)  # the projection changed the update


def test_few_shot_cli_asks_for_simulation_data_for_physguard(study_inputs, tmp_path):
    data, ckpt = study_inputs
    args = ["few-shot", "--data", str(data), "--model", str(ckpt), "--out", str(tmp_path / "pg")]
    args += ["--shots", "2", "--seeds", "0", "--candidates", "physguard", "--val", "1", "--test", "3"]
    result = CliRunner().invoke(eval_app, args)
    assert result.exit_code != 0
    assert "--sim-data" in str(result.exception) + result.output
