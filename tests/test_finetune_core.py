"""finetune building blocks: data split and checks, channel plans and surgery, LR groups, the training loop,
predict/rollout."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from finetune_helpers import family_trajectories, tiny_checkpoint, tiny_model
from torch import nn

from data_pipelines.trajectory import Trajectory
from finetune.channels import load_for_fields, plan_channels, resolve_channel_mode
from finetune.data import load_trajectories, split_trajectories
from finetune.methods.full import FullOptions, poseidon_param_groups
from finetune.predict import predict, rollout
from finetune.trainer import TrainConfig, group_schedule, train


def _trajs(n: int) -> list[Trajectory]:
    rng = np.random.default_rng(0)
    return [
        Trajectory(rng.standard_normal((3, 1, 8, 8)), [0.0, 0.5, 1.0], ["s"], "toy", {"a": i})
        for i in range(n)
    ]


def test_split_is_seeded_disjoint_and_by_trajectory():
    trajs = _trajs(10)
    a, b = split_trajectories(trajs, 5, 2, 3, seed=1), split_trajectories(trajs, 5, 2, 3, seed=1)
    assert a.indices == b.indices
    ids = a.indices["train"] + a.indices["val"] + a.indices["test"]
    assert sorted(ids) == list(range(10))
    assert [t.params["a"] for t in a.train] == a.indices["train"]
    assert split_trajectories(trajs, 5, 2, 3, seed=2).indices != a.indices


def test_too_few_trajectories_is_a_clear_error():
    with pytest.raises(ValueError, match=r"4 trajectories, but shots=3 \+ validation=1 \+ test=1 needs 5"):
        split_trajectories(_trajs(4), 3, 1, 1)


def test_nan_in_data_names_trajectory_field_and_time():
    trajs = _trajs(3)
    trajs[2].u[1, 0, 4, 4] = np.nan
    with pytest.raises(ValueError, match=r"data\[2\].*field 's'.*time index 1"):
        load_trajectories(trajs)


def test_channel_plan_reuses_layout_for_subsets_and_needs_surgery_for_new_fields():
    poseidon = ["rho", "u", "v", "p"]
    assert plan_channels(poseidon, ["u", "v"]).layout == poseidon
    assert not plan_channels(poseidon, ["u", "v"]).surgery
    assert plan_channels(poseidon, ["s", "k"]).surgery
    assert plan_channels(["ch0", "ch1"], ["s", "k"]).layout == ["s", "k"]


@pytest.mark.parametrize("fields", [["u", "v"], ["rho", "u", "v", "p"], ["s"]])
def test_fresh_channels_always_give_the_data_its_own_embedding_and_recovery(tmp_path, fields):
    assert plan_channels(["rho", "u", "v", "p"], fields, "fresh").surgery
    base = tiny_model().state_dict()
    model, layout = load_for_fields(str(tiny_checkpoint(tmp_path / "ckpt")), fields, channels="fresh")
    assert layout == fields and model.config.num_channels == len(fields)
    assert not torch.equal(model.patch_recovery.mixup.weight, base["patch_recovery.mixup.weight"])
    kept = "encoder.layers.0.blocks.0.attention.self.query.weight"
    assert torch.equal(model.state_dict()[kept], base[kept])  # the backbone stays pretrained
    with pytest.raises(ValueError, match=r"channels must be one of \['auto', 'same', 'fresh'\], got 'new'"):
        plan_channels(["u"], ["u"], "new")


@pytest.mark.parametrize(
    ("vocabulary", "families", "mode"),
    [
        (["ns_sines", "gray_scott"], ["brusselator"], "fresh"),  # a family the model never saw
        (["ns_sines", "gray_scott"], ["gray_scott"], "same"),
        (None, ["brusselator"], "same"),  # no record (Poseidon's checkpoints): Poseidon's own convention
        (["ns_sines"], None, "same"),
    ],
)
def test_auto_channels_are_fresh_only_for_a_family_the_checkpoint_records_it_never_saw(
    tmp_path, vocabulary, families, mode
):
    assert resolve_channel_mode("auto", vocabulary, families) == mode
    assert resolve_channel_mode("same", vocabulary, families) == "same"
    ckpt = tiny_checkpoint(tmp_path / "ckpt", pde_vocabulary=vocabulary)
    _, layout = load_for_fields(str(ckpt), ["u", "v"], channels="auto", families=families)
    assert layout == (["u", "v"] if mode == "fresh" else ["rho", "u", "v", "p"])


def test_channel_mismatch_without_surgery_is_an_error(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    with pytest.raises(ValueError, match=r"channel mismatch.*\['rho', 'u', 'v', 'p'\].*\['s', 'k'\]"):
        load_for_fields(str(ckpt), ["s", "k"], allow_surgery=False)
    with pytest.raises(ValueError, match="channel mismatch"):
        load_for_fields(tiny_model(), ["s", "k"])


def test_surgery_replaces_only_channel_dependent_tensors(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    base = tiny_model().state_dict()
    model, layout = load_for_fields(str(ckpt), ["s", "k"])
    assert layout == ["s", "k"] and model.config.field_names == ["s", "k"]
    assert model.config.num_channels == 2 and model.config.num_out_channels == 2
    changed = {k for k, v in model.state_dict().items() if k not in base or not torch.equal(v, base[k])}
    assert changed == set(model.reinitialized_keys)
    assert (
        "patch_recovery.mixup.weight" in changed
        and "embeddings.patch_embeddings.projection.bias" not in changed
    )
    # Same count, other fields: the tensors are still replaced.
    model3, _ = load_for_fields(str(ckpt), ["s", "k", "f", "c"])
    assert model3.config.num_channels == 4
    assert not torch.equal(model3.patch_recovery.mixup.weight, base["patch_recovery.mixup.weight"])


def test_checkpoint_of_another_architecture_is_an_error(tmp_path):
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(ValueError, match=r"neither a pdefm checkpoint.*'bert'"):
        load_for_fields(str(folder), ["u"])


def test_poseidon_param_groups():
    model = tiny_model()
    groups = {
        g["name"]: g for g in poseidon_param_groups(model, FullOptions(lr_backbone=1.0, lr_embedding=2.0))
    }
    names = {id(p): n for n, p in model.named_parameters()}
    member = {names[id(p)]: g for g in groups for p in groups[g]["params"]}
    assert len(member) == sum(len(g["params"]) for g in groups.values()) == len(names)
    block = "encoder.layers.0.blocks.0."
    assert member["embeddings.patch_embeddings.projection.weight"] == "embedding_recovery"
    assert member["embeddings.norm.weight.weight"] == "embedding_recovery"
    assert member["patch_recovery.mixup.weight"] == "embedding_recovery"
    assert member[block + "layernorm_before.weight.weight"] == "time_norms"
    assert member[block + "layernorm_after.bias.bias"] == "time_norms"
    assert member[block + "attention.self.query.weight"] == "backbone"
    assert member["residual_blocks.0.0.weight"] == "backbone"  # layer scale is decayed, as in Poseidon
    assert member[block + "attention.self.query.bias"] == "backbone_no_decay"
    assert groups["embedding_recovery"]["lr"] == 2.0 and groups["time_norms"]["weight_decay"] == 0.0
    assert groups["backbone"]["lr"] == 1.0 and groups["backbone_no_decay"]["weight_decay"] == 0.0
    frozen = poseidon_param_groups(model, FullOptions(backbone_frozen=0.3))
    assert {g["name"]: g["frozen_fraction"] for g in frozen if "frozen_fraction" in g} == {
        "time_norms": 0.3, "backbone": 0.3, "backbone_no_decay": 0.3
    }  # fmt: skip
    with pytest.raises(ValueError, match="backbone_frozen"):
        FullOptions(backbone_frozen=1.0)


class Scale(nn.Module):
    """y = w * x with L2 loss: a module with ScOT's forward signature."""

    def __init__(self, w: float):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))

    def forward(self, pixel_values, time, pixel_mask=None, labels=None, **_):
        out = self.w * pixel_values
        loss = None if labels is None else ((out - labels) ** 2).mean()
        return SimpleNamespace(loss=loss, output=out)


def _examples(factor: float, n: int = 8) -> list[dict]:
    x = torch.randn(n, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    return [{"pixel_values": x[i], "labels": factor * x[i], "time": torch.tensor(1.0)} for i in range(n)]


def test_trainer_keeps_best_epoch_and_is_seeded():
    cfg = TrainConfig(epochs=5, batch_size=4, lr=0.1, max_grad_norm=0.0)
    model = Scale(0.0)
    result = train(model, _examples(2.0), _examples(2.0), config=cfg)
    assert result.best_val_loss < result.initial_val_loss and result.best_epoch > 0
    assert math.isclose(result.history[result.best_epoch]["val_loss"], result.best_val_loss)
    again = Scale(0.0)
    repeat = train(again, _examples(2.0), _examples(2.0), config=cfg)
    assert [h["val_loss"] for h in repeat.history] == [h["val_loss"] for h in result.history]
    assert torch.equal(again.w, model.w)
    # Training towards another target only hurts validation: the starting point (epoch 0) is kept.
    start = Scale(2.0)
    result = train(start, _examples(-1.0), _examples(2.0), config=cfg)
    assert result.best_epoch == 0 and float(start.w.detach()) == 2.0
    assert result.history[-1]["val_loss"] > result.initial_val_loss


@pytest.mark.parametrize("frozen", [0.0, 0.25])
def test_group_schedule_is_transformers_cosine_after_a_frozen_start(frozen):
    from transformers import get_cosine_schedule_with_warmup

    def rates(make, groups):
        opt = torch.optim.SGD(groups, lr=1.0)
        sched, out = make(opt), []
        for _ in range(100):
            out.append(sched.get_last_lr())
            opt.step()
            sched.step()
        return np.array(out)

    p, q = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    ours = rates(
        lambda o: group_schedule(o, 10, 100), [{"params": [p]}, {"params": [q], "frozen_fraction": frozen}]
    )
    reference = rates(lambda o: get_cosine_schedule_with_warmup(o, 10, 100), [p])[:, 0]
    np.testing.assert_allclose(ours[:, 0], reference, atol=1e-12)
    start = round(frozen * 100)
    assert (ours[: start + 1, 1] == 0).all() and ours[start + 10, 1] == pytest.approx(1.0)
    assert ours[start + 1 :, 1].min() >= 0 and ours[-1, 1] < 0.01  # warms up, then decays to ~0 by the end


class TwoScales(nn.Module):
    """y = body * (head * x): two parameters for two parameter groups."""

    def __init__(self):
        super().__init__()
        self.head, self.body = Scale(1.0), Scale(0.0)

    def forward(self, pixel_values, time, labels=None, **_):
        return self.body(self.head.w * pixel_values, time, labels=labels)


def test_frozen_group_does_not_move_before_its_start():
    model, seen = TwoScales(), []
    groups = [
        {"name": "head", "params": [model.head.w]},
        {"name": "body", "params": [model.body.w], "frozen_fraction": 0.5},
    ]
    cfg = TrainConfig(epochs=8, batch_size=4, lr=0.1, max_grad_norm=0.0, warmup_steps=0)
    train(model, _examples(2.0), _examples(2.0), config=cfg, param_groups=groups,
          grad_transform=lambda m: seen.append((float(m.head.w), float(m.body.w))))  # fmt: skip
    assert len(seen) == 16  # 2 steps per epoch; the body's first update is step 8's
    assert all(body == 0.0 for _, body in seen[:9]) and seen[9][1] != 0.0
    assert seen[1][0] != 1.0  # the head trains from the first step
    with pytest.raises(ValueError, match="frozen_fraction"):
        group_schedule(torch.optim.SGD([{"params": [model.body.w], "frozen_fraction": 1.0}], lr=1.0), 0, 10)


class Decay(nn.Module):
    """Exact propagator of du/dt = -lam u; a static forcing channel is passed through on input only."""

    def __init__(self, lam: float, out_channels: int):
        super().__init__()
        self.lam, self.out_channels = lam, out_channels
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, pixel_values, time, **_):
        u = pixel_values[:, : self.out_channels]
        if pixel_values.shape[1] > self.out_channels:
            u = u + time[:, None, None, None] * pixel_values[:, self.out_channels :]
        return SimpleNamespace(loss=None, output=u * torch.exp(-self.lam * time)[:, None, None, None])


def test_predict_and_rollout_match_the_exact_propagator():
    u0 = torch.randn(2, 3, 8, 8)
    model = Decay(0.7, 3)
    assert torch.allclose(predict(model, u0, 0.5), u0 * math.exp(-0.35))
    assert predict(model, u0[0], 0.5).shape == (3, 8, 8)
    traj = rollout(model, u0, 4, 0.25)
    assert traj.shape == (2, 5, 3, 8, 8) and torch.equal(traj[:, 0], u0)
    assert torch.allclose(traj[:, 4], u0 * math.exp(-0.7), atol=1e-6)
    # A model with an extra static input channel gets it re-appended at every step.
    forced = Decay(0.0, 1)
    x0 = torch.stack([torch.zeros(8, 8), torch.ones(8, 8)])[None]
    traj = rollout(forced, x0, 3, 0.5)
    assert torch.allclose(traj[0, 3, 0], torch.full((8, 8), 1.5)) and torch.equal(traj[0, 3, 1], x0[0, 1])
    with pytest.raises(ValueError, match="u0 must be"):
        predict(model, torch.zeros(8, 8), 0.1)


def test_generated_family_is_finite_and_shaped():
    trajs = family_trajectories("diffusion", 2)
    assert trajs[0].u.shape == (4, 2, 32, 32) and trajs[0].fields == ["s", "k"]


def test_data_loads_from_corpus_folder_and_folder_of_files(tmp_path):
    from data_pipelines.corpus import write_corpus

    trajs = _trajs(3)
    write_corpus(tmp_path / "corpus", trajs, progress=False)
    loaded = load_trajectories(tmp_path / "corpus")
    assert len(loaded) == 3 and np.allclose(
        sorted(t.u.sum() for t in loaded), sorted(t.u.sum() for t in trajs)
    )
    files = tmp_path / "files"
    files.mkdir()
    for k, t in enumerate(trajs):
        np.savez(files / f"traj{k}.npz", u=t.u, t=t.t, fields=np.array(t.fields))
    assert len(load_trajectories(files)) == 3
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_trajectories(tmp_path / "missing")


@pytest.mark.parametrize(
    ("method", "asked", "used"),
    [("full", "auto", "auto"), ("full", "fresh", "fresh"), ("physguard", "auto", "same")],
)
def test_methods_choose_their_channel_mode(method, asked, used):
    from finetune.methods.registry import get_method

    assert get_method(method).channel_mode(asked) == used


def test_physguard_refuses_fresh_channels():
    from finetune.methods.registry import get_method

    with pytest.raises(ValueError, match="'physguard' keeps the checkpoint's own channels"):
        get_method("physguard").channel_mode("fresh")
    with pytest.raises(ValueError, match="channels must be one of"):
        get_method("physguard").channel_mode("new")  # checked even where the method keeps its channels
