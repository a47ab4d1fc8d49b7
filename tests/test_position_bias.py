"""The batched continuous-position-bias Function against the modular Swin-V2 form it replaces, one MLP per block:
values, gradients (including a finite-difference check in float64) and per-example gradients under `torch.func.vmap`."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from foundation.attention import coords_table, relative_index
from foundation.position_bias import ContinuousPositionBias, level_position_bias


def _mlps(count: int, heads: int, hidden: int = 16, dtype=torch.float32) -> list[nn.Sequential]:
    torch.manual_seed(0)
    return [
        nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, heads, bias=False)).to(dtype)
        for _ in range(count)
    ]


def _modular(mlp: nn.Sequential, window: int, heads: int) -> torch.Tensor:
    """HF Swinv2's formulation: MLP on the coordinate table, gather, then 16*sigmoid."""
    table = mlp(coords_table(window, "cpu").to(mlp[0].weight.dtype))
    n = window * window
    bias = table[relative_index(window, "cpu").reshape(-1)].view(n, n, heads).permute(2, 0, 1)
    return 16 * torch.sigmoid(bias)


@pytest.mark.parametrize("window,heads,count", [(2, 1, 1), (4, 3, 3), (7, 2, 2)])
def test_values_and_gradients_equal_the_modular_form_per_block(window, heads, count):
    """float32: values to 1e-6, gradients (sums over w^4 token pairs) to rtol 1e-4."""
    mlps = _mlps(count, heads)
    ours = level_position_bias(coords_table(window, "cpu"), relative_index(window, "cpu"), mlps)
    ref = torch.stack([_modular(mlp, window, heads) for mlp in mlps])
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    weights = torch.randn_like(ref)
    params = [p for mlp in mlps for p in mlp.parameters()]
    g_ours = torch.autograd.grad((ours * weights).sum(), params)
    g_ref = torch.autograd.grad((ref * weights).sum(), params)
    for a, b in zip(g_ours, g_ref, strict=True):
        assert a.stride() == b.stride()  # the parameters' own layout: AccumulateGrad takes them as they are
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_backward_passes_a_finite_difference_check():
    window, heads = 3, 2
    coords = coords_table(window, "cpu").double()
    index = relative_index(window, "cpu").reshape(-1)
    mlps = _mlps(2, heads, hidden=6, dtype=torch.float64)

    def bias(w1, b1, w2):
        return ContinuousPositionBias.apply(coords, index, w1, b1, w2)[0]

    params = [
        torch.stack([get(mlp) for mlp in mlps]).detach().requires_grad_(True)
        for get in (lambda m: m[0].weight, lambda m: m[0].bias, lambda m: m[2].weight)
    ]
    assert torch.autograd.gradcheck(bias, params)


class _Bias(nn.Module):
    """The biases of two blocks with one window size as a module, so torch.func can swap their parameters."""

    def __init__(self, window: int, heads: int):
        super().__init__()
        self.window = window
        self.mlps = nn.ModuleList(_mlps(2, heads))

    def forward(self, weights: torch.Tensor) -> torch.Tensor:
        w = self.window
        bias = level_position_bias(coords_table(w, "cpu"), relative_index(w, "cpu"), list(self.mlps))
        return (bias * weights).sum()


def test_per_example_gradients_under_vmap_equal_a_loop():
    """PhysGuard's per-example gradients: vmap(grad) must run the Function, not fall back."""
    module = _Bias(window=4, heads=3)
    params = {n: p.detach() for n, p in module.named_parameters()}
    examples = torch.randn(5, 2, 3, 16, 16)

    def loss(p, example):
        return functional_call(module, p, (example,))

    batched = vmap(grad(loss), in_dims=(None, 0))(params, examples)
    for i, example in enumerate(examples):
        single = torch.autograd.grad(module(example), list(module.parameters()))
        for name, g in zip(params, single, strict=True):
            torch.testing.assert_close(batched[name][i], g, rtol=1e-5, atol=1e-6)
