"""Downstream tracking during pretraining (`--downstream SPEC`) and scaling fits across real runs.

Three tiny pretraining runs of different widths record zero-shot and few-shot errors on a held-out family
while they train; `pdefm eval scaling --runs ... --axis model` fits them. All 32x32, a few steps.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from data_pipelines.normalization import Normalizer
from eval_suite.cli import eval_app
from eval_suite.protocol import TrainedOperator, forecast, persistence, score
from foundation.configuration_scot import ScOTConfig
from foundation.modeling_scot import ScOT
from foundation.pretrain.config import PretrainConfig
from foundation.pretrain.downstream import (
    DownstreamSpecError,
    family_trajectories,
    horizon,
    parse_downstream,
    zero_shot_errors,
)
from foundation.pretrain.loop import pretrain

STEPS, EVERY = 6, 2
TASK = "ns_gauss input=1 n=3 snapshots=4 zero-shot few-shot:2 steps=2 lr=1e-3"
WIDTHS = (8, 16, 24)


def test_spec_parser_reads_sources_modes_and_horizons(tmp_path):
    spec = parse_downstream("burgers:nu=0.002:0.01 few-shot:4 zero-shot input=2 target=6 n=16 name=bg")
    assert (spec.kind, spec.name, spec.modes) == ("family", "bg", ("few-shot:4", "zero-shot"))
    assert spec.coefficient_ranges == {"nu": (0.002, 0.01)} and spec.trajectories == 16
    assert spec.tasks() == ["bg.few-shot-4", "bg.zero-shot"] and spec.shots("few-shot:4") == 4
    assert horizon(spec, 11).lead == pytest.approx(0.4)
    assert horizon(parse_downstream("burgers input=1 lead=0.5"), 5).target == 3
    folder = tmp_path / "heldout"
    folder.mkdir()
    assert parse_downstream(f"{folder} lead=0.3").kind == "path"
    assert parse_downstream("org/some-corpus").kind == "hub"
    assert parse_downstream("burgers").modes == ("zero-shot",)
    for bad, message in [
        ("burgers few-shot:0", "few-shot:N with N >= 1"),
        ("burgers colour=red", "unknown option 'colour'"),
        ("burgers:mu=1:2", r"coef in \['amplitude', 'nu'\]"),
        ("no_such_family", "no existing path, built-in family"),
        ("burgers target=3 lead=0.5", "target= or lead=, not both"),
        ("burgers n=many", "bad value for n"),
    ]:
        with pytest.raises(DownstreamSpecError, match=message):
            parse_downstream(bad)
    with pytest.raises(DownstreamSpecError, match="need 0 <= input < target <= 4"):
        horizon(parse_downstream("burgers input=3 target=2"), 5)


def test_zero_shot_errors_match_the_evaluation_protocol():
    """The foundation-layer score (torch) equals eval_suite's forecast + metrics on the same model and data."""
    trajs = family_trajectories("ns_gauss", {}, 4, 32, 4, seed=7)
    torch.manual_seed(0)
    config = ScOTConfig.from_preset(
        "tiny", image_size=32, embed_dim=8, num_channels=2, num_out_channels=2, field_names=["u", "v"],
        channel_slice_list_normalized_loss=[0, 2],
    )  # fmt: skip
    model = ScOT(config).eval()
    normalizer = Normalizer.from_trajectories(trajs)
    spec = parse_downstream("ns_gauss input=1 target=3")
    errors, still = zero_shot_errors(model, ["u", "v"], normalizer, trajs, horizon(spec, 4))
    fc = forecast(TrainedOperator(model, ("u", "v"), normalizer), trajs, input_index=1, target_index=3)
    expected = score(fc)[1]["rel_l1"].mean(-1)
    torch.testing.assert_close(errors, expected, rtol=1e-5, atol=1e-6)
    still_expected = score(persistence(trajs, input_index=1, target_index=3))[1]["rel_l1"].mean(-1)
    torch.testing.assert_close(still, still_expected, rtol=1e-6, atol=1e-7)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from data_pipelines.corpus import generate_corpus
    from data_pipelines.solvers.registry import resolve_families

    root = tmp_path_factory.mktemp("downstream") / "corpus"
    generate_corpus(
        root, resolve_families("ns_sines"), trajectories=4, seed=0, resolution=32, snapshots=4, progress=False
    )
    return root


def _config(corpus, out, width: int, **kw) -> PretrainConfig:
    base = dict(
        corpus=[str(corpus)],
        out=str(out),
        model_overrides={"image_size": 32, "embed_dim": width},
        max_steps=STEPS,
        batch_size=4,
        learning_rate=2e-3,
        pairs_per_trajectory=2,
        checkpoint_every=EVERY,
        log_every=1,
        downstream=[TASK],
        downstream_every=EVERY,
        log_with="none",
        progress=False,
    )
    return PretrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):
    """Three widths; the widest is interrupted after its first step and resumed."""
    root = tmp_path_factory.mktemp("runs")
    folders = []
    for width in WIDTHS:
        out = root / f"w{width}"
        if width == WIDTHS[-1]:
            pretrain(_config(corpus, out, width, max_minutes=0.0))  # stops, with a checkpoint, at step 1
            pretrain(_config(corpus, out, width, resume="must"))
        else:
            pretrain(_config(corpus, out, width))
        folders.append(out)
    return folders


def _rows(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_runs_record_downstream_errors_flops_and_a_continuous_record_after_resume(runs):
    for folder in runs:
        rows = _rows(folder)
        steps = [r["step"] for r in rows]
        assert steps == sorted(set(steps)) and steps[-1] == STEPS  # no duplicated or missing rows
        evaluated = [r["step"] for r in rows if "downstream/ns_gauss.zero-shot/rel_l1" in r]
        assert evaluated == list(range(EVERY, STEPS + 1, EVERY))
        last = next(r for r in reversed(rows) if "downstream/ns_gauss.few-shot-2/rel_l1" in r)
        for key in ("zero-shot/rel_l1", "few-shot-2/rel_l1", "zero-shot/persistence_rel_l1"):
            assert np.isfinite(last[f"downstream/ns_gauss.{key}"]) and last[f"downstream/ns_gauss.{key}"] > 0
        assert last["flops"] > 0
        summary = json.loads((folder / "train_summary.json").read_text())
        assert summary["parameters"] > 0 and summary["flops"] > 0


def test_scaling_across_runs_fits_the_model_axis_with_figures(runs, tmp_path):
    out = tmp_path / "scaling"
    args = ["scaling", "--axis", "model", "--out", str(out), "--runs", ",".join(map(str, runs))]
    result = CliRunner().invoke(eval_app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tasks"] == ["ns_gauss.zero-shot", "ns_gauss.few-shot-2"]
    params = [metrics["runs"][f"w{w}"]["parameters"] for w in WIDTHS]
    assert params == sorted(params) and len(set(params)) == 3
    fit = metrics["fit"]
    assert fit["n_points"] == 3 and np.isfinite(fit["alpha"]) and "r2" in fit
    assert metrics["flags"] == {}  # same corpus and budget: only the width differs
    assert "unavailable" in metrics["joint_fit"]  # the runs do not vary data
    first = (out / "report.md").read_text().splitlines()[0]
    assert first.startswith("Downstream rel_l1 ~ N^-") and "over 3 runs" in first
    for png in ("scaling_model.png", "downstream_curves.png"):
        assert (out / png).stat().st_size > 1000 and png in (out / "report.md").read_text()

    compute = tmp_path / "compute"
    args = ["scaling", "--axis", "compute", "--out", str(compute), "--runs", ",".join(map(str, runs))]
    result = CliRunner().invoke(eval_app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((compute / "metrics.json").read_text())
    front = metrics["frontier"]["points"]
    assert front and all(a["error"] > b["error"] for a, b in zip(front, front[1:], strict=False))
    assert (compute / "compute_frontier.png").stat().st_size > 1000


def test_runs_without_records_are_evaluated_here_and_cached(runs, tmp_path):
    import shutil

    models = []
    for folder in runs:  # model folders without the run's records
        models.append(tmp_path / folder.name)
        shutil.copytree(folder / "model", models[-1])
        (models[-1] / "metrics.jsonl").unlink()
    out = tmp_path / "evaluated"
    args = ["scaling", "--axis", "model", "--out", str(out), "--runs", ",".join(map(str, models))]
    args += ["--evaluate", "ns_gauss n=2 snapshots=3 zero-shot few-shot:1 steps=1"]
    result = CliRunner().invoke(eval_app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["evaluated_here"]) == {f"w{w}" for w in WIDTHS}
    assert metrics["tasks"] == ["ns_gauss.zero-shot", "ns_gauss.few-shot-1"]
    assert all(r["evaluated_here"] and r["error"] > 0 for r in metrics["runs"].values())
    assert len(json.loads((out / "evaluations.json").read_text())) == 3
    again = CliRunner().invoke(eval_app, args)  # reuses the cached evaluations
    assert again.exit_code == 0 and "evaluating" not in again.output

    missing = CliRunner().invoke(eval_app, args[:-2])
    assert missing.exit_code != 0 and "pass --evaluate SPEC" in str(missing.exception)
