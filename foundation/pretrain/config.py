"""`PretrainConfig`: every setting of a pretraining run, from command-line flags or a YAML file.

It extends the training core's `TrainingArgs` (batch, precision, checkpoints, resume, ...) with the corpus,
the model and the optimizer. Defaults follow Poseidon's recipe (paper C.1): AdamW, weight decay 0.1 (not
on norms and biases), cosine decay after a linear warmup, gradient clipping at 5.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from foundation.training.args import TrainingArgs


@dataclass(kw_only=True)
class PretrainConfig(TrainingArgs):
    corpus: list[str]
    """Corpus folders and/or Hub dataset ids streamed as one mixture."""
    out: str = "pretrain-out"
    preset: str = "tiny"
    """Model size: tiny, T, B or L (Poseidon's sizes)."""
    model_overrides: dict = field(default_factory=dict)
    """ScOTConfig fields set on top of the preset, e.g. {"image_size": 32}."""
    families: list[str] | None = None
    """Families of the corpora to train on (default: all of them)."""
    weights: dict[str, float] | None = None
    """Mixture weight per family (default: proportional to each family's examples); 0 excludes a family."""
    stopping_strategy: str = "all_exhausted"
    """When a stream epoch ends: all_exhausted (every row read at least once; a family whose share ends
    sooner starts over) | first_exhausted (no row twice; some rows wait for the next epoch)."""
    channels: list[str] | None = None
    """The model's channel layout; default: the union of the corpus fields in vocabulary order."""
    eval_corpus: list[str] | None = None
    """Held-out trajectories (other folders / Hub ids) scored every `eval_every` steps."""
    eval_trajectories: int = 16
    """Held-out trajectories scored (from the start of each eval corpus)."""
    eval_every: int = 100
    """Score the held-out pairs every N steps."""
    downstream: list[str] | None = None
    """Downstream tasks evaluated every `downstream_every` steps (see `foundation.pretrain.downstream`)."""
    downstream_every: int = 100
    max_steps: int = 1000
    max_minutes: float | None = None
    """Stop (with a checkpoint) after this many minutes of training."""
    learning_rate: float = 1e-3
    """Peak learning rate of the warmup + cosine schedule."""
    weight_decay: float = 0.1
    """AdamW weight decay (not on norms and biases)."""
    warmup_steps: int | None = None
    """Linear warmup steps; default: max_steps // 10, at most 50."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of the peak."""
    num_workers: int = 0
    """DataLoader workers per process."""
    pairs_per_trajectory: int | None = None
    """Random (input, target) pairs drawn per trajectory (default: all2all, every pair)."""
    shuffle_buffer: int = 4
    """Trajectories each rank x worker holds per family to draw pairs from (saved in every checkpoint)."""
    checkpoint_every: int | None = 100
    log_with: str = "auto"
    progress: bool = True
    push_to: str | None = None
    """Push the final model with its card to this Hub repo, org/name."""

    def __post_init__(self):
        if isinstance(self.resume, bool):  # `resume=True` in Python and older YAML files
            self.resume = "must" if self.resume else "never"
        super().__post_init__()
        if isinstance(self.corpus, str):
            self.corpus = [self.corpus]
        if not self.corpus:
            raise ValueError("PretrainConfig.corpus: give at least one corpus folder or Hub dataset id")
        for name in ("eval_corpus", "downstream"):
            if isinstance(getattr(self, name), str):
                setattr(self, name, [getattr(self, name)])
        for name in ("eval_every", "downstream_every", "eval_trajectories"):
            if getattr(self, name) < 1:
                raise ValueError(f"PretrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps is None:
            self.warmup_steps = min(50, self.max_steps // 10)
        if self.warmup_steps < 0 or self.warmup_steps > self.max_steps:
            raise ValueError(
                f"PretrainConfig.warmup_steps must be in [0, max_steps={self.max_steps}], got {self.warmup_steps}"
            )
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"PretrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.max_minutes is not None and self.max_minutes < 0:
            raise ValueError(f"PretrainConfig.max_minutes must be >= 0, got {self.max_minutes}")

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> PretrainConfig:
        """Settings from a YAML mapping; `overrides` (e.g. command-line flags that were given) win."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown settings {unknown}; known: {sorted(known)}")
        return cls(**{**data, **overrides})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))
