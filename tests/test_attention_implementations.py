"""Window-attention implementations (`ScOTConfig.attn_implementation`): values and gradients of every one, in float32
and under CPU bf16 autocast, and the autocast contract (q, k, v and the mask stay in the compute dtype)."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from foundation.attention import ScaledCosineSelfAttention
from foundation.configuration_scot import ScOTConfig
from foundation.modeling_scot import ScOT

IMPLEMENTATIONS = ("eager", "sdpa", "chunked", "auto")


@pytest.fixture(scope="module")
def model():
    """The tiny preset at 64^2 (level 0 has shifted windows), weights perturbed so that logit scales, layer
    scales and the time-conditioned norms all matter."""
    torch.manual_seed(0)
    m = ScOT(ScOTConfig.from_preset("tiny")).train()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "logit_scale" in name or (name.endswith(".weight") and p.dim() == 1):
                p.add_(0.05 * torch.randn_like(p))
    return m


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(2, 4, 64, 64, generator=g),
        torch.rand(2, generator=g),
        torch.randn(2, 4, 64, 64, generator=g),
    )


def _run(model, batch, implementation: str, bf16: bool):
    x, t, y = batch
    model.config.attn_implementation = implementation
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(x, t, labels=y)
    out.loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    model.config.attn_implementation = "auto"
    return out.output.detach().float(), grads


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def reference(model, batch):
    return _run(model, batch, "eager", bf16=False)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_float32_values_and_gradients_equal_eager(model, batch, reference, implementation):
    """float32: outputs to relative L2 1e-6, the whole gradient vector to 1e-5 (measured: bitwise equal on CPU)."""
    output, grads = _run(model, batch, implementation, bf16=False)
    assert _rel(output, reference[0]) <= 1e-6
    assert _rel(grads, reference[1]) <= 1e-5


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_bf16_autocast_values_and_gradients_near_float32(model, batch, reference, implementation):
    """bf16 autocast against the float32 reference: outputs to relative L2 5e-2 (measured 2-3e-2), the whole
    gradient vector to 0.15 (measured 0.08: bf16 logits carry ~0.05 absolute error into every softmax)."""
    output, grads = _run(model, batch, implementation, bf16=True)
    assert _rel(output, reference[0]) <= 5e-2
    assert _rel(grads, reference[1]) <= 0.15
    eager = _run(model, batch, "eager", bf16=True)
    assert _rel(output, eager[0]) <= 5e-2 and _rel(grads, eager[1]) <= 0.15


CUDA_AUTOCAST_FLOAT32 = {
    "__pow__",
    "__rpow__",
    "__rtruediv__",
    "acos",
    "asin",
    "cosh",
    "erfinv",
    "exp",
    "expm1",
    "layer_norm",
    "log",
    "log_softmax",
    "log10",
    "log1p",
    "log2",
    "norm",
    "normalize",
    "pow",
    "prod",
    "reciprocal",
    "rsqrt",
    "sinh",
    "softmax",
    "softplus",
    "sum",
    "tan",
    "cumsum",
    "cumprod",
    "vector_norm",
    "square",
}
"""Functions CUDA autocast runs in float32, casting their inputs (torch.amp docs; `square` is pow(x, 2))."""


class _AttentionCalls(TorchFunctionMode):
    """Records, inside attention forwards, the calls that read or return a tensor at least the size of q: the
    function, whether autocast was on when it was called, and the dtype of a full-size result."""

    def __init__(self):
        super().__init__()
        self.inside, self.q_numel, self.seen = False, 0, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.inside:
            leaves = [a for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
            tensors = [a for a in leaves if not isinstance(a, torch.nn.Parameter)]
            big_out = (
                isinstance(out, torch.Tensor) and out.is_floating_point() and out.numel() >= self.q_numel
            )
            if tensors and (big_out or any(a.numel() >= self.q_numel for a in tensors)):
                name = getattr(func, "__name__", str(func))
                self.seen.append((name, torch.is_autocast_enabled("cpu"), out.dtype if big_out else None))
        return out


@pytest.mark.parametrize("implementation", ["sdpa", "chunked"])
def test_autocast_keeps_q_k_v_and_mask_in_the_compute_dtype(model, batch, implementation):
    """Under autocast no full-size float32 tensor appears inside attention, and no function that CUDA autocast runs
    in float32 (sum, pow, rsqrt, softmax, ...) is called on a full-size tensor with autocast on: on a GPU it would
    upcast q, k or the scores (the CPU proxy of the CUDA contract; `test_gpu_ready` checks it on a GPU). The
    "eager" reference is exempt: its explicit softmax runs in float32 under CUDA autocast, as HF Swinv2's does."""
    x, t, _ = batch
    mode = _AttentionCalls()

    def enter(module, args):
        mode.inside, mode.q_numel = True, args[0].numel()

    def leave(module, args, out):
        mode.inside = False

    hooks = []
    for m in model.modules():
        if isinstance(m, ScaledCosineSelfAttention):
            hooks += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]
    model.config.attn_implementation = implementation
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), mode:
            model(x, t)
    finally:
        model.config.attn_implementation = "auto"
        for h in hooks:
            h.remove()
    assert mode.seen
    assert [s for s in mode.seen if s[2] not in (None, torch.bfloat16)] == []
    assert [s for s in mode.seen if s[1] and s[0] in CUDA_AUTOCAST_FLOAT32] == []


def test_implementation_is_chosen_by_config_or_from_pretrained(tmp_path):
    model = ScOT(ScOTConfig.from_preset("tiny", image_size=32, attn_implementation="sdpa"))
    model.save_pretrained(tmp_path)
    assert ScOT.from_pretrained(tmp_path).config.attn_implementation == "sdpa"
    assert (
        ScOT.from_pretrained(tmp_path, attn_implementation="chunked").config.attn_implementation == "chunked"
    )
    with pytest.raises(ValueError, match="attn_implementation must be one of"):
        ScOTConfig(attn_implementation="flash")
    with pytest.raises(ValueError, match="attn_implementation must be one of"):
        ScOT.from_pretrained(tmp_path, attn_implementation="flash_attention_2")
