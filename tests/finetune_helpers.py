"""Shared, cached inputs of the finetune tests: small generated families and a tiny scOT checkpoint (32x32)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch

from data_pipelines.solvers.registry import get_family
from data_pipelines.trajectory import Trajectory
from foundation.configuration_scot import ScOTConfig
from foundation.modeling_scot import ScOT

RESOLUTION = 32
SNAPSHOTS = 4


@cache
def family_trajectories(name: str, count: int, seed: int = 0) -> tuple[Trajectory, ...]:
    """`count` trajectories of a registered family at 32x32 with 4 snapshots (10 all2all pairs each)."""
    family = get_family(name)
    batch = family.generate(count, RESOLUTION, SNAPSHOTS, seed=seed)
    return tuple(
        Trajectory(batch.u[i], batch.t, list(family.fields), name, batch.params[i]) for i in range(count)
    )


def tiny_model(seed: int = 0, **overrides) -> ScOT:
    """The tiny preset at image size 32 (no resampling of 32x32 inputs), seeded initialisation."""
    torch.manual_seed(seed)
    return ScOT(ScOTConfig.from_preset("tiny", image_size=RESOLUTION, **overrides)).eval()


def tiny_checkpoint(folder: Path, seed: int = 0, **overrides) -> Path:
    """Saves `tiny_model` (Poseidon's [rho, u, v, p] layout unless overridden) as a pdefm checkpoint."""
    tiny_model(seed, **overrides).save_pretrained(folder)
    return folder


LAYOUT = ["s", "k"]
"""Channel layout of the `diffusion` family, used by the method tests."""


@cache
def pretrained_on_diffusion():
    """A 2-channel tiny scOT trained briefly on diffusion pairs; returns (model, train pairs, val pairs).

    Stands in for a simulation-pretrained checkpoint in the PhysGuard tests (callers deep-copy the model).
    """
    from data_pipelines.normalization import Normalizer
    from finetune.data import pair_dataset
    from finetune.trainer import TrainConfig, train

    trajs = family_trajectories("diffusion", 6)
    norm = Normalizer.from_trajectories(trajs[:4])
    train_pairs, val_pairs = pair_dataset(trajs[:4], LAYOUT, norm), pair_dataset(trajs[4:], LAYOUT, norm)
    model = tiny_model(
        0,
        num_channels=2,
        num_out_channels=2,
        field_names=LAYOUT,
        channel_slice_list_normalized_loss=[0, 1, 2],
    )
    train(model, train_pairs, val_pairs, config=TrainConfig(epochs=8, batch_size=8, lr=2e-3, warmup_steps=0))
    return model, train_pairs, val_pairs, norm


def pretrained_checkpoint(folder: Path) -> Path:
    """`pretrained_on_diffusion`'s model saved as a pdefm checkpoint with channels [s, k]."""
    pretrained_on_diffusion()[0].save_pretrained(folder)
    return folder
