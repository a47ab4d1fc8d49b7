"""Corpora: round trip, determinism, resume, parallel generation, stats, card, integrity (manifest, verify,
refusal of damaged corpora), reshard, bad input, semigroup pairs, Hub push + stream."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from typer.testing import CliRunner

from data_pipelines.channels import ChannelMap
from data_pipelines.cli import app
from data_pipelines.corpus import (
    CorpusError,
    ShardWriter,
    decode_u,
    generate_corpus,
    load_trajectories,
    push_corpus,
    reshard_corpus,
    shard_seed,
    sidecar_path,
    verify_corpus,
    write_corpus,
)
from data_pipelines.fields import POSEIDON_CHANNELS
from data_pipelines.normalization import Normalizer, RunningMoments
from data_pipelines.semigroup import PairDataset, all2all_pairs
from data_pipelines.solvers import get_family, resolve_families

SMALL = dict(trajectories=3, resolution=16, snapshots=5, seed=7, shard_size=2, progress=False)
FAMILIES = "ns_sines,ns_gauss"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "c"
    generate_corpus(out, resolve_families(FAMILIES), **SMALL)
    return out


class Flaky:
    """A real family whose generate fails after `fail_after` calls, or puts a NaN into trajectory 1."""

    def __init__(self, name: str, fail_after: int | None = None, nan: bool = False):
        self.family, self.calls, self.fail_after, self.nan = get_family(name), 0, fail_after, nan

    def __getattr__(self, item):
        return getattr(self.family, item)

    def generate(self, *args, **kw):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        batch = self.family.generate(*args, **kw)
        if self.nan and batch.u.shape[0] > 1:
            batch.u[1, 2, 0, 3, 4] = float("nan")
        return batch


def test_round_trip_is_deterministic_and_matches_the_solver(corpus, tmp_path):
    again = tmp_path / "again"
    generate_corpus(again, resolve_families("ns_sines"), **SMALL)
    a = load_trajectories(corpus)
    assert len(a) == 6 and [t.pde for t in a] == ["ns_gauss"] * 3 + ["ns_sines"] * 3
    for x, y in zip(a[3:], load_trajectories(again), strict=True):
        np.testing.assert_array_equal(x.u, y.u)
        assert x.params == y.params and x.fields == y.fields == ["u", "v"]
    # Shard 1 of ns_sines is the solver's output for seed shard_seed(7, "ns_sines", 1), bit for bit.
    fam = get_family("ns_sines")
    direct = fam.generate(1, 16, 5, shard_seed(7, "ns_sines", 1)).to_trajectories(fam)[0]
    np.testing.assert_array_equal(a[5].u, direct.u)
    np.testing.assert_array_equal(a[5].t, direct.t)
    assert a[5].params == pytest.approx(direct.params) and a[5].domain == direct.domain
    assert shard_seed(7, "ns_sines", 0) != shard_seed(7, "ns_sines", 1) != shard_seed(8, "ns_sines", 1)


def test_stats_json_and_card(corpus):
    stats = json.loads((corpus / "stats.json").read_text())
    trajs = load_trajectories(corpus)
    for c, field in enumerate(["u", "v"]):
        values = np.concatenate([t.u[:, c].ravel() for t in trajs]).astype(np.float64)
        assert stats["fields"][field]["mean"] == pytest.approx(values.mean(), abs=1e-9)
        assert stats["fields"][field]["std"] == pytest.approx(values.std(), rel=1e-9)
    assert stats["families"]["ns_sines"]["count"] == 3
    shards = stats["families"]["ns_sines"]["shards"]
    assert sorted(shards) == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    for name, info in shards.items():
        path = corpus / "data" / "ns_sines" / name
        assert info["rows"] == (2 if "00000-of" in name else 1)
        assert info["bytes"] == path.stat().st_size
        assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert json.loads(sidecar_path(path).read_text())["sha256"] == info["sha256"]
        assert pq.read_metadata(path).num_row_groups == info["rows"]  # one row group per trajectory
    text = (corpus / "README.md").read_text()
    header = yaml.safe_load(text.split("---")[1])
    assert {c["config_name"] for c in header["configs"]} == {"default", "ns_sines", "ns_gauss"}
    assert "nu" in text and "log-uniform" in text and "| u |" in text


def test_resume_keeps_finished_shards(corpus, tmp_path):
    out = tmp_path / "r"
    flaky = Flaky("ns_sines", fail_after=1)
    with pytest.raises(KeyboardInterrupt):
        generate_corpus(out, [flaky, get_family("ns_gauss")], **SMALL)
    first = out / "data" / "ns_sines" / "train-00000-of-00002.parquet"
    assert first.exists() and not list(out.rglob("*.tmp"))
    stamp = first.stat().st_mtime_ns
    calls = Flaky("ns_sines")
    generate_corpus(out, [calls, get_family("ns_gauss")], **SMALL)
    assert calls.calls == 1, "only the missing shard is generated again"
    assert first.stat().st_mtime_ns == stamp
    for x, y in zip(load_trajectories(out), load_trajectories(corpus), strict=True):
        np.testing.assert_array_equal(x.u, y.u)
    with pytest.raises(CorpusError, match="settings"):
        generate_corpus(out, resolve_families(FAMILIES), **{**SMALL, "seed": 8})
    assert first.stat().st_mtime_ns == stamp


def test_nan_trajectory_errors_or_is_skipped_and_counted(tmp_path):
    small = {**SMALL, "trajectories": 2}
    with pytest.raises(ValueError, match=r"field 'u' has 1 NaN/Inf value\(s\) at time index 2"):
        generate_corpus(tmp_path / "e", [Flaky("ns_sines", nan=True)], **small)
    stats = generate_corpus(tmp_path / "s", [Flaky("ns_sines", nan=True)], **small, on_invalid="skip")
    assert stats["count"] == 1 and stats["skipped"] == {"ns_sines/train-00000-of-00001.parquet": 1}


def test_corrupt_shard_and_bad_rows_are_named(corpus, tmp_path):
    bad = tmp_path / "bad"
    write_corpus(bad, load_trajectories(corpus, families=["ns_sines"]), shard_size=2, progress=False)
    shard = bad / "data" / "ns_sines" / "train-00001-of-00002.parquet"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(
        CorpusError, match=r"train-00001-of-00002.parquet: shard has 100 bytes, stats.json records"
    ):
        load_trajectories(bad)
    with pytest.raises(CorpusError, match="already holds a corpus"):
        write_corpus(bad, load_trajectories(corpus), progress=False)
    with pytest.raises(
        CorpusError, match=r"field 'u' holds 12 bytes, expected 16 for float32 shape \[1, 1, 2, 2\]"
    ):
        decode_u(b"\0" * 12, [1, 1, 2, 2], "f.parquet")
    with pytest.raises(CorpusError, match=r"families \['nope'\] not in the corpus"):
        load_trajectories(corpus, families=["nope"])
    with pytest.raises(ValueError, match="empty family selection"):
        resolve_families(" , ")
    with pytest.raises(CorpusError, match="empty selection"):
        write_corpus(tmp_path / "empty", [], progress=False)


def test_all2all_pairs_counts_and_lead_times():
    pairs = all2all_pairs(21, stride=2)
    assert len(pairs) == 66 == 11 * 12 // 2
    assert (0, 0, 0.0) in pairs and (0, 20, 1.0) in pairs and (4, 10, pytest.approx(0.3)) in pairs
    assert all(i <= j for i, j, _ in pairs)
    for k in (1, 4, 7):
        assert len(all2all_pairs(k + 1)) == (k + 1) * (k + 2) // 2
    short = all2all_pairs(15, stride=2, max_lead=0.3)
    assert max(p[2] for p in short) == pytest.approx(2 / 14 * 2) and all(p[2] <= 0.3 for p in short)
    assert all2all_pairs(2, steady=True) == [(0, 1, 1.0)]


def test_pair_dataset_channel_mapping_masks_and_conditioning(corpus):
    trajs = load_trajectories(corpus)
    norm = Normalizer(
        {"rho": {"mean": 0.8, "std": 0.31}, "u": {"mean": 0.1, "std": 2.0}, "v": {"mean": 0, "std": 1}}
    )
    ds = PairDataset(trajs, POSEIDON_CHANNELS, norm, stride=2, families=["ns_sines", "ns_gauss"])
    assert len(ds) == 6 * 6  # 3 snapshots (0, 2, 4) -> 6 pairs each
    ex = ds[1]  # trajectory 0 (ns_gauss), pair (0, 2)
    assert ex["time"].item() == pytest.approx(0.5)
    assert ex["pixel_mask"].tolist() == [False, False, False, True]
    torch.testing.assert_close(ex["pixel_values"][0], torch.full((16, 16), (1 - 0.8) / 0.31))
    torch.testing.assert_close(ex["labels"][1], torch.from_numpy((trajs[0].u[2, 0] - 0.1) / 2.0))
    assert ex["pixel_values"][3].abs().max() == 0 and ex["pde_id"].item() == 1
    lo, hi = get_family("ns_gauss").coefficient_ranges["nu"]
    expected = (np.log(trajs[0].params["nu"]) - np.log(lo)) / (np.log(hi) - np.log(lo))
    assert (
        ex["coefficients"][0].item() == pytest.approx(expected, rel=1e-5)
        and ex["coefficients"][1:].abs().sum() == 0
    )
    with pytest.raises(ValueError, match=r"fields \['v'\] are not in the model's channel layout \['u'\]"):
        ChannelMap(["u"])(trajs[0].u, ["u", "v"])


def test_running_moments_match_numpy():
    rng = np.random.default_rng(0)
    parts = [rng.normal(3.0, 2.0, size=n) for n in (5, 1000, 17)]
    acc = RunningMoments()
    for p in parts:
        acc.update(p)
    allv = np.concatenate(parts)
    assert acc.mean == pytest.approx(allv.mean()) and acc.std == pytest.approx(allv.std())
    norm = Normalizer({"u": {"mean": 2.0, "std": 4.0}, "rho": {"mean": 1.0, "std": 0.0}})
    x = rng.normal(size=(3, 2, 4, 4)).astype(np.float32)
    z = norm.normalize(x, ["u", "rho"])
    np.testing.assert_allclose(z[:, 0], (x[:, 0] - 2) / 4, rtol=1e-6)
    np.testing.assert_allclose(z[:, 1], x[:, 1] - 1, rtol=1e-6)
    np.testing.assert_allclose(norm.denormalize(z, ["u", "rho"]), x, rtol=1e-5, atol=1e-6)


def test_cli_generate_inspect_verify(tmp_path):
    out = tmp_path / "cli"
    runner = CliRunner()
    args = [
        "generate",
        "--families",
        "ns_sines",
        "--trajectories",
        "2",
        "--resolution",
        "16",
        "--snapshots",
        "3",
    ]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("data/ns_sines/*.parquet"))) == 1  # 2 small rows fit one 256 MiB shard
    result = runner.invoke(app, ["inspect", str(out)])
    assert result.exit_code == 0, result.output
    assert "ns_sines" in result.output and "2 of 2" in result.output and " ok " in result.output
    assert (out / "preview.png").stat().st_size > 1000
    result = runner.invoke(app, ["verify", str(out)])
    assert result.exit_code == 0 and "ok" in result.output, result.output


def test_parallel_parts_write_the_one_process_corpus_and_merge_without_reading(corpus, tmp_path, monkeypatch):
    out = tmp_path / "parallel"
    families = resolve_families(FAMILIES)
    assert generate_corpus(out, families, **SMALL, process_index=0, num_processes=2) is None
    assert len(list(out.rglob("*.parquet"))) == 2 and not (out / "stats.json").exists()

    def no_reading(*args, **kw):
        raise AssertionError("finalisation read a shard")

    monkeypatch.setattr(pq, "read_table", no_reading)
    monkeypatch.setattr(pq, "ParquetFile", no_reading)
    stats = generate_corpus(out, families, **SMALL, process_index=1, num_processes=2)
    monkeypatch.undo()
    one = json.loads((corpus / "stats.json").read_text())
    assert stats["families"] == one["families"] and stats["fields"] == one["fields"]  # same rows, same hashes
    # two writers of one shard never share a temporary file; the survivor is a complete shard
    rows = [r for r in pq.read_table(out / "data/ns_sines/train-00000-of-00002.parquet").to_pylist()]
    target = tmp_path / "race" / "train-00000-of-00001.parquet"
    with ShardWriter(target) as a, ShardWriter(target) as b:
        assert a.tmp != b.tmp
        for row in rows:
            a.add(row)
            b.add(row)
    assert pq.read_metadata(target).num_rows == 2 and not list(target.parent.glob("*.tmp"))


def test_bad_settings_write_nothing_and_a_failed_run_never_blocks_the_rerun(tmp_path):
    out = tmp_path / "g"
    runner = CliRunner()
    args = [
        "generate",
        "--out",
        str(out),
        "--families",
        "ns_sines",
        "--trajectories",
        "2",
        "--snapshots",
        "3",
    ]
    result = runner.invoke(app, [*args, "--resolution", "0"])
    assert result.exit_code != 0 and "--resolution must be >= 8, got 0" in str(result.exception)
    assert not out.exists()
    with pytest.raises(KeyboardInterrupt):  # fails before its first shard, after writing generation.json
        generate_corpus(out, [Flaky("ns_sines", fail_after=0)], **SMALL)
    assert (out / "generation.json").exists() and not list(out.rglob("*.parquet"))
    result = runner.invoke(app, [*args, "--resolution", "16"])
    assert result.exit_code == 0, result.output
    part = [*args, "--resolution", "16", "--shard-size", "1", "--out", str(tmp_path / "parts")]
    result = runner.invoke(app, part, env={"RANK": "0", "WORLD_SIZE": "2"})
    assert result.exit_code == 0 and "part 1/2 done" in result.output, result.output
    result = runner.invoke(app, part, env={"RANK": "1", "WORLD_SIZE": "2"})
    assert result.exit_code == 0 and "2 trajectories, 1 families" in result.output, result.output
    with pytest.raises(CorpusError, match="--shard-mb must be > 0"):
        generate_corpus(out, resolve_families("ns_sines"), 2, 16, 3, shard_mb=0)


def test_reshard_keeps_every_row(corpus, tmp_path):
    copy = tmp_path / "resharded"
    shutil.copytree(corpus, copy)
    before = load_trajectories(copy)
    ids = [
        pq.read_table(p, columns=["id"]).column("id").to_pylist()
        for p in sorted(copy.glob("data/*/*.parquet"))
    ]
    stats = reshard_corpus(copy, shards=3, progress=False)
    assert [len(stats["families"][f]["shards"]) for f in ("ns_gauss", "ns_sines")] == [3, 3]
    after = load_trajectories(copy)
    for x, y in zip(before, after, strict=True):
        np.testing.assert_array_equal(x.u, y.u)
        assert x.params == y.params and x.pde == y.pde
    again = [
        pq.read_table(p, columns=["id"]).column("id").to_pylist()
        for p in sorted(copy.glob("data/*/*.parquet"))
    ]
    assert sum(ids, []) == sum(again, [])
    assert verify_corpus(copy)[0] == []
    for field, values in json.loads((corpus / "stats.json").read_text())["fields"].items():
        assert stats["fields"][field] == pytest.approx(values)
    result = CliRunner().invoke(app, ["reshard", str(copy), "--shard-mb", "1"])
    assert result.exit_code == 0 and "ns_sines 1" in result.output, result.output
    assert len(load_trajectories(copy)) == 6 and not list(copy.glob("data/.*"))
    with pytest.raises(CorpusError, match="settings"):  # a generate rerun would add the old layout's shards
        generate_corpus(copy, resolve_families(FAMILIES), **SMALL)
    with pytest.raises(CorpusError, match="exactly one of --shards N or --shard-mb X"):
        reshard_corpus(copy, shards=2, shard_mb=1.0)


@pytest.mark.parametrize("damage", ["deleted", "flipped", "extra", "truncated"])
def test_damaged_corpus_is_refused_naming_the_shard(corpus, tmp_path, damage):
    from data_pipelines.streaming import MixtureStream, make_loader
    from finetune.data import load_trajectories as finetune_load

    bad = tmp_path / damage
    shutil.copytree(corpus, bad)
    shard = bad / "data" / "ns_sines" / "train-00000-of-00002.parquet"
    name = "ns_sines/train-00000-of-00002.parquet"
    data = bytearray(shard.read_bytes())
    if damage == "deleted":
        shard.unlink()
    elif damage == "flipped":
        data[2000:2064] = bytes(b ^ 0xFF for b in data[2000:2064])  # inside the first row's u
        shard.write_bytes(bytes(data))
    elif damage == "extra":
        name = "ns_sines/train-00002-of-00002.parquet"
        shutil.copy(shard, bad / name.replace("ns_sines", "data/ns_sines"))
    else:
        shard.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CorpusError, match=name):
        load_trajectories(bad)
    with pytest.raises(CorpusError, match=name):
        finetune_load(str(bad))
    with pytest.raises(CorpusError, match=name):
        push_corpus(bad, "pdefm-tests/never-pushed")  # refused before any Hub call
    with pytest.raises(CorpusError, match=name):
        list(MixtureStream(bad, ["u", "v"]))  # deleted/extra/truncated on open, flipped when the row is read
    if damage == "flipped":  # raised in a DataLoader worker, it reaches the loop with its own message
        with pytest.raises(CorpusError, match=f"^{bad}/data/{name} row .*checksum"):
            list(make_loader(MixtureStream(bad, ["u", "v"], world_size=1, rank=0), 2, 2))
    problems, _ = verify_corpus(bad)
    assert len(problems) == 1 and name in problems[0]
    result = CliRunner().invoke(app, ["verify", str(bad)])
    assert result.exit_code != 0 and name in str(result.exception)
    if damage != "flipped":  # inspect reads footers and sizes, not hashes
        result = CliRunner().invoke(app, ["inspect", str(bad)])
        assert result.exit_code != 0 and name in result.output and "problem" in str(result.exception)


def test_push_and_stream_from_hub(corpus, hub_server, tmp_path):
    from datasets import load_dataset

    from data_pipelines.streaming import MixtureStream

    push_corpus(corpus, "pdefm-tests/ns-corpus")
    rows = list(load_dataset("pdefm-tests/ns-corpus", split="train", streaming=True))
    assert sorted(r["id"] for r in rows) == sorted(
        f"{f}/{k // 2:05d}/{k % 2:04d}" for f in ("ns_sines", "ns_gauss") for k in range(3)
    )
    one = list(load_dataset("pdefm-tests/ns-corpus", name="ns_gauss", split="train", streaming=True))
    assert len(one) == 3
    local = load_trajectories(corpus, families=["ns_gauss"])
    hub = load_trajectories("pdefm-tests/ns-corpus", families=["ns_gauss"])
    np.testing.assert_array_equal(local[2].u, hub[2].u)
    cache = tmp_path / "node-cache"
    stream = MixtureStream(
        "pdefm-tests/ns-corpus", ["u", "v"], return_ids=True, stride=4, seed=1, cache_dir=str(cache)
    )
    ids = [e["id"] for e in stream]
    assert len(ids) == 6 * 3 and len(set(ids)) == 6
    assert len(list(cache.rglob("*.parquet"))) == 4  # every shard, once, in the node-local cache
    assert os.environ["HF_ENDPOINT"] == hub_server
