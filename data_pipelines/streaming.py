"""Multi-PDE streaming mixture: a torch IterableDataset of training examples from local or Hub corpora.

Pipeline, one `datasets` stream per family: `load_dataset(..., streaming=True)` -> `interleave_datasets`
(per-family weights) -> trajectory `shuffle` buffer -> `split_dataset_by_node` over every
(rank, DataLoader worker) unit -> decode (`np.frombuffer`) -> channel layout + normalisation -> all2all
pairs -> pair shuffle buffer.

Splitting uses the "examples" strategy over rank x worker units with the same seed on every rank: each
unit keeps 1 trajectory in U of one global order, so units are disjoint and together complete. An
epoch is `epoch_length` trajectories (default: every trajectory once) and every unit yields exactly
ceil(epoch_length / U) of them (a short unit repeats its first ones), so all ranks take the same number
of steps and DDP never waits on a rank that ran out of data.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import datasets
import numpy as np
import torch
from datasets import interleave_datasets, load_dataset
from datasets.distributed import split_dataset_by_node

from data_pipelines.channels import ChannelMap
from data_pipelines.corpus import DATA_DIR, FEATURES, CorpusError, corpus_shards, decode_u
from data_pipelines.normalization import Normalizer, RunningMoments
from data_pipelines.semigroup import all2all_pairs, coefficient_vector, is_steady, make_example

# The parquet builder makes every closed interleaved iterator sleep this long (5 s by default, a
# workaround for apache/arrow#45214); 0.1 s is enough and saves ~5 s per epoch and per test.
datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0.1


def _read_stats(source: str | Path) -> tuple[dict, bool]:
    """stats.json of a local corpus folder or a Hub dataset id, and whether it is local."""
    path = Path(source)
    if path.exists():
        stats_path = path / "stats.json"
        if not stats_path.exists():
            raise CorpusError(f"{path}: not a pdefm corpus, stats.json missing")
        return json.loads(stats_path.read_text()), True
    from huggingface_hub import hf_hub_download

    return json.loads(
        Path(hf_hub_download(str(source), "stats.json", repo_type="dataset")).read_text()
    ), False


def _merge_field_stats(tables: list[dict]) -> dict:
    """Pools per-field moments of several corpora (count-weighted means and variances)."""
    merged: dict[str, RunningMoments] = {}
    for table in tables:
        for name, s in table.items():
            part = RunningMoments(int(s["count"]), float(s["mean"]), float(s["std"]) ** 2 * int(s["count"]))
            acc = merged.setdefault(name, RunningMoments())
            n = acc.count + part.count
            delta = part.mean - acc.mean
            acc.mean += delta * part.count / n
            acc.m2 += part.m2 + delta * delta * acc.count * part.count / n
            acc.count = n
    return {k: {"mean": m.mean, "std": m.std} for k, m in merged.items()}


def _unit() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _default_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class MixtureStream(torch.utils.data.IterableDataset):
    """Streams all2all training examples from a weighted mixture of PDE families.

    `sources`: corpus folders and/or Hub dataset ids; `families`: which families (default all found);
    `weights`: {family: weight} sampling probabilities (default proportional to trajectory counts; with
    the default without-replacement strategy they set the order, and a family with a tiny weight is
    drawn only after ~1/weight tries once the others are exhausted);
    `channels`: the model's channel layout (or a ChannelMap); `normalizer`: "auto" pools the sources'
    stats.json, None disables; `pairs_per_trajectory`: None = every all2all pair, k = k random pairs;
    `pde_vocabulary`: family names for `pde_id` / `coefficients` conditioning; `return_ids` adds the
    trajectory id string to each example.
    """

    def __init__(
        self,
        sources: Sequence[str | Path] | str | Path,
        channels: Sequence[str] | ChannelMap,
        families: Sequence[str] | None = None,
        weights: dict[str, float] | None = None,
        normalizer: Normalizer | str | None = "auto",
        shuffle_buffer: int = 64,
        pair_buffer: int = 256,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        stride: int = 1,
        max_lead: float | None = None,
        span: int | None = None,
        pairs_per_trajectory: int | None = None,
        stopping_strategy: str = "all_exhausted_without_replacement",
        epoch_length: int | None = None,
        pde_vocabulary: Sequence[str] | None = None,
        return_ids: bool = False,
    ):
        super().__init__()
        sources = [sources] if isinstance(sources, (str, Path)) else list(sources)
        if not sources:
            raise CorpusError("empty selection: no corpus source given")
        self.channel_map = channels if isinstance(channels, ChannelMap) else ChannelMap(channels)
        self.files: dict[str, tuple[str, list[str] | str]] = {}
        self.counts: dict[str, int] = {}
        pair_counts: dict[str, int] = {}
        field_tables = []
        for source in sources:
            stats, local = _read_stats(source)
            field_tables.append(stats["fields"])
            chosen = [f for f in stats["families"] if families is None or f in families]
            if local:
                shards = corpus_shards(source, chosen) if chosen else {}
            for fam in chosen:
                if fam in self.files:
                    raise CorpusError(f"{source}: family {fam!r} also comes from {self.files[fam][0]}")
                info = stats["families"][fam]
                pattern = [str(p) for p in shards[fam]] if local else f"{DATA_DIR}/{fam}/*.parquet"
                self.files[fam] = (str(source), pattern)
                self.counts[fam] = int(info["count"])
                pairs = all2all_pairs(info["shape"][0], stride, max_lead, span, is_steady(fam))
                pair_counts[fam] = len(pairs) if pairs_per_trajectory is None else pairs_per_trajectory
        if families is not None:
            missing = [f for f in families if f not in self.files]
            if missing:
                raise CorpusError(f"families {missing} not found in {[str(s) for s in sources]}")
        if not self.files or sum(self.counts.values()) == 0:
            raise CorpusError(f"empty selection: no trajectory in {[str(s) for s in sources]} for {families}")
        self.families = list(self.files)
        weights = weights or {f: float(n) for f, n in self.counts.items()}
        if sorted(weights) != sorted(self.families) or min(weights.values()) <= 0:
            raise CorpusError(
                f"weights {weights} must give every family of {self.families} a positive weight"
            )
        total = sum(weights.values())
        self.probabilities = [weights[f] / total for f in self.families]
        self.normalizer = Normalizer(_merge_field_stats(field_tables)) if normalizer == "auto" else normalizer
        if rank is None or world_size is None:
            rank, world_size = _default_rank_world()
        self.rank, self.world_size = rank, world_size
        if len(set(pair_counts.values())) > 1 and world_size > 1:
            raise CorpusError(
                f"families give different numbers of pairs per trajectory {pair_counts}; ranks would take "
                f"different step counts, set pairs_per_trajectory"
            )
        self.pairs_per_trajectory = pairs_per_trajectory
        self.stride, self.max_lead, self.span = stride, max_lead, span
        self.shuffle_buffer, self.pair_buffer, self.seed = shuffle_buffer, pair_buffer, seed
        self.stopping_strategy = stopping_strategy
        self.epoch_length = sum(self.counts.values()) if epoch_length is None else epoch_length
        self.pde_vocabulary = list(pde_vocabulary) if pde_vocabulary is not None else None
        self.return_ids = return_ids
        self.epoch = 0
        self._mixed: datasets.IterableDataset | None = None
        self._mixture()

    def set_epoch(self, epoch: int) -> None:
        """Reshuffles the next epoch (same order on every rank for the same epoch)."""
        self.epoch = epoch

    def trajectories_per_unit(self, num_workers: int) -> int:
        return math.ceil(self.epoch_length / (self.world_size * max(num_workers, 1)))

    def _family_stream(self, family: str) -> datasets.IterableDataset:
        source, files = self.files[family]
        if isinstance(files, list):
            return load_dataset("parquet", data_files=files, split="train", streaming=True, features=FEATURES)
        return load_dataset(source, data_files=files, split="train", streaming=True, features=FEATURES)

    def _mixture(self) -> datasets.IterableDataset:
        """The interleaved, shuffled stream, built once (data files resolved once, then pickled to workers)."""
        if self._mixed is None:
            streams = [self._family_stream(f) for f in self.families]
            mixed = streams[0]
            if len(streams) > 1:
                mixed = interleave_datasets(
                    streams,
                    probabilities=self.probabilities,
                    seed=self.seed,
                    stopping_strategy=self.stopping_strategy,
                )
            if self.shuffle_buffer > 1:
                mixed = mixed.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
            self._mixed = mixed
        return self._mixed

    def _pipeline(self, unit: int, units: int) -> datasets.IterableDataset:
        mixed = split_dataset_by_node(self._mixture(), rank=unit, world_size=units, strategy="examples")
        mixed.set_epoch(self.epoch)
        return mixed

    def _rows(self, unit: int, units: int) -> Iterator[dict]:
        """Exactly ceil(epoch_length / units) rows of this unit's share, cycling if its share is short."""
        quota = math.ceil(self.epoch_length / units)
        stream = self._pipeline(unit, units)
        emitted = 0
        while emitted < quota:
            before = emitted
            # .iter() applies the node split but not datasets' own per-worker shard split.
            for batch in stream.iter(batch_size=8):
                for k in range(len(batch["id"])):
                    yield {key: batch[key][k] for key in batch}
                    emitted += 1
                    if emitted == quota:
                        return
            if emitted == before:
                raise CorpusError(
                    f"rank {self.rank} worker unit {unit}/{units} got no trajectory: the mixture has fewer "
                    f"trajectories ({self.epoch_length}) than ranks x DataLoader workers"
                )

    def _examples(self, row: dict, rng: np.random.Generator) -> list[tuple]:
        source = f"{self.files[row['pde']][0]} row {row['id']!r}"
        u = decode_u(row["u"], row["shape"], source)
        mapped, mask = self.channel_map(u, row["fields"], self.normalizer, source)
        pairs = all2all_pairs(len(row["t"]), self.stride, self.max_lead, self.span, is_steady(row["pde"]))
        if self.pairs_per_trajectory is not None:
            k = self.pairs_per_trajectory
            pick = rng.choice(len(pairs), size=k, replace=k > len(pairs))
            pairs = [pairs[p] for p in pick]
        cond = None
        if self.pde_vocabulary is not None:
            if row["pde"] not in self.pde_vocabulary:
                raise CorpusError(f"{source}: pde {row['pde']!r} not in pde_vocabulary {self.pde_vocabulary}")
            params = json.loads(row["params"])
            cond = (self.pde_vocabulary.index(row["pde"]), coefficient_vector(row["pde"], params))
        return [(mapped, mask, i, j, lead, cond, row["id"]) for i, j, lead in pairs]

    def _emit(self, item: tuple) -> dict:
        mapped, mask, i, j, lead, cond, row_id = item
        example = make_example(mapped, mask, i, j, lead, cond)
        if self.return_ids:
            example["id"] = row_id
        return example

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = _unit()
        units = self.world_size * num_workers
        unit = self.rank * num_workers + worker
        rng = np.random.default_rng([self.seed, self.epoch, unit])
        buffer: list[tuple] = []
        for row in self._rows(unit, units):
            for item in self._examples(row, rng):
                if len(buffer) < self.pair_buffer:
                    buffer.append(item)
                    continue
                k = int(rng.integers(len(buffer)))
                buffer[k], item = item, buffer[k]
                yield self._emit(item)
        rng.shuffle(buffer)
        for item in buffer:
            yield self._emit(item)
