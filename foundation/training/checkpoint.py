"""Atomic, verified, distributed-native checkpoints of a training run.

``OUT/checkpoints/step-00000120/`` holds what ``accelerator.save_state`` writes (model safetensors, optimizer,
scheduler and every rank's RNG state; sharded under FSDP), each rank's data-loader position
(``loader-<rank>.pt``), ``trainer_state.json`` (step, epoch, counters, the hooks' state) and ``manifest.json``
(size and sha256 of every file). It is written under a temporary name and renamed into place, so a killed
run leaves the previous checkpoints intact; a checkpoint is only written when every weight is finite, and
rotation deletes only older checkpoints. On resume the newest checkpoint that matches its manifest is used;
damaged newer ones are reported and skipped. Every ``.pt`` file is loaded with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator

from data_pipelines.atomic import write_bytes_atomic

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
PREFIX = "step-"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated, damaged or does not fit this run; the message names the file."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def all_finite(accelerator: Accelerator, model: torch.nn.Module) -> bool:
    """Whether every parameter and buffer (this rank's shard under FSDP) is finite on every rank; one sync."""
    tensors = [t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()]
    ok = torch.stack([torch.isfinite(t).all() for t in tensors]).all() if tensors else torch.tensor(True)
    return bool(
        accelerator.reduce(ok.float().to(accelerator.device), "sum").item() == accelerator.num_processes
    )


def checkpoint_folders(out: Path) -> list[Path]:
    """The run's checkpoint folders, newest first."""
    root = Path(out) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted((p for p in root.glob(PREFIX + "*") if p.is_dir()), reverse=True)


def save_checkpoint(
    accelerator: Accelerator, out: Path, step: int, trainer_state: dict, loader_state: dict | None, keep: int
) -> Path:
    """Write checkpoint `step` (every rank calls this) and delete all but the newest `keep`."""
    root = Path(out) / CHECKPOINTS
    name = f"{PREFIX}{step:08d}"
    final, tmp = root / name, root / f".tmp-{name}"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    if loader_state is not None:
        torch.save(loader_state, tmp / f"loader-{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {**trainer_state, "world_size": accelerator.num_processes}
        write_bytes_atomic(tmp / "trainer_state.json", json.dumps(state, indent=1).encode())
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {str(p.relative_to(tmp)): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in files}
        write_bytes_atomic(tmp / "manifest.json", json.dumps(manifest, indent=1).encode())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        for old in checkpoint_folders(out)[keep:]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def verify_checkpoint(folder: Path) -> dict:
    """Check every file against manifest.json; return trainer_state.json. Raises CheckpointError naming the file."""
    manifest_path = folder / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{manifest_path} is missing: {folder} is not a complete checkpoint") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{manifest_path} is damaged (not valid JSON: {e})") from None
    for rel, meta in manifest.items():
        path = folder / rel
        if not path.is_file():
            raise CheckpointError(f"checkpoint file {path} is missing (listed in {manifest_path})")
        size = path.stat().st_size
        if size != meta["size"]:
            raise CheckpointError(
                f"checkpoint file {path} is truncated or damaged: {size} bytes, expected {meta['size']}"
            )
        if _sha256(path) != meta["sha256"]:
            raise CheckpointError(f"checkpoint file {path} is damaged: sha256 differs from {manifest_path}")
    return json.loads((folder / "trainer_state.json").read_text())


def newest_valid_checkpoint(out: Path) -> tuple[Path, dict] | None:
    """The newest checkpoint that matches its manifest, and its trainer state; damaged newer ones are
    reported (loudly) and skipped. None when the run has no checkpoint at all."""
    folders = checkpoint_folders(out)
    problems = []
    for folder in folders:
        try:
            state = verify_checkpoint(folder)
        except CheckpointError as e:
            problems.append(str(e))
            logger.warning("skipping damaged checkpoint: %s", e)
            continue
        if problems:
            logger.warning(
                "resuming from %s, an older checkpoint: %d newer one(s) are damaged", folder, len(problems)
            )
        return folder, state
    if problems:
        raise CheckpointError(f"no valid checkpoint in {Path(out) / CHECKPOINTS}: " + "; ".join(problems))
    return None


def load_checkpoint(accelerator: Accelerator, folder: Path, state: dict) -> dict | None:
    """Restore model, optimizer, scheduler and RNG through accelerate; return this rank's loader state."""
    if state["world_size"] != accelerator.num_processes:
        raise CheckpointError(
            f"{folder} was written by {state['world_size']} processes, this run has "
            f"{accelerator.num_processes}: resume with the same number of processes so the data position is exact"
        )
    accelerator.load_state(str(folder))
    loader_file = folder / f"loader-{accelerator.process_index}.pt"
    return torch.load(loader_file, weights_only=True) if loader_file.exists() else None
