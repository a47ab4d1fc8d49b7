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


def _read_file(path: Path, fields: Sequence[str] | None, format: str | None) -> list[Trajectory]:
    """A user file's trajectories; `fields` names its channels when the file stores no names."""
    from data_pipelines.formats import UnnamedChannelsError, read_any

    try:
        return read_any(path, format=format)
    except UnnamedChannelsError as exc:
        if not fields:
            raise
        if len(fields) != exc.channels:
            raise ValueError(
                f"{path}: the file does not name its {exc.channels} channel(s), so fields names them; "
                f"give {exc.channels} names, got {list(fields)}"
            ) from None
        return read_any(path, format=format, fields=list(fields))


def load_trajectories(
    data: str | Path | Sequence[Trajectory],
    *,
    fields: Sequence[str] | None = None,
    format: str | None = None,
    min_snapshots: int = 2,
) -> list[Trajectory]:
    """Trajectories from a list, a file (any reader of `data_pipelines.formats`), a folder of such files, a
    pdefm corpus folder or a corpus Hub id (`org/name`; any other missing path is a FileNotFoundError).

    `fields` selects the channels to use, in order, and names the channels of files that store no names
    (a `.npy`, a 1-channel Poseidon-layout file); `format` overrides format detection for files. Every
    trajectory is validated (shapes, field names, NaN/Inf, at least `min_snapshots` snapshots: with one,
    input and target would be the same snapshot) with an error naming its source.
    """
    if isinstance(data, (str, Path)):
        from data_pipelines.corpus import DATA_DIR
        from data_pipelines.corpus import load_trajectories as load_corpus
        from data_pipelines.formats import check_format
        from data_pipelines.paths import local_or_hub

        check_format(format)
        source = str(data)
        path = local_or_hub(data, "data")
        if isinstance(path, str):
            trajs = load_corpus(path)
        elif path.is_file():
            trajs = _read_file(path, fields, format)
        elif not (path / DATA_DIR).is_dir():
            trajs = [
                t
                for f in sorted(path.iterdir())
                if f.is_file() and not f.name.startswith(".")
                for t in _read_file(f, fields, format)
            ]
        else:
            trajs = load_corpus(path)
    else:
        source, trajs = "data", list(data)
    if not trajs:
        raise ValueError(f"{source}: no trajectories found")
    for k, traj in enumerate(trajs):
        if not isinstance(traj, Trajectory):
            raise TypeError(f"{source}[{k}]: expected a Trajectory, got {type(traj).__name__}")
        traj.validate(f"{source}[{k}]")
        if traj.u.shape[0] < min_snapshots:
            raise ValueError(
                f"{source}[{k}] (pde {traj.pde!r}): {traj.u.shape[0]} snapshot(s), need at least "
                f"{min_snapshots}: with T = 1 every pair maps a snapshot to itself (nothing to learn)"
            )
    return select_fields(trajs, fields)


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
