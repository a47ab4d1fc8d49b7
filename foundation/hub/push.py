"""Push and pull pdefm checkpoints through huggingface_hub (HF_ENDPOINT, huggingface.co when unset)."""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import HfApi, snapshot_download

from foundation.hub.card import write_model_card

CHECKPOINT_FILES = ("config.json", "model.safetensors")
OPTIONAL_FILES = ("training_args.json", "train_summary.json", "metrics.jsonl", "README.md")


def checkpoint_folder(path: str | Path) -> Path:
    """The folder holding config.json + model.safetensors: `path` itself, or `path/model` (a pretraining
    output folder or a `checkpoints/step-N` folder)."""
    path = Path(path)
    for candidate in (path, path / "model"):
        if all((candidate / f).is_file() for f in CHECKPOINT_FILES):
            return candidate
    missing = [f for f in CHECKPOINT_FILES if not (path / f).is_file()]
    raise FileNotFoundError(
        f"{path}: not a pdefm checkpoint, missing {missing} (also looked in {path / 'model'})"
    )


def push_checkpoint(
    folder: str | Path,
    repo_id: str,
    revision: str | None = None,
    private: bool = False,
    siblings: list[str] | None = None,
) -> str:
    """Upload config.json, model.safetensors, training arguments, summary and a model card; returns the commit URL.

    A README.md is written from train_summary.json / training_args.json (and metrics.jsonl) when the folder
    has none or when `siblings` (run folders or Hub ids) are given for the card's scaling section.
    `revision` names a branch, created from main when missing.
    """
    folder = checkpoint_folder(folder)
    if siblings or not (folder / "README.md").exists():
        summary = _read_json(folder / "train_summary.json")
        args = _read_json(folder / "training_args.json")
        write_model_card(folder, summary, args, repo_id, siblings=siblings)
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision is not None and revision not in {b.name for b in api.list_repo_refs(repo_id).branches}:
        api.create_branch(repo_id, branch=revision)
    files = [f for f in (*CHECKPOINT_FILES, *OPTIONAL_FILES) if (folder / f).is_file()]
    info = api.upload_folder(
        folder_path=folder,
        repo_id=repo_id,
        revision=revision,
        allow_patterns=files,
        commit_message="pdefm checkpoint",
    )
    return info.commit_url


def pull(
    repo_id: str,
    revision: str | None = None,
    repo_type: str = "model",
    allow_patterns: list[str] | None = None,
) -> Path:
    """Local folder of a Hub repo at `revision` (branch, `refs/pr/N` or commit sha), through the HF cache.

    With HF_HUB_OFFLINE=1 (or no network) a revision downloaded before is served from the cache.
    """
    return Path(
        snapshot_download(repo_id, revision=revision, repo_type=repo_type, allow_patterns=allow_patterns)
    )


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
