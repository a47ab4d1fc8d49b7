"""PhysGuard's memory at scale: the documented formula bounds what `compute_bases` allocates (measured on a tiny
scOT by a live-storage counter, several tensor groups and a binding basis budget), it fits Poseidon-B on a
24 GB device with 4 GB of host memory, grouping does not change the bases, and meta-learning's inner loop
reads nothing from the device per parameter tensor."""

from __future__ import annotations

import copy
import weakref
from types import SimpleNamespace

import torch
from finetune_helpers import pretrained_on_diffusion
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from finetune.methods import meta as meta_method
from finetune.methods import physguard as pg
from foundation.configuration_scot import ScOTConfig
from foundation.modeling_scot import ScOT

GB = 2**30


class LiveBytes(TorchDispatchMode):
    """Peak bytes of tensor storages created while active (by storage, freed when the storage dies)."""

    def __init__(self):
        super().__init__()
        self.live, self.now, self.peak = {}, 0, 0

    def _free(self, key: int, nbytes: int) -> None:
        self.live.pop(key, None)
        self.now -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = id(storage)
                if key not in self.live:
                    n = storage.nbytes()
                    self.live[key] = weakref.ref(storage, lambda _, k=key, n=n: self._free(k, n))
                    self.now += n
                    self.peak = max(self.peak, self.now)
        return out


def _example_bytes(example: dict) -> int:
    return sum(v.numel() * v.element_size() for v in example.values())


def _formula(model, data, options: pg.PhysGuardOptions, n_samples: int) -> dict:
    example = {k: v for k, v in data[0].items() if k in ("pixel_values", "labels", "time", "pixel_mask")}
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    return pg.memory_formula(
        sizes,
        options,
        n_samples=n_samples,
        weight_bytes=weights,
        activation_bytes=pg.activation_bytes(model, example),
        example_bytes=_example_bytes(example),
    )


def test_formula_bounds_the_measured_peak_and_groups_keep_the_bases():
    model, train_pairs, _, _ = pretrained_on_diffusion()
    model = copy.deepcopy(model)
    params = sum(p.numel() for p in model.parameters())
    # several groups (rows of ~1/4 of the model at a time) and a basis budget that caps the rank at 2
    options = pg.PhysGuardOptions(
        n_samples=8,
        chunk_size=4,
        gradient_budget_gb=2 * 8 * params / 4 / pg.GIB,
        basis_budget_gb=2 * 2 * params / pg.GIB,
    )
    plan = _formula(model, train_pairs, options, n_samples=8)
    assert plan["groups"] >= 4 and plan["rank_cap"] == 2
    with LiveBytes() as counter:
        bases = pg.compute_bases(model, train_pairs, options)
    allocated = plan["device_bytes"] - plan["device_weights"]  # the weights exist before
    print(f"measured {counter.peak / 2**20:.1f} MiB <= formula {allocated / 2**20:.1f} MiB")
    assert 0 < counter.peak <= allocated, (counter.peak, allocated)
    assert all(U.shape[1] <= 2 and U.dtype == torch.float16 for U in bases.values())

    one_group = pg.compute_bases(
        model, train_pairs, pg.PhysGuardOptions(**{**vars(options), "gradient_budget_gb": 8})
    )
    assert one_group.keys() == bases.keys()
    probe = {n: torch.randn(U.shape[0], dtype=torch.float64) for n, U in bases.items()}
    for n, U in bases.items():  # same protected subspaces (up to half precision)
        a, b = U.double(), one_group[n].double()
        assert torch.allclose(a @ (a.T @ probe[n]), b @ (b.T @ probe[n]), atol=2e-2 * probe[n].norm())


def test_formula_fits_poseidon_b_on_a_24_gb_device():
    with torch.device("meta"):
        model = ScOT(ScOTConfig.from_preset("B"))
        side = model.config.image_size
        example = {
            "pixel_values": torch.randn(4, side, side),
            "labels": torch.randn(4, side, side),
            "time": torch.tensor(0.5),
            "pixel_mask": torch.zeros(4, dtype=torch.bool),
        }
    plan = _formula(model, [example], pg.PhysGuardOptions(), n_samples=200)
    print({k: round(v / GB, 3) for k, v in plan.items() if k.endswith("bytes") or "_" in k})
    assert sum(p.numel() for p in model.parameters()) > 150e6
    assert plan["device_bytes"] <= 24 * GB and plan["host_bytes"] <= 4 * GB
    assert plan["groups"] >= 4 and plan["rank_cap"] >= 10


class _CountingSyncs(TorchDispatchMode):
    """Counts `aten._local_scalar_dense` (a device-to-host read: `.item()`, `float()`, `bool()`)."""

    def __init__(self):
        super().__init__()
        self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.syncs += 1
        return func(*args, **(kwargs or {}))


class _Layers(nn.Module):
    """Many small parameter tensors behind ScOT's call signature (and no host reads of its own)."""

    def __init__(self, depth: int = 12):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(16, 16) for _ in range(depth))

    def forward(self, pixel_values, time, labels=None, **_):
        x = pixel_values.flatten(1)
        for layer in self.layers:
            x = torch.tanh(layer(x)) + x
        return SimpleNamespace(loss=((x - labels.flatten(1)) ** 2).mean(), output=x)


def test_meta_gradient_reads_nothing_from_the_device():
    torch.manual_seed(0)
    examples = [
        {"pixel_values": torch.randn(1, 4, 4), "labels": torch.randn(1, 4, 4), "time": torch.tensor(0.5)}
        for _ in range(12)
    ]
    task = meta_method.Task("toy", {}, examples[:6], examples[6:])
    model = _Layers()
    lr = torch.tensor(1e-2)  # a learned inner learning rate is a device scalar too
    with _CountingSyncs() as counter:
        grads, loss, hyper = meta_method.meta_gradient(
            model, task, meta_method.MetaOptions(inner_steps=3), lr, batch_size=4
        )
    assert counter.syncs == 0  # 24 parameter tensors, 3 inner steps, 2 batches each: no host read
    assert len(grads) == 24 and torch.isfinite(loss) and torch.isfinite(hyper)
