"""Efficiency and accuracy gains on synthetic error curves whose answers are known in closed form."""

from __future__ import annotations

import pytest

from eval_suite.gains import accuracy_gain, efficiency_gain, error_at

SHOTS = [2**k for k in range(1, 11)]  # 2 .. 1024
FNO = {s: 1.0 * s**-0.5 for s in SHOTS}
MODEL = {s: 0.1 * s**-0.5 for s in SHOTS}  # 10x more accurate, same rate


def test_accuracy_gain_is_the_error_ratio():
    assert accuracy_gain(MODEL, FNO) == pytest.approx(10.0)
    assert accuracy_gain(MODEL, FNO, samples=128) == pytest.approx(10.0)
    assert accuracy_gain(MODEL, FNO, samples=100) == pytest.approx(10.0)  # log-log exact for power laws


def test_efficiency_gain_interpolates_the_model_curve():
    # 0.1 s^-0.5 = 1024^-0.5  =>  s = 10.24, EG = 100
    eg = efficiency_gain(MODEL, FNO)
    assert eg.in_range and eg.samples == 1024
    assert eg.matching_samples == pytest.approx(10.24)
    assert eg.gain == pytest.approx(100.0)
    # different rates: model 0.5 s^-1 against FNO s^-0.5 at S = 256: 0.5/s = 1/16 => s = 8, EG = 32
    fast = {s: 0.5 / s for s in SHOTS}
    assert efficiency_gain(fast, FNO, samples=256).gain == pytest.approx(32.0)


def test_efficiency_gain_outside_the_sampled_range_is_flagged_with_its_bound():
    coarse = {s: v for s, v in MODEL.items() if s >= 16}  # true s = 10.24 lies below 16
    eg = efficiency_gain(coarse, FNO)
    assert not eg.in_range and "EG >= 64" in eg.note
    assert eg.gain == pytest.approx(100.0)  # the end segment of a power law extrapolates exactly
    weak = {s: 3.0 * s**-0.5 for s in SHOTS}  # never reaches FNO@1024 within 1024 samples
    eg = efficiency_gain(weak, FNO)
    assert not eg.in_range and "EG < 1" in eg.note
    assert eg.matching_samples == pytest.approx(9216.0) and eg.gain == pytest.approx(1 / 9)
    flat = {2: 1.0, 4: 1.0}
    eg = efficiency_gain(flat, FNO)
    assert eg.gain is None and "not extrapolated" in eg.note


def test_efficiency_gain_takes_the_first_crossing_of_a_noisy_curve():
    noisy = {2: 0.2, 4: 0.05, 8: 0.08, 16: 0.02}
    target = {1024: 0.1}
    # crossing between 2 (0.2) and 4 (0.05) in log-log: log s = log 2 + log2(0.2/0.1)/log2(0.2/0.05) * log 2
    eg = efficiency_gain(noisy, target)
    assert eg.in_range and eg.matching_samples == pytest.approx(2 * 2**0.5)


def test_baseline_value_must_be_inside_its_range():
    with pytest.raises(
        ValueError, match=r"baseline: 2048 trajectories is outside the sampled range \[2, 1024\]"
    ):
        accuracy_gain(MODEL, FNO, samples=2048)
    with pytest.raises(ValueError, match="positive and finite"):
        error_at({2: 0.0}, 2)


def test_pretrained_vs_scratch_line_is_paired_over_seeds():
    from eval_suite.verdict import pretrained_vs_scratch

    helped = pretrained_vs_scratch({0: 0.8, 1: 0.9}, {0: 1.0, 1: 1.0}, method="full", where="8 shots")
    assert helped["mean"] == pytest.approx(-0.15) and helped["std"] == pytest.approx(0.05)
    assert helped["line"].startswith("pretraining helped: 15% ± 5% lower error than scOT from scratch")
    hurt = pretrained_vs_scratch({0: 1.12}, {0: 1.0}, method="lora", where="2 shots")
    assert hurt["line"].startswith("pretraining hurt by 12%: higher error") and "one seed" in hurt["line"]
    noisy = pretrained_vs_scratch({0: 0.9, 1: 1.2}, {0: 1.0, 1: 1.0}, method="full", where="8 shots")
    assert noisy["line"].endswith("within the seed spread")


def test_versus_persistence_names_the_candidates_that_beat_it():
    from eval_suite.verdict import versus_persistence

    some = versus_persistence({"full": 0.4, "fno": 0.6, "scot_scratch": 0.3}, 0.5)
    assert some["better_than_persistence"] == ["scot_scratch", "full"] and not some["none_better"]
    none = versus_persistence({"full": 0.5, "fno": 0.7}, 0.5)  # a tie is no better
    assert none["none_better"] and none["line"].startswith("every candidate is no better than persistence")
