"""Full fine-tuning with Poseidon's parameter groups (paper C.1, `scOT/trainer.py::create_optimizer`).

pdefm's default gives every group one rate, 5e-4 (the from-scratch baselines' rate): with a few hundred
steps Poseidon's rates (backbone 5e-5, embedding and time norms 5e-4) left the backbone almost where
pretraining put it, and pretrained models lost to the same model from scratch (docs/transfer.md).
Poseidon's recipe is `FullOptions(lr_backbone=5e-5)`.

Groups, checked in this order:
1. names containing "embeddings" or "patch_recovery" (incl. the embedding's time-LN): `lr_embedding`, decayed;
2. the time-conditioned norms' gamma(t)/beta(t) `Linear(1, d)` layers ("time embedding"): `lr_time`, no decay;
3. other non-norm, non-bias parameters (the backbone): `lr_backbone`, decayed;
4. everything else (biases, plain norms): `lr_backbone`, no decay.
A module without ScOT's names (an FNO or U-Net baseline) falls entirely into groups 3 and 4.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from finetune.methods.registry import Method, MethodContext, register_method

EMBEDDING_RECOVERY_KEYS = ("embeddings", "patch_recovery")
PLAIN_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm2d)


@dataclass
class FullOptions:
    """Learning rates and weight decay of Poseidon's parameter groups (one rate by default, see the module doc)."""

    lr_backbone: float = 5e-4
    """Learning rate of the backbone (`--lr` sets it)."""
    lr_embedding: float = 5e-4
    """Learning rate of the embedding and recovery layers."""
    lr_time: float = 5e-4
    """Learning rate of the time-conditioned norms' gamma(t)/beta(t)."""
    weight_decay: float = 1e-6
    """AdamW weight decay (not on biases, norms and time norms)."""
    backbone_frozen: float = 0.0
    """Fraction of the steps during which only the embedding and recovery train, before every group warms
    up (LP-FT: new channel layers fit before their gradients reach the pretrained backbone)."""

    def __post_init__(self):
        if not 0.0 <= self.backbone_frozen < 1.0:
            raise ValueError(f"backbone_frozen must be in [0, 1), got {self.backbone_frozen}")


def time_norm_parameters(model: nn.Module) -> set[str]:
    """Names of the gamma(t)/beta(t) parameters of time-conditioned norms.

    Recognised by structure, not class name: a module whose `weight` and `bias` children are
    `nn.Linear(1, d)` maps the scalar time to the norm's scale and shift (Poseidon's `ConditionalLayerNorm`).
    """
    names = set()
    for prefix, module in model.named_modules():
        w, b = getattr(module, "weight", None), getattr(module, "bias", None)
        if isinstance(w, nn.Linear) and isinstance(b, nn.Linear) and w.in_features == b.in_features == 1:
            names.update(
                f"{prefix}.{child}.{p}".lstrip(".")
                for child in ("weight", "bias")
                for p in ("weight", "bias")
            )
    return {n for n in names if n in dict(model.named_parameters())}


def _plain_norm_parameters(model: nn.Module) -> set[str]:
    return {
        f"{prefix}.{n}".lstrip(".")
        for prefix, module in model.named_modules()
        if isinstance(module, PLAIN_NORMS)
        for n, _ in module.named_parameters(recurse=False)
    }


def poseidon_param_groups(model: nn.Module, options: FullOptions | None = None) -> list[dict]:
    """AdamW parameter groups of Poseidon's recipe over the trainable parameters of `model` (empty groups dropped)."""
    opts = options or FullOptions()
    time_norm, plain_norm = time_norm_parameters(model), _plain_norm_parameters(model)
    groups = {
        "embedding_recovery": {"lr": opts.lr_embedding, "weight_decay": opts.weight_decay, "params": []},
        "time_norms": {"lr": opts.lr_time, "weight_decay": 0.0, "params": []},
        "backbone": {"lr": opts.lr_backbone, "weight_decay": opts.weight_decay, "params": []},
        "backbone_no_decay": {"lr": opts.lr_backbone, "weight_decay": 0.0, "params": []},
    }
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if any(k in name for k in EMBEDDING_RECOVERY_KEYS):
            key = "embedding_recovery"
        elif name in time_norm:
            key = "time_norms"
        elif name in plain_norm or name.endswith("bias"):
            key = "backbone_no_decay"
        else:
            key = "backbone"
        groups[key]["params"].append(p)
    for key in ("time_norms", "backbone", "backbone_no_decay"):
        groups[key]["frozen_fraction"] = opts.backbone_frozen
    return [{"name": k, **g} for k, g in groups.items() if g["params"]]


@register_method
class Full(Method):
    """Every parameter trained with Poseidon's learning-rate groups."""

    name = "full"
    Options = FullOptions
    summary = "every parameter trained, in Poseidon's parameter groups (paper C.1), one rate by default."
    lr_field = "lr_backbone"

    def prepare(self, model: nn.Module, options: FullOptions, context: MethodContext):
        return model, poseidon_param_groups(model, options)
