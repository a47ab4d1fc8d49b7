"""Inference with a (fine-tuned) operator: one direct jump over a lead time, or an autoregressive rollout.

Lead times are in the model's time units: the fraction of the training horizon in [0, 1]
(`time` of a training example). Both functions accept one state `[C, H, W]` or a batch `[B, C, H, W]`.
"""

from __future__ import annotations

import torch
from torch import nn


def _as_batch(u0: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if u0.ndim == 3:
        return u0.unsqueeze(0), True
    if u0.ndim == 4:
        return u0, False
    raise ValueError(f"predict: u0 must be [C, H, W] or [B, C, H, W], got shape {tuple(u0.shape)}")


def _time(lead_time: float | torch.Tensor, batch: int, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(lead_time, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"predict: lead_time must be a scalar or shape [{batch}], got {tuple(t.shape)}")
    return t


def _conditioning(pixel_mask, pde_id, coefficients, device) -> dict[str, torch.Tensor]:
    extra = {"pixel_mask": pixel_mask, "pde_id": pde_id, "coefficients": coefficients}
    return {k: v.to(device) for k, v in extra.items() if v is not None}


@torch.no_grad()
def predict(
    model: nn.Module,
    u0: torch.Tensor,
    lead_time: float | torch.Tensor,
    *,
    pixel_mask: torch.Tensor | None = None,
    pde_id: torch.Tensor | None = None,
    coefficients: torch.Tensor | None = None,
) -> torch.Tensor:
    """The state `lead_time` after `u0`, in one model call (Poseidon's direct all2all use)."""
    model.eval()
    device = next(model.parameters()).device
    x, single = _as_batch(u0.to(device))
    out = model(
        pixel_values=x,
        time=_time(lead_time, x.shape[0], x),
        **_conditioning(pixel_mask, pde_id, coefficients, device),
    ).output
    return out[0] if single else out


@torch.no_grad()
def rollout(
    model: nn.Module,
    u0: torch.Tensor,
    steps: int,
    lead_time: float | torch.Tensor,
    *,
    pixel_mask: torch.Tensor | None = None,
    pde_id: torch.Tensor | None = None,
    coefficients: torch.Tensor | None = None,
) -> torch.Tensor:
    """`steps` autoregressive applications of the model with step `lead_time`.

    Returns `[steps + 1, C, H, W]` (or `[B, steps + 1, C, H, W]`) with `u0` at index 0, laid out like a
    trajectory. When the model takes more input than output channels (static inputs such as a forcing
    or a coefficient field), those extra input channels of `u0` are re-appended at every step.
    """
    if steps < 0:
        raise ValueError(f"rollout: steps must be >= 0, got {steps}")
    x, single = _as_batch(u0)
    states = [x]
    for _ in range(steps):
        y = predict(model, x, lead_time, pixel_mask=pixel_mask, pde_id=pde_id, coefficients=coefficients)
        y = y.to(x.device)
        if y.shape[1] < x.shape[1]:
            y = torch.cat([y, x[:, y.shape[1] :]], dim=1)
        states.append(y)
        x = y
    traj = torch.stack(states, dim=1)
    return traj[0] if single else traj
