"""Poseidon compatibility: state-dict layout, the tiny reference model's exact outputs, loading and channel surgery."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from foundation.configuration_scot import ScOTConfig
from foundation.loading import CHANNEL_DEPENDENT_KEYS, load_model
from foundation.loss import relative_group_loss
from foundation.modeling_scot import ScOT

FIXTURE = Path(__file__).parent / "fixtures" / "poseidon_tiny"
MANIFEST = Path(__file__).parent / "fixtures" / "poseidon_T_state_dict.tsv"


@pytest.fixture(scope="module")
def vectors():
    return load_file(FIXTURE / "vectors.safetensors")


@pytest.fixture(scope="module")
def reference_state():
    return load_file(FIXTURE / "model.safetensors")


def _rel_l2(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_T_preset_state_dict_equals_poseidon_manifest():
    rows = [line.rstrip("\n").split("\t") for line in MANIFEST.read_text().splitlines()[1:]]
    manifest = {key: json.loads(shape) for key, shape in rows}
    with torch.device("meta"):
        model = ScOT(ScOTConfig.from_preset("T"))
    mine = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert mine == manifest
    assert sum(v.numel() for v in model.state_dict().values()) == 20_774_444


def test_B_and_L_presets_follow_the_same_layout():
    for preset, params in (("B", 158e6), ("L", 629e6)):
        with torch.device("meta"):
            state = ScOT(ScOTConfig.from_preset(preset)).state_dict()
        assert len(state) == 1580
        assert abs(sum(v.numel() for v in state.values()) / params - 1) < 0.01


def test_reference_tiny_model_reproduces_output_and_loss(vectors):
    model = load_model(FIXTURE)
    assert model.reinitialized_keys == []
    with torch.no_grad():
        out = model(vectors["pixel_values"], vectors["time"], labels=vectors["labels"])
    assert _rel_l2(out.output, vectors["output"]) <= 1e-5
    assert abs(out.loss.item() - vectors["loss"].item()) <= 1e-5
    # The loss is batch-aggregated; the per-sample mean differs by 2e-6 and must not match as closely.
    per_sample = torch.stack(
        [
            relative_group_loss(out.output[i : i + 1], vectors["labels"][i : i + 1], [0, 1, 3, 4])
            for i in range(3)
        ]
    ).mean()
    assert abs(per_sample.item() - vectors["loss"].item()) > 1e-6


def test_poseidon_config_fields_are_all_carried():
    raw = json.loads((FIXTURE / "config.json").read_text())
    model = load_model(FIXTURE)
    saved = model.config.to_dict()
    for key, value in raw.items():
        if key in ("model_type", "transformers_version"):
            continue
        assert key in saved, key
        if key != "architectures":
            assert saved[key] == value, key
    assert model.config.field_names == ["rho", "u", "v", "p"]


def test_channel_surgery_reinitialises_only_mismatched_tensors(reference_state, vectors, caplog):
    with caplog.at_level(logging.INFO, logger="foundation.loading"):
        model = load_model(FIXTURE, num_channels=5, num_out_channels=3)
    assert sorted(model.reinitialized_keys) == sorted(CHANNEL_DEPENDENT_KEYS)
    for key in CHANNEL_DEPENDENT_KEYS:
        assert key in caplog.text
    state = model.state_dict()
    assert set(state) == set(reference_state)
    for key, tensor in state.items():
        if key in CHANNEL_DEPENDENT_KEYS:
            assert tensor.shape != reference_state[key].shape
        else:
            assert torch.equal(tensor, reference_state[key]), key
    assert state["embeddings.patch_embeddings.projection.weight"].shape == (24, 5, 4, 4)
    assert model.config.field_names == ["ch0", "ch1", "ch2", "ch3", "ch4"]
    assert model.config.channel_slice_list_normalized_loss is None
    x = torch.cat([vectors["pixel_values"], vectors["pixel_values"][:, :1]], dim=1)
    out = model(x, vectors["time"], labels=vectors["labels"][:, :3])
    assert out.output.shape == (3, 3, 64, 64) and torch.isfinite(out.loss)
    # Same channel counts: nothing is re-initialised.
    assert load_model(FIXTURE, num_channels=4, num_out_channels=4).reinitialized_keys == []


def _edited_checkpoint(tmp_path, state, config_edit=None) -> Path:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    config = json.loads((FIXTURE / "config.json").read_text())
    if config_edit:
        config.update(config_edit)
    (folder / "config.json").write_text(json.dumps(config))
    save_file(state, folder / "model.safetensors")
    return folder


def test_missing_extra_and_misshapen_tensors_are_named(tmp_path, reference_state):
    state = dict(reference_state)
    del state["decoder.layers.0.upsample.mixup.weight"]
    state["encoder.layers.9.extra"] = torch.zeros(2, 3)
    state["encoder.layers.1.blocks.0.attention.self.query.weight"] = torch.zeros(48, 47)
    # Channel-dependent shapes that differ without a requested channel change are errors too.
    state["patch_recovery.mixup.weight"] = torch.zeros(5, 5, 5, 5)
    with pytest.raises(ValueError) as err:
        load_model(_edited_checkpoint(tmp_path, state))
    msg = str(err.value)
    assert "missing tensor decoder.layers.0.upsample.mixup.weight (expected shape [96, 96])" in msg
    assert "unexpected tensor encoder.layers.9.extra (shape [2, 3])" in msg
    assert (
        "encoder.layers.1.blocks.0.attention.self.query.weight: expected shape [48, 48], checkpoint has [48, 47]"
        in msg
    )
    assert "patch_recovery.mixup.weight: expected shape [4, 4, 5, 5], checkpoint has [5, 5, 5, 5]" in msg


def test_swinforpde_architecture_name_and_unknown_models(tmp_path, reference_state, vectors):
    folder = _edited_checkpoint(tmp_path, reference_state, {"architectures": ["SwinForPDE"]})
    with torch.no_grad():
        out = load_model(folder)(vectors["pixel_values"], vectors["time"]).output
    assert _rel_l2(out, vectors["output"]) <= 1e-5
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(ValueError, match="neither a pdefm checkpoint.*got model_type 'bert'"):
        load_model(folder)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nowhere")


def test_load_poseidon_checkpoint_by_hub_id(hub_server, tmp_path, vectors):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub_server)
    repo = api.create_repo("camlab-test/Poseidon-tiny", exist_ok=True).repo_id
    upload = tmp_path / "upload"
    shutil.copytree(FIXTURE, upload)
    (upload / "vectors.safetensors").unlink()
    api.upload_folder(repo_id=repo, folder_path=upload)
    model = load_model(repo, revision="main")
    with torch.no_grad():
        out = model(vectors["pixel_values"], vectors["time"]).output
    assert _rel_l2(out, vectors["output"]) <= 1e-5
