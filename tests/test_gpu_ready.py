"""GPU readiness proved on the CPU: steps that never wait on the host, per-example gradients by vmap over ScOT,
compiled models that do not recompile for a new batch size; plus the same checks on a GPU when there is one
(`pytest -m gpu`)."""

from __future__ import annotations

import math

import pytest
import torch
from sync_counter import SyncCounter
from torch.func import functional_call, grad, vmap

from data_pipelines.solvers import finite_volume
from data_pipelines.solvers.euler import IdealGasEuler
from data_pipelines.solvers.helmholtz import CHECK_EVERY, solve_helmholtz
from data_pipelines.solvers.spectral import SpectralGrid
from foundation.configuration_scot import ScOTConfig
from foundation.modeling_scot import ScOT
from foundation.pretrain.optimization import adamw, parameter_groups

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _tiny(device="cpu", **overrides) -> ScOT:
    torch.manual_seed(0)
    return ScOT(ScOTConfig.from_preset("tiny", image_size=32, **overrides)).to(device)


def _batch(b=2, side=32, device="cpu"):
    g = torch.Generator().manual_seed(1)
    x, t, y = (
        torch.randn(b, 4, side, side, generator=g),
        torch.rand(b, generator=g),
        torch.randn(b, 4, side, side),
    )
    return x.to(device), t.to(device), y.to(device)


def _train_step(model, optimizer, batch, bf16: bool):
    x, t, y = batch
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = model(x, t, labels=y).loss
    loss.backward()
    optimizer.step()
    return loss


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_model_train_step_has_no_host_syncs(bf16):
    """forward + backward + fused AdamW step of ScOT (the CPU training path: chunked attention)."""
    model = _tiny().train()
    optimizer = adamw(parameter_groups(model, 1e-4), lr=1e-3)
    batch = _batch()
    with SyncCounter() as syncs:
        for _ in range(2):  # the first step also creates the optimizer state
            _train_step(model, optimizer, batch, bf16)
    assert syncs.count == 0, syncs.report()


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_forward_and_backward_have_no_host_syncs_with_every_implementation(implementation):
    model = _tiny(attn_implementation=implementation).train()
    x, t, y = _batch()
    with SyncCounter() as syncs:
        model(x, t, labels=y).loss.backward()
        with torch.no_grad():
            model.eval()(x, t)
    assert syncs.count == 0, syncs.report()


def test_sync_counter_sees_every_kind_of_sync():
    x = torch.randn(4)
    with SyncCounter() as syncs:
        x.sum().item()
        bool(x[0] > 0)
        float(x[1])
        x.tolist()
        x[x > 0]
        torch.nonzero(x)
    assert syncs.count == 6, syncs.report()


def test_finite_volume_steps_have_no_host_syncs_and_evolve_checks_rarely():
    """One SSP-RK3 step never syncs; a whole solve reads progress a few times per snapshot interval, however many
    steps it takes (here ~60 per interval at CFL 0.1)."""
    torch.manual_seed(0)
    law = IdealGasEuler()
    n = 32
    w0 = torch.stack(
        [
            1.0 + 0.2 * torch.rand(2, n, n),
            0.1 * torch.randn(2, n, n),
            0.1 * torch.randn(2, n, n),
            1.0 + 0.2 * torch.rand(2, n, n),
        ],
        dim=1,
    )
    q, t = law.conservative(w0), torch.zeros(2, dtype=torch.float64)
    with SyncCounter() as syncs:
        finite_volume._step_towards(q, t, 0.1, law, 1 / n, 1 / n, 0.4, None)
    assert syncs.count == 0, syncs.report()

    steps = []
    original = finite_volume._step_towards
    finite_volume._step_towards = lambda *a: steps.append(1) or original(*a)
    try:
        with SyncCounter() as syncs:
            out = finite_volume.evolve(w0, law, [0.0, 0.05, 0.1], cfl=0.1)
    finally:
        finite_volume._step_towards = original
    assert torch.isfinite(out).all() and len(steps) > 50
    assert syncs.count <= 2 * 4, syncs.report()  # a handful per interval, not one per step


def test_helmholtz_cg_checks_convergence_every_few_iterations():
    torch.manual_seed(0)
    grid = SpectralGrid(32, "cpu", torch.float64)
    c = torch.exp(0.5 * torch.rand(2, 32, 32, dtype=torch.float64))
    f = torch.randn(2, 32, 32, dtype=torch.float64)
    with SyncCounter() as syncs:
        s = solve_helmholtz(grid, c, torch.tensor([3.0, 12.0], dtype=torch.float64), f)
    residual = grid.ifft(grid.k2 * grid.fft(s)) + torch.tensor([9.0, 144.0])[:, None, None] * c * s - f
    assert residual.norm() <= 1e-9 * f.norm()
    assert 1 <= syncs.count <= math.ceil(500 / CHECK_EVERY) and syncs.count < 10, syncs.report()


def test_per_example_gradients_by_vmap_over_scot():
    """PhysGuard's vmap(grad(loss)) runs over ScOT (no value checks in forward, every Function vmappable) and
    equals one autograd pass per example (float32, relative 1e-4)."""
    model = _tiny().eval()
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    x, t, y = _batch(b=3)

    def loss(p, xi, ti, yi):
        batch = {"pixel_values": xi[None], "time": ti[None], "labels": yi[None]}
        return functional_call(model, (p, buffers), args=(), kwargs=batch).loss

    per_example = vmap(grad(loss), in_dims=(None, 0, 0, 0))(params, x, t, y)
    for i in range(3):
        loss_i = model(x[i : i + 1], t[i : i + 1], labels=y[i : i + 1]).loss
        single = torch.autograd.grad(loss_i, list(model.parameters()))
        for (name, g), ref in zip(per_example.items(), single, strict=True):
            torch.testing.assert_close(g[i], ref, rtol=1e-4, atol=1e-7, msg=name)


def test_whole_model_compile_recompiles_at_most_once_for_new_batch_sizes():
    """compile_model (aot_eager: dynamo and AOTAutograd without code generation), evaluation batches of 4, 3 and
    2: the second size recompiles once with a dynamic batch dimension, the third reuses that graph."""
    from torch._dynamo.backends.debugging import aot_eager

    config = ScOTConfig.from_preset(
        "tiny", depths=[2, 1], num_heads=[2, 4], skip_connections=[1, 0], image_size=16
    )
    torch.manual_seed(0)
    model = ScOT(config).eval()
    compiles = []

    def counting_backend(gm, example_inputs):
        compiles.append(gm)
        return aot_eager(gm, example_inputs)

    torch._dynamo.reset()
    model.compile_model(backend=counting_backend)
    counts = []
    with torch.no_grad():
        for b in (4, 3, 2):
            model(*_batch(b=b, side=16)[:2])
            counts.append(len(compiles))
    assert counts[0] == 1  # one graph, no graph break
    assert counts[1] - counts[0] <= 1 and counts[2] == counts[1]


# ---------------------------------------------------------------- on a GPU (pytest -m gpu)


@pytest.mark.gpu
@needs_cuda
def test_cuda_bf16_train_step_never_synchronises():
    model = _tiny("cuda").train()
    optimizer = adamw(parameter_groups(model, 1e-4), lr=1e-3)
    batch = _batch(b=4, device="cuda")
    _train_step(model, optimizer, batch, bf16=True)  # warm-up: allocator, cuBLAS handles, optimizer state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            _train_step(model, optimizer, batch, bf16=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.gpu
@needs_cuda
def test_cuda_autocast_attention_runs_in_bf16_and_matches_eager():
    """Under CUDA bf16 autocast q, k, v and the mask reach SDPA in bf16; "sdpa" and "eager" agree to relative L2
    3e-2 in bf16 (outputs) and to 1e-4 in float32 with TF32 off."""
    import torch.nn.functional as F

    model = _tiny("cuda").eval()
    x, t, _ = _batch(b=4, device="cuda")
    dtypes = []
    original = F.scaled_dot_product_attention

    def recording(q, k, v, attn_mask=None, **kwargs):
        dtypes.append({q.dtype, k.dtype, v.dtype, attn_mask.dtype})
        return original(q, k, v, attn_mask=attn_mask, **kwargs)

    F.scaled_dot_product_attention = recording
    try:
        outputs = {}
        for implementation in ("sdpa", "eager"):
            model.config.attn_implementation = implementation
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                outputs[implementation] = model(x, t).output.float()
    finally:
        F.scaled_dot_product_attention = original
    assert dtypes and all(d == {torch.bfloat16} for d in dtypes)
    rel = (outputs["sdpa"] - outputs["eager"]).norm() / outputs["eager"].norm()
    assert rel <= 3e-2
    torch.backends.cuda.matmul.allow_tf32 = False
    fp32 = {}
    for implementation in ("sdpa", "eager"):
        model.config.attn_implementation = implementation
        with torch.no_grad():
            fp32[implementation] = model(x, t).output
    assert (fp32["sdpa"] - fp32["eager"]).norm() / fp32["eager"].norm() <= 1e-4


@pytest.mark.slow
def test_device_check_dry_run_writes_every_section(tmp_path):
    """benchmarks/device_check.sh --dry-run: every section runs on the CPU at tiny sizes and is summarised."""
    import json
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    summary = tmp_path / "summary.json"
    done = subprocess.run(
        ["bash", str(repo / "benchmarks" / "device_check.sh"), "--dry-run", str(summary)],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    sections = json.loads(summary.read_text())["sections"]
    assert set(sections) == {"gpu_tests", "op_count", "model", "pretrain", "physguard", "solvers"}
    failed = {k: v for k, v in sections.items() if v["status"] != "ok"}
    assert not failed, json.dumps(failed, indent=1)
    assert sections["op_count"]["results"][0]["kernels"] > 0
    assert sections["model"]["results"][0]["candidates"]["pdefm"]["train_step_ms"] > 0
    assert sections["pretrain"]["samples_per_s_incl_startup"] > 0
    assert sections["physguard"]["peak_host_gb"] > 0
    assert len(sections["solvers"]["trajectories_per_s"]) >= 10
