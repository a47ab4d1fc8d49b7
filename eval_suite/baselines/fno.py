"""The FNO baseline: neuraloperator's `FNO`, time-conditioned by an extra input channel (Poseidon's FNO)."""

from __future__ import annotations

from collections.abc import Sequence

from neuralop.models import FNO

from eval_suite.baselines.time_conditioned import TimeConditionedOperator


def build_fno(
    num_channels: int,
    num_out_channels: int,
    *,
    modes: int = 12,
    hidden_channels: int = 32,
    n_layers: int = 4,
    channel_slices: Sequence[int] | None = None,
) -> TimeConditionedOperator:
    """An FNO with `modes` Fourier modes per axis (clipped by neuraloperator to the grid at run time); it runs
    in fp32 under mixed precision, so its FFTs stay exact and supported."""
    net = FNO(
        n_modes=(modes, modes),
        in_channels=num_channels + 1,
        out_channels=num_out_channels,
        hidden_channels=hidden_channels,
        n_layers=n_layers,
    )
    return TimeConditionedOperator(net, num_channels, num_out_channels, channel_slices, full_precision=True)
