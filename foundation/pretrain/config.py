"""`PretrainConfig`: every setting of a pretraining run, from command-line flags or a YAML file.

Defaults follow Poseidon's recipe (paper C.1): AdamW, weight decay 0.1 (not on norms and biases), cosine
decay after a linear warmup, gradient clipping at 5, fp32 unless mixed precision is asked for.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

MIXED_PRECISION = ("auto", "no", "bf16", "fp16")


@dataclass
class PretrainConfig:
    corpus: list[str]
    """Corpus folders and/or Hub dataset ids streamed as one mixture."""
    out: str = "pretrain-out"
    preset: str = "tiny"
    model_overrides: dict = field(default_factory=dict)
    """ScOTConfig fields set on top of the preset, e.g. {"image_size": 32}."""
    families: list[str] | None = None
    channels: list[str] | None = None
    """The model's channel layout; default: the union of the corpus fields in vocabulary order."""
    eval_corpus: list[str] | None = None
    """Held-out trajectories (other folders / Hub ids) scored every `eval_every` steps."""
    eval_trajectories: int = 16
    eval_every: int = 100
    max_steps: int = 1000
    max_minutes: float | None = None
    batch_size: int = 8
    """Per process; the effective batch is batch_size x processes x grad_accum."""
    grad_accum: int = 1
    learning_rate: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    min_lr_ratio: float = 0.0
    max_grad_norm: float = 5.0
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False
    compile_blocks: bool = False
    """torch.compile each Swin/ConvNeXt block (`ScOT.compile_blocks`): faster steps after a one-off compile."""
    num_workers: int = 0
    pairs_per_trajectory: int | None = None
    shuffle_buffer: int = 64
    seed: int = 0
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    log_with: str = "tensorboard"
    """Accelerate tracker(s), comma separated ("tensorboard", "wandb", "trackio"), or "none"."""
    progress: bool = True
    resume: bool = False
    push_to: str | None = None

    def __post_init__(self):
        if isinstance(self.corpus, str):
            self.corpus = [self.corpus]
        if not self.corpus:
            raise ValueError("PretrainConfig.corpus: give at least one corpus folder or Hub dataset id")
        if isinstance(self.eval_corpus, str):
            self.eval_corpus = [self.eval_corpus]
        positive = ("max_steps", "batch_size", "grad_accum", "checkpoint_every", "eval_every", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"PretrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.warmup_steps > self.max_steps:
            raise ValueError(
                f"PretrainConfig.warmup_steps must be in [0, max_steps={self.max_steps}], got {self.warmup_steps}"
            )
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(
                f"PretrainConfig.mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}"
            )
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"PretrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")

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
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown settings {unknown}; known: {sorted(known)}")
        return cls(**{**data, **overrides})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))
