"""`TrainingArgs`: the settings every training run shares (pretraining, each adaptation method, baselines).

Run-specific configs (`PretrainConfig`, `finetune.trainer.TrainConfig`) extend this dataclass, so each
shared default is written once and the command lines generated from them expose the same flags.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
RESUME = ("never", "must", "auto")
COMPILE = ("none", "blocks", "model")


@dataclass(kw_only=True)
class TrainingArgs:
    out: str | None = None
    """Run folder (checkpoints, metrics.jsonl, final model); None keeps everything in memory (no resume)."""
    max_steps: int | None = None
    """Optimizer steps; None: as many as the run's epochs give."""
    batch_size: int = 8
    """Examples per optimizer step: per process in pretraining, the global batch in fine-tuning."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    max_grad_norm: float = 5.0
    """Gradient clipping norm (0 disables clipping; the norm is still measured)."""
    mixed_precision: str = "auto"
    """auto (bf16 on GPUs that support it, fp16 on other GPUs, fp32 on CPU) | no | bf16 | fp16."""
    device: str = "auto"
    """auto (CUDA when present) | cpu | cuda."""
    seed: int = 0
    """Seed of initialisation, data order and sampling."""
    log_every: int = 10
    """Read losses and norms from the device, log and check them every N steps (no per-step host syncs)."""
    checkpoint_every: int | None = None
    """Checkpoint every N steps (also at the end and when stopped early); None: only at the end."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep (older ones are deleted after a newer one is written)."""
    max_bad_steps: int = 3
    """Optimizer steps with a non-finite gradient norm that are skipped before the run stops with an error."""
    resume: str = "never"
    """never | must (the newest valid checkpoint in `out`, an error when there is none) | auto (resume if any)."""
    overwrite: bool = False
    """Replace a finished or interrupted run in `out` instead of refusing it."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    compile: str = "none"
    """none | blocks (regional torch.compile of each block) | model (whole-model torch.compile)."""
    log_with: str = "none"
    """Accelerate tracker(s), comma separated ("tensorboard", "wandb", "trackio"), "auto" (TensorBoard when
    installed) or "none"."""
    progress: bool = False
    """Show a progress bar."""

    def __post_init__(self):
        for name in ("batch_size", "grad_accum", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be >= 1 or None, got {value}")
        if self.max_bad_steps < 0:
            raise ValueError(f"{type(self).__name__}.max_bad_steps must be >= 0, got {self.max_bad_steps}")
        for name, choices in (
            ("mixed_precision", MIXED_PRECISION),
            ("resume", RESUME),
            ("compile", COMPILE),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"{type(self).__name__}.{name} must be one of {choices}, got {getattr(self, name)!r}"
                )
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError(
                f"{type(self).__name__}.device must be auto, cpu or cuda[:i], got {self.device!r}"
            )
        if self.resume != "never" and self.out is None:
            raise ValueError(f"{type(self).__name__}.resume={self.resume!r} needs an `out` run folder")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
