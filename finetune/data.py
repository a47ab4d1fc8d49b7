"""Few-shot data: load the user's trajectories, check them, split by trajectory (seeded), build all2all pairs.

A split is by whole trajectories, as Poseidon splits PDEgym (no pair of one trajectory leaks into
another split). The training set is the all2all pairs of the `shots` training trajectories.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_pipelines.normalization import Normalizer
from data_pipelines.semigroup import PairDataset
from data_pipelines.trajectory import Trajectory


@dataclass
class Split:
    """Trajectories of each split and the original indices they came from (for the record)."""

    train: list[Trajectory]
    val: list[Trajectory]
    test: list[Trajectory]
    indices: dict[str, list[int]]


def load_trajectories(data: str | Path | Sequence[Trajectory]) -> list[Trajectory]:
    """Trajectories from a list, a file (any reader of `data_pipelines.formats`), a folder of such files, a
    pdefm corpus folder or a corpus Hub id.

    Every trajectory is validated (shapes, field names, NaN/Inf) with an error naming its source.
    """
    if isinstance(data, (str, Path)):
        from data_pipelines.corpus import DATA_DIR
        from data_pipelines.corpus import load_trajectories as load_corpus
        from data_pipelines.formats import read_any

        source, path = str(data), Path(data)
        if path.is_file():
            trajs = read_any(path)
        elif path.is_dir() and not (path / DATA_DIR).is_dir():
            trajs = [
                t
                for f in sorted(path.iterdir())
                if f.is_file() and not f.name.startswith(".")
                for t in read_any(f)
            ]
        elif path.is_dir() or (
            not path.is_absolute() and source.count("/") == 1 and not source.startswith(".")
        ):
            trajs = load_corpus(source)
        else:
            raise FileNotFoundError(
                f"data {source!r}: no such file or folder, and not a Hub dataset id org/name"
            )
    else:
        source, trajs = "data", list(data)
    if not trajs:
        raise ValueError(f"{source}: no trajectories found")
    for k, traj in enumerate(trajs):
        if not isinstance(traj, Trajectory):
            raise TypeError(f"{source}[{k}]: expected a Trajectory, got {type(traj).__name__}")
        traj.validate(f"{source}[{k}]")
    return trajs


def select_fields(trajs: Sequence[Trajectory], fields: Sequence[str] | None) -> list[Trajectory]:
    """The trajectories restricted to `fields` in that order (all fields when None)."""
    if not fields:
        return list(trajs)
    out = []
    for k, traj in enumerate(trajs):
        missing = [f for f in fields if f not in traj.fields]
        if missing:
            raise ValueError(
                f"trajectory {k} (pde {traj.pde!r}): fields {missing} not present; it has {traj.fields}"
            )
        idx = [traj.fields.index(f) for f in fields]
        out.append(
            Trajectory(
                traj.u[:, idx], traj.t, list(fields), traj.pde, dict(traj.params), traj.bc, traj.domain
            )
        )
    return out


def split_trajectories(
    trajs: Sequence[Trajectory], shots: int, n_val: int = 1, n_test: int = 1, seed: int = 0
) -> Split:
    """A seeded random split into `shots` training, `n_val` validation and `n_test` test trajectories."""
    if shots < 1 or n_val < 1 or n_test < 0:
        raise ValueError(f"split: need shots >= 1, n_val >= 1, n_test >= 0; got {shots}, {n_val}, {n_test}")
    need = shots + n_val + n_test
    if len(trajs) < need:
        raise ValueError(
            f"split: {len(trajs)} trajectories, but shots={shots} + validation={n_val} + test={n_test} "
            f"needs {need}; pass fewer shots or more data"
        )
    perm = np.random.default_rng(seed).permutation(len(trajs)).tolist()
    parts = {"train": perm[:shots], "val": perm[shots : shots + n_val], "test": perm[shots + n_val : need]}
    return Split(
        train=[trajs[i] for i in parts["train"]],
        val=[trajs[i] for i in parts["val"]],
        test=[trajs[i] for i in parts["test"]],
        indices=parts,
    )


def pair_dataset(
    trajs: Sequence[Trajectory],
    channels: Sequence[str],
    normalizer: Normalizer | None = None,
    *,
    stride: int = 1,
    max_lead: float | None = None,
    families: Sequence[str] | None = None,
) -> PairDataset:
    """All2all pairs of `trajs` in the model's channel layout (absent channels masked), normalised."""
    return PairDataset(trajs, channels, normalizer, stride=stride, max_lead=max_lead, families=families)
