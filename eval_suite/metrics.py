"""Field-error metrics: masked, per channel group, per sample, then median and mean over samples.

Inputs are ``pred``/``target`` of shape ``[B, C, H, W]`` (direct lead-time prediction) or
``[B, T, C, H, W]`` (an autoregressive rollout; errors are then reported per step as well).
Definitions follow Poseidon (relative L1, paper eq. 10) and The Well (nRMSE, VRMSE, binned spectra), written fresh:

- ``rel_l1`` (Poseidon's headline): sum|pred - y| / sum|y| over a group's channels and pixels.
- ``rel_l2`` (LeMON, DPOT): ||pred - y||_2 / (||y||_2 + eps) over a group's channels and pixels.
- ``nrmse`` (The Well): sqrt(mean_x (pred - y)^2 / (mean_x y^2 + eps)) per channel.
- ``vrmse`` (The Well): sqrt(mean_x (pred - y)^2 / (var_x(y) + eps)) per channel, unbiased variance;
  about 1 for a prediction equal to the spatial mean.
- ``frmse_low|mid|high``: the RMS of the error band-passed to radial wavenumbers |k| in [0, 4),
  [4, 12), [12, inf) (PDEBench's edges, integer wavenumbers on the full signed FFT grid), per channel.
  Unlike PDEBench (one quadrant, mean over bins) the bands are a Parseval split of the error:
  low^2 + mid^2 + high^2 = RMSE^2 on an unmasked field.
- ``crmse`` (PDEBench, conserved quantity): |mean_x pred - mean_x y| per channel.

Per-channel metrics are averaged over a group's channels; a sample's overall error is the mean over
groups (Poseidon's mean over functions). ``mask`` is True where an entry is absent and not scored
(Poseidon's ``pixel_mask``): a channel vector ``[C]``/``[B, C]`` or a full spatial mask; masked entries
count neither in numerators nor in denominators, and masked pixels are zeroed in the spectral error.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

METRICS = ("rel_l1", "rel_l2", "nrmse", "vrmse", "frmse_low", "frmse_mid", "frmse_high", "crmse")
DEFAULT_BANDS = (4.0, 12.0)
EPS = 1e-7
VECTOR_FIELDS = (("u", "v", "w"), ("re", "im"))


def channel_groups(fields: Sequence[str]) -> tuple[list[list[int]], list[str]]:
    """Group channel indices so that vector fields (u, v[, w]) and complex fields (re, im) score jointly."""
    groups: list[list[int]] = []
    names: list[str] = []
    taken: set[int] = set()
    for i, name in enumerate(fields):
        if i in taken:
            continue
        members = [i]
        for vector in VECTOR_FIELDS:
            if name in vector:
                members = [j for j, other in enumerate(fields) if other in vector]
        taken.update(members)
        groups.append(members)
        names.append(",".join(fields[j] for j in members))
    return groups, names


def _check_groups(groups: Sequence[Sequence[int]] | None, num_channels: int) -> list[list[int]]:
    if groups is None:
        return [[c] for c in range(num_channels)]
    out = [list(g) for g in groups]
    for g in out:
        if not g or any(not 0 <= c < num_channels for c in g):
            raise ValueError(f"channel group {g} is empty or outside 0..{num_channels - 1}")
    return out


def _expand_mask(mask: torch.Tensor | None, shape: torch.Size) -> torch.Tensor:
    """Weights (1 = scored, 0 = masked) broadcast to ``shape`` = [B, (T,) C, H, W]."""
    if mask is None:
        return torch.ones(shape, dtype=torch.float64)
    mask = torch.as_tensor(mask).to(torch.bool)
    rollout = len(shape) == 5
    b, c = shape[0], shape[-3]
    if mask.ndim == 1 and mask.shape[0] == c:
        m = mask[:, None, None]
    elif mask.ndim == 2 and tuple(mask.shape) == (b, c):
        m = mask[:, None, :, None, None] if rollout else mask[:, :, None, None]
    elif mask.ndim == 4 and rollout and tuple(mask.shape) == (b, *shape[2:]):
        m = mask[:, None]
    elif tuple(mask.shape) == tuple(shape):
        m = mask
    else:
        raise ValueError(
            f"mask: expected shape [C]={[c]}, [B, C]={[b, c]} or the field shape {list(shape)}, "
            f"got {list(mask.shape)}"
        )
    return (~m).expand(shape).to(torch.float64)


def _radial_band_masks(h: int, w: int, bands: Sequence[float]) -> list[torch.Tensor]:
    """Boolean [H, W] masks over the FFT grid selecting |k| in each band [e_i, e_{i+1})."""
    ky = torch.fft.fftfreq(h, d=1.0 / h, dtype=torch.float64)
    kx = torch.fft.fftfreq(w, d=1.0 / w, dtype=torch.float64)
    k = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
    edges = [0.0, *bands, float("inf")]
    return [(k >= lo) & (k < hi) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]


def _per_channel(pred: torch.Tensor, target: torch.Tensor, wts: torch.Tensor, bands, eps: float) -> dict:
    """Per-channel metrics, shape [..., C] (NaN where a channel has no scored pixel)."""
    n = wts.sum(dim=(-2, -1))
    n_safe = n.clamp_min(1.0)
    err = (pred - target) * wts
    mse = (err**2).sum(dim=(-2, -1)) / n_safe
    mean_y = (target * wts).sum(dim=(-2, -1)) / n_safe
    mean_p = (pred * wts).sum(dim=(-2, -1)) / n_safe
    var_y = (((target - mean_y[..., None, None]) ** 2) * wts).sum(dim=(-2, -1)) / (n - 1).clamp_min(1.0)
    out = {
        "nrmse": torch.sqrt(mse / ((target**2 * wts).sum(dim=(-2, -1)) / n_safe + eps)),
        "vrmse": torch.sqrt(mse / (var_y + eps)),
        "crmse": (mean_p - mean_y).abs(),
    }
    h, w = pred.shape[-2:]
    power = torch.fft.fft2(err).abs() ** 2 / (h * w) ** 2  # sums to mean_x err^2 over all modes (Parseval)
    for name, sel in zip(
        ("frmse_low", "frmse_mid", "frmse_high"), _radial_band_masks(h, w, bands), strict=True
    ):
        # mean over the scored pixels, as for the other metrics: rescale the all-pixel mean by H*W/n
        out[name] = torch.sqrt((power * sel).sum(dim=(-2, -1)) * (h * w) / n_safe)
    empty = n == 0
    return {k: v.masked_fill(empty, float("nan")) for k, v in out.items()}


def per_sample_errors(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    groups: Sequence[Sequence[int]] | None = None,
    bands: Sequence[float] = DEFAULT_BANDS,
    eps: float = EPS,
) -> dict[str, torch.Tensor]:
    """Every metric per sample and group: ``{name: float64 [B, G]}`` or ``[B, T, G]`` for a rollout."""
    pred = torch.as_tensor(pred)
    target = torch.as_tensor(target)
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target shapes differ: pred {list(pred.shape)} vs target {list(target.shape)}"
        )
    if pred.ndim not in (4, 5):
        raise ValueError(f"pred: expected [B, C, H, W] or [B, T, C, H, W], got shape {list(pred.shape)}")
    if len(bands) != 2 or not 0 < bands[0] < bands[1]:
        raise ValueError(f"bands: expected two increasing wavenumber edges (low|mid, mid|high), got {bands}")
    pred = pred.detach().to("cpu", torch.float64)
    target = target.detach().to("cpu", torch.float64)
    wts = _expand_mask(mask, pred.shape)
    groups = _check_groups(groups, pred.shape[-3])
    channel = _per_channel(pred, target, wts, bands, eps)
    abs_err = ((pred - target).abs() * wts).sum(dim=(-2, -1))
    abs_y = (target.abs() * wts).sum(dim=(-2, -1))
    sq_err = (((pred - target) ** 2) * wts).sum(dim=(-2, -1))
    sq_y = ((target**2) * wts).sum(dim=(-2, -1))
    scored = wts.sum(dim=(-2, -1))
    out: dict[str, list[torch.Tensor]] = {name: [] for name in METRICS}
    for g in groups:
        none_scored = scored[..., g].sum(-1) == 0
        rel_l1 = abs_err[..., g].sum(-1) / abs_y[..., g].sum(-1)
        rel_l2 = torch.sqrt(sq_err[..., g].sum(-1)) / (torch.sqrt(sq_y[..., g].sum(-1)) + eps)
        out["rel_l1"].append(rel_l1.masked_fill(none_scored, float("nan")))
        out["rel_l2"].append(rel_l2.masked_fill(none_scored, float("nan")))
        for name, values in channel.items():
            out[name].append(torch.nanmean(values[..., g], dim=-1))
    return {name: torch.stack(values, dim=-1) for name, values in out.items()}


def _stats(values: torch.Tensor) -> dict[str, float]:
    """Median (numpy's: the midpoint for an even count) and mean over samples, ignoring unscored (NaN) ones."""
    v = values.numpy()
    if np.isnan(v).all():
        return {"median": float("nan"), "mean": float("nan")}
    return {"median": float(np.nanmedian(v)), "mean": float(np.nanmean(v))}


def summarize(errors: dict[str, torch.Tensor], group_names: Sequence[str] | None = None) -> dict:
    """JSON-ready summary: per metric, median/mean over samples of the group mean, per group and per step.

    For a rollout the headline and group figures are at the last step; ``per_step`` has every step.
    """
    summary: dict = {}
    for name, values in errors.items():
        g = values.shape[-1]
        names = list(group_names) if group_names is not None else [str(i) for i in range(g)]
        if len(names) != g:
            raise ValueError(f"group_names: expected {g} names, got {len(names)}")
        overall = torch.nanmean(values, dim=-1)  # mean over groups per sample (and step)
        entry = {
            **_stats(_final(overall)),
            "groups": {n: _stats(_final(values[..., i])) for i, n in enumerate(names)},
        }
        if overall.ndim == 2:
            entry["per_step"] = [_stats(overall[:, t]) for t in range(overall.shape[1])]
        summary[name] = entry
    return summary


def _final(values: torch.Tensor) -> torch.Tensor:
    """A rollout's headline is its last step (Poseidon scores a rollout at its final time)."""
    return values[:, -1] if values.ndim == 2 else values


def evaluate(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    fields: Sequence[str] | None = None,
    groups: Sequence[Sequence[int]] | None = None,
    bands: Sequence[float] = DEFAULT_BANDS,
) -> dict:
    """All metrics summarised; channel groups come from ``groups`` or, given ``fields``, from their names."""
    names = None
    if groups is None and fields is not None:
        if len(fields) != pred.shape[-3]:
            raise ValueError(f"fields: expected {pred.shape[-3]} names for the channels, got {list(fields)}")
        groups, names = channel_groups(fields)
    elif groups is not None:
        names = [",".join(fields[c] for c in g) if fields else ",".join(map(str, g)) for g in groups]
    errors = per_sample_errors(pred, target, mask=mask, groups=groups, bands=bands)
    return summarize(errors, names)


def radial_error_spectrum(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RMS error per integer radial wavenumber shell, averaged over samples and channels: (k, spectrum).

    Shells k = round(|k|) for k < min(H, W) / 2; the squares of all shells plus the corner modes sum to
    the mean squared error (Parseval), so the curve shows where in scale the error lives.
    """
    err = (torch.as_tensor(pred) - torch.as_tensor(target)).detach().to("cpu", torch.float64)
    h, w = err.shape[-2:]
    power = (torch.fft.fft2(err).abs() ** 2 / (h * w) ** 2).reshape(-1, h, w).mean(0)
    ky = torch.fft.fftfreq(h, d=1.0 / h, dtype=torch.float64)
    kx = torch.fft.fftfreq(w, d=1.0 / w, dtype=torch.float64)
    shell = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2).round().long()
    k_max = min(h, w) // 2
    keep = shell < k_max
    spectrum = torch.zeros(k_max, dtype=torch.float64).index_add_(0, shell[keep], power[keep])
    return torch.arange(k_max), torch.sqrt(spectrum)
