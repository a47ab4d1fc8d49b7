"""`pdefm quickstart` end to end, shortened: a fresh process, its own local Hub, a report; a rerun reuses it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SHORT = [
    "--trajectories", "4", "--pretrain-steps", "8", "--shots", "2", "--finetune-steps", "4", "--minutes", "4",
]  # fmt: skip


def _quickstart(out, env):
    cmd = [sys.executable, "-m", "eval_suite.command_line", "quickstart", "--out", str(out), *SHORT]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_quickstart_runs_offline_to_a_report_and_reuses_its_cache(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}  # it must start its own Hub
    env["HF_HUB_OFFLINE"] = (
        "1"  # and must not need the network: the quickstart unsets it for its loopback Hub
    )
    out = tmp_path / "qs"
    first = _quickstart(out, env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "report:" in first.stdout

    metrics = json.loads((out / "metrics.json").read_text())
    hub = metrics["hub"]
    assert hub["model"].startswith("pdefm-quickstart/scot-tiny-") and "@" in hub["model"]
    assert metrics["pretrain"]["steps"] == 8
    assert len(metrics["quickstart"]["pretrain_families"]) >= 6
    assert metrics["quickstart"]["held_out"] not in metrics["quickstart"]["pretrain_families"]
    curves = metrics["few_shot"]["curves"]
    assert set(curves) == {"full", "lora", "physguard", "fno", "scot_scratch"}
    assert all(v is not None and v > 0 for c in curves.values() for v in c.values())
    assert "summary" in metrics["few_shot"]["zero_shot"]  # the held-out fields fit the checkpoint
    assert set(metrics["verdict"]) == {"2"}
    report = (out / "report.md").read_text()
    held_out = metrics["quickstart"]["held_out"]
    assert f"Few-shot on the held-out family {held_out}" in report and "| full |" in report
    for png in ("few_shot_curve.png", "fields_full.png", "fields_fno.png", "error_spectra.png"):
        assert (out / "few-shot" / png).stat().st_size > 1000
        assert f"few-shot/{png}" in report
    # the pushed checkpoint and corpus live in the quickstart's own Hub folder, persisted on disk
    assert any((out / "hub").rglob("*.json"))

    second = _quickstart(out, env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    for stage in ("pretraining run", "few-shot study"):
        assert f"reusing the finished {stage}" in second.stdout
    again = json.loads((out / "metrics.json").read_text())
    assert again["few_shot"]["curves"] == metrics["few_shot"]["curves"]
    assert again["stage_seconds"]["pretrain"] < metrics["stage_seconds"]["pretrain"]


def test_held_out_family_must_not_be_pretrained_on():
    from eval_suite.quickstart import QuickstartConfig

    with pytest.raises(ValueError, match="also a pretraining family"):
        QuickstartConfig(held_out="ns_sines")
    assert QuickstartConfig().held_out_trajectories == max(QuickstartConfig().shots) + 2 + 8
