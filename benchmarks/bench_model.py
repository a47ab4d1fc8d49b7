"""scOT forward and train-step time: pdefm's ScOT against an eager formulation of the same weights; aten op counts.

The eager formulation is Poseidon's / HF Swinv2's as written: separate q/k/v projections, the position-bias MLP,
coordinate tables and shift mask rebuilt in every block, explicit softmax(QK^T * scale + bias + mask)V, and
Poseidon's hand-written conditional LayerNorm in every norm. All candidates run side by side in one process
(alternating repeats, medians) on copies of the same weights, each train step with the same fused AdamW.
`--compile` adds pdefm with `ScOT.compile_blocks()` (regional torch.compile), `--compile-model` with
`ScOT.compile_model()` (whole forward); their first step, which compiles, is reported separately. On a GPU the
fastest candidate's FLOP rate is given as a share of the card's dense bf16 peak (`PEAK_BF16_TFLOPS`).

`--count-ops` counts the aten ops of one train step (forward, backward, fused AdamW) instead of timing, on fake
tensors (no memory, no compute; any preset on any machine): what an eager GPU step launches. SDPA is counted as
the fused kernel a GPU runs (memory-efficient attention: one op each way); `--cpu-attention` counts the CPU's
math decomposition instead (about 14 ops per block).

On CPU the eager formulation's many large temporaries make it sensitive to glibc's allocator returning memory
to the OS (fresh pages are faulted in and zeroed on every step); run once more with
`MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824` to see the ratio without that effect.

    python benchmarks/bench_model.py                              # tiny and T, 128x128, batch 4, CPU fp32
    python benchmarks/bench_model.py --count-ops --preset B       # aten ops per B train step
    python benchmarks/bench_model.py --device cuda --dtype bf16 --preset B --batch 32 --compile --json out.json
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import math
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from foundation.attention import (
    coords_table,
    relative_index,
    shift_mask_table,
    window_and_shift,
)
from foundation.conditioning import TimeConditionedNorm
from foundation.configuration_scot import ScOTConfig
from foundation.modeling_scot import DecoderStage, EncoderStage, PatchMerging, PatchUnmerging, ScOT
from foundation.pretrain.optimization import adamw

PEAK_BF16_TFLOPS = {
    "NVIDIA H100 80GB HBM3": 989.4,  # H100 SXM5
    "NVIDIA H100 PCIe": 756.0,
    "NVIDIA H100 NVL": 835.0,
    "NVIDIA H200": 989.4,  # H200 SXM
    "NVIDIA H200 NVL": 835.0,
    "NVIDIA GH200 480GB": 989.4,
    "NVIDIA B200": 2250.0,
    "NVIDIA A100-SXM4-80GB": 312.0,
    "NVIDIA A100-SXM4-40GB": 312.0,
    "NVIDIA A100 80GB PCIe": 312.0,
    "NVIDIA A100-PCIE-40GB": 312.0,
    "NVIDIA L40S": 362.1,
    "NVIDIA L4": 121.0,
    "NVIDIA GeForce RTX 4090": 165.2,
}
"""Dense bf16 tensor-core peaks (vendor data sheets, no sparsity), keyed by the exact `torch.cuda.get_device_name`.
Unknown names get no share of peak unless `--peak-tflops` is given."""

BASELINE_OPS = {
    ("fp32", "gpu"): (9318, 18769),
    ("bf16", "gpu"): (11300, 20751),
    ("fp32", "cpu"): (10342, 21137),
}
"""(kernel ops, all ops) of `--count-ops` for B (128x128, batch 2, SDPA) on main before the GPU-readiness work
(3e7675b, its forward's value checks disabled so fake tensors pass), with SDPA counted as the GPU's fused kernel
("gpu") or as the CPU's math decomposition ("cpu"). Its CPU default ("auto": the chunked Function) took 10702."""

VIEW_OPS = frozenset(
    "view _unsafe_view t transpose permute expand detach unsqueeze squeeze slice select unbind alias as_strided "
    "split split_with_sizes chunk narrow reshape".split()
)
"""aten ops that only make views (no kernel on any device); `--count-ops` reports them apart."""


def _eager_attention(attention, x: torch.Tensor, grid: int) -> torch.Tensor:
    """HF `Swinv2SelfAttention` inside its window partition, tables and shift mask rebuilt on every call."""
    module = attention.self
    b, _, c = x.shape
    w, s = window_and_shift(grid, attention.window_size, attention.shifted)
    p = math.ceil(grid / w) * w
    x = x.view(b, grid, grid, c)
    if p != grid:
        x = F.pad(x, (0, 0, 0, p - grid, 0, p - grid))
    if s:
        x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
    n = p // w
    windows = x.view(b, n, w, n, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b * n * n, w * w, c)
    h, m = module.num_heads, w * w

    def heads(t):
        return t.view(b * n * n, m, h, c // h).transpose(1, 2)

    q, k, v = heads(module.query(windows)), heads(module.key(windows)), heads(module.value(windows))
    scores = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
    scores = scores * torch.clamp(module.logit_scale, max=math.log(100.0)).exp()
    table = module.continuous_position_bias_mlp(coords_table(w, x.device).to(x.dtype)).view(-1, h)
    bias = table[relative_index(w, x.device).view(-1)].view(m, m, h).permute(2, 0, 1)
    scores = scores + 16 * torch.sigmoid(bias).unsqueeze(0)
    if s:
        mask = shift_mask_table(p, w, s, x.device).to(x.dtype) / 2
        scores = scores.view(b, n * n, h, m, m) + mask.unsqueeze(0)
        scores = (scores + mask.unsqueeze(0)).view(b * n * n, h, m, m)  # HF adds the -100 mask twice
    out = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(b, n, n, w, w, c)
    out = attention.output(out.view(b * n * n, m, c)).view(b, n, n, w, w, c)
    x = out.permute(0, 1, 3, 2, 4, 5).reshape(b, p, p, c)
    if s:
        x = torch.roll(x, shifts=(s, s), dims=(1, 2))
    return x[:, :grid, :grid].reshape(b, grid * grid, c)


def _eager_blocks(stage, x, time, grid):
    for block in stage.blocks:
        x = x + block.layernorm_before(_eager_attention(block.attention, x, grid), time)
        x = x + block.layernorm_after(block.output(block.intermediate(x)), time)
    return x


def _eager_merge(module: PatchMerging, x, time, grid):
    b, _, c = x.shape
    x = x.view(b, grid, grid, c)
    x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
    return module.norm(module.reduction(x.reshape(b, -1, 4 * c)), time)


def _eager_unmerge(module: PatchUnmerging, x, time, grid):
    b, _, c = x.shape
    x = module.upsample(x).view(b, grid, grid, 2, 2, c // 2).permute(0, 1, 3, 2, 4, 5)
    return module.mixup(module.norm(x.reshape(b, 4 * grid * grid, c // 2), time))


class EagerEncoderStage(EncoderStage):
    def forward(self, x, time, operator, tables, *, grid: int):
        state = _eager_blocks(self, x, time, grid)
        return state, None if self.downsample is None else _eager_merge(
            self.downsample, state + x, time, grid
        )


class EagerDecoderStage(DecoderStage):
    def forward(self, x, time, operator, tables, *, grid: int):
        x = _eager_blocks(self, x, time, grid)
        return x if self.upsample is None else _eager_unmerge(self.upsample, x, time, grid)


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
    swaps = {
        EncoderStage: EagerEncoderStage,
        DecoderStage: EagerDecoderStage,
        TimeConditionedNorm: EagerConditionalNorm,
    }
    for module in ref.modules():
        if type(module) in swaps:
            module.__class__ = swaps[type(module)]
    return ref


def _efficient_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
    """SDPA as CUDA runs it with an additive mask: the memory-efficient kernel, one op forward and one backward
    (the CPU's math decomposition takes about 20), the mask broadcast as a view."""
    mask = None if attn_mask is None else attn_mask.expand(*query.shape[:-1], key.shape[-2])
    need_lse = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
    return torch.ops.aten._scaled_dot_product_efficient_attention(
        query, key, value, mask, need_lse, dropout_p, is_causal, scale=scale
    )[0]


def count_train_step_ops(
    preset: str, batch: int, size: int, bf16: bool, implementation: str, gpu_attention: bool = True
) -> dict:
    """aten ops of one train step (zero_grad, forward, backward, fused AdamW step) of a fresh model, run on fake
    tensors (FakeTensorMode on the CPU device: shapes only), after one uncounted step that creates the optimizer
    state. With `gpu_attention`, SDPA is counted as the fused kernel a GPU runs (`_efficient_sdpa`) rather than
    the CPU's decomposition. Returns per-phase counts and the most frequent ops."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.phase = "forward"
            self.ops = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace != "prim":
                name = func.overloadpacket.__name__
                phase = "backward" if torch._C._current_autograd_node() is not None else self.phase
                self.ops[(phase, "view" if name in VIEW_OPS else "kernel", name)] += 1
            return func(*args, **(kwargs or {}))

    with torch.device("meta"):
        model = ScOT(ScOTConfig.from_preset(preset, attn_implementation=implementation)).train()
    with FakeTensorMode(allow_non_fake_inputs=True):
        model.to_empty(device="cpu")
        x, t, y = torch.randn(batch, 4, size, size), torch.rand(batch), torch.randn(batch, 4, size, size)
        optimizer = adamw(model.parameters(), lr=1e-4)
        counter = Count()

        def step():
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(x, t, labels=y).loss
            loss.backward()
            counter.phase = "optimizer"
            optimizer.step()
            counter.phase = "forward"

        sdpa = F.scaled_dot_product_attention
        if gpu_attention:
            F.scaled_dot_product_attention = _efficient_sdpa
        try:
            step()
            with counter:
                step()
        finally:
            F.scaled_dot_product_attention = sdpa
    ops = counter.ops
    result = {
        "preset": preset,
        "batch": batch,
        "size": size,
        "dtype": "bf16" if bf16 else "fp32",
        "attn_implementation": implementation
        + (" (SDPA as the GPU's fused kernel)" if gpu_attention else ""),
        "total": sum(ops.values()),
        "kernels": sum(n for (_, kind, _), n in ops.items() if kind == "kernel"),
    }
    for phase in ("forward", "backward", "optimizer"):
        result[f"{phase}_kernels"] = sum(
            n for (p, kind, _), n in ops.items() if p == phase and kind == "kernel"
        )
    kernels = collections.Counter()
    for (_, kind, name), n in ops.items():
        if kind == "kernel":
            kernels[name] += n
    result["top_kernels"] = dict(kernels.most_common(15))
    return result


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


def peak_tflops(device, override: float | None) -> tuple[float | None, str]:
    """The card's dense bf16 peak from the exact SKU table (or `--peak-tflops`), and the device name."""
    name = torch.cuda.get_device_name(device)
    return (override or PEAK_BF16_TFLOPS.get(name)), name


def bench_preset(preset: str, args, device) -> dict:
    torch.manual_seed(0)
    model = ScOT(ScOTConfig.from_preset(preset)).to(device)
    models = {"eager": eager_reference(model), "pdefm": model}
    if args.compile:
        models["pdefm+compile"] = copy.deepcopy(model)
        models["pdefm+compile"].compile_blocks()
    if args.compile_model:
        models["pdefm+compile_model"] = copy.deepcopy(model)
        models["pdefm+compile_model"].compile_model()
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
        f"  {'':20s} {'forward':>10s} {'train step':>11s} {'speed-up fwd':>13s} {'step':>6s}  output vs eager"
    )
    result = {
        "preset": preset,
        "params": n_params,
        "batch": b,
        "size": s,
        "dtype": args.dtype,
        "candidates": {},
    }
    for name in models:
        f, st = median(fwd[name]), median(step[name])
        rel = ((outputs[name] - ref).norm() / ref.norm()).item()
        print(
            f"  {name:20s} {f * 1e3:8.1f}ms {st * 1e3:9.1f}ms {e_fwd / f:12.2f}x {e_step / st:5.2f}x  "
            f"relative L2 {rel:.1e}"
        )
        result["candidates"][name] = {
            "forward_ms": f * 1e3,
            "train_step_ms": st * 1e3,
            "first_step_s": first[name],
            "output_rel_l2_vs_eager": rel,
            "samples_per_s": b / st,
        }
    for name in models:
        if "compile" in name:
            print(f"  first train step of {name} (compiling): {first[name]:.1f} s")
    fastest = min((n for n in models if n != "eager"), key=lambda n: median(step[n]))
    tflops = flops / median(step[fastest]) / 1e12
    result.update(train_step_gflop=flops / 1e9, fastest=fastest, fastest_tflops=tflops)
    line = (
        f"  train step: {flops / 1e9:.1f} GFLOP (fwd+bwd) -> fastest ({fastest}) {tflops * 1e3:.1f} GFLOP/s"
    )
    if device.type == "cuda":
        peak, name = peak_tflops(device, args.peak_tflops)
        result.update(device_name=name, peak_bf16_tflops=peak)
        if peak:
            result["share_of_bf16_peak"] = tflops / peak
            line += f" = {100 * tflops / peak:.1f}% of {peak:.0f} TFLOP/s dense bf16 peak ({name})"
        else:
            line += f" (no peak known for {name!r}: pass --peak-tflops)"
    print(line)
    return result


def print_op_counts(args) -> list[dict]:
    results = []
    attention = "cpu" if args.cpu_attention else "gpu"
    for preset in args.preset:
        r = count_train_step_ops(
            preset,
            args.batch,
            args.size,
            args.dtype == "bf16",
            args.attn_implementation,
            not args.cpu_attention,
        )
        print(
            f"\n[{preset}] aten ops per train step (batch {r['batch']}, {r['size']}x{r['size']}, {r['dtype']}, "
            f"attention {r['attn_implementation']}): {r['kernels']} kernel ops "
            f"(forward {r['forward_kernels']}, backward {r['backward_kernels']}, optimizer {r['optimizer_kernels']})"
            f" + {r['total'] - r['kernels']} view ops = {r['total']}"
        )
        base = BASELINE_OPS.get((r["dtype"], attention))
        if (preset, r["batch"], r["size"], args.attn_implementation) == ("B", 2, 128, "sdpa") and base:
            r["before_kernels"], r["before_total"] = base
            print(
                f"  before (3e7675b): {base[0]} kernel ops, {base[1]} in all -> now {r['kernels'] / base[0]:.2f}x "
                f"and {r['total'] / base[1]:.2f}x"
            )
        print("  most frequent kernels:", ", ".join(f"{k} {n}" for k, n in r["top_kernels"].items()))
        results.append(r)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", nargs="+", default=None, help="default: tiny T (timing), B (--count-ops)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--batch", type=int, default=None, help="default: 4 (timing), 2 (--count-ops)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time pdefm with its blocks compiled (ScOT.compile_blocks)",
    )
    parser.add_argument(
        "--compile-model", action="store_true", help="also time pdefm compiled whole (ScOT.compile_model)"
    )
    parser.add_argument(
        "--checkpointing", action="store_true", help="gradient checkpointing in the pdefm model"
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak")
    parser.add_argument("--count-ops", action="store_true", help="count aten ops per train step (no timing)")
    parser.add_argument("--attn-implementation", default="sdpa", help="for --count-ops (default: the GPU's)")
    parser.add_argument(
        "--cpu-attention",
        action="store_true",
        help="--count-ops: SDPA as the CPU runs it (math decomposition)",
    )
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    args.preset = args.preset or (["B"] if args.count_ops else ["tiny", "T"])
    args.batch = args.batch or (2 if args.count_ops else 4)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    malloc = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    print(
        f"machine: {platform.node()} {platform.machine()} {where}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; allocator settings {malloc or 'glibc defaults'}"
    )
    if args.count_ops:
        results = print_op_counts(args)
    else:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        results = [bench_preset(preset, args, device) for preset in args.preset]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": where, "torch": torch.__version__, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
