"""Adaptation methods on a tiny scOT and a generated family: each lowers validation error; LoRA trains only
adapters and merges exactly; first-order MAML / Reptile match hand-computed gradients; PhysGuard's projection
keeps protected directions and forgets less than full fine-tuning."""

from __future__ import annotations

import copy
from dataclasses import asdict
from types import SimpleNamespace

import pytest
import torch
from finetune_helpers import (
    LAYOUT,
    family_trajectories,
    pretrained_checkpoint,
    pretrained_on_diffusion,
    tiny_checkpoint,
    tiny_model,
)
from safetensors.torch import load_file
from torch import nn

from finetune.api import InputOptions, finetune
from finetune.channels import load_for_fields
from finetune.data import pair_dataset
from finetune.methods import lora as lora_method
from finetune.methods import meta as meta_method
from finetune.methods import physguard as pg
from finetune.methods.full import FullOptions, poseidon_param_groups
from finetune.trainer import TrainConfig, evaluate, move_batch, train
from foundation.loading import load_model

FAST = FullOptions(lr_backbone=1e-3, lr_embedding=2e-3, lr_time=2e-3)
RUN = dict(inputs=InputOptions(n_val=1, n_test=1), train=TrainConfig(epochs=2, batch_size=10))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The starting point: a tiny scOT briefly pretrained on diffusion, channels [s, k]."""
    return pretrained_checkpoint(tmp_path_factory.mktemp("ckpt") / "pretrained")


@pytest.fixture(scope="module")
def new_family():
    """The few-shot target: Allen-Cahn (field s; the model's k channel is masked)."""
    return list(family_trajectories("allen_cahn", 5))


def _probe(channels: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"pixel_values": torch.randn(2, channels, 32, 32, generator=g), "time": torch.tensor([0.3, 0.9])}


def _out(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**_probe()).output


def test_full_lowers_validation_and_saved_model_loads_back(checkpoint, new_family, tmp_path):
    res = finetune(str(checkpoint), new_family, 3, "full", tmp_path, options=FAST, **RUN)
    assert res.channels == LAYOUT  # the data's [s] fits the model's [s, k]: no surgery
    assert res.best_val_loss < res.initial_val_loss
    assert res.test_loss is not None and (tmp_path / "history.json").is_file()
    reloaded = load_model(res.paths["model"])
    assert reloaded.config.field_names == LAYOUT
    assert torch.allclose(_out(reloaded), _out(res.model), atol=1e-6)
    assert (res.paths["model"] / "normalization.json").is_file()
    card = (res.paths["model"] / "README.md").read_text()
    assert "Poseidon's parameter groups" in card  # the method's own paragraph, from the registry


def _lora_parameter_count(base: nn.Module, rank: int) -> int:
    """r (in + out) per targeted linear, plus the full modules_to_save, counted on the unwrapped model."""
    names = [n for n, m in base.named_modules() if isinstance(m, nn.Linear)]
    targeted = [base.get_submodule(n) for n in names if any(n.endswith(t) for t in lora_method.LORA_TARGETS)]
    # tiny: 5 Swin blocks per side x 6 linears (q, k, v, attn out, mlp in/out) + 6 ConvNeXt blocks x 2 pwconvs
    assert len(targeted) == 2 * 5 * 6 + 6 * 2
    count = sum(rank * (m.in_features + m.out_features) for m in targeted)
    return count + sum(
        p.numel() for n in lora_method.modules_to_save_for(base) for p in base.get_submodule(n).parameters()
    )


def test_lora_with_channel_surgery_trains_embedding_and_recovery_fully(tmp_path):
    base, _ = load_for_fields(str(tiny_checkpoint(tmp_path / "tiny")), LAYOUT)  # [rho,u,v,p] -> [s,k]
    saved = lora_method.modules_to_save_for(base)
    assert saved == [
        "embeddings.patch_embeddings.projection",
        "patch_recovery.mixup",
        "patch_recovery.projection",
    ]
    expected = _lora_parameter_count(base, rank=4)
    wrapped = lora_method.wrap(base, lora_method.LoraOptions(rank=4))
    assert sum(p.numel() for p in wrapped.parameters() if p.requires_grad) == expected
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert all("lora_" in n or "modules_to_save" in n for n in trainable)


def test_every_lora_adapter_is_on_the_forward_path():
    """Each adapter, the attention's query/key/value included, gets a gradient (none is silently bypassed)."""
    torch.manual_seed(0)
    wrapped = lora_method.wrap(tiny_model(0), lora_method.LoraOptions(rank=2))
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)  # peft starts B at zero, which would zero every A gradient
    batch = _probe(4)
    wrapped.train()(**batch, labels=torch.randn_like(batch["pixel_values"])).loss.backward()
    adapters = {n: p for n, p in wrapped.named_parameters() if "lora_" in n}
    assert any(".attention.self.query." in n for n in adapters)
    silent = [n for n, p in adapters.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert silent == []


def test_lora_trains_only_adapters_merges_exactly_and_reloads(checkpoint, new_family, tmp_path):
    rank = 4
    expected = _lora_parameter_count(load_model(checkpoint), rank)
    opts = lora_method.LoraOptions(rank=rank, alpha=8.0, lr=5e-3, merge=True)
    res = finetune(str(checkpoint), new_family, 3, "lora", tmp_path, options=opts, **RUN)
    assert sum(p.numel() for p in res.model.parameters() if p.requires_grad) == expected
    assert res.best_val_loss < res.initial_val_loss

    adapter_files = {p.name for p in res.paths["adapter"].iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= adapter_files
    assert "model.safetensors" not in adapter_files
    adapter_tensors = load_file(res.paths["adapter"] / "adapter_model.safetensors")
    assert sum(t.numel() for t in adapter_tensors.values()) == expected

    adapted = _out(res.model)
    reloaded = lora_method.load_adapter(load_model(checkpoint), res.paths["adapter"])
    assert torch.allclose(_out(reloaded), adapted, atol=1e-6)
    # merging folds B A into W: float32 rounding through every block (~1e-5 on O(1) outputs)
    assert torch.allclose(_out(load_model(res.paths["merged"])), adapted, atol=1e-4)
    assert not torch.allclose(_out(load_model(checkpoint)), adapted, atol=1e-4)  # the adapter does something


def _linear_task(xs, ys, xq, yq) -> meta_method.Task:
    def ex(x, y):
        return {
            "pixel_values": torch.tensor([[[x]]]),
            "labels": torch.tensor([[[y]]]),
            "time": torch.tensor(1.0),
        }

    return meta_method.Task(
        "toy",
        {},
        [ex(x, y) for x, y in zip(xs, ys, strict=True)],
        [ex(x, y) for x, y in zip(xq, yq, strict=True)],
    )


class Scale(nn.Module):
    def __init__(self, w: float):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))

    def forward(self, pixel_values, time, labels=None, **_):
        out = self.w * pixel_values.double()
        return SimpleNamespace(loss=((out - labels.double()) ** 2).mean(), output=out)


def test_first_order_maml_and_reptile_match_hand_computation():
    xs, ys, xq, yq = [1.0, 2.0], [3.0, 1.0], [0.5, -1.0, 2.0], [1.0, 0.0, 2.5]
    task = _linear_task(xs, ys, xq, yq)
    w0, lr, clip = 0.2, 0.1, 1.0

    def grad(w, x, y):  # d/dw mean((w x - y)^2)
        return sum(2 * xi * (w * xi - yi) for xi, yi in zip(x, y, strict=True)) / len(x)

    g0 = grad(w0, xs, ys)  # = -3.2, clamped to -1
    w1 = w0 - lr * max(-clip, min(clip, g0))
    g1 = grad(w1, xs, ys)
    w2 = w1 - lr * max(-clip, min(clip, g1))
    gq = grad(w2, xq, yq)
    assert abs(g0) > clip  # the clamp is exercised

    opts = meta_method.MetaOptions(inner_steps=2, inner_lr=lr, inner_clip=clip)
    grads, q_loss, hyper = meta_method.meta_gradient(Scale(w0), task, opts, lr, batch_size=2)
    assert float(grads["w"]) == pytest.approx(gq, rel=1e-10)
    assert float(q_loss) == pytest.approx(
        sum((w2 * x - y) ** 2 for x, y in zip(xq, yq, strict=True)) / 3, rel=1e-10
    )
    clipped_sum = max(-clip, min(clip, g0)) + max(-clip, min(clip, g1))
    assert float(hyper) == pytest.approx(-gq * clipped_sum, rel=1e-10)

    opts = meta_method.MetaOptions(algorithm="reptile", inner_steps=2, inner_lr=lr, inner_clip=clip)
    grads, _, _ = meta_method.meta_gradient(Scale(w0), task, opts, lr, batch_size=2)
    assert float(grads["w"]) == pytest.approx(w0 - w2, rel=1e-10)


def test_meta_lowers_adapted_validation_and_saves_checkpoint(checkpoint, new_family, tmp_path):
    opts = meta_method.MetaOptions(
        inner_steps=1, inner_lr=1e-2, outer_lr=2e-3, learn_inner_lr=True, max_inner_lr=0.05
    )
    bf16 = TrainConfig(epochs=2, batch_size=10, mixed_precision="bf16")  # autocast on the CPU too
    res = finetune(str(checkpoint), new_family, 3, "meta", tmp_path, options=opts, **RUN | {"train": bf16})
    assert res.best_val_loss < res.initial_val_loss and res.mixed_precision == "bf16"
    assert [row["step"] for row in res.history] == [0, 3, 6]  # 3 tasks, one per outer step, 2 epochs
    saved = load_model(res.paths["model"]).state_dict()  # float32 weights (the returned model predicts
    assert all(torch.equal(saved[k], v) for k, v in res.model.state_dict().items())  # under bf16 autocast)
    lr_net = meta_method.InnerLR(num_families=1, max_lr=0.05)
    lr_net.load_state_dict(load_file(res.paths["inner_lr"]))
    assert 0.0 < float(lr_net(0, torch.zeros(8))) < 0.05


def test_protected_basis_recovers_known_fisher_directions():
    torch.manual_seed(0)
    directions, _ = torch.linalg.qr(torch.randn(50, 3))
    coefficients = torch.randn(40, 3) * torch.tensor([10.0, 3.0, 0.1])
    grads = (
        coefficients @ directions.T
    )  # 40 per-sample gradients in a 3-dim subspace, energies ~ 100 : 9 : 0.01
    energy = torch.linalg.svdvals(grads) ** 2
    assert energy[0] / energy.sum() > 0.85
    top = pg.protected_basis(grads, tau=float(energy[0] / energy.sum()) - 0.01, max_rank=10)
    assert top.shape == (50, 1)
    two = pg.protected_basis(grads, tau=0.999, max_rank=10)
    assert two.shape[1] in (2, 3)
    assert torch.allclose(two.T @ two, torch.eye(two.shape[1]), atol=1e-5)
    assert pg.protected_basis(grads, tau=0.0, max_rank=10).shape == (50, 3)  # capped at the numerical rank
    assert pg.protected_basis(grads, tau=0.999, max_rank=1).shape == (50, 1)
    # The span lies in the true subspace: projecting it onto the complement leaves nothing.
    residual = two - directions @ (directions.T @ two)
    assert residual.norm() < 1e-4


def test_physguard_sgd_step_leaves_protected_directions_unchanged():
    model, train_pairs, _, norm = pretrained_on_diffusion()
    model = copy.deepcopy(model)
    bases = pg.compute_bases(model, train_pairs, pg.PhysGuardOptions(n_samples=8))
    assert bases and all(U.shape[1] <= 8 for U in bases.values())
    shifted = pair_dataset(family_trajectories("allen_cahn", 2), LAYOUT, norm)
    batch = move_batch(next(iter(torch.utils.data.DataLoader(shifted, batch_size=8))), "cpu")
    batch = {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}

    def step(project: bool) -> dict[str, torch.Tensor]:
        m = (
            copy.deepcopy(model).double().train()
        )  # float64, so that the difference of weights is exact enough
        before = {n: p.detach().clone() for n, p in m.named_parameters()}
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        m(**batch).loss.backward()
        if project:
            pg.Projector(m, bases, alpha=1.0)(m)
        opt.step()
        return {n: (p.detach() - before[n]).reshape(-1) for n, p in m.named_parameters()}

    def protected_fraction(delta):
        inside = sum(float((U.to(delta[n].dtype).T @ delta[n]).norm() ** 2) for n, U in bases.items())
        return (inside / sum(float(d.norm() ** 2) for d in delta.values())) ** 0.5

    assert protected_fraction(step(project=False)) > 0.1
    delta = step(project=True)
    fraction = protected_fraction(delta)
    assert fraction < 1e-6
    assert sum(float(d.norm()) for d in delta.values()) > 0  # it still learns outside the protected span


def test_physguard_forgets_less_than_full_finetuning_on_a_shifted_task():
    model, train_pairs, val_pairs, norm = pretrained_on_diffusion()
    bases = pg.compute_bases(model, train_pairs, pg.PhysGuardOptions(n_samples=16))
    shifted = list(family_trajectories("allen_cahn", 4))
    train_b, val_b = pair_dataset(shifted[:3], LAYOUT, norm), pair_dataset(shifted[3:], LAYOUT, norm)
    cfg = TrainConfig(epochs=3, batch_size=8, warmup_steps=0)  # the projection alone differs between the runs
    original = {}
    for name in ("full", "physguard"):
        m = copy.deepcopy(model)
        transform = pg.Projector(m, bases, alpha=1.0) if name == "physguard" else None
        groups = poseidon_param_groups(m, FullOptions(lr_backbone=1e-3, lr_embedding=1e-3, lr_time=1e-3))
        result = train(m, train_b, val_b, config=cfg, param_groups=groups, grad_transform=transform)
        assert result.steps == 12  # equal steps for both
        original[name] = evaluate(m, val_pairs)
    assert original["physguard"] < original["full"]


def test_physguard_lowers_validation_and_caches_its_basis(checkpoint, new_family, tmp_path):
    sim = list(family_trajectories("diffusion", 3, seed=1))  # the simulation data the checkpoint knows
    opts = pg.PhysGuardOptions(**asdict(FAST), n_samples=8, tau=0.5, sim_data=sim)
    res = finetune(str(checkpoint), new_family, 3, "physguard", tmp_path / "a", options=opts, **RUN)
    assert res.best_val_loss < res.initial_val_loss
    bases = pg.load_bases(res.paths["basis"], res.model)
    assert all(U.dtype == torch.float16 for U in bases.values())
    eye = {n: torch.eye(U.shape[1], dtype=torch.float64) for n, U in bases.items()}
    assert bases and all(  # orthonormal to half precision (the projector re-orthonormalises)
        torch.allclose(U.double().T @ U.double(), eye[n], atol=5e-3) for n, U in bases.items()
    )
    reloaded = load_model(res.paths["model"])
    assert torch.allclose(_out(reloaded), _out(res.model), atol=1e-6)
    cached = pg.PhysGuardOptions(**asdict(FAST), basis=str(res.paths["basis"]))
    run = RUN | {"train": TrainConfig(epochs=2, batch_size=10, max_steps=1)}
    again = finetune(str(checkpoint), new_family, 3, "physguard", tmp_path / "b", options=cached, **run)
    assert load_file(again.paths["basis"]).keys() == bases.keys()
