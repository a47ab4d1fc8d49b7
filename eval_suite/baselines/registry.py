"""Baselines by name: "fno", "unet", "scot_scratch" (a fresh tiny scOT), built with seeded initialisation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from eval_suite.baselines.fno import build_fno
from eval_suite.baselines.unet import build_unet
from foundation.configuration_scot import ScOTConfig
from foundation.modeling_scot import ScOT


def build_scot_scratch(
    num_channels: int,
    num_out_channels: int,
    *,
    channel_slices: Sequence[int] | None = None,
    preset: str = "tiny",
    **config_overrides,
) -> ScOT:
    """A randomly initialised scOT of `preset` size: Poseidon's "scOT" row (same architecture, no pretraining).

    `config_overrides` (e.g. image_size) match it to the pretrained model it is compared with.
    """
    slices = list(channel_slices) if channel_slices is not None else None
    config = ScOTConfig.from_preset(
        preset,
        num_channels=num_channels,
        num_out_channels=num_out_channels,
        channel_slice_list_normalized_loss=slices,
        **config_overrides,
    )
    return ScOT(config)


BASELINES: dict[str, Callable[..., nn.Module]] = {
    "fno": build_fno,
    "unet": build_unet,
    "scot_scratch": build_scot_scratch,
}


def list_baselines() -> list[str]:
    return sorted(BASELINES)


def build_baseline(
    name: str,
    num_channels: int,
    num_out_channels: int | None = None,
    *,
    channel_slices: Sequence[int] | None = None,
    seed: int = 0,
    **options,
) -> nn.Module:
    """A fresh baseline `name` with ScOT's forward signature; `options` go to its builder (e.g. modes, width)."""
    if name not in BASELINES:
        raise KeyError(f"unknown baseline {name!r}; known baselines: {', '.join(list_baselines())}")
    torch.manual_seed(seed)
    out = num_channels if num_out_channels is None else num_out_channels
    return BASELINES[name](num_channels, out, channel_slices=channel_slices, **options)
