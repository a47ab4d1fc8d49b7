"""Streaming mixture: shard-level units, coverage across workers and ranks, equal step counts, mixture
weights at every point, exact resume from stream state, layout rules, bad input, and a real 2-rank x
2-worker accelerate run that checks which files each unit opened and that a resumed stream reads no
consumed row again."""

from __future__ import annotations

import collections
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from data_pipelines.corpus import CorpusError, load_trajectories, write_corpus
from data_pipelines.streaming import (
    MixtureStream,
    StreamResumeError,
    check_resume,
    make_loader,
    resolve_corpus,
)
from data_pipelines.trajectory import Trajectory

REPO = Path(__file__).resolve().parents[1]
FAMILIES = {"alpha": 8, "beta": 4, "gamma": 4}  # trajectories; shard_size 2 -> 4 shards of alpha


def _trajs(pde: str, n: int, t: int, seed: int) -> list[Trajectory]:
    rng = np.random.default_rng(seed)
    return [
        Trajectory(
            u=rng.normal(2.0, 3.0, size=(t, 2, 8, 8)), t=np.linspace(0, 1, t), fields=["u", "v"], pde=pde
        )
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def mixture(tmp_path_factory) -> Path:
    """16 trajectories of 5 snapshots in 4 shards per family: alpha 8 (2 per shard), beta 4, gamma 4."""
    out = tmp_path_factory.mktemp("mix") / "c"
    trajs = _trajs("alpha", 8, 5, 0) + _trajs("beta", 4, 5, 1) + _trajs("gamma", 4, 5, 2)
    write_corpus(out, trajs, shard_size=2, progress=False)
    from data_pipelines.corpus import reshard_corpus

    reshard_corpus(out, shards=4, progress=False)  # beta and gamma: 4 shards of 1
    return out


def _by_id(root: Path) -> dict[str, Trajectory]:
    ids = []
    for fam in sorted(FAMILIES):
        for path in sorted((root / "data" / fam).glob("*.parquet")):
            ids += pq.read_table(path, columns=["id"]).column("id").to_pylist()
    return dict(zip(ids, load_trajectories(root), strict=True))


def test_workers_cover_every_pair_once_with_normalised_values(mixture):
    stream = MixtureStream(mixture, ["rho", "u", "v", "p"], stride=2, shuffle_buffer=2, return_ids=True)
    loader = torch.utils.data.DataLoader(stream, batch_size=5, num_workers=2)
    seen = collections.Counter()
    by_id = _by_id(mixture)
    stats = json.loads((mixture / "stats.json").read_text())["fields"]

    def snapshot(plane, u, c, name):  # which source snapshot, normalised, equals this plane
        z = [(u[s, c] - stats[name]["mean"]) / stats[name]["std"] for s in range(u.shape[0])]
        return [s for s in range(u.shape[0]) if np.allclose(plane.numpy(), z[s], atol=1e-5)]

    for batch in loader:
        for k, row_id in enumerate(batch["id"]):
            u = by_id[row_id].u
            assert batch["family"][k] == row_id.split("/")[0]
            (i,), (j,) = (
                snapshot(batch["pixel_values"][k, 2], u, 1, "v"),
                snapshot(batch["labels"][k, 1], u, 0, "u"),
            )
            assert float(batch["time"][k]) == pytest.approx((j - i) / 4)
            assert batch["pixel_mask"][k].tolist() == [False, False, False, True]
            assert float(batch["pixel_values"][k, 0].mean()) == 1.0  # rho filled with 1 (no rho statistics)
            assert float(batch["labels"][k, 3].abs().max()) == 0.0
            seen[(row_id, i, j)] += 1
    expected = {(r, i, j) for r in by_id for i in (0, 2, 4) for j in (0, 2, 4) if i <= j}
    assert set(seen) == expected and set(seen.values()) == {1}


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_read_their_own_shards_disjoint_complete_equal(mixture, world):
    per_rank, shards = [], []
    for rank in range(world):
        stream = MixtureStream(mixture, ["u", "v"], rank=rank, world_size=world, seed=5, return_ids=True)
        per_rank.append([e["id"] for e in stream])
        shards.append(
            {(fam, name) for fam in stream.families for _, name, _ in stream.plan(0).shards[fam][rank]}
        )
    assert len({len(r) for r in per_rank}) == 1  # equal step counts on every rank
    assert all(len(set(r)) * 15 == len(r) for r in per_rank)  # every trajectory's 15 pairs, no repeat
    sets = [set(r) for r in per_rank]
    assert set().union(*sets) == set(_by_id(mixture)) and sum(len(s) for s in sets) == 16
    for rank, ids in enumerate(sets):  # each rank's rows come from the shards it was given
        assert {i.split("/")[0] for i in ids} == set(FAMILIES)
        assert len(shards[rank]) == 12 // world  # 3 families x 4 shards, split over the ranks
    again = MixtureStream(mixture, ["u", "v"], rank=1, world_size=world, seed=5, return_ids=True)
    assert [e["id"] for e in again] == per_rank[1]
    again.set_epoch(1)
    assert sorted(e["id"] for e in again) == sorted(per_rank[1]) and [e["id"] for e in again] != per_rank[1]


def test_unbalanced_units_and_stopping_strategies(mixture):
    def run(strategy: str) -> list[list[str]]:
        out = []
        for rank in range(3):  # 4 shards over 3 units: unit 0 holds two
            stream = MixtureStream(
                mixture,
                ["u", "v"],
                rank=rank,
                world_size=3,
                pairs_per_trajectory=1,
                stopping_strategy=strategy,
                return_ids=True,
            )
            out.append([e["id"] for e in stream])
        return out

    full = run("all_exhausted")
    assert len({len(r) for r in full}) == 1 and set().union(*map(set, full)) == set(_by_id(mixture))
    assert max(collections.Counter(full[1]).values()) == 2  # a unit with one shard per family reads it twice
    first = run("first_exhausted")
    assert len({len(r) for r in first}) == 1 and all(len(set(r)) == len(r) for r in first)
    assert len(first[0]) == 4  # the smallest unit share: 2 alpha + 1 beta + 1 gamma rows
    with pytest.raises(CorpusError, match="stopping_strategy must be one of"):
        MixtureStream(mixture, ["u", "v"], stopping_strategy="all_exhausted_without_replacement")


def _max_deviation(families: list[str], weights: dict[str, float], window: int) -> float:
    worst = 0.0
    for start in range(0, len(families) - window + 1, window):
        counts = collections.Counter(families[start : start + window])
        worst = max(worst, max(abs(counts[f] / window - w) for f, w in weights.items()))
    return 100 * worst


def test_mixture_holds_weights_everywhere_zero_excludes_tiny_does_not_stall(mixture):
    weights = {"alpha": 0.5, "beta": 0.3, "gamma": 0.2}
    stream = MixtureStream(mixture, ["u", "v"], weights=weights, infinite=True, seed=1)
    families = [e["family"] for _, e in zip(range(1200), stream, strict=False)]
    assert _max_deviation(families, weights, 100) <= 5.0
    assert _max_deviation(families, weights, 20) <= 10.0
    no_beta = MixtureStream(mixture, ["u", "v"], weights={"alpha": 1, "beta": 0, "gamma": 1})
    assert no_beta.families == ["alpha", "gamma"] and "beta" not in no_beta.plan(0).shards
    assert {e["family"] for e in no_beta} == {"alpha", "gamma"}
    tiny = MixtureStream(mixture, ["u", "v"], weights={"alpha": 1, "beta": 1, "gamma": 0.002}, infinite=True)
    drawn = collections.Counter(e["family"] for _, e in zip(range(2000), tiny, strict=False))
    assert 1 <= drawn["gamma"] <= 4 and abs(drawn["alpha"] - drawn["beta"]) <= 2


def test_fewer_shards_than_units_is_refused_with_the_fix(mixture):
    stream = MixtureStream(mixture, ["u", "v"], rank=0, world_size=4)
    with pytest.raises(
        CorpusError, match=r"family 'alpha' has 4 shard\(s\) but the stream runs on 8 units"
    ) as err:
        make_loader(stream, batch_size=2, num_workers=2)
    assert "4 process(es) x 2 DataLoader worker(s)" in str(err.value)
    assert "pdefm data reshard CORPUS --shards 8" in str(err.value)


def test_resume_from_state_is_exact_and_a_changed_layout_is_refused(mixture):
    stream = MixtureStream(mixture, ["u", "v"], stride=2, shuffle_buffer=2, return_ids=True, seed=4)
    full = [(i, f) for b in make_loader(stream, 3, 2) for i, f in zip(b["id"], b["family"], strict=True)]
    first = make_loader(stream, 3, 2)
    head = []
    for k, batch in enumerate(first):
        head += list(zip(batch["id"], batch["family"], strict=True))
        if k == 6:
            break
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    del first
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert check_resume(state, 1, 2)["num_workers"] == 2
    resumed = make_loader(stream, 3, 2)
    resumed.load_state_dict(state)
    tail = [(i, f) for b in resumed for i, f in zip(b["id"], b["family"], strict=True)]
    assert head + tail == full
    with pytest.raises(
        StreamResumeError, match=r"ran on 1 process\(es\) x 2 DataLoader worker\(s\), this run on 1 x 1"
    ):
        make_loader(stream, 3, 1).load_state_dict(state)
    with pytest.raises(StreamResumeError, match="resume with the layout it was saved with"):
        check_resume(state, world_size=2, num_workers=2)
    reweighted = MixtureStream(
        mixture, ["u", "v"], stride=2, return_ids=True, seed=4, weights={"alpha": 1, "beta": 1, "gamma": 1}
    )
    other = make_loader(reweighted, 3, 2)
    other.load_state_dict(state)  # same layout: the workers find the other weights
    with pytest.raises(StreamResumeError, match="^stream state was saved with examples per family and epoch"):
        next(iter(other))
    single = MixtureStream(mixture, ["u", "v"], stride=2, return_ids=True, seed=4, infinite=True)
    loader = make_loader(single, 4, 0)
    it = iter(loader)
    head = [i for _ in range(30) for i in next(it)["id"]]  # across the epoch boundary (96 examples)
    state = loader.state_dict()
    again = make_loader(single, 4, 0)
    again.load_state_dict(state)
    it2, it3 = iter(again), it
    assert [next(it2)["id"] for _ in range(5)] == [next(it3)["id"] for _ in range(5)] and len(head) == 120


def test_resolved_sources_and_bad_input(mixture, tmp_path):
    resolved = resolve_corpus([mixture])
    stream = MixtureStream(resolved, ["u", "v"], families=["beta"], return_ids=True, normalizer=None)
    assert {e["family"] for e in stream} == {"beta"}
    with pytest.raises(CorpusError, match=r"families \['zeta'\] not found"):
        MixtureStream(mixture, ["u", "v"], families=["zeta"])
    with pytest.raises(CorpusError, match=r"missing: \['beta', 'gamma'\]"):
        MixtureStream(mixture, ["u", "v"], weights={"alpha": 1.0})
    with pytest.raises(CorpusError, match="empty selection: no trajectory with a positive weight"):
        MixtureStream(mixture, ["u", "v"], weights={"alpha": 0, "beta": 0, "gamma": 0})
    with pytest.raises(CorpusError, match="stats.json missing"):
        MixtureStream(tmp_path, ["u", "v"])
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        MixtureStream(tmp_path / "nope", ["u", "v"])
    other = tmp_path / "long"
    write_corpus(other, _trajs("delta", 2, 9, 3), progress=False)
    pooled = MixtureStream([mixture, other], ["u", "v"], pairs_per_trajectory=3, return_ids=True)
    assert collections.Counter(e["family"] for e in pooled)["delta"] == 6
    with pytest.raises(CorpusError, match="family 'alpha' also comes from"):
        MixtureStream([mixture, mixture], ["u", "v"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _row_groups(root: Path) -> dict[str, list[tuple[int, int, str]]]:
    """Per shard file: (start, end, row id) of each row group's bytes."""
    out = {}
    for path in sorted(root.glob("data/*/*.parquet")):
        md = pq.read_metadata(path)
        ids = pq.read_table(path, columns=["id"]).column("id").to_pylist()
        groups = []
        for g in range(md.num_row_groups):
            cols = [md.row_group(g).column(c) for c in range(md.num_columns)]
            start = min(c.data_page_offset for c in cols)
            groups.append((start, start + sum(c.total_compressed_size for c in cols), ids[g]))
        out[str(path.resolve())] = groups
    return out


def _reads(log_dir: Path, phase: str) -> dict[tuple[int, int], dict]:
    """Per (rank, worker) of a phase: files opened and row ids whose row group bytes were read."""
    return {
        tuple(int(x) for x in log.stem.split("-")[1:]): [
            line.split() for line in log.read_text().splitlines()
        ]
        for log in log_dir.glob(f"{phase}-*.log")
    }


@pytest.mark.slow
def test_two_accelerate_ranks_two_workers_own_shards_and_exact_resume(mixture, tmp_path):
    report, logs = tmp_path / "report.json", tmp_path / "logs"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        str(REPO / "tests/scripts/ddp_stream_coverage.py"),
        str(mixture),
        str(report),
        str(logs),
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(report.read_text())
    assert data["world"] == 2 and data["workers"] == 2
    groups = _row_groups(mixture)
    shards = sorted(groups)

    def rows_read(entries) -> list[str]:
        out = []
        for kind, path, *rest in entries:
            if kind == "read":
                offset, length = int(rest[0]), int(rest[1])
                out += [rid for a, b, rid in groups[path] if offset < b and a < offset + length]
        return out

    full = _reads(logs, "full")
    assert sorted(full) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    opened_all = []
    for (rank, worker), entries in full.items():
        unit = rank * 2 + worker
        opened = {path for kind, path, *_ in entries if kind == "open"}
        own = {p for fam in FAMILIES for p in [s for s in shards if f"/{fam}/" in s][unit::4]}
        assert opened == own, f"unit {unit} opened {opened - own} beyond its shards"
        opened_all += list(opened)
        read = rows_read(entries)
        assert len(read) == len(set(read))  # each row group of its shards read once
    assert sorted(opened_all) == shards  # disjoint and complete
    all_read = [r for entries in full.values() for r in rows_read(entries)]
    assert sorted(all_read) == sorted(_by_id(mixture))

    for rank in range(2):
        ranks = data["per_rank"][rank]
        ids = [i for i, _ in ranks["full"]]
        assert len(ids) == data["steps"] * 2 == 24  # equal steps per rank (batch 2), 16 x 3 pairs / 2 ranks
        assert ranks["first"] + ranks["rest"] == ranks["full"]  # exact resume
        consumed = {i for i, _ in ranks["first"]}
        resumed_reads = [r for w in range(2) for r in rows_read(_reads(logs, "resume").get((rank, w), []))]
        assert not set(resumed_reads) & consumed, "a resumed unit read a row it had already served"
        # it reads only rows it has yet to serve, each once (rows pooled at the save come from the state)
        assert set(resumed_reads) <= {i for i, _ in ranks["rest"]} - consumed
        assert len(resumed_reads) == len(set(resumed_reads))
    other = data["per_rank"]
    assert not {i for i, _ in other[0]["full"]} & {i for i, _ in other[1]["full"]}
