"""The chunked window-attention Function against autograd's explicit softmax(q k^T + mask) v: values and
gradients, with one mask for all windows or one per window, over several chunks and a ragged last chunk."""

from __future__ import annotations

import pytest
import torch

import foundation.chunked_attention as chunked


def _explicit(q, k, v, mask, windows):
    total, heads, n, _ = q.shape
    scores = (q @ k.transpose(-2, -1)).view(total // windows, windows, heads, n, n) + mask
    return torch.softmax(scores, dim=-1).view(total, heads, n, n) @ v


@pytest.mark.parametrize("per_window_mask", [False, True])
def test_values_and_gradients_equal_the_explicit_form(monkeypatch, per_window_mask):
    samples, windows, heads, n, d = 5, 4, 2, 16, 8
    # chunks of 2 samples (8 windows), so 5 samples make two full chunks and a ragged one
    monkeypatch.setattr(chunked, "CHUNK_BYTES", 2 * windows * heads * n * n * 4)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(samples * windows, heads, n, d, generator=g, requires_grad=True) for _ in range(3))
    mask = torch.randn(windows if per_window_mask else 1, heads, n, n, generator=g, requires_grad=True)
    grad_out = torch.randn(samples * windows, heads, n, d, generator=g)

    ours = chunked.chunked_window_attention(q, k, v, mask, windows)
    ref = _explicit(q, k, v, mask, windows)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    g_ours = torch.autograd.grad(ours, (q, k, v, mask), grad_out)
    g_ref = torch.autograd.grad(ref, (q, k, v, mask), grad_out)
    for name, a, b in zip("qkvm", g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=f"gradient of {name}")


def test_cpu_training_uses_it_with_the_gradients_of_the_autograd_path():
    """attn_implementation "auto" trains with the Function on CPU; "eager" (autograd's explicit form) agrees."""
    from foundation.configuration_scot import ScOTConfig
    from foundation.modeling_scot import ScOT

    torch.manual_seed(0)
    model = ScOT(ScOTConfig.from_preset("tiny", image_size=32)).train()
    x, t, y = torch.randn(2, 4, 32, 32), torch.rand(2), torch.randn(2, 4, 32, 32)

    def gradients():
        model.zero_grad(set_to_none=True)
        loss = model(x, t, labels=y).loss
        loss.backward()
        return loss, {n: p.grad.clone() for n, p in model.named_parameters()}

    loss, ours = gradients()
    nodes, seen = [loss.grad_fn], set()
    while nodes:  # the Function is on the graph
        node = nodes.pop()
        if node is not None and node not in seen:
            seen.add(node)
            nodes += [next_node for next_node, _ in node.next_functions]
    assert any(type(node).__name__ == "ChunkedWindowAttentionBackward" for node in seen)

    model.config.attn_implementation = "eager"
    _, ref = gradients()
    for name, grad in ref.items():
        torch.testing.assert_close(ours[name], grad, rtol=1e-4, atol=1e-6, msg=name)
