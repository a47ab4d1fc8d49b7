"""Metrics against hand-computed cases: relative errors, masking, groups, VRMSE, spectral bands, rollouts."""

from __future__ import annotations

import math

import pytest
import torch

from eval_suite.metrics import channel_groups, evaluate, per_sample_errors, radial_error_spectrum, summarize


def _grid(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.arange(n, dtype=torch.float64) / n
    return torch.meshgrid(x, x, indexing="ij")


def test_relative_l1_and_l2_by_hand():
    y = torch.ones(1, 1, 4, 4)
    p = y.clone()
    p[..., :2, :] += 0.5  # half the pixels off by 0.5
    e = per_sample_errors(p, y)
    assert e["rel_l1"].item() == pytest.approx(8 * 0.5 / 16)
    assert e["rel_l2"].item() == pytest.approx(math.sqrt(8 * 0.25) / 4)
    assert e["nrmse"].item() == pytest.approx(math.sqrt(0.125 / 1.0), rel=1e-6)
    assert e["crmse"].item() == pytest.approx(0.25)


def test_groups_score_vector_fields_jointly_and_average_over_groups():
    y = torch.ones(1, 3, 2, 2)
    y[:, 2] = 3.0
    p = y.clone()
    p[:, 0] += 1.0  # channel 0 (alone): rel_l1 = 1; group [1, 2]: error only on channel 1
    p[:, 1] += 2.0
    e = per_sample_errors(p, y, groups=[[0], [1, 2]])
    assert e["rel_l1"].shape == (1, 2)
    assert e["rel_l1"][0, 0].item() == pytest.approx(1.0)
    assert e["rel_l1"][0, 1].item() == pytest.approx(4 * 2.0 / (4 * 1.0 + 4 * 3.0))
    s = summarize(e, ["a", "uv"])
    assert s["rel_l1"]["median"] == pytest.approx((1.0 + 0.5) / 2)
    assert s["rel_l1"]["groups"]["uv"]["mean"] == pytest.approx(0.5)
    assert channel_groups(["rho", "u", "v", "p"]) == ([[0], [1, 2], [3]], ["rho", "u,v", "p"])
    assert channel_groups(["re", "c", "im"]) == ([[0, 2], [1]], ["re,im", "c"])


def test_channel_mask_excludes_a_channel_from_numerator_and_denominator():
    torch.manual_seed(0)
    y = torch.rand(3, 2, 8, 8) + 1
    p = y + 0.1
    p[:, 1] += 100.0  # channel 1 is wildly wrong but masked (pressure in incompressible NS)
    masked = per_sample_errors(p, y, mask=torch.tensor([False, True]), groups=[[0, 1]])
    alone = per_sample_errors(p[:, :1], y[:, :1])
    for name in ("rel_l1", "rel_l2", "nrmse", "vrmse", "crmse", "frmse_low"):
        torch.testing.assert_close(masked[name], alone[name])
    per_sample = torch.tensor([[False, False], [False, True], [True, True]])
    e = per_sample_errors(p, y, mask=per_sample, groups=[[0], [1]])
    assert e["rel_l1"][0, 1] > 10 and torch.isnan(e["rel_l1"][1:, 1]).all()
    assert torch.isnan(e["rel_l1"][2, 0])


def test_spatial_mask_scores_only_unmasked_pixels():
    y = torch.full((1, 1, 4, 4), 2.0)
    p = y.clone()
    p[..., 0, 0] = 1000.0  # inside the masked region (e.g. an airfoil interior)
    p[..., 3, 3] = 3.0
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[..., 0, 0] = True
    e = per_sample_errors(p, y, mask=mask)
    assert e["rel_l1"].item() == pytest.approx(1.0 / (15 * 2.0))
    assert e["crmse"].item() == pytest.approx(1.0 / 15)
    assert e["nrmse"].item() == pytest.approx(math.sqrt((1.0 / 15) / 4.0), rel=1e-6)


def test_vrmse_is_one_for_predicting_the_spatial_mean():
    torch.manual_seed(1)
    y = torch.randn(4, 2, 16, 16) * 3 + 5
    p = y.mean(dim=(-2, -1), keepdim=True).expand_as(y)
    v = per_sample_errors(p, y)["vrmse"]
    n = 16 * 16
    torch.testing.assert_close(v, torch.full_like(v, math.sqrt((n - 1) / n)), rtol=1e-6, atol=0)
    assert per_sample_errors(p, y)["crmse"].abs().max() < 1e-5  # float32 mean


@pytest.mark.parametrize(
    ("mode", "band"),
    [((2, 1), "frmse_low"), ((6, 5), "frmse_mid"), ((0, 13), "frmse_high"), ((11, 9), "frmse_high")],
)
def test_single_mode_error_lands_in_its_band(mode, band):
    x, yy = _grid(32)
    amplitude = 0.3
    err = amplitude * torch.sin(2 * math.pi * (mode[0] * x - mode[1] * yy))  # mixed-sign mode on purpose
    target = torch.cos(2 * math.pi * x)[None, None].expand(2, 1, 32, 32)
    e = per_sample_errors(target + err, target)
    for name in ("frmse_low", "frmse_mid", "frmse_high"):
        expected = amplitude / math.sqrt(2) if name == band else 0.0
        torch.testing.assert_close(e[name], torch.full_like(e[name], expected), atol=1e-9, rtol=1e-9)


def test_spectral_bands_split_the_rmse_by_parseval():
    torch.manual_seed(2)
    y = torch.randn(3, 2, 32, 24)
    p = y + torch.randn_like(y)
    e = per_sample_errors(p, y)
    rmse = torch.sqrt(((p - y) ** 2).mean(dim=(-2, -1))).double()
    total = e["frmse_low"] ** 2 + e["frmse_mid"] ** 2 + e["frmse_high"] ** 2
    torch.testing.assert_close(total, rmse**2)


def test_rollouts_report_every_step_and_headline_the_last():
    y = torch.ones(2, 3, 1, 4, 4)
    p = y.clone()
    for t in range(3):
        p[:, t] += 0.1 * (t + 1)  # error grows along the rollout
    p[1] += 0.2
    e = per_sample_errors(p, y)
    assert e["rel_l1"].shape == (2, 3, 1)
    s = summarize(e)
    assert [round(step["median"], 6) for step in s["rel_l1"]["per_step"]] == [0.2, 0.3, 0.4]
    assert s["rel_l1"]["median"] == pytest.approx(0.4)
    assert s["rel_l1"]["mean"] == pytest.approx(0.4)
    spatial = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    assert per_sample_errors(p, y, mask=spatial)["rel_l1"].shape == (2, 3, 1)


def test_median_and_mean_over_samples():
    y = torch.ones(3, 1, 2, 2)
    p = y + torch.tensor([0.1, 0.2, 0.9])[:, None, None, None]
    s = evaluate(p, y, fields=["c"])
    assert s["rel_l1"]["median"] == pytest.approx(0.2)
    assert s["rel_l1"]["mean"] == pytest.approx(0.4)
    assert set(s["rel_l1"]["groups"]) == {"c"}


def test_bad_inputs_are_clear_errors():
    y = torch.ones(2, 2, 4, 4)
    with pytest.raises(ValueError, match=r"pred \[2, 2, 4, 4\] vs target \[2, 2, 4, 3\]"):
        per_sample_errors(y, torch.ones(2, 2, 4, 3))
    with pytest.raises(ValueError, match=r"mask: expected shape .*got \[3\]"):
        per_sample_errors(y, y, mask=torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="channel group"):
        per_sample_errors(y, y, groups=[[0, 2]])
    with pytest.raises(ValueError, match="expected 2 names"):
        evaluate(y, y, fields=["a"])


def test_radial_error_spectrum_peaks_at_the_error_mode():
    x, yy = _grid(32)
    err = 0.5 * torch.cos(2 * math.pi * (3 * x + 4 * yy))  # |k| = 5
    target = torch.zeros(2, 1, 32, 32)
    k, spectrum = radial_error_spectrum(target + err, target)
    assert k.tolist() == list(range(16))
    assert spectrum[5].item() == pytest.approx(0.5 / math.sqrt(2))
    assert spectrum[torch.arange(16) != 5].abs().max() < 1e-9
