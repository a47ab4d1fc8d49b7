"""Multi-PDE streaming mixture: training examples from local or Hub corpora, each corpus byte read once
per epoch across ranks x DataLoader workers, with its position saved as state (never replayed).

Contract for a training loop:

- ``resolve_corpus(sources)`` (on rank 0) checks the corpora against their manifests and returns a
  picklable list of ``CorpusSource`` (stats.json, Hub revision); broadcast it (accelerate's
  ``broadcast_object_list``) and pass it as ``MixtureStream(sources=...)``, so no other rank touches the Hub.
- ``MixtureStream(...)`` is a torch IterableDataset. Each example is a dict: ``pixel_values``, ``labels``,
  ``time``, ``pixel_mask`` (+ ``pde_id``, ``coefficients`` with a ``pde_vocabulary``), ``family`` (the
  family name, a string, for per-family counts) and, with ``return_ids``, ``id``.
- ``make_loader(stream, batch_size, num_workers)`` gives a torchdata ``StatefulDataLoader``; save
  ``loader.state_dict()`` in the checkpoint and call ``loader.load_state_dict(state)`` before iterating
  on resume: the stream continues exactly where it stopped, reading no consumed row again. Resuming with
  another world size or worker count raises ``StreamResumeError`` (``check_resume``) saying what to do.

Units: every (rank, DataLoader worker) pair is a unit, U = world_size x num_workers. Shard k of a family
(shards sorted by name) belongs to unit k mod U, so a unit opens only its own shard files; every family
needs at least U shards (``pdefm data reshard CORPUS --shards U`` rewrites a corpus), and shard counts that
are multiples of U balance the units. Parquet row groups hold one trajectory each, so a unit reads a row
by seeking to it: footer plus row group, nothing else.

Mixture: each unit draws the family of every example by weight with a low-discrepancy rule (credits plus
random tie-breaking), so the family shares hold within a few examples at every point of the stream; a
weight of 0 excludes a family (its files are never opened), a tiny weight still gets its share. Within a
family, a pool of ``shuffle_buffer`` trajectories per unit serves their all2all pairs in random order
(pairs drawn over the pool, uniformly), and rows are read in a shuffled order of the unit's shards and
rows, new each epoch.

Epoch: every unit yields the same number E of examples per epoch (so DDP ranks take equal steps), with
exactly round(E x weight) of each family. ``stopping_strategy`` sets E: ``"all_exhausted"`` (default)
reads every row of every unit at least once (a family whose share ends sooner starts over, reshuffled),
``"first_exhausted"`` stops when the first unit family share ends (no row twice, some rows not this
epoch); ``epoch_length`` sets E directly. With weights proportional to the data (the default) and
balanced shards both give every example exactly once. ``infinite=True`` runs epoch after epoch.

State: a unit's state (``state_dict()``, called per worker by StatefulDataLoader) holds its epoch, the
examples it emitted, its random generator, each family's read position and its pool, with the pooled
rows themselves, so resuming reads no row twice. Its size is about ``shuffle_buffer`` x families
trajectories per unit. Only ints, strings, bytes, lists and dicts: ``torch.load(weights_only=True)`` loads it.

Hub corpora are read through a node-local cache: each unit downloads only its own shards (pinned to the
revision ``resolve_corpus`` saw) into ``cache_dir``, default ``$PDEFM_CORPUS_CACHE`` or the Hugging Face
cache.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from data_pipelines.channels import ChannelMap
from data_pipelines.corpus import (
    DATA_DIR,
    CorpusError,
    check_files,
    check_footer,
    check_row,
    decode_u,
    manifest,
)
from data_pipelines.normalization import Normalizer, RunningMoments
from data_pipelines.semigroup import all2all_pairs, coefficient_vector, is_steady, make_example

logger = logging.getLogger(__name__)
# torchdata 0.11 calls a deprecated torch API on every loader it builds; the warning says nothing to users
warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
STATE_VERSION = 1
STRATEGIES = ("all_exhausted", "first_exhausted")
CACHE_ENV = "PDEFM_CORPUS_CACHE"


class StreamResumeError(ValueError):
    """A saved stream state that cannot continue exactly in this run (another layout or corpus)."""


# ---- corpus resolution --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusSource:
    """One corpus as the stream reads it: a local folder (`root`) or a Hub dataset at a fixed `revision`,
    with its stats.json (statistics and shard manifest). Picklable, for broadcasting from rank 0."""

    name: str
    stats: dict
    root: str | None = None
    repo_id: str | None = None
    revision: str | None = None

    def shard_path(self, family: str, shard: str, cache_dir: str | None = None) -> Path:
        """Local path of a shard; a Hub shard is downloaded into the node-local cache first."""
        if self.root is not None:
            return Path(self.root) / DATA_DIR / family / shard
        from huggingface_hub import hf_hub_download

        return Path(
            hf_hub_download(
                self.repo_id,
                f"{DATA_DIR}/{family}/{shard}",
                repo_type="dataset",
                revision=self.revision,
                cache_dir=cache_dir or os.environ.get(CACHE_ENV) or None,
            )
        )


def resolve_corpus(
    sources: Sequence[str | Path] | str | Path, families: Sequence[str] | None = None
) -> list[CorpusSource]:
    """Reads each source's stats.json once and checks its shards against the manifest (presence, size,
    no extra shard) for the families it will serve; Hub ids are pinned to their current revision."""
    from data_pipelines.corpus import read_stats
    from data_pipelines.paths import local_or_hub

    sources = [sources] if isinstance(sources, (str, Path)) else list(sources)
    if not sources:
        raise CorpusError("empty selection: no corpus source given")
    out = []
    for source in sources:
        where = local_or_hub(source, "corpus")
        if isinstance(where, Path):
            stats = read_stats(where)
            chosen = [f for f in stats["families"] if families is None or f in families]
            check_files(where, stats, chosen)
            out.append(CorpusSource(str(source), stats, root=str(where)))
            continue
        from huggingface_hub import HfApi, hf_hub_download

        api = HfApi()
        revision = api.dataset_info(where).sha
        stats = json.loads(
            Path(hf_hub_download(where, "stats.json", repo_type="dataset", revision=revision)).read_text()
        )
        chosen = [f for f in stats["families"] if families is None or f in families]
        tree = api.list_repo_tree(
            where, path_in_repo=DATA_DIR, recursive=True, repo_type="dataset", revision=revision
        )
        sizes = {e.path: e.size for e in tree if e.path.endswith(".parquet") and hasattr(e, "size")}
        check_files(where, stats, chosen, sizes=sizes)
        out.append(CorpusSource(str(source), stats, repo_id=where, revision=revision))
    return out


def _merge_field_stats(tables: list[dict]) -> dict:
    """Pools per-field moments of several corpora (count-weighted means and variances)."""
    merged: dict[str, RunningMoments] = {}
    for table in tables:
        for name, s in table.items():
            part = RunningMoments(int(s["count"]), float(s["mean"]), float(s["std"]) ** 2 * int(s["count"]))
            acc = merged.setdefault(name, RunningMoments())
            n = acc.count + part.count
            if n == 0:
                continue
            delta = part.mean - acc.mean
            acc.mean += delta * part.count / n
            acc.m2 += part.m2 + delta * delta * acc.count * part.count / n
            acc.count = n
    return {k: {"mean": m.mean, "std": m.std} for k, m in merged.items()}


# ---- reading one shard --------------------------------------------------------------------------------


def _open_shard(path: Path):
    """The file a unit reads a shard through: arrow's own, unbuffered (reads are exact byte ranges)."""
    return pa.OSFile(str(path), "r")


class _ShardReader:
    """Reads single rows of one shard: the footer once (exactly its bytes), then one row group per row."""

    def __init__(self, path: Path, expected: dict):
        self.path = path
        self.file = _open_shard(path)
        try:
            size = os.stat(path).st_size
            if size != expected["bytes"]:
                raise CorpusError(f"{path}: shard has {size} bytes, stats.json records {expected['bytes']}")
            self.file.seek(size - 8)
            tail = self.file.read(8)
            length = struct.unpack("<i", tail[:4])[0]
            if tail[4:] != b"PAR1" or not 0 < length <= size - 12:
                raise CorpusError(f"{path}: not a parquet file (bad footer)")
            self.file.seek(size - 8 - length)
            metadata = pq.read_metadata(pa.BufferReader(b"PAR1" + self.file.read(length) + tail))
            check_footer(path, metadata, expected)
            self.parquet = pq.ParquetFile(self.file, metadata=metadata)
        except (pa.ArrowInvalid, OSError, struct.error) as exc:
            self.close()
            raise CorpusError(f"{path}: truncated or corrupt parquet shard ({exc})") from exc
        except BaseException:
            self.close()
            raise

    def row(self, index: int) -> dict:
        try:
            table = self.parquet.read_row_group(index)
        except (pa.ArrowInvalid, OSError) as exc:
            raise CorpusError(f"{self.path}: row {index} is unreadable ({exc})") from exc
        row = {name: table.column(name)[0].as_py() for name in table.column_names}
        check_row(row, str(self.path))
        return row

    def close(self) -> None:
        self.file.close()


# ---- the stream ---------------------------------------------------------------------------------------


def _unit() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _default_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _largest_remainder(total: int, weights: list[float]) -> list[int]:
    """Integers proportional to `weights` summing to `total`."""
    exact = [total * w for w in weights]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: counts[i] - exact[i])
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


@dataclass
class _Plan:
    """What a unit layout implies: each unit's shards per family, the epoch length and family quotas."""

    units: int
    shards: dict[str, list[list[tuple[int, str, int]]]]  # family -> unit -> [(source, shard, rows)]
    epoch_length: int
    quotas: list[int]


class MixtureStream(torch.utils.data.IterableDataset):
    """Streams all2all training examples from a weighted mixture of PDE families (see the module doc).

    `sources`: corpus folders, Hub dataset ids, or `resolve_corpus`'s result; `families`: which families
    (default all found); `weights`: {family: weight} for every chosen family, 0 excludes one (default:
    proportional to its examples); `channels`: the model's channel layout (or a ChannelMap);
    `normalizer`: "auto" pools the sources' stats.json, None disables; `shuffle_buffer`: trajectories per
    family held by each unit (and saved in its state); `pairs_per_trajectory`: None = every all2all pair,
    k = k random pairs; `stopping_strategy`, `epoch_length` (examples per unit), `infinite`: the epoch (see
    the module doc); `pde_vocabulary`: family names for `pde_id` / `coefficients` conditioning;
    `return_ids` adds the trajectory id to each example; `cache_dir`: node-local cache for Hub shards.
    """

    def __init__(
        self,
        sources: Sequence[str | Path | CorpusSource] | str | Path | CorpusSource,
        channels: Sequence[str] | ChannelMap,
        families: Sequence[str] | None = None,
        weights: dict[str, float] | None = None,
        normalizer: Normalizer | str | None = "auto",
        shuffle_buffer: int = 4,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        stride: int = 1,
        max_lead: float | None = None,
        span: int | None = None,
        pairs_per_trajectory: int | None = None,
        stopping_strategy: str = "all_exhausted",
        epoch_length: int | None = None,
        pde_vocabulary: Sequence[str] | None = None,
        return_ids: bool = False,
        infinite: bool = False,
        cache_dir: str | None = None,
    ):
        super().__init__()
        if isinstance(sources, (str, Path, CorpusSource)):
            sources = [sources]
        sources = list(sources)
        if not all(isinstance(s, CorpusSource) for s in sources):
            sources = resolve_corpus(sources, families)
        if stopping_strategy not in STRATEGIES:
            raise CorpusError(f"stopping_strategy must be one of {STRATEGIES}, got {stopping_strategy!r}")
        if shuffle_buffer < 1 or (epoch_length is not None and epoch_length < 1):
            raise CorpusError(
                f"shuffle_buffer and epoch_length must be >= 1, got {shuffle_buffer}, {epoch_length}"
            )
        self.sources = sources
        self.channel_map = channels if isinstance(channels, ChannelMap) else ChannelMap(channels)
        self.stride, self.max_lead, self.span = stride, max_lead, span
        self.pairs_per_trajectory = pairs_per_trajectory
        found: dict[str, tuple[int, dict]] = {}  # family -> (source index, stats info)
        shards: dict[str, list[tuple[int, str, int]]] = {}
        for index, source in enumerate(sources):
            listed = manifest(source.stats, source.name)
            for family, info in source.stats["families"].items():
                if families is not None and family not in families:
                    continue
                if family in found:
                    other = sources[found[family][0]].name
                    raise CorpusError(f"{source.name}: family {family!r} also comes from {other}")
                found[family] = (index, info)
                shards[family] = [(index, name, e["rows"]) for name, e in sorted(listed[family].items())]
        if families is not None:
            missing = [f for f in families if f not in found]
            if missing:
                raise CorpusError(f"families {missing} not found in {[s.name for s in sources]}")
        self.pairs = {f: self._pair_count(f, info) for f, (_, info) in found.items()}
        counts = {f: int(info["count"]) for f, (_, info) in found.items()}
        if weights is None:
            weights = {f: float(counts[f] * self.pairs[f]) for f in found}
        unknown = sorted(set(weights) - set(found))
        unweighted = sorted(set(found) - set(weights))
        if unknown or unweighted or any(w < 0 for w in weights.values()):
            raise CorpusError(
                f"weights {weights} must give each family of {sorted(found)} a weight >= 0 "
                f"(unknown: {unknown}, missing: {unweighted})"
            )
        self.families = [f for f in found if weights[f] > 0 and counts[f] > 0]
        if not self.families:
            raise CorpusError(
                f"empty selection: no trajectory with a positive weight in {[s.name for s in sources]} "
                f"(families={families}, weights={weights})"
            )
        total = sum(weights[f] for f in self.families)
        self.weights = [weights[f] / total for f in self.families]
        self.shards = {f: shards[f] for f in self.families}
        self.normalizer = (
            Normalizer(_merge_field_stats([s.stats["fields"] for s in sources]))
            if normalizer == "auto"
            else normalizer
        )
        if rank is None or world_size is None:
            rank, world_size = _default_rank_world()
        self.rank, self.world_size = rank, world_size
        self.shuffle_buffer, self.seed = shuffle_buffer, seed
        self.stopping_strategy, self.requested_length = stopping_strategy, epoch_length
        self.pde_vocabulary = list(pde_vocabulary) if pde_vocabulary is not None else None
        self.return_ids, self.infinite, self.cache_dir = return_ids, infinite, cache_dir
        self.epoch = 0
        self._plans: dict[int, _Plan] = {}
        self._resume: dict | None = None
        self._live: _UnitStream | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_live": None}  # open files stay with the process that opened them

    def _pair_count(self, family: str, info: dict) -> int:
        if self.pairs_per_trajectory is not None:
            return self.pairs_per_trajectory
        return len(all2all_pairs(info["shape"][0], self.stride, self.max_lead, self.span, is_steady(family)))

    # ---- layout -------------------------------------------------------------------------------------

    def plan(self, num_workers: int) -> _Plan:
        """Shards, epoch length and quotas of every unit for `num_workers` DataLoader workers per rank."""
        units = self.world_size * max(num_workers, 1)
        if units in self._plans:
            return self._plans[units]
        layout = f"{self.world_size} process(es) x {max(num_workers, 1)} DataLoader worker(s)"
        per_unit: dict[str, list[list[tuple[int, str, int]]]] = {}
        ratios = []
        for family, weight in zip(self.families, self.weights, strict=True):
            shards = self.shards[family]
            if len(shards) < units:
                raise CorpusError(
                    f"family {family!r} has {len(shards)} shard(s) but the stream runs on {units} units "
                    f"({layout}); each unit reads whole shards and needs one of every family: rewrite the "
                    f"corpus with `pdefm data reshard CORPUS --shards {units}` (or a multiple of {units}), "
                    f"or use fewer processes or workers"
                )
            if len(shards) % units and self.rank == 0 and torch.utils.data.get_worker_info() is None:
                logger.warning(
                    "family %r: %d shards over %d units (%s) leave the units unbalanced; a multiple of %d "
                    "reads each row once per epoch",
                    family,
                    len(shards),
                    units,
                    layout,
                    units,
                )
            per_unit[family] = [shards[u::units] for u in range(units)]
            for u, own in enumerate(per_unit[family]):
                rows = sum(r for _, _, r in own)
                if rows == 0:
                    raise CorpusError(
                        f"family {family!r}: unit {u} of {units} ({layout}) got only empty shards"
                    )
                ratios.append(rows * self.pairs[family] / weight)
        if self.requested_length is not None:
            length = self.requested_length
        elif self.stopping_strategy == "all_exhausted":
            length = math.ceil(max(ratios) - 1e-9)
        else:
            length = max(1, math.floor(min(ratios) + 1e-9))
        plan = _Plan(units, per_unit, length, _largest_remainder(length, self.weights))
        self._plans[units] = plan
        return plan

    def examples_per_unit(self, num_workers: int) -> int:
        """Examples each unit yields per epoch (a rank yields num_workers times as many)."""
        return self.plan(num_workers).epoch_length

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch a fresh iteration starts at (same order on every rank for the same epoch)."""
        self.epoch = epoch

    # ---- state --------------------------------------------------------------------------------------

    def _layout(self) -> dict:
        worker, num_workers = _unit()
        return {
            "rank": self.rank,
            "world_size": self.world_size,
            "worker": worker,
            "num_workers": num_workers,
        }

    def state_dict(self) -> dict:
        """This unit's position: the live one while iterating, else the loaded or the starting one."""
        if self._live is not None:
            return self._live.snapshot()
        if self._resume is not None:
            return self._resume
        return _UnitStream(self, self.epoch).snapshot()

    def load_state_dict(self, state: dict) -> None:
        """Continues from `state` on the next iteration; refuses a state saved by another unit layout."""
        layout = self._layout()
        saved = state.get("layout", {})
        if state.get("version") != STATE_VERSION or saved != layout:
            raise StreamResumeError(
                f"stream state saved by unit {saved} cannot continue on unit {layout}: "
                + _layout_advice(saved.get("world_size"), saved.get("num_workers"))
            )
        quotas = dict(zip(self.families, self.plan(layout["num_workers"]).quotas, strict=True))
        if state.get("quotas") != quotas:
            raise StreamResumeError(
                f"stream state was saved with examples per family and epoch {state.get('quotas')}, this stream "
                f"has {quotas}: resume with the same corpora, families, weights and epoch settings, or start "
                f"without the saved data state"
            )
        self._resume = state
        self._live = None

    # ---- iteration ----------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict]:
        state, self._resume = self._resume, None
        unit = _UnitStream(self, self.epoch, state)
        self._live = unit
        while True:
            yield from unit.epoch()
            if not self.infinite:
                return
            unit = _UnitStream(self, unit.epoch_index + 1)
            self._live = unit


class _UnitStream:
    """One unit's epoch: the family schedule, per-family pools and read positions, and their snapshot."""

    def __init__(self, stream: MixtureStream, epoch: int, state: dict | None = None):
        self.stream = stream
        layout = stream._layout()
        self.layout = layout
        self.unit = layout["rank"] * layout["num_workers"] + layout["worker"]
        self.plan = stream.plan(layout["num_workers"])
        self.readers: dict[str, tuple[tuple[int, str], _ShardReader]] = {}
        self.orders: dict[str, tuple[int, list[tuple[int, int]]]] = {}
        self.mapped: dict[str, tuple] = {}
        if state is None:
            rng = np.random.default_rng([stream.seed, epoch, self.unit, 0x5EED])
            state = {
                "version": STATE_VERSION,
                "layout": layout,
                "epoch": epoch,
                "emitted": 0,
                "rng": rng.bit_generator.state,
                "credit": [0.0] * len(stream.families),
                "remaining": list(self.plan.quotas),
                "quotas": dict(zip(stream.families, self.plan.quotas, strict=True)),
                "families": {f: {"pass": 0, "cursor": 0, "order": [], "pool": {}} for f in stream.families},
            }
        self.epoch_index = state["epoch"]
        self.emitted = state["emitted"]
        self.rng = np.random.Generator(np.random.PCG64())
        self.rng.bit_generator.state = state["rng"]
        self.credit = list(state["credit"])
        self.remaining = list(state["remaining"])
        self.families = {
            f: {"pass": s["pass"], "cursor": s["cursor"], "order": list(s["order"]), "pool": dict(s["pool"])}
            for f, s in state["families"].items()
        }

    def snapshot(self) -> dict:
        """The primitive state (fresh containers, immutable leaves shared with the live pools)."""
        return {
            "version": STATE_VERSION,
            "layout": dict(self.layout),
            "epoch": self.epoch_index,
            "emitted": self.emitted,
            "rng": self.rng.bit_generator.state,
            "credit": list(self.credit),
            "remaining": list(self.remaining),
            "quotas": dict(zip(self.stream.families, self.plan.quotas, strict=True)),
            "families": {
                f: {
                    "pass": s["pass"],
                    "cursor": s["cursor"],
                    "order": list(s["order"]),
                    "pool": {k: dict(v) for k, v in s["pool"].items()},
                }
                for f, s in self.families.items()
            },
        }

    # ---- reading ------------------------------------------------------------------------------------

    def _order(self, family: str, passes: int) -> list[tuple[int, int]]:
        """(shard index in this unit's list, row) in the read order of pass `passes` of this epoch: the
        unit's shards shuffled, and the rows of each shard shuffled."""
        cached = self.orders.get(family)
        if cached is None or cached[0] != passes:
            own = self.plan.shards[family][self.unit]
            seed = [self.stream.seed, self.epoch_index, zlib.crc32(family.encode()), self.unit, passes]
            rng = np.random.default_rng(seed)
            order = []
            for s in rng.permutation(len(own)):
                order += [(int(s), int(r)) for r in rng.permutation(own[s][2])]
            self.orders[family] = cached = (passes, order)
        return cached[1]

    def _read(self, family: str, shard: int, row: int) -> dict:
        source_index, name, _ = self.plan.shards[family][self.unit][shard]
        key = (source_index, name)
        current = self.readers.get(family)
        if current is None or current[0] != key:
            if current is not None:
                current[1].close()
            source = self.stream.sources[source_index]
            expected = source.stats["families"][family]["shards"][name]
            path = source.shard_path(family, name, self.stream.cache_dir)
            self.readers[family] = (key, _ShardReader(path, expected))
        return self.readers[family][1].row(row)

    def _admit(self, family: str) -> int:
        """Reads the family's next row into its pool; returns its number of pairs."""
        state = self.families[family]
        order = self._order(family, state["pass"])
        shard, row_index = order[state["cursor"]]
        row = self._read(family, shard, row_index)
        key = f"{state['pass']}:{row['id']}"
        state["cursor"] += 1
        if state["cursor"] == len(order):
            state["pass"], state["cursor"] = state["pass"] + 1, 0
        n_pairs = len(self._pairs(row))
        k = self.stream.pairs_per_trajectory
        if k is None:
            perm = self.rng.permutation(n_pairs)
        else:
            perm = self.rng.choice(n_pairs, size=k, replace=k > n_pairs)
        state["pool"][key] = {"row": row, "perm": [int(p) for p in perm], "pos": 0}
        state["order"].append(key)
        return len(perm)

    def _pairs(self, row: dict) -> list[tuple[int, int, float]]:
        s = self.stream
        return all2all_pairs(int(row["shape"][0]), s.stride, s.max_lead, s.span, is_steady(row["pde"]))

    def _resident(self, key: str, row: dict) -> dict:
        """A pooled row decoded: its raw `u`, mask, conditioning, pairs, and its snapshots mapped so far."""
        if key not in self.mapped:
            s = self.stream
            source = f"{row['pde']} row {row['id']!r}"
            cond = None
            if s.pde_vocabulary is not None:
                if row["pde"] not in s.pde_vocabulary:
                    raise CorpusError(
                        f"{source}: pde {row['pde']!r} not in pde_vocabulary {s.pde_vocabulary}"
                    )
                params = json.loads(row["params"])
                cond = (s.pde_vocabulary.index(row["pde"]), coefficient_vector(row["pde"], params))
            self.mapped[key] = {
                "u": decode_u(row["u"], row["shape"], source),
                "mask": s.channel_map.plan(row["fields"], source)[1].copy(),
                "cond": cond,
                "pairs": self._pairs(row),
                "source": source,
                "snapshots": {},
            }
        return self.mapped[key]

    def _snapshot(self, resident: dict, row: dict, t: int) -> np.ndarray:
        """Snapshot `t` in the model's channel layout, normalised (mapped once, only when a pair uses it)."""
        if t not in resident["snapshots"]:
            s = self.stream
            mapped, _ = s.channel_map(
                resident["u"][t : t + 1], row["fields"], s.normalizer, resident["source"]
            )
            resident["snapshots"][t] = mapped[0]
        return resident["snapshots"][t]

    def _draw(self, index: int) -> dict:
        """The next example of family `index`: a pair drawn uniformly over the family's pool."""
        family = self.stream.families[index]
        state = self.families[family]
        pool = state["pool"]
        available = sum(len(e["perm"]) - e["pos"] for e in pool.values())
        while len(pool) < self.stream.shuffle_buffer and available < self.remaining[index]:
            available += self._admit(family)
        pick = int(self.rng.integers(available))
        for key in state["order"]:
            entry = pool[key]
            left = len(entry["perm"]) - entry["pos"]
            if pick < left:
                break
            pick -= left
        row = entry["row"]
        resident = self._resident(key, row)
        i, j, lead = resident["pairs"][entry["perm"][entry["pos"]]]
        both = np.stack([self._snapshot(resident, row, i), self._snapshot(resident, row, j)])
        if entry["pos"] + 1 == len(entry["perm"]):
            del pool[key]
            state["order"].remove(key)
            self.mapped.pop(key, None)
        else:
            pool[key] = {**entry, "pos": entry["pos"] + 1}
        example = make_example(both, resident["mask"], 0, 1, lead, resident["cond"])
        example["family"] = family
        if self.stream.return_ids:
            example["id"] = row["id"]
        return example

    def epoch(self) -> Iterator[dict]:
        """The rest of this epoch: each example's family by credit (weight per step, -1 per pick) plus a
        random tie-break in [0, 1), among the families with quota left."""
        weights = self.stream.weights
        try:
            while self.emitted < self.plan.epoch_length:
                jitter = self.rng.random(len(weights))
                scores = [
                    c + j if r > 0 else -math.inf
                    for c, j, r in zip(self.credit, jitter, self.remaining, strict=True)
                ]
                index = int(np.argmax(scores))
                example = self._draw(index)
                self.credit = [c + w for c, w in zip(self.credit, weights, strict=True)]
                self.credit[index] -= 1.0
                self.remaining[index] -= 1
                self.emitted += 1
                yield example
        finally:
            for _, reader in self.readers.values():
                reader.close()
            self.readers.clear()


# ---- loader -------------------------------------------------------------------------------------------


def _layout_advice(world_size, num_workers) -> str:
    return (
        f"resume with the layout it was saved with ({world_size} process(es) x {num_workers} DataLoader "
        f"worker(s)) to continue exactly, or drop the saved data state and start the stream at the next "
        f"epoch (stream.set_epoch(saved epoch + 1)); continuing on another layout would repeat or skip examples"
    )


def check_resume(state: dict, world_size: int, num_workers: int) -> dict:
    """Checks a saved `make_loader` state against this run's layout; returns its layout, or raises
    StreamResumeError saying what to do when the world size or worker count changed."""
    saved = state.get("pdefm_stream") if isinstance(state, dict) else None
    if saved is None:
        raise StreamResumeError(
            "not a pdefm stream state (no 'pdefm_stream' entry); save loader.state_dict()"
        )
    if (saved["world_size"], saved["num_workers"]) != (world_size, num_workers):
        raise StreamResumeError(
            f"the checkpoint's data stream ran on {saved['world_size']} process(es) x {saved['num_workers']} "
            f"DataLoader worker(s), this run on {world_size} x {num_workers}: "
            + _layout_advice(saved["world_size"], saved["num_workers"])
        )
    return saved


def _worker_message(exc: Exception) -> str:
    """The original one-line message of an error re-raised from a DataLoader worker."""
    text = str(exc)
    if not text.startswith("Caught "):
        return text
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    return last.split(f"{type(exc).__name__}: ", 1)[-1]


class _Batches:
    """The loader's iterator, re-raising a worker's CorpusError or StreamResumeError with its own one-line
    message (naming the shard, or the saved and current settings)."""

    def __init__(self, iterator):
        self.iterator = iterator

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return next(self.iterator)
        except (CorpusError, StreamResumeError) as exc:
            raise type(exc)(_worker_message(exc)) from None


class StreamLoader(StatefulDataLoader):
    """A StatefulDataLoader over a MixtureStream whose `state_dict()` records the unit layout and whose
    `load_state_dict()` refuses another one (StreamResumeError); build it with `make_loader`."""

    def __init__(self, stream: MixtureStream, batch_size: int, num_workers: int, **kwargs):
        stream.plan(num_workers)  # a layout the corpus cannot serve fails here, in the main process
        super().__init__(stream, batch_size=batch_size, num_workers=num_workers, **kwargs)
        self.layout = {
            "version": STATE_VERSION,
            "world_size": stream.world_size,
            "num_workers": num_workers,
            "rank": stream.rank,
        }

    def state_dict(self) -> dict:
        return {**super().state_dict(), "pdefm_stream": dict(self.layout)}

    def load_state_dict(self, state: dict) -> None:
        check_resume(state, self.layout["world_size"], self.layout["num_workers"])
        super().load_state_dict({k: v for k, v in state.items() if k != "pdefm_stream"})

    def __iter__(self):
        try:  # workers restore their state while the iterator starts
            return _Batches(super().__iter__())
        except (CorpusError, StreamResumeError) as exc:
            raise type(exc)(_worker_message(exc)) from None


def make_loader(
    stream: MixtureStream,
    batch_size: int,
    num_workers: int,
    drop_last: bool = True,
    pin_memory: bool = False,
    snapshot_every: int = 1,
    **kwargs,
) -> StreamLoader:
    """The loader for `stream`: `batch_size` examples per batch from each of `num_workers` workers in turn.
    `snapshot_every` batches between worker state snapshots: 1 (default) makes every step resumable
    without replay; a larger value is cheaper but replays the batches since the last snapshot on resume.
    Extra keyword arguments go to torchdata's StatefulDataLoader."""
    return StreamLoader(
        stream,
        batch_size,
        num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        snapshot_every_n_steps=snapshot_every,
        **kwargs,
    )
