"""Atomic pretraining checkpoints: model, optimizer, scheduler, every rank's RNG state and the data position.

Layout of ``OUT/checkpoints/step-00000120/``: ``model/`` (config.json + model.safetensors), ``optimizer.pt``,
``scheduler.pt`` (tensor/number state dicts, loaded with ``weights_only=True``), ``rng-<rank>.json``,
``trainer_state.json`` (step, epoch, batches consumed in the epoch, loss history) and ``manifest.json`` (size
and sha256 of every file). It is written under a temporary name and renamed into place, then
``checkpoints/latest`` is replaced atomically: a killed run leaves either the previous or the new checkpoint,
and a damaged one is detected by the manifest before anything is loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from data_pipelines.atomic import write_bytes_atomic

CHECKPOINTS = "checkpoints"
LATEST = "latest"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated or inconsistent; the message names the file."""


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


def rng_state() -> dict:
    """Python, numpy and torch (CPU and CUDA) generator states as JSON-safe data."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def save_checkpoint(
    out: Path, accelerator, model, optimizer, scheduler, trainer_state: dict, keep: int
) -> Path:
    """Write step ``trainer_state["step"]`` (all ranks call this; rank 0 writes the shared parts)."""
    root = Path(out) / CHECKPOINTS
    name = f"step-{trainer_state['step']:08d}"
    final, tmp = root / name, root / f".tmp-{name}"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    write_bytes_atomic(tmp / f"rng-{accelerator.process_index}.json", json.dumps(rng_state()).encode())
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(tmp / "model", safe_serialization=True)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        state = {**trainer_state, "world_size": accelerator.num_processes}
        write_bytes_atomic(tmp / "trainer_state.json", json.dumps(state, indent=1).encode())
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {str(p.relative_to(tmp)): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in files}
        write_bytes_atomic(tmp / "manifest.json", json.dumps(manifest, indent=1).encode())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        write_bytes_atomic(root / LATEST, name.encode())
        _fsync_dir(root)
        steps = sorted(p for p in root.glob("step-*") if p.is_dir())
        for old in steps[: max(0, len(steps) - keep)]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def latest_checkpoint(out: Path) -> Path | None:
    """The folder ``checkpoints/latest`` points at, or None when the run never checkpointed."""
    pointer = Path(out) / CHECKPOINTS / LATEST
    if not pointer.exists():
        return None
    folder = pointer.parent / pointer.read_text().strip()
    if not folder.is_dir():
        raise CheckpointError(f"{pointer} points at {folder}, which does not exist")
    return folder


def verify_checkpoint(folder: Path) -> dict:
    """Check every file against manifest.json; return trainer_state.json. Raises CheckpointError naming the file."""
    manifest_path = folder / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{manifest_path} is missing: {folder} is not a complete checkpoint") from None
    except json.JSONDecodeError as e:
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


def load_checkpoint(folder: Path, accelerator, model, optimizer, scheduler) -> dict:
    """Restore a verified checkpoint into the (prepared) objects and this rank's RNG; return the trainer state."""
    from safetensors.torch import load_file

    state = verify_checkpoint(folder)
    if state["world_size"] != accelerator.num_processes:
        raise CheckpointError(
            f"{folder} was written by {state['world_size']} processes, this run has {accelerator.num_processes}: "
            "resume with the same number of processes so the data position stays exact"
        )
    weights = load_file(folder / "model" / "model.safetensors")
    missing, unexpected = accelerator.unwrap_model(model).load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{folder / 'model'}: weights do not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", map_location="cpu", weights_only=True))
    set_rng_state(json.loads((folder / f"rng-{accelerator.process_index}.json").read_text()))
    return state
