"""ScOT behaviour on the tiny preset: transformers integration, resampling, conditioning, masks, errors, speed paths."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoConfig, AutoModel

from foundation.configuration_scot import ScOTConfig
from foundation.loading import load_model
from foundation.modeling_scot import ScOT, check_batch_values
from foundation.resampling import fft_resample


def _tiny(**overrides) -> ScOT:
    torch.manual_seed(0)
    return ScOT(ScOTConfig.from_preset("tiny", **overrides)).eval()


def _batch(b=2, c=4, side=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, c, side, side, generator=g),
        torch.rand(b, generator=g),
        torch.randn(b, 4, side, side),
    )


def test_auto_model_round_trip_and_no_buffers(tmp_path):
    model = _tiny()
    assert set(model.state_dict()) == {k for k, _ in model.named_parameters()}  # constants are not saved
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "pdefm_scot"
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is ScOT
    x, t, y = _batch()
    with torch.no_grad():
        a, b = model(x, t, labels=y), loaded(x, t, labels=y)
    assert torch.equal(a.output, b.output) and torch.equal(a.loss, b.loss)
    again = load_model(tmp_path)
    assert again.reinitialized_keys == [] and again.config.field_names == ["rho", "u", "v", "p"]


def test_presets_and_config_validation():
    t = ScOTConfig.from_preset("T", num_channels=5)
    assert (t.embed_dim, t.depths, t.num_heads, t.window_size, t.hidden_size) == (
        48,
        [4] * 4,
        [3, 6, 12, 24],
        16,
        384,
    )
    assert t.field_names == ["ch0", "ch1", "ch2", "ch3", "ch4"] and t.num_attention_heads == [3, 6, 12, 24]
    assert ScOTConfig.from_preset("L").embed_dim == 192 and ScOTConfig.from_preset("B").depths == [8] * 4
    with pytest.raises(ValueError, match="unknown ScOT preset 'XL'"):
        ScOTConfig.from_preset("XL")
    with pytest.raises(ValueError, match="field_names has 2 names but num_channels is 4"):
        ScOTConfig(field_names=["u", "v"])
    with pytest.raises(ValueError, match="image_size=48 must be a multiple of"):
        ScOT(ScOTConfig.from_preset("tiny", image_size=48))


def test_fft_resampling_is_exact_on_band_limited_fields():
    def field(n):
        x = torch.arange(n) / n
        return (torch.sin(2 * math.pi * 3 * x)[:, None] * torch.cos(2 * math.pi * 5 * x)[None, :]).expand(
            2, 1, n, n
        )

    assert torch.allclose(fft_resample(field(48), 64), field(64), atol=1e-5)
    assert torch.allclose(fft_resample(field(64), 48), field(48), atol=1e-5)
    assert torch.allclose(fft_resample(field(40), 27), field(27), atol=1e-5)  # odd sizes too
    with pytest.raises(ValueError, match="square"):
        fft_resample(torch.zeros(1, 1, 8, 9), 16)


def test_off_grid_inputs_are_resampled_to_the_configured_size_and_back():
    model = _tiny()
    x, t, _ = _batch(side=48)
    with torch.no_grad():
        out = model(x, t).output
        manual = fft_resample(model(fft_resample(x, 64), t).output, 48)
        native_96 = model(
            _batch(side=96)[0], t
        ).output  # multiple of patch*2^3: runs natively, padded windows
    assert out.shape == (2, 4, 48, 48)
    assert torch.allclose(out, manual, atol=1e-6)
    assert native_96.shape == (2, 4, 96, 96) and torch.isfinite(native_96).all()


def test_pixel_mask_replaces_masked_channels_by_labels():
    model = _tiny()
    x, t, y = _batch()
    mask = torch.tensor([[False, False, False, True]] * 2)
    with torch.no_grad():
        plain = model(x, t, labels=y)
        masked = model(x, t, labels=y, pixel_mask=mask)
    assert torch.equal(masked.output[:, 3], y[:, 3]) and torch.equal(
        masked.output[:, :3], plain.output[:, :3]
    )

    # Groups [rho], [u, v], [p]: the masked p group scores 0, the others are unchanged.
    def group(lo, hi, out):
        return (out[:, lo:hi] - y[:, lo:hi]).abs().mean() / y[:, lo:hi].abs().mean()

    expected = (group(0, 1, plain.output) + group(1, 3, plain.output)) / 3
    assert torch.allclose(masked.loss, expected, rtol=1e-6)


def test_operator_conditioning_off_by_default_and_effective_when_on():
    plain = _tiny()
    assert not any("operator" in k for k in plain.state_dict())
    x, t, y = _batch()
    pde_id, coeffs = torch.tensor([0, 3]), torch.rand(2, 8)
    with torch.no_grad():
        ref = plain(x, t).output
        assert torch.equal(plain(x, t, pde_id=pde_id, coefficients=coeffs).output, ref)  # ignored when off

    cond = _tiny(use_operator_conditioning=True)
    missing = cond.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all("operator" in k for k in missing)
    with torch.no_grad():
        assert torch.allclose(
            cond(x, t, pde_id=pde_id, coefficients=coeffs).output, ref, atol=1e-6
        )  # zero init
    cond.train()
    opt = torch.optim.SGD(cond.parameters(), lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        cond(x, t, labels=y, pde_id=pde_id, coefficients=coeffs).loss.backward()
        opt.step()
    cond.eval()
    with torch.no_grad():
        base = cond(x, t, pde_id=pde_id, coefficients=coeffs).output
        other_family = cond(x, t, pde_id=torch.tensor([1, 2]), coefficients=coeffs).output
        other_coeffs = cond(x, t, pde_id=pde_id, coefficients=coeffs.flip(0)).output
    assert not torch.allclose(base, other_family) and not torch.allclose(base, other_coeffs)
    with pytest.raises(ValueError, match="pass pde_id and coefficients"):
        cond(x, t)
    with pytest.raises(ValueError, match=r"coefficients must have shape \[2, 8\], got \(2, 5\)"):
        cond(x, t, pde_id=pde_id, coefficients=torch.rand(2, 5))
    with pytest.raises(ValueError, match=r"pde_id must lie in \[0, 64\), got \[0, 64\]"):
        check_batch_values({"pixel_values": x, "pde_id": torch.tensor([0, 64])}, cond.config)


BAD_INPUTS = [
    (
        "channels",
        dict(x=torch.zeros(2, 3, 32, 32)),
        r"pixel_values must have shape \[B, 4, H, W\], got \(2, 3, 32, 32\)",
    ),
    (
        "rank",
        dict(x=torch.zeros(4, 32, 32)),
        r"pixel_values must have shape \[B, 4, H, W\], got \(4, 32, 32\)",
    ),
    ("non-square", dict(x=torch.zeros(2, 4, 32, 64)), "must be square, got H=32, W=64"),
    ("time", dict(t=torch.zeros(3)), r"time must have shape \[2\] \(one lead time per sample\), got \(3,\)"),
    (
        "labels",
        dict(y=torch.zeros(2, 4, 16, 16)),
        r"labels must have shape \[2, 4, 32, 32\], got \(2, 4, 16, 16\)",
    ),
    ("mask", dict(mask=torch.zeros(2, 4)), r"pixel_mask must be bool \[2, 4\].*got torch.float32 \(2, 4\)"),
]


@pytest.mark.parametrize("case,bad,message", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs_give_clear_errors(case, bad, message):
    model = _tiny()
    x, t, y = _batch()
    x, t, y = bad.get("x", x), bad.get("t", t), bad.get("y", y)
    with pytest.raises(ValueError, match=message):
        model(x, t, labels=y, pixel_mask=bad.get("mask"))


def test_value_checks_run_at_the_data_boundary_not_in_forward():
    """forward never reads values (no host sync); loaders call check_batch_values on what they feed."""
    model = _tiny()
    x, t, y = _batch()
    x[1, 2, 3, 4] = float("nan")
    t[0] = float("inf")
    with torch.no_grad():
        assert model(x, t, labels=y).output.shape == (2, 4, 32, 32)
    with pytest.raises(ValueError, match=r"pixel_values \(2, 4, 32, 32\) has 1 NaN/Inf entries"):
        check_batch_values({"pixel_values": x, "time": t, "labels": y}, model.config)
    with pytest.raises(ValueError, match=r"time \(2,\) has 1 NaN/Inf entries"):
        check_batch_values({"pixel_values": _batch()[0], "time": t}, model.config)
    check_batch_values(dict(zip(("pixel_values", "time", "labels"), _batch(), strict=True)), model.config)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = _tiny().train()
    x, t, y = _batch()

    def grads():
        model.zero_grad()
        model(x, t, labels=y).loss.backward()
        return {k: p.grad.clone() for k, p in model.named_parameters()}

    plain = grads()
    model.activation_checkpointing_enable()
    assert model.encoder.layers[0].blocks[0].gradient_checkpointing
    checkpointed = grads()
    assert all(torch.allclose(plain[k], checkpointed[k], rtol=1e-5, atol=1e-8) for k in plain)


def _per_block_reference(attentions, shifted, tables, dtype):
    """Each block's mask and q/k/v scales computed on their own with HF Swinv2's modular formulas (and q/k/v
    projected module by module)."""
    from foundation.attention import _MAX_LOGIT_SCALE

    side = int(tables["index"].numel() ** 0.5)
    out = []
    for attention, shift in zip(attentions, shifted, strict=True):
        mlp, h = attention.continuous_position_bias_mlp, attention.num_heads
        table = mlp(tables["coords"])[tables["index"]].view(side, side, h).permute(2, 0, 1)
        mask = (16 * torch.sigmoid(table)).unsqueeze(0)
        if shift:
            mask = mask + tables["shift_mask"]
        logit = torch.clamp(attention.logit_scale, max=_MAX_LOGIT_SCALE).exp()
        ones, zeros = torch.ones_like(logit), torch.zeros_like(logit)
        out.append((mask.to(dtype), torch.stack([logit, ones, zeros]), torch.stack([zeros, zeros, ones])))
    return out


def test_attention_inputs_computed_once_per_stage_train_like_per_block(monkeypatch):
    """The position-bias MLP runs once per stage (all its blocks batched); outputs and every gradient equal the
    per-block modular computation (float32: outputs to 1e-6, gradients to rtol 1e-4)."""
    import foundation.modeling_scot as modeling
    from foundation.position_bias import ContinuousPositionBias

    model = _tiny().train()
    x, t, y = _batch()
    calls = []
    original = ContinuousPositionBias.apply
    monkeypatch.setattr(ContinuousPositionBias, "apply", lambda *a: calls.append(1) or original(*a))

    def run():
        model.zero_grad(set_to_none=True)
        out = model(x, t, labels=y)
        out.loss.backward()
        return out.output.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    batched = run()
    assert len(calls) == 2 * model.config.num_layers  # one per encoder and decoder stage, not per block
    monkeypatch.setattr(modeling, "level_attention_inputs", _per_block_reference)
    reference = run()
    torch.testing.assert_close(batched[0], reference[0], rtol=1e-6, atol=1e-6)
    for name, grad in reference[1].items():
        torch.testing.assert_close(batched[1][name], grad, rtol=1e-4, atol=1e-7, msg=name)


def test_geometry_tables_are_non_persistent_buffers_that_survive_loading(tmp_path):
    model = _tiny()
    buffers = dict(model.named_buffers())
    assert buffers and all(k.startswith("window_tables.") for k in buffers)
    assert not any(k.startswith("window_tables") for k in model.state_dict())
    model.save_pretrained(tmp_path)
    loaded = ScOT.from_pretrained(tmp_path)
    for name, value in loaded.named_buffers():
        assert torch.equal(value, buffers[name]), name


def test_hidden_states_and_tuple_outputs_as_poseidon():
    model = _tiny()
    x, t, y = _batch(side=64)
    with torch.no_grad():
        out = model(x, t, labels=y, output_hidden_states=True)
        plain = model(x, t, labels=y, return_dict=False)
    # decoder input and its 4 stage outputs, then the embedding and the 4 encoder stage outputs
    grids = [2, 4, 8, 16, 16, 16, 16, 8, 4, 2]
    widths = [192, 96, 48, 24, 24, 24, 24, 48, 96, 192]
    assert [h.shape for h in out.hidden_states] == [(2, g * g, w) for g, w in zip(grids, widths, strict=True)]
    assert [h.shape for h in out.reshaped_hidden_states] == [
        (2, w, g, g) for g, w in zip(grids, widths, strict=True)
    ]
    assert torch.equal(out.reshaped_hidden_states[3][0, :, 1, 2], out.hidden_states[3][0, 1 * 16 + 2])
    assert isinstance(plain, tuple) and len(plain) == 2
    assert torch.equal(plain[0], out.loss) and torch.equal(plain[1], out.output)
    assert model(x, t, return_dict=False)[0].shape == (2, 4, 64, 64)


def test_main_path_compiles_without_graph_breaks():
    torch.manual_seed(0)
    model = ScOT(
        ScOTConfig.from_preset(
            "tiny", depths=[2, 1], num_heads=[2, 4], skip_connections=[1, 0], image_size=16
        )
    )
    x, t, y = _batch(side=16)
    explanation = torch._dynamo.explain(model)(x, t, labels=y)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


def test_compiled_blocks_give_the_eager_outputs_and_gradients_and_recompile_once_per_new_batch_size():
    """Regional compilation (aot_eager backend: the dynamo and autograd path without code generation): fewer graphs
    than blocks (blocks of one variant share code), and a partial batch afterwards reuses them (dynamic batch
    dimension) instead of recompiling or falling back to eager."""
    import copy

    from torch._dynamo.backends.debugging import aot_eager

    torch.manual_seed(0)
    config = ScOTConfig.from_preset(
        "tiny", depths=[2, 1], num_heads=[2, 4], skip_connections=[1, 0], image_size=16
    )
    eager = ScOT(config).train()
    compiled = copy.deepcopy(eager)
    compiles = []

    def counting_backend(gm, example_inputs):
        compiles.append(gm)
        return aot_eager(gm, example_inputs)

    torch._dynamo.reset()
    compiled.compile_blocks(backend=counting_backend)
    x, t, y = _batch(side=16)
    runs = []
    for model in (eager, compiled):
        out = model(x, t, labels=y)
        out.loss.backward()
        runs.append((out.output.detach(), {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=1e-5, atol=1e-6)
    for name, grad in runs[0][1].items():
        torch.testing.assert_close(grad, runs[1][1][name], rtol=1e-4, atol=1e-6, msg=name)
    blocks = [m for m in compiled.modules() if getattr(m, "_compiled_call_impl", None) is not None]
    assert len(blocks) == 2 * sum(config.depths) + sum(config.skip_connections)  # Swin + ConvNeXt
    first = len(compiles)
    assert first < len(blocks)
    x3, t3, y3 = _batch(b=3, side=16)
    compiled(x3, t3, labels=y3).loss.backward()
    assert len(compiles) - first <= 1


def test_fresh_time_conditioned_norms_start_as_plain_layer_norms():
    """gamma(t) = 1 + O(0.02) t, beta(t) = O(0.02) t: at t = 0 each norm is exactly a LayerNorm."""
    from foundation.conditioning import TimeConditionedNorm

    model = ScOT(ScOTConfig.from_preset("tiny", image_size=32))
    norms = [m for m in model.modules() if isinstance(m, TimeConditionedNorm)]
    assert norms
    x = torch.randn(2, 5, norms[0].dim)
    out = norms[0](x, torch.zeros(2, 1))
    torch.testing.assert_close(out, torch.nn.functional.layer_norm(x, (norms[0].dim,)), rtol=0, atol=1e-6)
    assert all(float(n.weight.weight.detach().std()) < 0.05 for n in norms)
