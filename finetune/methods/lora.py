"""LoRA fine-tuning of scOT with peft: low-rank adapters on every attention, MLP and ConvNeXt linear layer.

Target modules (suffixes of scOT's module names, as in Poseidon's state dict):

- `attention.self.query`, `attention.self.key`, `attention.self.value`: the Swin-V2 window attention projections;
- `attention.output.dense`: the attention output projection;
- `intermediate.dense`, `output.dense`: the Swin block MLP (d -> 4d -> d);
- `pwconv1`, `pwconv2`: the ConvNeXt skip blocks' point-wise (channels-last Linear) convolutions.

The continuous-position-bias MLPs, patch merging/unmerging, time-conditioned norms, embedding and recovery
stay frozen, except that tensors re-initialised by channel surgery (embedding/recovery projections) are
trained fully through `modules_to_save`. Only the adapter is saved; `merge` folds it into a plain model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from finetune.methods.registry import Method, MethodContext, register_method

LORA_TARGETS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
    "pwconv1",
    "pwconv2",
)


@dataclass
class LoraOptions:
    """Adapter rank, scaling (alpha / rank, peft's convention), dropout, learning rate and merging."""

    rank: int = field(default=8, metadata={"flag": "--lora-rank"})
    """Adapter rank."""
    alpha: float = field(default=16.0, metadata={"flag": "--lora-alpha"})
    """Adapter alpha (scale alpha / rank)."""
    dropout: float = field(default=0.0, metadata={"flag": "--lora-dropout"})
    """Dropout on the adapter input."""
    lr: float = 1e-3
    """Adapter learning rate (`--lr` sets it)."""
    weight_decay: float = 0.0
    """AdamW weight decay of the adapters."""
    merge: bool = False
    """Also write the adapter merged into a plain model (`merged/`)."""


def modules_to_save_for(model: nn.Module) -> list[str]:
    """Modules holding tensors that channel surgery re-initialised (`model.reinitialized_keys`)."""
    keys = getattr(model, "reinitialized_keys", None) or []
    return sorted({k.rsplit(".", 1)[0] for k in keys})


def lora_config(model: nn.Module, options: LoraOptions | None = None) -> LoraConfig:
    """The peft config for `model`: LORA_TARGETS that exist in it, plus its surgically replaced modules."""
    opts = options or LoraOptions()
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    targets = [t for t in LORA_TARGETS if any(n == t or n.endswith("." + t) for n in names)]
    if not targets:
        raise ValueError(
            f"LoRA: {type(model).__name__} has none of scOT's target layers {list(LORA_TARGETS)}; "
            "LoRA here adapts scOT checkpoints only"
        )
    return LoraConfig(
        r=opts.rank,
        lora_alpha=opts.alpha,
        lora_dropout=opts.dropout,
        target_modules=targets,
        modules_to_save=modules_to_save_for(model) or None,
        bias="none",
    )


def wrap(model: nn.Module, options: LoraOptions | None = None) -> PeftModel:
    """`model` with LoRA adapters; only adapter (and `modules_to_save`) parameters are trainable."""
    return get_peft_model(model, lora_config(model, options))


def param_groups(model: PeftModel, options: LoraOptions | None = None) -> list[dict]:
    """One AdamW group over the trainable (adapter and modules_to_save) parameters."""
    opts = options or LoraOptions()
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"name": "lora", "params": params, "lr": opts.lr, "weight_decay": opts.weight_decay}]


def save_adapter(model: PeftModel, out: str | Path) -> Path:
    """Writes adapter_config.json and adapter_model.safetensors (no base weights) to `out`."""
    out = Path(out)
    model.save_pretrained(out)
    return out


def load_adapter(base: nn.Module, adapter: str | Path) -> PeftModel:
    """`base` with the adapter saved at `adapter` (folder or Hub id) applied, in eval mode."""
    return PeftModel.from_pretrained(base, str(adapter)).eval()


def merged(model: PeftModel) -> nn.Module:
    """A plain copy of the base model with the adapter folded into its weights (the adapted model is kept)."""
    return copy.deepcopy(model).merge_and_unload()


@register_method
class Lora(Method):
    """peft LoRA adapters on scOT's attention, MLP and ConvNeXt linears; only the adapter is saved."""

    name = "lora"
    Options = LoraOptions
    summary = "low-rank adapters (peft LoRA) on every attention, MLP and ConvNeXt linear; the base is frozen."
    lr_field = "lr"
    artifacts = ("merged", "adapter")

    def prepare(self, model: nn.Module, options: LoraOptions, context: MethodContext):
        wrapped = wrap(model, options)
        return wrapped, param_groups(wrapped, options)

    def save(
        self, model: PeftModel, out: Path, options: LoraOptions, context: MethodContext
    ) -> dict[str, Path]:
        from finetune.api import save_model

        paths = {"adapter": save_adapter(model, out / "adapter")}
        for name, text in context.files.items():
            (paths["adapter"] / name).write_text(text)
        if options.merge:
            paths["merged"] = save_model(merged(model), out / "merged", context.files)
            paths["model"] = paths["merged"]
        return paths

    def card(self, options: LoraOptions) -> str:
        return (
            f"LoRA adapters (rank {options.rank}, alpha {options.alpha}) trained with peft on a frozen base; "
            "load them with `peft.PeftModel.from_pretrained(base, folder)` or use the merged model."
        )
