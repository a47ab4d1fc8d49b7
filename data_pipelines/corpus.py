"""Sharded parquet corpora of trajectories: generate (resumable, deterministic), write, read back.

Layout of a corpus folder (also a Hub dataset repo as is):
``data/<family>/train-<k>-of-<n>.parquet``, ``stats.json`` (per-field normalisation statistics, counts,
shard sizes), ``README.md`` (dataset card whose YAML lists one config per family) and
``generation.json`` (the settings, so a rerun resumes only with the same ones).

A row stores ``u`` as raw little-endian float32 bytes plus its ``shape``: decoding is one
``np.frombuffer`` (the notes measured Array4D decoding as the dominant streaming cost). ``params`` is a
JSON string because each family has its own coefficients and interleaved streams need one schema.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset, Features, List, Value
from tqdm.auto import tqdm

from data_pipelines.atomic import write_text_atomic
from data_pipelines.normalization import FieldStatistics
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
    }
)
DATA_DIR = "data"
SHARD_GLOB = "*.parquet"


class CorpusError(ValueError):
    """Bad or inconsistent corpus input; the message names the file, the field and expected vs got."""


def shard_seed(seed: int, family: str, shard: int) -> int:
    """Seed of shard `shard` of `family`: a function of (seed, family, shard) only, so shards are
    reproducible one by one and a resumed run regenerates exactly what an uninterrupted one would."""
    return int(np.random.SeedSequence([seed, zlib.crc32(family.encode()), shard]).generate_state(1)[0])


def shard_name(shard: int, n_shards: int) -> str:
    return f"train-{shard:05d}-of-{n_shards:05d}.parquet"


def encode_row(traj: Trajectory, row_id: str) -> dict:
    u = np.ascontiguousarray(traj.u, dtype="<f4")
    return {
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


def decode_u(buffer: bytes, shape: Sequence[int], source: str) -> np.ndarray:
    """The float32 array of a row's `u` bytes (read-only view), checked against its `shape`."""
    if len(shape) != 4:
        raise CorpusError(f"{source}: field 'shape' must have 4 entries [T, C, H, W], got {list(shape)}")
    expected = 4 * math.prod(shape)
    if len(buffer) != expected:
        raise CorpusError(
            f"{source}: field 'u' holds {len(buffer)} bytes, expected {expected} for float32 shape {list(shape)}"
        )
    return np.frombuffer(buffer, dtype="<f4").reshape(shape)


def decode_row(row: dict, source: str) -> Trajectory:
    """A validated Trajectory from one corpus row (as a python dict)."""
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


def write_shard(path: Path, rows: list[dict]) -> None:
    """Writes rows through `datasets` to `<path>.tmp` and renames atomically: a shard file either is
    complete or does not exist, so an interrupted run never leaves a half shard behind."""
    tmp = path.with_name(path.name + ".tmp")
    quiet = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        Dataset.from_list(rows, features=FEATURES).to_parquet(str(tmp))
    finally:
        if quiet:
            datasets.enable_progress_bars()
    os.replace(tmp, path)


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


def _settings_guard(out: Path, settings: dict) -> dict:
    """Loads or creates generation.json; a rerun with other settings would mix two corpora: refuse."""
    path = out / "generation.json"
    if path.exists():
        previous = json.loads(path.read_text())
        if previous["settings"] != settings:
            raise CorpusError(
                f"{path}: this folder holds a corpus made with settings {previous['settings']}, "
                f"not {settings}; use another --out (nothing was changed)"
            )
        return previous
    state = {"settings": settings, "skipped": {}}
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(state, indent=1))
    return state


def _save_state(out: Path, state: dict) -> None:
    write_text_atomic(out / "generation.json", json.dumps(state, indent=1))


def _existing_shard_ok(path: Path) -> bool:
    try:
        pq.read_metadata(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise CorpusError(
            f"{path}: existing shard is truncated or corrupt ({exc}); move it away to regenerate it"
        ) from exc
    return True


def generate_corpus(
    out: str | Path,
    families: Sequence,
    trajectories: int,
    resolution: int = 64,
    snapshots: int = 21,
    seed: int = 0,
    shard_size: int = 32,
    device: str = "cpu",
    on_invalid: str = "error",
    progress: bool = True,
) -> dict:
    """Generates `trajectories` rows per family into `out`; resumes, keeping every finished shard.

    `families` are family objects (see `solvers.registry.resolve_families`). Returns the stats dict.
    """
    out = Path(out)
    if trajectories < 1 or shard_size < 1:
        raise CorpusError(f"need trajectories >= 1 and shard_size >= 1, got {trajectories} and {shard_size}")
    if not families:
        raise CorpusError("empty family selection: no PDE family to generate")
    settings = {
        "families": [f.name for f in families],
        "trajectories": trajectories,
        "resolution": resolution,
        "snapshots": snapshots,
        "seed": seed,
        "shard_size": shard_size,
    }
    state = _settings_guard(out, settings)
    n_shards = math.ceil(trajectories / shard_size)
    jobs = [(f, k) for f in families for k in range(n_shards)]
    bar = tqdm(jobs, desc=f"generate -> {out}", unit="shard", disable=not progress)
    for family, k in bar:
        folder = out / DATA_DIR / family.name
        path = folder / shard_name(k, n_shards)
        if path.exists() and _existing_shard_ok(path):
            continue
        folder.mkdir(parents=True, exist_ok=True)
        bar.set_postfix_str(f"{family.name} {k + 1}/{n_shards}")
        batch = min(shard_size, trajectories - k * shard_size)
        solved = family.generate(
            batch, resolution, snapshots, shard_seed(seed, family.name, k), device=device
        )
        kept, skipped = check_trajectories(solved.to_trajectories(family), str(path), on_invalid)
        write_shard(path, [encode_row(tr, f"{family.name}/{k:05d}/{i:04d}") for i, tr in enumerate(kept)])
        if skipped:
            state["skipped"][f"{family.name}/{path.name}"] = skipped
            _save_state(out, state)
    return finalize_corpus(out, registry_families=families, progress=progress)


def write_corpus(
    out: str | Path,
    trajectories: Sequence[Trajectory],
    shard_size: int = 32,
    on_invalid: str = "error",
    source: str = "input",
    progress: bool = True,
) -> dict:
    """Writes given trajectories (e.g. converted user files) as a corpus, one family per `pde` id.

    Refuses a folder that already holds shards, so no earlier corpus is overwritten.
    """
    out = Path(out)
    if (out / DATA_DIR).exists() and any((out / DATA_DIR).rglob(SHARD_GLOB)):
        raise CorpusError(f"{out}: already holds a corpus; choose an empty --out (nothing was changed)")
    kept, skipped = check_trajectories(trajectories, source, on_invalid)
    if not kept:
        raise CorpusError(f"{source}: empty selection, no valid trajectory to write ({skipped} skipped)")
    by_pde: dict[str, list[Trajectory]] = {}
    for traj in kept:
        by_pde.setdefault(traj.pde, []).append(traj)
    out.mkdir(parents=True, exist_ok=True)
    _save_state(out, {"settings": {"source": source, "shard_size": shard_size}, "skipped": {source: skipped}})
    for pde, rows in tqdm(by_pde.items(), desc=f"write -> {out}", unit="family", disable=not progress):
        n_shards = math.ceil(len(rows) / shard_size)
        folder = out / DATA_DIR / pde
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(n_shards):
            chunk = rows[k * shard_size : (k + 1) * shard_size]
            encoded = [encode_row(tr, f"{pde}/{k:05d}/{i:04d}") for i, tr in enumerate(chunk)]
            write_shard(folder / shard_name(k, n_shards), encoded)
    return finalize_corpus(out, progress=progress)


def corpus_shards(root: str | Path, families: Sequence[str] | None = None) -> dict[str, list[Path]]:
    """Shard files per family of a local corpus, optionally restricted to `families`."""
    root = Path(root)
    data = root / DATA_DIR
    if not data.is_dir():
        raise CorpusError(f"{root}: not a pdefm corpus (no '{DATA_DIR}/' folder)")
    found = {d.name: sorted(d.glob(SHARD_GLOB)) for d in sorted(data.iterdir()) if d.is_dir()}
    found = {k: v for k, v in found.items() if v}
    if families is not None:
        missing = [f for f in families if f not in found]
        if missing:
            raise CorpusError(f"{root}: families {missing} not in the corpus; it holds {sorted(found)}")
        found = {f: found[f] for f in families}
    if not found:
        raise CorpusError(f"{root}: empty selection, no shard found (families={families})")
    return found


def read_shard(path: Path, limit: int | None = None) -> list[Trajectory]:
    """All trajectories of one shard file; a truncated or corrupt file raises naming it."""
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise CorpusError(f"{path}: truncated or corrupt parquet shard ({exc})") from exc
    missing = [c for c in FEATURES if c not in table.column_names]
    if missing:
        raise CorpusError(
            f"{path}: columns {missing} missing; expected {list(FEATURES)}, got {table.column_names}"
        )
    rows = table.slice(0, limit).to_pylist() if limit is not None else table.to_pylist()
    return [decode_row(row, str(path)) for row in rows]


def _local_root(path_or_hub_id: str | Path, families: Sequence[str] | None) -> Path:
    path = Path(path_or_hub_id)
    if path.exists():
        return path
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "README.md"]
    patterns += [f"{DATA_DIR}/{f}/*" for f in families] if families else [f"{DATA_DIR}/*"]
    return Path(snapshot_download(str(path_or_hub_id), repo_type="dataset", allow_patterns=patterns))


def load_trajectories(
    path_or_hub_id: str | Path, families: Sequence[str] | None = None, limit: int | None = None
) -> list[Trajectory]:
    """Reads a corpus folder or Hub dataset id into Trajectories (at most `limit` per family)."""
    root = _local_root(path_or_hub_id, families)
    out: list[Trajectory] = []
    for shards in corpus_shards(root, families).values():
        got: list[Trajectory] = []
        for path in shards:
            remaining = None if limit is None else limit - len(got)
            if remaining is not None and remaining <= 0:
                break
            got += read_shard(path, remaining)
        out += got
    if not out:
        raise CorpusError(f"{path_or_hub_id}: empty selection (families={families}, limit={limit})")
    return out


def finalize_corpus(
    root: str | Path, registry_families: Sequence | None = None, progress: bool = True
) -> dict:
    """Reads every shard back once (which also verifies it) and writes stats.json and README.md."""
    from data_pipelines.card import write_card

    root = Path(root)
    shards = corpus_shards(root)
    overall = FieldStatistics()
    per_family: dict[str, dict] = {}
    for family, paths in tqdm(shards.items(), desc="statistics", unit="family", disable=not progress):
        acc = FieldStatistics()
        info = {"count": 0, "shards": {}, "fields": None, "shape": None, "params": {}}
        for path in paths:
            trajs = read_shard(path)
            info["shards"][path.name] = len(trajs)
            for traj in trajs:
                acc.update(traj.u, traj.fields)
                overall.update(traj.u, traj.fields)
                info["fields"], info["shape"] = traj.fields, list(traj.u.shape)
                info["t"] = traj.t.tolist()
                info["bc"], info["domain"] = traj.bc, list(traj.domain)
                for name, value in traj.params.items():
                    info["params"].setdefault(name, []).append(float(value))
            info["count"] += len(trajs)
        info["params"] = {
            k: {"min": min(v), "max": max(v), "mean": float(np.mean(v))} for k, v in info["params"].items()
        }
        info["field_stats"] = acc.as_dict()
        per_family[family] = info
    state_path = root / "generation.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {"skipped": {}}
    stats = {
        "fields": overall.as_dict(),
        "families": per_family,
        "count": sum(f["count"] for f in per_family.values()),
        "skipped": state.get("skipped", {}),
        "settings": state.get("settings", {}),
        "format": {"u": "raw little-endian float32 bytes, reshape to 'shape' = [T, C, H, W]"},
    }
    write_text_atomic(root / "stats.json", json.dumps(stats, indent=1))
    write_card(root, stats, registry_families)
    return stats


def push_corpus(root: str | Path, repo_id: str, private: bool = False) -> str:
    """Uploads a corpus folder as a Hub dataset repo (then `load_dataset(repo_id, streaming=True)` works)."""
    from huggingface_hub import HfApi

    root = Path(root)
    corpus_shards(root)
    if not (root / "stats.json").exists():
        raise CorpusError(
            f"{root}: stats.json missing; finish the corpus (pdefm data generate) before pushing"
        )
    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    info = api.upload_folder(
        folder_path=str(root),
        repo_id=repo_id,
        repo_type="dataset",
        ignore_patterns=["*.tmp", ".cache/**"],
        commit_message="pdefm corpus",
    )
    return info.commit_url if hasattr(info, "commit_url") else str(info)
