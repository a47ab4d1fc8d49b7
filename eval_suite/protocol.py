"""The evaluation protocol: forecasts of a trained operator on test trajectories, scored in physical units.

Every candidate (a fine-tuned checkpoint or a baseline) is scored the same way: the test trajectories
are mapped into the model's channel layout and normalised with the statistics it was trained with,
predicted from snapshot 0 either directly over the lead time to a target snapshot (Poseidon's direct
all2all use) or by an autoregressive rollout, denormalised, and compared on the data's own fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from data_pipelines.channels import ChannelMap
from data_pipelines.normalization import Normalizer
from data_pipelines.trajectory import Trajectory
from eval_suite.metrics import channel_groups, per_sample_errors, summarize
from finetune.predict import predict, rollout


@dataclass
class TrainedOperator:
    """A model with the channel layout and normalisation it was trained with.

    `channels` names the model's input channels; its outputs are the first `num_out_channels` of them.
    """

    model: nn.Module
    channels: tuple[str, ...]
    normalizer: Normalizer | None

    @property
    def out_channels(self) -> tuple[str, ...]:
        n = getattr(getattr(self.model, "config", None), "num_out_channels", None)
        n = getattr(self.model, "num_out_channels", n)
        return self.channels[: n or len(self.channels)]


@dataclass
class Forecast:
    """Predictions and targets `[B, C, H, W]` (direct) or `[B, T, C, H, W]` (rollout) for `fields`."""

    pred: torch.Tensor
    target: torch.Tensor
    inputs: torch.Tensor
    fields: list[str]
    lead_times: list[float]


def stack_trajectories(trajs: Sequence[Trajectory]) -> tuple[np.ndarray, list[str]]:
    """`u[B, T, C, H, W]` of trajectories that share fields and shapes (a clear error otherwise)."""
    if not trajs:
        raise ValueError("evaluation: no test trajectories")
    fields, shape = list(trajs[0].fields), trajs[0].u.shape
    for k, traj in enumerate(trajs):
        if list(traj.fields) != fields or traj.u.shape != shape:
            raise ValueError(
                f"test trajectory {k} (pde {traj.pde!r}): expected fields {fields} and u shape {list(shape)}, "
                f"got {list(traj.fields)} and {list(traj.u.shape)}"
            )
    return np.stack([traj.u for traj in trajs]), fields


def forecast(
    op: TrainedOperator,
    trajs: Sequence[Trajectory],
    *,
    mode: str = "direct",
    target_index: int | None = None,
    stride: int = 1,
    batch_size: int = 16,
) -> Forecast:
    """Predict from snapshot 0: directly to `target_index` (default the last snapshot), or by a rollout of
    steps of `stride` snapshots up to `target_index`. Lead times are fractions of the T-1 snapshot span,
    the PairDataset convention the models were trained with.
    """
    u, fields = stack_trajectories(trajs)
    n_t = u.shape[1]
    if n_t < 2:
        raise ValueError(f"evaluation: trajectories need at least 2 snapshots, got {n_t}")
    last = n_t - 1 if target_index is None else target_index
    if not 1 <= last < n_t:
        raise ValueError(f"evaluation: target_index must be in [1, {n_t - 1}], got {target_index}")
    scored = [f for f in fields if f in op.out_channels]
    if not scored:
        raise ValueError(
            f"evaluation: none of the data's fields {fields} is an output of the model {op.out_channels}"
        )
    mapped, _ = ChannelMap(op.channels)(u, fields, op.normalizer, "test data")
    x0 = torch.from_numpy(mapped[:, 0])
    if mode == "direct":
        leads = [last / (n_t - 1)]
        pred = torch.cat(
            [predict(op.model, x0[i : i + batch_size], leads[0]) for i in range(0, len(x0), batch_size)]
        )
        target = torch.from_numpy(u[:, last])
    elif mode == "rollout":
        if stride < 1 or last % stride:
            raise ValueError(f"evaluation: rollout stride {stride} must divide the target index {last}")
        steps = last // stride
        leads = [stride * (k + 1) / (n_t - 1) for k in range(steps)]
        chunks = [
            rollout(op.model, x0[i : i + batch_size], steps, stride / (n_t - 1))
            for i in range(0, len(x0), batch_size)
        ]
        pred = torch.cat(chunks)[:, 1:]
        target = torch.from_numpy(u[:, stride : last + 1 : stride])
    else:
        raise ValueError(f"evaluation: mode must be 'direct' or 'rollout', got {mode!r}")
    pred = pred[..., : len(op.out_channels), :, :].detach().cpu().float()
    if op.normalizer is not None:
        pred = op.normalizer.denormalize(pred, op.out_channels)
    pick_pred = [op.out_channels.index(f) for f in scored]
    pick_data = [fields.index(f) for f in scored]
    return Forecast(
        pred[..., pick_pred, :, :], target[..., pick_data, :, :], torch.from_numpy(u[:, 0]), scored, leads
    )


def score(fc: Forecast) -> tuple[dict, dict[str, torch.Tensor]]:
    """Summary (median/mean per metric, per group, per step) and the per-sample errors of a forecast."""
    groups, names = channel_groups(fc.fields)
    errors = per_sample_errors(fc.pred, fc.target, groups=groups)
    return summarize(errors, names), errors


def loss_slices(channels: Sequence[str]) -> list[int] | None:
    """Poseidon loss slices for a channel layout: vector fields grouped when contiguous, else one per channel."""
    groups, _ = channel_groups(channels)
    bounds = [0]
    for g in groups:
        if g != list(range(bounds[-1], bounds[-1] + len(g))):
            return list(range(len(channels) + 1))
        bounds.append(bounds[-1] + len(g))
    return bounds
