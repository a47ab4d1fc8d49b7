"""Matching a checkpoint's channel layout to the user's fields, with channel surgery when they differ.

With `channels="same"` the data's fields are mapped onto the model's same-named channels when they are a
subset of them (absent channels filled or masked, as Poseidon feeds incompressible flow to its
[rho, u, v, p] model). Otherwise, or always with `channels="fresh"`, the model gets new embedding and
recovery layers for the data's fields: channel surgery, which re-initialises only the channel-dependent
tensors (Poseidon's `--replace_embedding_recovery`). "fresh" is for new physics under a familiar name (a
reaction-diffusion `u` is not a velocity): on independent-solver data it transferred better (docs/transfer.md).
"auto" (the default) is "fresh" for a PDE family the checkpoint has not been trained on, when the checkpoint
records its families (`ScOTConfig.pde_vocabulary`, which pdefm's pretraining writes), and "same" otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

CHANNEL_MODES = ("auto", "same", "fresh")
SURGERY_MODULES = (
    "embeddings.patch_embeddings.projection",
    "patch_recovery.projection",
    "patch_recovery.mixup",
)


@dataclass
class ChannelPlan:
    """The channel layout the model will use and whether its embedding/recovery must be replaced."""

    layout: list[str]
    surgery: bool


def _placeholder(names: Sequence[str]) -> bool:
    """ScOTConfig names unknown channels ch0, ch1, ...: a layout that says nothing about the fields."""
    return all(n == f"ch{i}" for i, n in enumerate(names))


def check_channel_mode(channels: str) -> str:
    if channels not in CHANNEL_MODES:
        raise ValueError(f"channels must be one of {list(CHANNEL_MODES)}, got {channels!r}")
    return channels


def resolve_channel_mode(
    channels: str, vocabulary: Sequence[str] | None, families: Sequence[str] | None
) -> str:
    """ "same" or "fresh": "auto" is "fresh" when the model records its families (`vocabulary`) and the data's
    `families` include one it has not been trained on."""
    if check_channel_mode(channels) != "auto":
        return channels
    unknown = bool(vocabulary) and any(f not in vocabulary for f in families or [])
    return "fresh" if unknown else "same"


def plan_channels(
    model_fields: Sequence[str] | None, data_fields: Sequence[str], channels: str = "same"
) -> ChannelPlan:
    """Reuse the model's layout when the data's fields fit in it ("same"), else (or always with "fresh")
    surgery to the data's fields; resolve "auto" first (`resolve_channel_mode`)."""
    data_fields = list(data_fields)
    if check_channel_mode(channels) == "auto":
        raise ValueError('plan_channels: resolve channels="auto" with resolve_channel_mode first')
    if channels == "fresh" and model_fields:
        return ChannelPlan(data_fields, surgery=True)
    if not model_fields:
        return ChannelPlan(data_fields, surgery=False)
    model_fields = list(model_fields)
    if _placeholder(model_fields):
        return ChannelPlan(data_fields, surgery=len(model_fields) != len(data_fields))
    if set(data_fields) <= set(model_fields):
        return ChannelPlan(model_fields, surgery=False)
    return ChannelPlan(data_fields, surgery=True)


def _mismatch(source: str, model_fields: Sequence[str], data_fields: Sequence[str]) -> ValueError:
    return ValueError(
        f"channel mismatch: model {source} has channels {list(model_fields)}, the data has fields "
        f"{list(data_fields)}; allow channel surgery to replace the embedding/recovery layers, or select "
        f"fields the model knows with --fields"
    )


def load_for_fields(
    model: str | Path | nn.Module,
    data_fields: Sequence[str],
    *,
    allow_surgery: bool = True,
    revision: str | None = None,
    channels: str = "same",
    families: Sequence[str] | None = None,
) -> tuple[nn.Module, list[str]]:
    """The model (loaded from a Hub id or folder, or as given) ready for `data_fields`, and its channel layout;
    `channels` is "same" (same-named channels when the fields fit), "fresh" (new embedding and recovery) or
    "auto" (by the data's PDE `families`, see the module doc).

    A module passed in cannot be re-shaped here; a mismatch then is an error, as it is when surgery is
    not allowed. A checkpoint of another architecture fails in `foundation.loading.load_model`.
    """
    if isinstance(model, nn.Module):
        config = getattr(model, "config", None)
        fields = getattr(config, "field_names", None)
        mode = resolve_channel_mode(channels, getattr(config, "pde_vocabulary", None), families)
        plan = plan_channels(fields, data_fields, mode)
        if plan.surgery:
            raise _mismatch(type(model).__name__, fields, data_fields)
        if fields is None and getattr(config, "num_channels", len(plan.layout)) != len(plan.layout):
            raise ValueError(
                f"channel mismatch: {type(model).__name__} takes {config.num_channels} channels, "
                f"the data has {len(plan.layout)} fields {plan.layout}"
            )
        return model, plan.layout

    from foundation.loading import config_from_checkpoint, load_model, resolve_checkpoint

    config, _ = config_from_checkpoint(resolve_checkpoint(model, revision))
    mode = resolve_channel_mode(channels, config.pde_vocabulary, families)
    plan = plan_channels(config.field_names, data_fields, mode)
    if plan.surgery and not allow_surgery:
        raise _mismatch(str(model), config.field_names, data_fields)
    n = len(plan.layout)
    # New fields are scored as Poseidon scores its new-channel tasks: relative L1 per channel group.
    overrides = {"channel_slice_list_normalized_loss": list(range(n + 1))} if plan.surgery else {}
    loaded = load_model(model, num_channels=n, num_out_channels=n, revision=revision, **overrides)
    if plan.surgery and not loaded.reinitialized_keys:
        # Same channel count, other fields: load_model kept the tensors, so replace them here.
        for name in SURGERY_MODULES:
            loaded._init_weights(loaded.get_submodule(name))
        loaded.reinitialized_keys = [
            f"{name}.{p}"
            for name in SURGERY_MODULES
            for p, _ in loaded.get_submodule(name).named_parameters()
        ]
    loaded.config.field_names = list(plan.layout)
    return loaded, plan.layout
