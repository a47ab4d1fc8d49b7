"""Sharded parquet corpora of trajectories: generate (resumable, deterministic, in parallel), write, read
back, verify, reshard.

Layout of a corpus folder (also a Hub dataset repo as is):

- ``data/<family>/train-<k>-of-<n>.parquet``: one row group per trajectory, so a stream can read any
  row without touching the others (and resume at a row). Shards are sized by bytes (``shard_mb``).
- ``data/<family>/train-<k>-of-<n>.stats.json``: written with its shard: the shard's rows, bytes and
  sha256 plus its partial statistics, so the corpus statistics are merged without re-reading the data.
- ``stats.json``: per-field normalisation statistics, counts, and the manifest: for every shard its
  ``rows``, ``bytes`` and ``sha256``. Readers check presence, size and row count on open;
  ``verify_corpus`` checks the hashes.
- ``README.md`` (dataset card whose YAML lists one config per family) and ``generation.json`` (the
  settings, so a rerun resumes only with the same ones).

A row stores ``u`` as raw little-endian float32 bytes plus its ``shape``: decoding is one
``np.frombuffer``. ``params`` is a JSON string because each family has its own coefficients and
interleaved streams need one schema. ``checksum`` is the sha256 of the row's content, checked whenever
the row is decoded, so a flipped byte is caught by the reader that meets it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Features, List, Value
from tqdm.auto import tqdm

from data_pipelines.atomic import write_text_atomic
from data_pipelines.normalization import RunningMoments
from data_pipelines.trajectory import Trajectory

FEATURES = Features(
    {
        "id": Value("string"),
        "pde": Value("string"),
        "fields": List(Value("string")),
        "shape": List(Value("int32")),
        "u": Value("binary"),
        "t": List(Value("float32")),
        "params": Value("string"),
        "bc": Value("string"),
        "domain": List(Value("float32")),
        "checksum": Value("string"),
    }
)
SCHEMA = FEATURES.arrow_schema  # carries the `huggingface` metadata, so `load_dataset` keeps the features
DATA_DIR = "data"
SHARD_GLOB = "*.parquet"
SIDECAR_SUFFIX = ".stats.json"
DEFAULT_SHARD_MB = 256.0
MIB = 1 << 20


class CorpusError(ValueError):
    """Bad or inconsistent corpus input; the message names the file, the field and expected vs got."""


def shard_seed(seed: int, family: str, shard: int) -> int:
    """Seed of shard `shard` of `family`: a function of (seed, family, shard) only, so shards are
    reproducible one by one and a resumed or parallel run generates exactly what one process would."""
    import zlib

    return int(np.random.SeedSequence([seed, zlib.crc32(family.encode()), shard]).generate_state(1)[0])


def shard_name(shard: int, n_shards: int) -> str:
    return f"train-{shard:05d}-of-{n_shards:05d}.parquet"


def sidecar_path(shard: Path) -> Path:
    """The per-shard statistics file written beside `shard`."""
    return shard.with_name(shard.name[: -len(".parquet")] + SIDECAR_SUFFIX)


def row_checksum(row: dict) -> str:
    """sha256 of a row's content (every column but `checksum`), in a canonical byte form."""
    h = hashlib.sha256(row["u"])
    meta = [
        row["id"],
        row["pde"],
        list(row["fields"]),
        [int(s) for s in row["shape"]],
        row["params"],
        row["bc"],
    ]
    h.update(json.dumps(meta).encode())
    h.update(np.asarray(row["t"], dtype="<f4").tobytes())
    h.update(np.asarray(row["domain"], dtype="<f4").tobytes())
    return h.hexdigest()


def encode_row(traj: Trajectory, row_id: str) -> dict:
    u = np.ascontiguousarray(traj.u, dtype="<f4")
    row = {
        "id": row_id,
        "pde": traj.pde,
        "fields": list(traj.fields),
        "shape": list(u.shape),
        "u": u.tobytes(),
        "t": np.asarray(traj.t, dtype=np.float32).tolist(),
        "params": json.dumps(traj.params, sort_keys=True),
        "bc": traj.bc,
        "domain": list(traj.domain),
    }
    row["checksum"] = row_checksum(row)
    return row


def decode_u(buffer, shape: Sequence[int], source: str) -> np.ndarray:
    """The float32 array of a row's `u` bytes (read-only view), checked against its `shape`."""
    if len(shape) != 4:
        raise CorpusError(f"{source}: field 'shape' must have 4 entries [T, C, H, W], got {list(shape)}")
    expected = 4 * math.prod(shape)
    if len(buffer) != expected:
        raise CorpusError(
            f"{source}: field 'u' holds {len(buffer)} bytes, expected {expected} for float32 shape {list(shape)}"
        )
    return np.frombuffer(buffer, dtype="<f4").reshape(shape)


def check_row(row: dict, source: str) -> None:
    """Raises CorpusError naming `source` and the row when the row's content does not match its checksum."""
    if row.get("checksum") != row_checksum(row):
        raise CorpusError(
            f"{source} row {row.get('id')!r}: content does not match its checksum (the shard is altered or "
            f"corrupt; `pdefm data verify` checks the whole corpus)"
        )


def decode_row(row: dict, source: str) -> Trajectory:
    """A validated Trajectory from one corpus row (as a python dict), its checksum checked."""
    check_row(row, source)
    where = f"{source} row {row.get('id')!r}"
    traj = Trajectory(
        u=decode_u(row["u"], row["shape"], where),
        t=row["t"],
        fields=row["fields"],
        pde=row["pde"],
        params=json.loads(row["params"]),
        bc=row["bc"],
        domain=row["domain"],
    )
    return traj.validate(where)


# ---- writing shards -----------------------------------------------------------------------------------


class _HashingSink(io.RawIOBase):
    """A write-only file that hashes and counts what the parquet writer writes (no read-back)."""

    def __init__(self, raw):
        super().__init__()
        self.raw, self.sha, self.size = raw, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def tell(self) -> int:
        return self.size


class _ShardStatistics:
    """Partial statistics of one shard, mergeable without the data (moments with m2, params values)."""

    def __init__(self):
        self.moments: dict[str, RunningMoments] = {}
        self.meta: dict = {}
        self.params: dict[str, list[float]] = {}

    def add(self, row: dict) -> None:
        u = decode_u(row["u"], row["shape"], str(row["id"]))
        for c, name in enumerate(row["fields"]):
            self.moments.setdefault(name, RunningMoments()).update(u[:, c])
        self.meta = {
            "fields": list(row["fields"]),
            "shape": [int(s) for s in row["shape"]],
            "t": [float(x) for x in row["t"]],
            "bc": row["bc"],
            "domain": [float(x) for x in row["domain"]],
        }
        for name, value in json.loads(row["params"]).items():
            self.params.setdefault(name, []).append(float(value))

    def as_dict(self) -> dict:
        moments = {
            k: {"count": m.count, "mean": m.mean, "m2": m.m2, "min": m.minimum, "max": m.maximum}
            for k, m in sorted(self.moments.items())
        }
        return {"moments": moments, "params": self.params, **self.meta}


class ShardWriter:
    """Writes one shard row by row (one row group per row) to a unique temporary name beside `path`, then,
    on a clean exit, writes its sidecar and renames it into place: a shard file is complete or absent, and
    two processes writing into one folder never share a temporary file."""

    def __init__(self, path: Path, skipped: int = 0):
        self.path, self.skipped = Path(path), skipped
        self.rows, self.stats = 0, _ShardStatistics()

    def __enter__(self) -> ShardWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        self.raw = os.fdopen(fd, "wb")
        self.sink = _HashingSink(self.raw)
        self.writer = pq.ParquetWriter(
            self.sink, SCHEMA, compression="none", use_dictionary=False, write_statistics=False
        )
        return self

    def add(self, row: dict) -> None:
        self.writer.write_table(pa.Table.from_pylist([row], schema=SCHEMA))
        self.stats.add(row)
        self.rows += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.writer.close()
            self.raw.flush()
            os.fsync(self.raw.fileno())
            self.raw.close()
            if exc_type is None:
                info = {"rows": self.rows, "bytes": self.sink.size, "sha256": self.sink.sha.hexdigest()}
                self.info = {**info, "skipped": self.skipped, **self.stats.as_dict()}
                write_text_atomic(sidecar_path(self.path), json.dumps(self.info))
                os.replace(self.tmp, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp)


def write_shard(path: Path, rows: Iterable[dict], skipped: int = 0) -> dict:
    """Writes `rows` as the shard `path` (atomically, with its sidecar); returns the sidecar dict."""
    with ShardWriter(path, skipped) as writer:
        for row in rows:
            writer.add(row)
    return writer.info


def check_trajectories(
    trajectories: Iterable[Trajectory], source: str, on_invalid: str
) -> tuple[list[Trajectory], int]:
    """Validates each trajectory; `on_invalid="error"` raises, `"skip"` drops and counts the bad ones."""
    if on_invalid not in ("error", "skip"):
        raise ValueError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")
    kept, skipped = [], 0
    for k, traj in enumerate(trajectories):
        try:
            kept.append(traj.validate(f"{source} trajectory {k}"))
        except ValueError:
            if on_invalid == "error":
                raise
            skipped += 1
    return kept, skipped


def rows_per_shard(row_bytes: float, shard_mb: float) -> int:
    """How many rows of `row_bytes` fill a shard of `shard_mb` MiB (at least one)."""
    return max(1, int(shard_mb * MIB // max(row_bytes, 1)))


# ---- generation ---------------------------------------------------------------------------------------


def _has_shards(out: Path) -> bool:
    return (out / DATA_DIR).is_dir() and any((out / DATA_DIR).rglob(SHARD_GLOB))


def _settings_guard(out: Path, settings: dict) -> None:
    """Creates generation.json; a rerun with other settings would mix two corpora: refused, unless the
    folder holds no finished shard yet (a failed run never blocks the corrected rerun)."""
    path = out / "generation.json"
    if path.exists():
        previous = json.loads(path.read_text())
        if previous.get("settings") == settings:
            return
        if _has_shards(out):
            raise CorpusError(
                f"{path}: this folder holds a corpus made with settings {previous.get('settings')}, "
                f"not {settings}; use another --out (nothing was changed)"
            )
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps({"settings": settings, "skipped": {}}, indent=1))


def _existing_shard_ok(path: Path) -> bool:
    """Whether a finished shard can be kept: its footer reads and its sidecar matches its size."""
    try:
        pq.read_metadata(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise CorpusError(
            f"{path}: existing shard is truncated or corrupt ({exc}); move it away to regenerate it"
        ) from exc
    side = sidecar_path(path)
    return side.exists() and json.loads(side.read_text()).get("bytes") == path.stat().st_size


def validate_generation(
    families: Sequence,
    trajectories: int,
    resolution: int,
    snapshots: int,
    shard_size: int | None,
    shard_mb: float,
) -> None:
    """Every setting checked before anything is written, so bad settings leave no folder behind."""
    if not families:
        raise CorpusError("empty family selection: no PDE family to generate")
    names = [f.name for f in families]
    if len(set(names)) != len(names):
        raise CorpusError(f"families {names} name a family twice")
    checks = [
        ("--trajectories", trajectories, trajectories >= 1, ">= 1"),
        ("--resolution", resolution, resolution >= 8, ">= 8"),
        ("--snapshots", snapshots, snapshots >= 2, ">= 2"),
        ("--shard-size", shard_size, shard_size is None or shard_size >= 1, ">= 1"),
        ("--shard-mb", shard_mb, shard_mb > 0, "> 0"),
    ]
    for option, value, ok, expected in checks:
        if not ok:
            raise CorpusError(f"{option} must be {expected}, got {value}")


def generation_layout(
    families: Sequence,
    trajectories: int,
    resolution: int,
    snapshots: int,
    shard_size: int | None,
    shard_mb: float,
) -> dict[str, int]:
    """Rows per shard of each family: `shard_size`, or as many rows as fill `shard_mb` MiB."""
    layout = {}
    for fam in families:
        steps = 2 if fam.steady else snapshots
        row_bytes = 4 * steps * len(fam.fields) * resolution * resolution
        layout[fam.name] = shard_size or rows_per_shard(row_bytes, shard_mb)
    return layout


def generate_corpus(
    out: str | Path,
    families: Sequence,
    trajectories: int,
    resolution: int = 64,
    snapshots: int = 21,
    seed: int = 0,
    shard_size: int | None = None,
    device: str = "cpu",
    on_invalid: str = "error",
    progress: bool = True,
    shard_mb: float = DEFAULT_SHARD_MB,
    process_index: int = 0,
    num_processes: int = 1,
    threads: int = 1,
) -> dict | None:
    """Generates `trajectories` rows per family into `out`; resumes, keeping every finished shard.

    `families` are family objects (see `solvers.registry.resolve_families`). Shards hold `shard_size`
    rows, or by default as many as fill `shard_mb` MiB. With `num_processes` > 1, process
    `process_index` generates every `num_processes`-th (family, shard) job: shards depend only on
    (seed, family, shard), so N processes write the same corpus as one. The process that finds every
    shard finished merges the per-shard statistics into stats.json and returns the stats dict; the
    others return None. `threads` is the number of torch threads solving on CPU: solver floats depend on it,
    so it is part of the settings (parallelism comes from processes).
    """
    out = Path(out)
    validate_generation(families, trajectories, resolution, snapshots, shard_size, shard_mb)
    if threads < 1:
        raise CorpusError(f"--threads must be >= 1, got {threads}")
    if on_invalid not in ("error", "skip"):
        raise ValueError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")
    if not 0 <= process_index < num_processes:
        raise CorpusError(f"process index must be in [0, {num_processes}), got {process_index}")
    layout = generation_layout(families, trajectories, resolution, snapshots, shard_size, shard_mb)
    settings = {
        "families": [f.name for f in families],
        "trajectories": trajectories,
        "resolution": resolution,
        "snapshots": snapshots,
        "seed": seed,
        "rows_per_shard": layout,
        "threads": threads,
    }
    _settings_guard(out, settings)
    jobs = []
    for fam in families:
        n_shards = math.ceil(trajectories / layout[fam.name])
        jobs += [(fam, k, n_shards) for k in range(n_shards)]
    mine = jobs[process_index::num_processes]
    part = f" part {process_index + 1}/{num_processes}" if num_processes > 1 else ""
    bar = tqdm(mine, desc=f"generate{part} -> {out}", unit="shard", disable=not progress)
    with _torch_threads(threads):
        _generate_jobs(bar, out, layout, trajectories, resolution, snapshots, seed, device, on_invalid)
    done = all(
        (p := out / DATA_DIR / fam.name / shard_name(k, n)).exists() and sidecar_path(p).exists()
        for fam, k, n in jobs
    )
    if not done:
        return None
    from filelock import FileLock

    with FileLock(str(out / ".finalize.lock")):
        return finalize_corpus(out, registry_families=families, progress=progress)


@contextlib.contextmanager
def _torch_threads(threads: int):
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _generate_jobs(bar, out, layout, trajectories, resolution, snapshots, seed, device, on_invalid) -> None:
    for family, k, n_shards in bar:
        path = out / DATA_DIR / family.name / shard_name(k, n_shards)
        if path.exists() and _existing_shard_ok(path):
            continue
        bar.set_postfix_str(f"{family.name} {k + 1}/{n_shards}")
        size = layout[family.name]
        batch = min(size, trajectories - k * size)
        solved = family.generate(
            batch, resolution, snapshots, shard_seed(seed, family.name, k), device=device
        )
        kept, skipped = check_trajectories(solved.to_trajectories(family), str(path), on_invalid)
        rows = (encode_row(tr, f"{family.name}/{k:05d}/{i:04d}") for i, tr in enumerate(kept))
        write_shard(path, rows, skipped)


def write_corpus(
    out: str | Path,
    trajectories: Sequence[Trajectory],
    shard_size: int | None = None,
    on_invalid: str = "error",
    source: str = "input",
    progress: bool = True,
    shard_mb: float = DEFAULT_SHARD_MB,
) -> dict:
    """Writes given trajectories (e.g. converted user files) as a corpus, one family per `pde` id, in
    shards of `shard_size` rows or else of about `shard_mb` MiB.

    Refuses a folder that already holds shards, so no earlier corpus is overwritten.
    """
    out = Path(out)
    if _has_shards(out):
        raise CorpusError(f"{out}: already holds a corpus; choose an empty --out (nothing was changed)")
    kept, skipped = check_trajectories(trajectories, source, on_invalid)
    if not kept:
        raise CorpusError(f"{source}: empty selection, no valid trajectory to write ({skipped} skipped)")
    by_pde: dict[str, list[Trajectory]] = {}
    for traj in kept:
        by_pde.setdefault(traj.pde, []).append(traj)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"source": source, "shard_size": shard_size, "shard_mb": shard_mb}
    write_text_atomic(
        out / "generation.json", json.dumps({"settings": settings, "skipped": {source: skipped}})
    )
    for pde, trajs in tqdm(by_pde.items(), desc=f"write -> {out}", unit="family", disable=not progress):
        size = shard_size or rows_per_shard(np.mean([t.u.nbytes for t in trajs]), shard_mb)
        n_shards = math.ceil(len(trajs) / size)
        for k in range(n_shards):
            chunk = trajs[k * size : (k + 1) * size]
            rows = (encode_row(tr, f"{pde}/{k:05d}/{i:04d}") for i, tr in enumerate(chunk))
            write_shard(out / DATA_DIR / pde / shard_name(k, n_shards), rows)
    return finalize_corpus(out, progress=progress)


# ---- reading ------------------------------------------------------------------------------------------


def corpus_shards(root: str | Path, families: Sequence[str] | None = None) -> dict[str, list[Path]]:
    """Shard files per family of a local corpus (as found on disk), optionally restricted to `families`."""
    root = Path(root)
    data = root / DATA_DIR
    if not data.is_dir():
        raise CorpusError(f"{root}: not a pdefm corpus (no '{DATA_DIR}/' folder)")
    found = {
        d.name: sorted(d.glob(SHARD_GLOB))
        for d in sorted(data.iterdir())
        if d.is_dir() and not d.name.startswith(".")
    }
    found = {k: v for k, v in found.items() if v}
    if families is not None:
        missing = [f for f in families if f not in found]
        if missing:
            raise CorpusError(f"{root}: families {missing} not in the corpus; it holds {sorted(found)}")
        found = {f: found[f] for f in families}
    if not found:
        raise CorpusError(f"{root}: empty selection, no shard found (families={families})")
    return found


def read_stats(root: Path) -> dict:
    """stats.json of a local corpus folder."""
    path = Path(root) / "stats.json"
    if not path.exists():
        raise CorpusError(f"{root}: not a finished pdefm corpus, stats.json missing")
    return json.loads(path.read_text())


def manifest(stats: dict, source: str) -> dict[str, dict[str, dict]]:
    """{family: {shard name: {"rows", "bytes", "sha256"}}} from stats.json."""
    out = {}
    for family, info in stats["families"].items():
        shards = info.get("shards", {})
        if not all(isinstance(v, dict) and {"rows", "bytes", "sha256"} <= set(v) for v in shards.values()):
            raise CorpusError(
                f"{source}/stats.json: family {family!r} has no shard manifest (rows, bytes, sha256): the "
                f"corpus was written by an older pdefm; rewrite it with `pdefm data reshard {source} --shard-mb "
                f"{DEFAULT_SHARD_MB:g}`"
            )
        out[family] = shards
    return out


def check_files(
    root: str | Path,
    stats: dict | None = None,
    families: Sequence[str] | None = None,
    sizes: dict[str, int] | None = None,
) -> dict[str, list[Path]]:
    """Shard paths per family after checking them against the manifest: every listed shard present with
    its recorded size, no shard that the manifest does not list. `sizes` ({relative path: bytes}) replaces
    the file system for a Hub listing. Raises CorpusError naming the first bad shard."""
    root = Path(root)
    stats = read_stats(root) if stats is None else stats
    listed = manifest(stats, str(root))
    if families is not None:
        missing = [f for f in families if f not in listed]
        if missing:
            raise CorpusError(f"{root}: families {missing} not in the corpus; it holds {sorted(listed)}")
        listed = {f: listed[f] for f in families}
    if sizes is None:
        on_disk = {
            f"{DATA_DIR}/{p.parent.name}/{p.name}": p.stat().st_size
            for p in (root / DATA_DIR).glob(f"*/{SHARD_GLOB}")
            if not p.parent.name.startswith(".")
        }
    else:
        on_disk = dict(sizes)
    out: dict[str, list[Path]] = {}
    for family, shards in listed.items():
        for name, info in sorted(shards.items()):
            rel = f"{DATA_DIR}/{family}/{name}"
            if rel not in on_disk:
                raise CorpusError(f"{root}/{rel}: shard listed in stats.json is missing")
            if on_disk[rel] != info["bytes"]:
                raise CorpusError(
                    f"{root}/{rel}: shard has {on_disk[rel]} bytes, stats.json records {info['bytes']} "
                    f"(truncated or replaced)"
                )
        out[family] = [root / DATA_DIR / family / name for name in sorted(shards)]
    for rel in sorted(on_disk):
        family = rel.split("/")[1]
        if (families is None or family in families) and rel.split("/")[-1] not in listed.get(family, {}):
            raise CorpusError(f"{root}/{rel}: shard not listed in stats.json (an extra or foreign file)")
    return out


def check_footer(path: Path, metadata: pq.FileMetaData, expected: dict) -> None:
    """Row count and layout (one row group per row) of an opened shard against its manifest entry."""
    if metadata.num_rows != expected["rows"]:
        raise CorpusError(
            f"{path}: shard holds {metadata.num_rows} rows, stats.json records {expected['rows']}"
        )
    if metadata.num_row_groups != metadata.num_rows:
        raise CorpusError(
            f"{path}: {metadata.num_rows} rows in {metadata.num_row_groups} row groups, expected one row per "
            f"group (written by an older pdefm); rewrite it with `pdefm data reshard`"
        )


def read_shard(path: Path, limit: int | None = None, expected: dict | None = None) -> list[Trajectory]:
    """Trajectories of one shard file (the first `limit`), reading the file once; with its manifest entry
    `expected` also checks size, sha256 and row count. A bad file raises CorpusError naming it."""
    data = Path(path).read_bytes()
    if expected is not None:
        if len(data) != expected["bytes"]:
            raise CorpusError(f"{path}: shard has {len(data)} bytes, stats.json records {expected['bytes']}")
        if hashlib.sha256(data).hexdigest() != expected["sha256"]:
            raise CorpusError(
                f"{path}: shard content does not match the sha256 in stats.json (altered or corrupt)"
            )
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError) as exc:
        raise CorpusError(f"{path}: truncated or corrupt parquet shard ({exc})") from exc
    missing = [c for c in FEATURES if c not in table.column_names]
    if missing:
        raise CorpusError(
            f"{path}: columns {missing} missing; expected {list(FEATURES)}, got {table.column_names}"
        )
    if expected is not None and table.num_rows != expected["rows"]:
        raise CorpusError(f"{path}: shard holds {table.num_rows} rows, stats.json records {expected['rows']}")
    rows = table.slice(0, limit).to_pylist() if limit is not None else table.to_pylist()
    return [decode_row(row, str(path)) for row in rows]


def _local_root(path_or_hub_id: str | Path, families: Sequence[str] | None) -> Path:
    from data_pipelines.paths import local_or_hub

    path = local_or_hub(path_or_hub_id, "corpus")
    if isinstance(path, Path):
        return path
    from huggingface_hub import snapshot_download

    patterns = ["stats.json", "generation.json", "README.md"]
    patterns += (
        [f"{DATA_DIR}/{f}/{SHARD_GLOB}" for f in families] if families else [f"{DATA_DIR}/*/{SHARD_GLOB}"]
    )
    return Path(snapshot_download(str(path_or_hub_id), repo_type="dataset", allow_patterns=patterns))


def load_trajectories(
    path_or_hub_id: str | Path, families: Sequence[str] | None = None, limit: int | None = None
) -> list[Trajectory]:
    """Reads a corpus folder or Hub dataset id into Trajectories (at most `limit` per family).

    Refuses a corpus with a missing, extra, truncated or altered shard (every shard it reads is checked
    against the manifest's size, sha256 and row count; the others for presence and size)."""
    root = _local_root(path_or_hub_id, families)
    stats = read_stats(root)
    listed = manifest(stats, str(root))
    out: list[Trajectory] = []
    for family, paths in check_files(root, stats, families).items():
        got: list[Trajectory] = []
        for path in paths:
            remaining = None if limit is None else limit - len(got)
            if remaining is not None and remaining <= 0:
                break
            got += read_shard(path, remaining, listed[family][path.name])
        out += got
    if not out:
        raise CorpusError(f"{path_or_hub_id}: empty selection (families={families}, limit={limit})")
    return out


# ---- statistics, verification, resharding, push -------------------------------------------------------


def _shard_sidecar(path: Path) -> dict:
    """The shard's sidecar, recomputed from the shard (and rewritten) when absent or stale."""
    side = sidecar_path(path)
    size = path.stat().st_size
    if side.exists():
        info = json.loads(side.read_text())
        if info.get("bytes") == size:
            return info
    data = path.read_bytes()
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError) as exc:
        raise CorpusError(f"{path}: truncated or corrupt parquet shard ({exc})") from exc
    stats = _ShardStatistics()
    for row in table.to_pylist():
        check_row(row, str(path))
        stats.add(row)
    info = {"rows": table.num_rows, "bytes": size, "sha256": hashlib.sha256(data).hexdigest(), "skipped": 0}
    info.update(stats.as_dict())
    write_text_atomic(side, json.dumps(info))
    return info


def _merge_moments(into: dict[str, RunningMoments], part: dict) -> None:
    for name, s in part.items():
        if not s["count"]:
            continue
        acc = into.setdefault(name, RunningMoments())
        n = acc.count + s["count"]
        delta = s["mean"] - acc.mean
        acc.mean += delta * s["count"] / n
        acc.m2 += s["m2"] + delta * delta * acc.count * s["count"] / n
        acc.count = n
        acc.minimum = min(acc.minimum, s["min"])
        acc.maximum = max(acc.maximum, s["max"])


def _as_table(moments: dict[str, RunningMoments]) -> dict:
    return {k: m.as_dict() for k, m in sorted(moments.items())}


def finalize_corpus(
    root: str | Path, registry_families: Sequence | None = None, progress: bool = True
) -> dict:
    """Merges the per-shard sidecars into stats.json (statistics plus the shard manifest) and writes
    README.md; only a shard without a current sidecar is read."""
    from data_pipelines.card import write_card

    root = Path(root)
    shards = corpus_shards(root)
    overall: dict[str, RunningMoments] = {}
    per_family: dict[str, dict] = {}
    skipped: dict[str, int] = {}
    for family, paths in tqdm(shards.items(), desc="statistics", unit="family", disable=not progress):
        moments: dict[str, RunningMoments] = {}
        info = {"count": 0, "shards": {}, "fields": None, "shape": None, "params": {}}
        for path in paths:
            side = _shard_sidecar(path)
            info["shards"][path.name] = {k: side[k] for k in ("rows", "bytes", "sha256")}
            info["count"] += side["rows"]
            if side.get("skipped"):
                skipped[f"{family}/{path.name}"] = side["skipped"]
            if side["rows"]:
                info.update({k: side[k] for k in ("fields", "shape", "t", "bc", "domain")})
            _merge_moments(moments, side["moments"])
            _merge_moments(overall, side["moments"])
            for name, values in side["params"].items():
                info["params"].setdefault(name, []).extend(values)
        info["params"] = {
            k: {"min": min(v), "max": max(v), "mean": float(np.mean(v))} for k, v in info["params"].items()
        }
        info["field_stats"] = _as_table(moments)
        per_family[family] = info
    state_path = root / "generation.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    skipped.update({k: v for k, v in state.get("skipped", {}).items() if v})
    stats = {
        "fields": _as_table(overall),
        "families": per_family,
        "count": sum(f["count"] for f in per_family.values()),
        "skipped": skipped,
        "settings": state.get("settings", {}),
        "format": {"u": "raw little-endian float32 bytes, reshape to 'shape' = [T, C, H, W]"},
    }
    write_text_atomic(root / "stats.json", json.dumps(stats, indent=1))
    write_card(root, stats, registry_families)
    return stats


def verify_corpus(root: str | Path, progress: bool = False) -> tuple[list[str], int]:
    """Checks every shard against the manifest: presence, no extra shard, size, sha256 and row count
    (each shard read once). Returns (problems, one line each naming the shard; bytes hashed)."""
    root = Path(root)
    stats = read_stats(root)
    listed = manifest(stats, str(root))
    problems, hashed = [], 0
    on_disk = {p.parent.name + "/" + p.name for p in (root / DATA_DIR).glob(f"*/{SHARD_GLOB}")}
    expected = {f"{f}/{name}" for f, shards in listed.items() for name in shards}
    problems += [
        f"{root}/{DATA_DIR}/{rel}: shard not listed in stats.json" for rel in sorted(on_disk - expected)
    ]
    items = [(f, name, info) for f, shards in listed.items() for name, info in sorted(shards.items())]
    for family, name, info in tqdm(items, desc=f"verify {root}", unit="shard", disable=not progress):
        path = root / DATA_DIR / family / name
        if not path.exists():
            problems.append(f"{path}: shard listed in stats.json is missing")
            continue
        data = path.read_bytes()
        hashed += len(data)
        if len(data) != info["bytes"]:
            problems.append(f"{path}: shard has {len(data)} bytes, stats.json records {info['bytes']}")
        elif hashlib.sha256(data).hexdigest() != info["sha256"]:
            problems.append(f"{path}: sha256 differs from stats.json (altered or corrupt)")
        else:
            try:
                rows = pq.read_metadata(pa.BufferReader(data)).num_rows
            except (pa.ArrowInvalid, OSError) as exc:
                problems.append(f"{path}: unreadable parquet footer ({exc})")
                continue
            if rows != info["rows"]:
                problems.append(f"{path}: shard holds {rows} rows, stats.json records {info['rows']}")
    return problems, hashed


def require_intact(root: str | Path) -> None:
    """verify_corpus, raising CorpusError that names the first damaged shard and the count."""
    problems, _ = verify_corpus(root)
    if problems:
        more = (
            f" (and {len(problems) - 1} more problem(s); run `pdefm data verify {root}`)"
            if len(problems) > 1
            else ""
        )
        raise CorpusError(problems[0] + more)


def _rows_of(path: Path) -> Iterator[dict]:
    """Every row of a shard in order, one row group at a time (older multi-row groups too)."""
    try:
        shard = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise CorpusError(f"{path}: truncated or corrupt parquet shard ({exc})") from exc
    with shard:
        for group in range(shard.metadata.num_row_groups):
            for row in shard.read_row_group(group).to_pylist():
                if "checksum" in row:
                    check_row(row, str(path))
                else:  # written before rows carried a checksum
                    row["checksum"] = row_checksum(row)
                yield row


def _recover_reshard(data: Path) -> None:
    """Completes or undoes a reshard that was interrupted while swapping folders."""
    for old in data.glob(".*.old"):
        family = data / old.name[1 : -len(".old")]
        if family.exists():
            shutil.rmtree(old)
        else:
            os.replace(old, family)
    for tmp in data.glob(".*.reshard"):
        shutil.rmtree(tmp)


def reshard_corpus(
    root: str | Path, shards: int | None = None, shard_mb: float | None = None, progress: bool = True
) -> dict:
    """Rewrites every family of a corpus into `shards` shards, or shards of about `shard_mb` MiB, with
    the same rows in the same order (rows are checked against their checksums on the way); then merges
    the new statistics. Also upgrades a corpus written by an older pdefm (adds manifest and checksums)."""
    if (shards is None) == (shard_mb is None):
        raise CorpusError("give exactly one of --shards N or --shard-mb X")
    if (shards is not None and shards < 1) or (shard_mb is not None and shard_mb <= 0):
        raise CorpusError(f"--shards must be >= 1 and --shard-mb > 0, got {shards} and {shard_mb}")
    root = Path(root)
    data = root / DATA_DIR
    if data.is_dir():
        _recover_reshard(data)
    for family, paths in corpus_shards(root).items():
        rows = sum(pq.read_metadata(p).num_rows for p in paths)
        if rows == 0:
            continue
        if shards is not None:
            n_new = min(shards, rows)
        else:
            n_new = min(rows, max(1, math.ceil(sum(p.stat().st_size for p in paths) / (shard_mb * MIB))))
        bounds = [k * rows // n_new for k in range(n_new + 1)]
        staging = data / f".{family}.reshard"
        source = _chain_rows(paths)
        for k in tqdm(range(n_new), desc=f"reshard {family}", unit="shard", disable=not progress):
            with ShardWriter(staging / shard_name(k, n_new)) as writer:
                for _ in range(bounds[k + 1] - bounds[k]):
                    writer.add(next(source))
        old = data / f".{family}.old"
        os.replace(data / family, old)
        os.replace(staging, data / family)
        shutil.rmtree(old)
    # the shard layout no longer follows the generation settings: a `generate` rerun must not add shards
    state_path = root / "generation.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {"skipped": {}}
    layout = {"shards": shards} if shards is not None else {"shard_mb": shard_mb}
    state["settings"] = {**state.get("settings", {}), "resharded": layout}
    write_text_atomic(state_path, json.dumps(state, indent=1))
    return finalize_corpus(root, progress=progress)


def _chain_rows(paths: Sequence[Path]) -> Iterator[dict]:
    for path in paths:
        yield from _rows_of(path)


def push_corpus(root: str | Path, repo_id: str, private: bool = False) -> str:
    """Uploads a corpus folder as a Hub dataset repo (then `load_dataset(repo_id, streaming=True)` works),
    after checking every shard against the manifest (a damaged corpus is refused, naming the shard)."""
    from huggingface_hub import HfApi

    root = Path(root)
    corpus_shards(root)
    if not (root / "stats.json").exists():
        raise CorpusError(
            f"{root}: stats.json missing; finish the corpus (pdefm data generate) before pushing"
        )
    require_intact(root)
    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    info = api.upload_folder(
        folder_path=str(root),
        repo_id=repo_id,
        repo_type="dataset",
        ignore_patterns=["*.tmp", ".*", ".cache/**", f"*{SIDECAR_SUFFIX}"],
        commit_message="pdefm corpus",
    )
    return info.commit_url if hasattr(info, "commit_url") else str(info)
