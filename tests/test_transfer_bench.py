"""Smoke test of the independent-solver transfer benchmark: py-pde data, its window, tuned candidates, table."""

from __future__ import annotations

import importlib.util
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

from eval_suite.studies.tuning import search
from foundation.configuration_scot import ScOTConfig
from foundation.modeling_scot import ScOT

pytest.importorskip("pde")  # py-pde, the `bench` extra

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _module(name: str):
    if name not in sys.modules:
        sys.path.insert(0, str(BENCH))
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def test_search_keeps_the_lowest_loss_and_extends_a_winning_edge():
    losses = {0.5: 3.0, 1.0: 2.0, 2.0: 1.0, 4.0: 0.5, 8.0: float("nan")}
    best, tried = search(losses.__getitem__, (0.5, 1.0, 2.0), extend=2)
    assert best == 4.0 and sorted(tried) == [0.5, 1.0, 2.0, 4.0, 8.0]
    best, tried = search(lambda s: abs(s - 1.0), (0.5, 1.0, 2.0))
    assert best == 1.0 and len(tried) == 3


def test_generated_family_is_cached_windowed_and_scored_by_every_candidate(tmp_path):
    data = _module("transfer_data")
    bench = _module("bench_transfer")
    kw = dict(trajectories=4, resolution=16, cache=tmp_path / "cache", backend="numpy", log=lambda _: None)
    path = data.generate(["brusselator"], **kw)["brusselator"]
    assert data.generate(["brusselator"], **kw)["brusselator"] == path  # reused, not solved again
    trajs = data.load(path)
    family = data.FAMILIES["brusselator"]
    assert len(trajs) == 4 and trajs[0].u.shape == (family.snapshots, 2, 16, 16)
    assert trajs[0].fields == ["a", "b"] and trajs[0].pde == "brusselator"
    window = data.windowed(trajs, family.window)
    assert window[0].u.shape[0] == family.window[1] - family.window[0] + 1 and window[0].t[0] == 0
    assert data.persistence_error(trajs, *family.window) > 0

    layout = ["rho", "u", "v", "p", "a", "b"]
    config = ScOTConfig.from_preset(
        "tiny", image_size=32, num_channels=6, num_out_channels=6, field_names=layout
    )
    ScOT(config).save_pretrained(tmp_path / "ckpt")
    args = Namespace(
        channels="same",
        rename=None,
        n_test=1,
        n_val=1,
        shots=2,
        seeds=[0, 1],
        steps=2,
        batch_size=4,
        stride=5,
        warmup=1,
        methods=["full"],
        baselines=["scot_scratch", "fno"],
        grid=[1.0],
        extend=1,
        full="lr_backbone=1e-4",
        lora=None,
    )
    res = bench.run_family("brusselator", path, args, tmp_path / "ckpt", lambda _: None)
    assert set(res["candidates"]) == {"full", "scot_scratch", "fno"}
    for row in res["candidates"].values():
        assert set(row["errors"]) == {0, 1} and all(np.isfinite(e) for e in row["errors"].values())
        assert set(row["tuning"]["val_loss"]) == {"1", "3"}  # the single factor won, so its edge was extended
    summary = bench.summarize(res, ["full"])
    assert summary["best_method"] == "full" and "ratio_to_scratch" in summary and "ag_over_fno" in summary
    assert "brusselator" in bench.print_table([res], ["full"])

    args.channels = "fresh"
    fresh = bench.run_family("brusselator", path, args, tmp_path / "ckpt", lambda _: None)
    # new embedding/recovery channels instead of the checkpoint's a and b: another model, other errors
    assert fresh["fields"] == ["a", "b"]
    assert fresh["candidates"]["full"]["errors"] != res["candidates"]["full"]["errors"]
