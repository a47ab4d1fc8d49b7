"""Poseidon's training loss: relative L1 (or MSE) averaged over channel groups, aggregated over the batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def relative_group_loss(
    output: torch.Tensor, labels: torch.Tensor, channel_slices: list[int] | None, p: int = 1
) -> torch.Tensor:
    """(1/G) sum_g mean|y_hat_g - y_g|^p / (mean|y_g|^p + 1e-10); groups are channels s_g:s_{g+1}.

    Means run over the whole batch, the group's channels and all pixels (Poseidon's definition). Without
    slices it is the plain mean L1 / MSE. Computed in float32.
    """
    distance = F.l1_loss if p == 1 else F.mse_loss
    output, labels = output.float(), labels.float()
    if channel_slices is None:
        return distance(output, labels)
    if channel_slices[-1] > labels.shape[1]:
        raise ValueError(
            f"channel_slice_list_normalized_loss {list(channel_slices)} reaches channel {channel_slices[-1]} "
            f"but labels have {labels.shape[1]} channels"
        )
    terms = []
    for lo, hi in zip(channel_slices[:-1], channel_slices[1:], strict=True):
        y = labels[:, lo:hi]
        scale = y.abs().mean() if p == 1 else y.square().mean()
        terms.append(distance(output[:, lo:hi], y) / (scale + 1e-10))
    return torch.stack(terms).mean()


def masked_output_and_loss(
    output: torch.Tensor,
    labels: torch.Tensor | None,
    pixel_mask: torch.Tensor | None,
    channel_slices,
    p: int = 1,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Poseidon's tail of every forward: masked entries take the label (scoring 0 but still counted in the
    denominator), then the relative group loss when labels are given. `pixel_mask` is [B, C] or [B, C, H, W]."""
    if pixel_mask is not None:
        mask = pixel_mask[:, :, None, None] if pixel_mask.dim() == 2 else pixel_mask
        output = torch.where(mask, labels.to(output.dtype), output)
    loss = None if labels is None else relative_group_loss(output, labels, channel_slices, p)
    return output, loss
