"""The run folder's rules: one run at a time (an exclusive lock), and nothing a previous run left is
overwritten or mixed in unless asked (`resume` continues it, `overwrite` replaces it)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

from filelock import FileLock, Timeout

from foundation.training.checkpoint import CHECKPOINTS, checkpoint_folders

LOCK = ".pdefm.lock"
OWNER = ".pdefm.lock.json"
RUN_OUTPUTS = (CHECKPOINTS, "model", "metrics.jsonl", "train_summary.json")


class RunFolderError(ValueError):
    """The run folder is in use or holds a run that this command would overwrite; the message says what to do."""


class RunLock:
    """Exclusive lock on a run folder (filelock); a second run is refused with the holder's pid and host."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.lock = FileLock(str(self.out / LOCK))

    def __enter__(self) -> RunLock:
        self.out.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            holder = _read_owner(self.out / OWNER)
            raise RunFolderError(
                f"{self.out} is in use by another run ({holder}); wait for it or choose another --out"
            ) from None
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        (self.out / OWNER).write_text(json.dumps(owner))
        return self

    def __exit__(self, *exc) -> None:
        (self.out / OWNER).unlink(missing_ok=True)
        self.lock.release()


def _read_owner(path: Path) -> str:
    try:
        owner = json.loads(path.read_text())
        return f"pid {owner['pid']} on {owner['host']}, started {owner['started']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"


def holds_run(out: Path) -> bool:
    """Whether `out` holds an earlier run's results (a checkpoint, a final model or its summary); the records
    of a run that failed before its first checkpoint do not count, so they never block the corrected rerun."""
    out = Path(out)
    return bool(checkpoint_folders(out)) or (out / "model").exists() or (out / "train_summary.json").exists()


def prepare_run_folder(out: Path, resume: str, overwrite: bool) -> None:
    """Apply the rules before a run starts (main process, lock held); raises RunFolderError."""
    out = Path(out)
    has_checkpoint = bool(checkpoint_folders(out))
    if resume == "must" and not has_checkpoint:
        raise RunFolderError(
            f"--resume: {out} has no checkpoint to resume from; start a new run without --resume "
            "(or pass --resume auto to resume when there is one)"
        )
    if resume != "never" and has_checkpoint:
        return
    if holds_run(out):
        if not overwrite:
            raise RunFolderError(
                f"{out} already holds a run; pass --resume to continue it, --overwrite to replace it, "
                "or choose another --out"
            )
        for name in RUN_OUTPUTS:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
