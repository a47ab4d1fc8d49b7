"""The evaluation protocol: forecasts of a trained operator on test trajectories, scored in physical units.

Every candidate (a fine-tuned checkpoint or a baseline) is scored the same way: the test trajectories
are mapped into the model's channel layout and normalised with the statistics it was trained with,
predicted from an input snapshot either directly over the lead time to a target snapshot (Poseidon's
direct all2all use) or by an autoregressive rollout, denormalised, and compared on the data's own fields.
The horizon (input and target snapshots) is the user's choice; persistence, the input itself as the
prediction, is scored on the same horizon beside every candidate.
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
from foundation.conditioning import operator_inputs


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


@dataclass(frozen=True)
class Horizon:
    """What is scored: the prediction of snapshot `target` from snapshot `input` (indices into a trajectory).

    The user chooses it: a horizon over which the dynamics are learnable says something about a model, one
    from random initial noise to a statistically steady state does not (every model then scores about as
    well as persistence, the input itself as the prediction).
    """

    input: int
    target: int

    @property
    def span(self) -> int:
        return self.target - self.input

    def to_dict(self) -> dict:
        return {"input_index": self.input, "target_index": self.target}


def resolve_horizon(
    n_snapshots: int,
    input_index: int = 0,
    target_index: int | None = None,
    lead_time: float | None = None,
) -> Horizon:
    """The horizon of `n_snapshots`-long trajectories from the user's options.

    `target_index` defaults to the last snapshot; `lead_time` (instead of `target_index`) is a fraction of
    the trajectory's span, the models' time unit, and must land on a snapshot.
    """
    if n_snapshots < 2:
        raise ValueError(f"evaluation: trajectories need at least 2 snapshots, got {n_snapshots}")
    last = n_snapshots - 1
    if not 0 <= input_index < last:
        raise ValueError(f"evaluation: input_index must be in [0, {last - 1}], got {input_index}")
    if lead_time is not None:
        if target_index is not None:
            raise ValueError("evaluation: give target_index or lead_time, not both")
        steps = lead_time * last
        if lead_time <= 0 or abs(steps - round(steps)) > 1e-6:
            raise ValueError(
                f"evaluation: lead_time must be a positive multiple of the snapshot spacing 1/{last} "
                f"(a fraction of the trajectory span), got {lead_time}"
            )
        target_index = input_index + round(steps)
    target = last if target_index is None else target_index
    if not input_index < target <= last:
        raise ValueError(
            f"evaluation: target_index must be in [{input_index + 1}, {last}] (after input_index "
            f"{input_index}), got {target}"
        )
    return Horizon(input_index, target)


def forecast(
    op: TrainedOperator,
    trajs: Sequence[Trajectory],
    *,
    mode: str = "direct",
    input_index: int = 0,
    target_index: int | None = None,
    lead_time: float | None = None,
    stride: int = 1,
    batch_size: int = 16,
) -> Forecast:
    """Predict snapshot `target_index` (default: the last) from snapshot `input_index` (default 0): directly,
    in one model call, or by a rollout of steps of `stride` snapshots. Lead times are fractions of the T-1
    snapshot span, the PairDataset convention the models were trained with.
    """
    u, fields = stack_trajectories(trajs)
    n_t = u.shape[1]
    h = resolve_horizon(n_t, input_index, target_index, lead_time)
    _check_mode(mode, stride, h)
    scored = [f for f in fields if f in op.out_channels]
    if not scored:
        raise ValueError(
            f"evaluation: none of the data's fields {fields} is an output of the model {op.out_channels}"
        )
    mapped, _ = ChannelMap(op.channels)(u, fields, op.normalizer, "test data")
    x0 = torch.from_numpy(mapped[:, h.input])
    # an operator-conditioned model is told each trajectory's family and coefficients (its pde_vocabulary)
    conditioning = operator_inputs(
        getattr(op.model, "config", None), [t.pde for t in trajs], [t.params for t in trajs]
    )

    def part(i: int) -> dict:
        return {k: v[i : i + batch_size] for k, v in conditioning.items()}

    if mode == "direct":
        leads = [h.span / (n_t - 1)]
        pred = torch.cat(
            [
                predict(op.model, x0[i : i + batch_size], leads[0], **part(i))
                for i in range(0, len(x0), batch_size)
            ]
        )
    else:
        steps = h.span // stride
        leads = [stride * (k + 1) / (n_t - 1) for k in range(steps)]
        chunks = [
            rollout(op.model, x0[i : i + batch_size], steps, stride / (n_t - 1), **part(i))
            for i in range(0, len(x0), batch_size)
        ]
        pred = torch.cat(chunks)[:, 1:]
    pred = pred[..., : len(op.out_channels), :, :].detach().cpu().float()
    if op.normalizer is not None:
        pred = op.normalizer.denormalize(pred, op.out_channels)
    pick_pred = [op.out_channels.index(f) for f in scored]
    pick_data = [fields.index(f) for f in scored]
    target = _targets(u, mode, stride, h)
    return Forecast(
        pred[..., pick_pred, :, :],
        target[..., pick_data, :, :],
        torch.from_numpy(u[:, h.input][:, pick_data]),
        scored,
        leads,
    )


def persistence(
    trajs: Sequence[Trajectory],
    *,
    mode: str = "direct",
    input_index: int = 0,
    target_index: int | None = None,
    lead_time: float | None = None,
    stride: int = 1,
    fields: Sequence[str] | None = None,
) -> Forecast:
    """The persistence baseline on the same horizon as `forecast`: the input snapshot as the prediction.

    `fields` (default: all) restricts the scored fields, to match a model that predicts only some of them.
    """
    u, all_fields = stack_trajectories(trajs)
    n_t = u.shape[1]
    h = resolve_horizon(n_t, input_index, target_index, lead_time)
    _check_mode(mode, stride, h)
    scored = [f for f in all_fields if fields is None or f in fields]
    pick = [all_fields.index(f) for f in scored]
    x0 = torch.from_numpy(u[:, h.input][:, pick])
    target = _targets(u, mode, stride, h)[..., pick, :, :]
    if mode == "direct":
        leads, pred = [h.span / (n_t - 1)], x0
    else:
        leads = [stride * (k + 1) / (n_t - 1) for k in range(h.span // stride)]
        pred = x0[:, None].expand(-1, len(leads), -1, -1, -1)
    return Forecast(pred, target, x0, scored, leads)


def _check_mode(mode: str, stride: int, h: Horizon) -> None:
    if mode not in ("direct", "rollout"):
        raise ValueError(f"evaluation: mode must be 'direct' or 'rollout', got {mode!r}")
    if mode == "rollout" and (stride < 1 or h.span % stride):
        raise ValueError(
            f"evaluation: rollout stride {stride} must divide the horizon {h.span} "
            f"(snapshot {h.input} to {h.target})"
        )


def _targets(u: np.ndarray, mode: str, stride: int, h: Horizon) -> torch.Tensor:
    """The true snapshot(s) of a horizon: `[B, C, H, W]` (direct) or every rollout step `[B, T, C, H, W]`."""
    if mode == "direct":
        return torch.from_numpy(u[:, h.target])
    return torch.from_numpy(u[:, h.input + stride : h.target + 1 : stride])


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
