"""`load_model`: one loader for Poseidon and pdefm checkpoints (Hub id or folder), with channel surgery.

Poseidon checkpoints (config `model_type: "swinv2"`, `architectures` "ScOT"/"SwinForPDE") must never go through
`AutoModel`: it builds a transformers `Swinv2Model` with fresh weights and only logs it. Both kinds are read here: config.json to an `ScOTConfig`, safetensors weights into `ScOT`. Asking
for other input/output channel counts re-initialises only the tensors whose shape depends on them (patch
embedding and recovery), as Poseidon's `--replace_embedding_recovery` does; everything else is kept bit-exact.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from safetensors.torch import load_file

from foundation.configuration_scot import ScOTConfig
from foundation.modeling_scot import ScOT

logger = logging.getLogger(__name__)

POSEIDON_ARCHITECTURES = ("ScOT", "SwinForPDE")
CHANNEL_DEPENDENT_KEYS = (
    "embeddings.patch_embeddings.projection.weight",
    "patch_recovery.projection.weight",
    "patch_recovery.projection.bias",
    "patch_recovery.mixup.weight",
)
"""Tensors whose shapes depend on num_channels / num_out_channels (the embedding bias does not)."""
_NON_CONFIG_KEYS = ("model_type", "architectures", "transformers_version", "auto_map")


def resolve_checkpoint(source: str | Path, revision: str | None = None) -> Path:
    """A local folder as is, otherwise a Hub repo id (`org/name`) fetched (config and weights only) through
    the HF cache; a missing local path, or a Hub repo that cannot be fetched, is a FileNotFoundError."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    from data_pipelines.paths import local_or_hub

    found = local_or_hub(source, "checkpoint")
    if isinstance(found, Path):
        if not found.is_dir():
            raise FileNotFoundError(
                f"checkpoint {str(source)!r}: not a folder (config.json + model.safetensors)"
            )
        return found
    patterns = ["config.json", "*.safetensors", "model.safetensors.index.json", "pytorch_model.bin"]
    try:
        return Path(snapshot_download(repo_id=found, revision=revision, allow_patterns=patterns))
    except (HfHubHTTPError, LocalEntryNotFoundError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FileNotFoundError(
            f"checkpoint {found!r}: no local folder of that name, and the Hub could not provide it "
            f"({type(exc).__name__}: {reason})"
        ) from exc


def config_from_checkpoint(folder: Path) -> tuple[ScOTConfig, str]:
    """The checkpoint's config as an `ScOTConfig`, and its kind ("poseidon" or "pdefm")."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"load_model: {config_file} is missing")
    raw = json.loads(config_file.read_text())
    model_type, architectures = raw.get("model_type"), raw.get("architectures") or []
    if model_type == ScOTConfig.model_type:
        return ScOTConfig.from_pretrained(folder), "pdefm"
    if model_type == "swinv2" and any(a in POSEIDON_ARCHITECTURES for a in architectures):
        fields = {k: v for k, v in raw.items() if k not in _NON_CONFIG_KEYS}
        return ScOTConfig(**fields), "poseidon"
    raise ValueError(
        f"load_model: {config_file} is neither a pdefm checkpoint (model_type {ScOTConfig.model_type!r}) nor a "
        f"Poseidon one (model_type 'swinv2', architectures {list(POSEIDON_ARCHITECTURES)}); got model_type "
        f"{model_type!r}, architectures {architectures}"
    )


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """Weights from model.safetensors, a sharded safetensors index, or (weights only) pytorch_model.bin."""
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return load_file(single)
    if index.is_file():
        state = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(load_file(folder / shard))
        return state
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"load_model: no model.safetensors (or index, or pytorch_model.bin) in {folder}")


def load_model(
    source: str | Path,
    *,
    num_channels: int | None = None,
    num_out_channels: int | None = None,
    revision: str | None = None,
    **config_overrides,
) -> ScOT:
    """Load a Poseidon or pdefm checkpoint from a Hub id or folder, in eval mode.

    Poseidon checkpoints load with this function or `ScOT.from_pretrained`, never with `AutoModel` (their
    `model_type` is "swinv2", so `AutoModel` silently builds a freshly initialised `Swinv2Model`).

    num_channels / num_out_channels different from the checkpoint's re-initialise the channel-dependent tensors;
    `config_overrides` set other config fields (e.g. `use_operator_conditioning=True`, whose new tensors are
    initialised fresh, or `channel_slice_list_normalized_loss`). `model.reinitialized_keys` lists every tensor
    not taken from the checkpoint.
    """
    folder = resolve_checkpoint(source, revision)
    config, kind = config_from_checkpoint(folder)
    checkpoint_conditioning = config.use_operator_conditioning
    fields = config.to_dict()
    for key in ("model_type", "architectures", "transformers_version"):
        fields.pop(key, None)
    channels_changed = False
    if num_channels is not None and num_channels != config.num_channels:
        fields.update(num_channels=num_channels, field_names=None)
        channels_changed = True
    if num_out_channels is not None and num_out_channels != config.num_out_channels:
        fields["num_out_channels"] = num_out_channels
        slices = fields.get("channel_slice_list_normalized_loss")
        if slices is not None and slices[-1] != num_out_channels:
            fields["channel_slice_list_normalized_loss"] = None
        channels_changed = True
    fields.update(config_overrides)
    model = ScOT(ScOTConfig(**fields))

    state = read_state_dict(folder)
    expected = model.state_dict()
    new_conditioning = model.config.use_operator_conditioning and not checkpoint_conditioning
    reinitialized, errors = [], []
    for key, tensor in expected.items():
        if key not in state:
            if new_conditioning and (key.startswith("operator_embedding.") or ".operator." in key):
                reinitialized.append(key)
            else:
                errors.append(f"missing tensor {key} (expected shape {list(tensor.shape)})")
        elif state[key].shape != tensor.shape:
            if channels_changed and key in CHANNEL_DEPENDENT_KEYS:
                reinitialized.append(key)
            else:
                errors.append(
                    f"tensor {key}: expected shape {list(tensor.shape)}, checkpoint has {list(state[key].shape)}"
                )
    errors += [f"unexpected tensor {k} (shape {list(state[k].shape)})" for k in state if k not in expected]
    if errors:
        raise ValueError(
            f"load_model: {kind} checkpoint {source} does not fit ScOT:\n  " + "\n  ".join(errors)
        )
    keep = {k: v for k, v in state.items() if k not in reinitialized}
    model.load_state_dict(keep, strict=False)
    model.reinitialized_keys = reinitialized
    if reinitialized:
        logger.info("load_model(%s): re-initialised %s", source, ", ".join(reinitialized))
    return model.eval()
