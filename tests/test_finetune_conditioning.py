"""Operator conditioning end to end: the PDE vocabulary is built from the pretraining corpus, travels in the
checkpoint's config, is extended (ids kept, embedding grown) when fine-tuning meets a new family, and feeds
zero-shot prediction on unseen coefficients."""

from __future__ import annotations

import pytest
import torch
from finetune_helpers import family_trajectories, tiny_model

from data_pipelines.channels import ChannelMap
from finetune.api import InputOptions, finetune
from finetune.methods.full import FullOptions
from finetune.predict import predict
from finetune.trainer import TrainConfig
from foundation.conditioning import build_vocabulary, extend_vocabulary, operator_inputs
from foundation.loading import load_model

PRETRAIN_FAMILIES = ("diffusion", "advection", "allen_cahn")


def _conditioned(vocabulary, rows):
    return tiny_model(
        0,
        use_operator_conditioning=True,
        num_pde_families=rows,
        pde_vocabulary=vocabulary,
        num_channels=2,
        num_out_channels=2,
        field_names=["s", "k"],
        channel_slice_list_normalized_loss=[0, 1, 2],
    )


def test_build_vocabulary_is_sorted_and_distinct():
    assert build_vocabulary(["wave", "burgers", "wave"]) == ["burgers", "wave"]
    with pytest.raises(ValueError, match="no PDE family"):
        build_vocabulary([])


def test_extend_keeps_ids_grows_the_embedding_and_starts_new_families_at_the_mean(tmp_path):
    model = _conditioned(["a", "b", "c"], rows=3)
    before = model.operator_embedding.family.weight.detach().clone()
    assert extend_vocabulary(model, ["c", "a"]) == ["a", "b", "c"]  # nothing new: unchanged
    assert extend_vocabulary(model, ["d", "b", "e", "d"]) == ["a", "b", "c", "d", "e"]
    weight = model.operator_embedding.family.weight.detach()
    assert weight.shape[0] == 5 and model.config.num_pde_families == 5
    assert torch.equal(weight[:3], before)
    assert torch.allclose(weight[3], before.mean(0)) and torch.allclose(weight[4], before.mean(0))
    model.save_pretrained(tmp_path / "m")
    reloaded = load_model(tmp_path / "m")
    assert reloaded.config.pde_vocabulary == ["a", "b", "c", "d", "e"]
    assert torch.equal(reloaded.operator_embedding.family.weight, weight)
    assert extend_vocabulary(tiny_model(0), ["a"]) is None  # no operator conditioning: no vocabulary


def test_operator_inputs_follow_the_vocabulary():
    model = _conditioned(["diffusion", "allen_cahn"], rows=4)
    trajs = [*family_trajectories("allen_cahn", 1), *family_trajectories("diffusion", 1)]
    inputs = operator_inputs(model.config, [t.pde for t in trajs], [t.params for t in trajs])
    assert inputs["pde_id"].tolist() == [1, 0] and inputs["coefficients"].shape == (2, 8)
    with pytest.raises(ValueError, match=r"families \['wave'\] are not in the model's pde_vocabulary"):
        operator_inputs(model.config, ["wave"], [{}])
    assert operator_inputs(tiny_model(0).config, ["wave"], [{}]) == {}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A conditioned tiny scOT pretrained a few steps on a 3-family corpus by the pretraining loop."""
    from data_pipelines.corpus import generate_corpus
    from data_pipelines.solvers.registry import resolve_families
    from foundation.pretrain.config import PretrainConfig
    from foundation.pretrain.loop import pretrain

    root = tmp_path_factory.mktemp("conditioned")
    families = resolve_families(",".join(PRETRAIN_FAMILIES))
    generate_corpus(
        root / "corpus", families, trajectories=4, seed=0, shard_size=4, resolution=32, snapshots=3
    )
    overrides = {"image_size": 32, "use_operator_conditioning": True, "num_pde_families": 3}
    config = PretrainConfig(
        corpus=[str(root / "corpus")],
        out=str(root / "run"),
        model_overrides=overrides,
        max_steps=3,
        batch_size=4,
        warmup_steps=1,
        pairs_per_trajectory=2,
        log_with="none",
        progress=False,
    )
    pretrain(config)
    return root / "run" / "model"


def test_pretraining_stores_the_corpus_vocabulary(pretrained):
    model = load_model(pretrained)
    assert model.config.use_operator_conditioning
    assert model.config.pde_vocabulary == sorted(PRETRAIN_FAMILIES)


def test_finetuning_on_known_then_new_families_keeps_ids(pretrained, tmp_path):
    run = dict(options=FullOptions(lr_backbone=1e-3), train=TrainConfig(epochs=1, batch_size=8, device="cpu"))
    known = [t for name in PRETRAIN_FAMILIES for t in family_trajectories(name, 2, seed=3)]
    res = finetune(str(pretrained), known, 4, "full", tmp_path / "known", inputs=InputOptions(), **run)
    assert res.pde_vocabulary == sorted(PRETRAIN_FAMILIES)

    new = list(family_trajectories("burgers", 4, seed=3))
    # same-named channels, so the adapted model still has allen_cahn's "s" for the zero-shot check below
    same = InputOptions(channels="same")
    res = finetune(str(pretrained), new, 2, "full", tmp_path / "new", inputs=same, **run)
    assert res.pde_vocabulary == [*sorted(PRETRAIN_FAMILIES), "burgers"]
    adapted = load_model(res.paths["model"])
    assert adapted.config.pde_vocabulary == res.pde_vocabulary
    assert adapted.operator_embedding.family.num_embeddings == 4  # grown from the pretrained 3

    # zero-shot on coefficients the model never saw, looked up through the stored vocabulary
    unseen = family_trajectories("allen_cahn", 2, seed=99)
    mapped, _ = ChannelMap(adapted.config.field_names)(unseen[0].u, unseen[0].fields, None, "unseen")
    x = torch.from_numpy(mapped[:1])
    cond = operator_inputs(adapted.config, ["allen_cahn"], [unseen[0].params])
    assert cond["pde_id"].tolist() == [sorted(PRETRAIN_FAMILIES).index("allen_cahn")]
    assert torch.isfinite(predict(adapted, x, 0.5, **cond)).all()


def test_evaluation_forecasts_tell_a_conditioned_model_each_family():
    """The evaluation protocol looks each trajectory's family up in the model's vocabulary: the same model
    with its vocabulary reordered (so diffusion gets the other id) predicts differently, and a family
    outside the vocabulary is refused."""
    import dataclasses

    from eval_suite.protocol import TrainedOperator, forecast

    torch.manual_seed(0)
    model = _conditioned(["diffusion", "advection"], 2)
    with torch.no_grad():  # an initialised conditioning starts neutral; perturb it as training would
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    trajs = list(family_trajectories("diffusion", 2))
    op = TrainedOperator(model, ("s", "k"), None)
    first = forecast(op, trajs).pred
    model.config.pde_vocabulary = ["advection", "diffusion"]
    second = forecast(op, trajs).pred
    assert not torch.allclose(first, second)
    with pytest.raises(ValueError, match="not in the model's pde_vocabulary"):
        forecast(op, [dataclasses.replace(t, pde="wave") for t in trajs])
