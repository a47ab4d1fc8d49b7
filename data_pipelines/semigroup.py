"""Poseidon's all2all semigroup pairs and the map-style `PairDataset` used for few-shot training.

From the K+1 snapshots 0, s, 2s, ... of a trajectory every pair (t_i, t_j) with i <= j is a training
example, identity pairs included, so (K+1)(K+2)/2 pairs; the lead time (t_j - t_i) is scaled to [0, 1]
by the snapshot-index span of the horizon (20 for 21 snapshots), as in the paper's eq. 6.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from data_pipelines.channels import ChannelMap
from data_pipelines.fields import MAX_COEFFICIENTS
from data_pipelines.normalization import Normalizer


def all2all_pairs(
    num_snapshots: int,
    stride: int = 1,
    max_lead: float | None = None,
    span: int | None = None,
    steady: bool = False,
) -> list[tuple[int, int, float]]:
    """(i, j, lead time) for snapshot indices i <= j on the grid 0, stride, 2 stride, ...

    `span` is the index span that maps to lead time 1 (default: num_snapshots - 1); `max_lead` (in the
    same [0, 1] units) drops pairs further apart. A steady family (data then data + solution) gives the
    one pair (0, T-1) at lead time 1, Poseidon's TimeWrapper convention for f -> u operators.
    """
    if num_snapshots < 1 or stride < 1:
        raise ValueError(f"need num_snapshots >= 1 and stride >= 1, got {num_snapshots} and {stride}")
    if steady:
        return [(0, num_snapshots - 1, 1.0)]
    if num_snapshots == 1:
        return [(0, 0, 0.0)]
    span = num_snapshots - 1 if span is None else span
    if span <= 0:
        raise ValueError(f"lead-time span must be positive, got {span}")
    idx = range(0, num_snapshots, stride)
    pairs = [(i, j, (j - i) / span) for i in idx for j in idx if j >= i]
    if max_lead is not None:
        pairs = [p for p in pairs if p[2] <= max_lead + 1e-9]
    return pairs


def _registered(pde: str):
    from data_pipelines.solvers.registry import get_family

    try:
        return get_family(pde)
    except KeyError:
        return None


def is_steady(pde: str) -> bool:
    """Whether `pde` is a registered steady family; user data is taken as time dependent."""
    family = _registered(pde)
    return bool(family is not None and family.steady)


def coefficient_vector(pde: str, params: dict) -> np.ndarray:
    """The family's coefficients in registry order scaled to [0, 1], zero padded to MAX_COEFFICIENTS.

    Families not in the registry (user data) get all zeros.
    """
    family = _registered(pde)
    if family is None:
        return np.zeros(MAX_COEFFICIENTS, dtype=np.float32)
    return family.normalize_coefficients(params).numpy()


def make_example(
    u: np.ndarray, mask: np.ndarray, i: int, j: int, lead: float, conditioning: tuple[int, np.ndarray] | None
) -> dict[str, torch.Tensor]:
    """The training example dict (Poseidon names) for the pair (i, j) of a mapped trajectory `u[T, C, H, W]`."""
    example = {
        "pixel_values": torch.from_numpy(np.ascontiguousarray(u[i])),
        "labels": torch.from_numpy(np.ascontiguousarray(u[j])),
        "time": torch.tensor(lead, dtype=torch.float32),
        "pixel_mask": torch.from_numpy(mask),
    }
    if conditioning is not None:
        example["pde_id"] = torch.tensor(conditioning[0], dtype=torch.int64)
        example["coefficients"] = torch.from_numpy(conditioning[1])
    return example


class PairDataset(torch.utils.data.Dataset):
    """All2all pairs over a list of trajectories, mapped into `channels` and normalised.

    Index k enumerates (trajectory, i, j) so that uniform shuffling samples uniformly over pairs.
    With `families` given, examples carry `pde_id` (index into `families`) and `coefficients`.
    """

    def __init__(
        self,
        trajectories: Sequence,
        channels: Sequence[str] | ChannelMap,
        normalizer: Normalizer | None = None,
        stride: int = 1,
        max_lead: float | None = None,
        span: int | None = None,
        families: Sequence[str] | None = None,
    ):
        if len(trajectories) == 0:
            raise ValueError("PairDataset: empty selection, no trajectories given")
        cmap = channels if isinstance(channels, ChannelMap) else ChannelMap(channels)
        self.channels = cmap.target
        self.data, self.masks, self.conditioning, self.index = [], [], [], []
        for k, traj in enumerate(trajectories):
            u, mask = cmap(np.asarray(traj.u, dtype=np.float32), traj.fields, normalizer, f"trajectory {k}")
            self.data.append(u)
            self.masks.append(mask)
            cond = None
            if families is not None:
                if traj.pde not in families:
                    raise ValueError(f"trajectory {k}: pde {traj.pde!r} is not in families {list(families)}")
                cond = (list(families).index(traj.pde), coefficient_vector(traj.pde, traj.params))
            self.conditioning.append(cond)
            pairs = all2all_pairs(u.shape[0], stride, max_lead, span, is_steady(traj.pde))
            self.index += [(k, i, j, lead) for i, j, lead in pairs]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        k, i, j, lead = self.index[item]
        return make_example(self.data[k], self.masks[k], i, j, lead, self.conditioning[k])
