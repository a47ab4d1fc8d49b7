"""One `Accelerator` per run from `TrainingArgs`: device, mixed precision, accumulation, trackers, TF32."""

from __future__ import annotations

import importlib.util

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from foundation.training.args import TrainingArgs


def resolve_mixed_precision(requested: str, device: str = "auto") -> str:
    """ "auto": bf16 on GPUs that support it, fp16 on other GPUs, fp32 on CPU."""
    on_gpu = device != "cpu" and torch.cuda.is_available()
    if requested == "auto":
        if on_gpu:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "no"
    if requested == "fp16" and not on_gpu:
        raise ValueError("mixed_precision fp16 needs a CUDA device; on CPU use 'bf16' or 'no'")
    return requested


def make_accelerator(args: TrainingArgs, project_dir: str | None = None) -> Accelerator:
    """The run's Accelerator; several runs in one process (studies) each get their own precision.

    The scheduler is stepped once per optimizer step on every rank (never once per process), so a run's
    learning-rate curve does not depend on how many processes it was launched with.
    """
    precision = resolve_mixed_precision(args.mixed_precision, args.device)
    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != precision:
        # a study that trains fp32 baselines after a bf16 run in the same process: precision is per run
        AcceleratorState._reset_state(reset_partial_state=False)
    trackers = [t.strip() for t in args.log_with.split(",") if t.strip() and t.strip() != "none"]
    if trackers == ["auto"]:  # TensorBoard when its extra is installed (pip install pdefm[track])
        trackers = ["tensorboard"] if importlib.util.find_spec("tensorboard") else []
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Accelerator(
        cpu=args.device == "cpu",
        mixed_precision=precision,
        gradient_accumulation_steps=args.grad_accum,
        step_scheduler_with_optimizer=False,
        log_with=(trackers or None) if project_dir else None,
        project_dir=project_dir,
    )
