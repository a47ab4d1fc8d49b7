"""scOT forward and train-step time: pdefm's ScOT against an eager explicit-softmax formulation of the same weights.

The eager formulation is Poseidon's / HF Swinv2's as written: separate q/k/v projections, CPB tables and shift
mask rebuilt every call, explicit softmax(QK^T * scale + bias + mask)V, and Poseidon's hand-written conditional
LayerNorm. All candidates run side by side in one process (alternating repeats, medians) on copies of the same
weights, each train step with the same fused AdamW. `--compile` adds pdefm with `ScOT.compile_blocks()`
(regional torch.compile); its first step, which compiles, is reported separately.

On CPU the eager formulation's many large temporaries make it sensitive to glibc's allocator returning memory
to the OS (fresh pages are faulted in and zeroed on every step); run once more with
`MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824` to see the ratio without that effect.

    python benchmarks/bench_model.py                              # tiny and T, 128x128, batch 4, CPU fp32
    python benchmarks/bench_model.py --compile                    # also pdefm with compiled blocks
    python benchmarks/bench_model.py --device cuda --dtype bf16 --preset B --batch 32 --compile
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from foundation.attention import (
    ScaledCosineSelfAttention,
    WindowGeometry,
    coords_table,
    relative_index,
    shift_mask_table,
)
from foundation.conditioning import TimeConditionedNorm
from foundation.configuration_scot import ScOTConfig
from foundation.modeling_scot import ScOT
from foundation.pretrain.optimization import adamw

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "RTX 4090": 165.0}
"""Dense bf16 tensor-core peaks (vendor figures, no sparsity), matched as substrings of the device name."""


class EagerSelfAttention(ScaledCosineSelfAttention):
    """HF `Swinv2SelfAttention` as written (the baseline formulation)."""

    def forward(self, windows: torch.Tensor, geometry: WindowGeometry) -> torch.Tensor:
        b, nw, n, c = windows.shape
        h, w = self.num_heads, geometry.window
        x = windows.reshape(b * nw, n, c)

        def heads(t):
            return t.view(b * nw, n, h, c // h).transpose(1, 2)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        scores = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        scores = scores * torch.clamp(self.logit_scale, max=math.log(100.0)).exp()
        table = self.continuous_position_bias_mlp(coords_table(w, x.device).to(x.dtype)).view(-1, h)
        bias = table[relative_index(w, x.device).view(-1)].view(n, n, h).permute(2, 0, 1)
        scores = scores + 16 * torch.sigmoid(bias).unsqueeze(0)
        if geometry.shift:
            mask = shift_mask_table(geometry.padded, w, geometry.shift, x.device).to(x.dtype) / 2
            scores = scores.view(b, nw, h, n, n) + mask.unsqueeze(0)
            scores = (scores + mask.unsqueeze(0)).view(b * nw, h, n, n)  # HF adds the -100 mask twice
        probs = F.dropout(torch.softmax(scores, dim=-1), self.dropout, self.training)
        return (probs @ v).transpose(1, 2).reshape(b, nw, n, c)


class EagerConditionalNorm(TimeConditionedNorm):
    """Poseidon's `ConditionalLayerNorm` as written."""

    def forward(self, x, time, operator=None):
        mean = x.mean(dim=-1, keepdim=True)
        var = (x**2).mean(dim=-1, keepdim=True) - mean**2
        x = (x - mean) / (var + self.eps).sqrt()
        time = time.reshape(-1, 1).type_as(x)
        weight, bias = self.weight(time).unsqueeze(1), self.bias(time).unsqueeze(1)
        return weight * x + bias


def eager_reference(model: ScOT) -> ScOT:
    """A copy of `model` (same weights) running the eager formulation."""
    ref = copy.deepcopy(model)
    for module in ref.modules():
        if type(module) is ScaledCosineSelfAttention:
            module.__class__ = EagerSelfAttention
        elif type(module) is TimeConditionedNorm:
            module.__class__ = EagerConditionalNorm
    return ref


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _forward(model, batch, autocast):
    with torch.no_grad(), autocast():
        return model(batch["x"], batch["t"]).output


def _train_step(model, opt, batch, autocast):
    opt.zero_grad(set_to_none=True)
    with autocast():
        loss = model(batch["x"], batch["t"], labels=batch["y"]).loss
    loss.backward()
    opt.step()


def _timed(fn, device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def train_step_flops(model, batch) -> float:
    """FLOPs of one forward+backward (counted on the eager model, whose matmuls are all explicit)."""
    with FlopCounterMode(display=False) as counter:
        model(batch["x"], batch["t"], labels=batch["y"]).loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def bench_preset(preset: str, args, device) -> None:
    torch.manual_seed(0)
    model = ScOT(ScOTConfig.from_preset(preset)).to(device)
    models = {"eager": eager_reference(model), "pdefm": model}
    if args.compile:
        models["pdefm+compile"] = copy.deepcopy(model)
        models["pdefm+compile"].compile_blocks()
    b, s = args.batch, args.size
    batch = {
        "x": torch.randn(b, 4, s, s, device=device),
        "t": torch.rand(b, device=device),
        "y": torch.randn(b, 4, s, s, device=device),
    }
    if args.dtype == "bf16":

        def autocast():
            return torch.autocast(device.type, dtype=torch.bfloat16)
    else:

        def autocast():
            return torch.autocast(device.type, enabled=False)

    if args.checkpointing:
        for name, m in models.items():
            if name != "eager":
                m.activation_checkpointing_enable()
    # The same optimizer for all: fused AdamW, as pdefm's trainers and transformers' Trainer default use.
    opts = {name: adamw(m.parameters(), lr=1e-5) for name, m in models.items()}
    first = {}
    for name, m in models.items():  # the first step of a compiled model includes compiling it
        first[name] = _timed(
            lambda m=m, name=name: _train_step(m.train(), opts[name], batch, autocast), device
        )
    step = {name: [] for name in models}
    for _ in range(args.warmup + args.repeats):
        for name, m in models.items():
            step[name].append(
                _timed(lambda m=m, name=name: _train_step(m, opts[name], batch, autocast), device)
            )

    for m in models.values():
        m.eval()
    outputs = {name: _forward(m, batch, autocast).float() for name, m in models.items()}
    fwd = {name: [] for name in models}
    for _ in range(args.warmup + args.repeats):
        for name, m in models.items():
            fwd[name].append(_timed(lambda m=m: _forward(m, batch, autocast), device))
    flops = train_step_flops(models["eager"].train(), batch)

    def median(times):
        return statistics.median(times[args.warmup :])

    n_params = sum(p.numel() for p in model.parameters())
    print(f"\n[{preset}] {n_params / 1e6:.2f}M params, batch {b}, {s}x{s}, {args.dtype}")
    ref = outputs["eager"]
    e_fwd, e_step = median(fwd["eager"]), median(step["eager"])
    print(
        f"  {'':14s} {'forward':>10s} {'train step':>11s} {'speed-up fwd':>13s} {'step':>6s}  output vs eager"
    )
    for name in models:
        f, st = median(fwd[name]), median(step[name])
        rel = ((outputs[name] - ref).norm() / ref.norm()).item()
        print(
            f"  {name:14s} {f * 1e3:8.1f}ms {st * 1e3:9.1f}ms {e_fwd / f:12.2f}x {e_step / st:5.2f}x  "
            f"relative L2 {rel:.1e}"
        )
    if args.compile:
        print(f"  first train step of pdefm+compile (compiling): {first['pdefm+compile']:.1f} s")
    best = min(median(step[name]) for name in models if name != "eager")
    tflops = flops / best / 1e12
    line = f"  train step: {flops / 1e9:.1f} GFLOP (fwd+bwd) -> fastest pdefm {tflops * 1e3:.1f} GFLOP/s"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        if peak:
            line += f" = {100 * tflops / peak:.1f}% of {peak:.0f} TFLOP/s bf16 peak"
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", nargs="+", default=["tiny", "T"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time pdefm with its blocks compiled (ScOT.compile_blocks)",
    )
    parser.add_argument(
        "--checkpointing", action="store_true", help="gradient checkpointing in the pdefm model"
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak")
    args = parser.parse_args()
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    malloc = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    print(
        f"machine: {platform.node()} {platform.machine()} {where}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; allocator settings {malloc or 'glibc defaults'}"
    )
    for preset in args.preset:
        bench_preset(preset, args, device)


if __name__ == "__main__":
    main()
