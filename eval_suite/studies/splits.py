"""Seeded trajectory splits for studies: one fixed test set, then nested training shots per seed.

The test set is drawn once so every candidate, shot count and seed is scored on the same trajectories;
for one seed the training sets are nested (the first N of one permutation of the rest), as few-shot
curves are usually drawn, and the validation trajectories do not change with N.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from data_pipelines.trajectory import Trajectory


def split_test(
    trajs: Sequence[Trajectory], n_test: int, seed: int = 0
) -> tuple[list[Trajectory], list[Trajectory]]:
    """(pool, test): `n_test` trajectories drawn once with `seed`, the rest kept for training and validation."""
    if not 1 <= n_test < len(trajs):
        raise ValueError(
            f"split: {len(trajs)} trajectories cannot give {n_test} test trajectories and a pool"
        )
    perm = np.random.default_rng(seed).permutation(len(trajs))
    return [trajs[i] for i in sorted(perm[n_test:])], [trajs[i] for i in sorted(perm[:n_test])]


def draw_shots(
    pool: Sequence[Trajectory], shots: int, n_val: int, seed: int
) -> tuple[list[Trajectory], list[Trajectory]]:
    """(train, val): `n_val` validation then the first `shots` of one seeded permutation of the pool."""
    if shots < 1 or n_val < 1 or shots + n_val > len(pool):
        raise ValueError(
            f"split: {shots} shots + {n_val} validation trajectories need {shots + n_val}, "
            f"the pool (data minus the test set) has {len(pool)}; pass fewer shots or more data"
        )
    perm = np.random.default_rng(seed + 1).permutation(len(pool))
    return [pool[i] for i in perm[n_val : n_val + shots]], [pool[i] for i in perm[:n_val]]
