"""Fine-tuning step time and peak training memory of LoRA, PhysGuard and meta-learning against full fine-tuning.

All methods run in one process on copies of the same scOT, on the same batches of a generated family,
in alternating repeats (medians). Targets: LoRA peak memory <= 0.7x full; PhysGuard step time <= 1.15x
full. A last line gives full fine-tuning's step time under bf16 autocast (as `--mixed-precision bf16` runs
it) against fp32.

Peak memory, on CUDA: `torch.cuda.max_memory_allocated` over one step. On CPU, where no allocator
counter exists, it is the training-state account: parameters + gradients + optimizer state (measured from
the tensors after the step) + the activations autograd saves for backward (every tensor passed to the
saved-tensors pack hook, counted once per storage). It omits transient workspace, so it is a lower bound.
Meta-learning's step is one outer step (inner SGD steps on the support batch, then the query gradient).

    python benchmarks/bench_finetune.py                        # Poseidon-T layout, 64x64, batch 4, CPU
    python benchmarks/bench_finetune.py --device cuda --resolution 128 --batch 16
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import platform
import statistics
import time

import torch
from torch.utils.data import DataLoader

from data_pipelines.solvers.registry import get_family
from data_pipelines.trajectory import Trajectory
from finetune.data import pair_dataset
from finetune.methods import lora as lora_method
from finetune.methods import meta as meta_method
from finetune.methods import physguard as pg
from finetune.methods.full import poseidon_param_groups
from finetune.trainer import batch_loss, move_batch
from foundation.configuration_scot import POSEIDON_FIELDS, ScOTConfig
from foundation.modeling_scot import ScOT


def _bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is None:
            continue
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


class Method:
    """One training step of a method on its own copy of the model."""

    def __init__(self, name, model, optimizer, transform=None, dtype=None):
        self.name, self.model, self.optimizer, self.transform = name, model, optimizer, transform
        self.dtype = dtype
        """Autocast dtype (bf16 as the training core runs mixed precision), None for fp32."""

    def step(self, batch, saved: list) -> None:
        self.optimizer.zero_grad(set_to_none=True)

        def pack(t):
            saved.append(t)
            return t

        device = next(self.model.parameters()).device.type
        autocast = torch.autocast(device, dtype=self.dtype) if self.dtype else contextlib.nullcontext()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
            loss = batch_loss(self.model, batch)
        loss.backward()
        if self.transform is not None:
            self.transform(self.model)
        self.optimizer.step()

    def state_bytes(self) -> int:
        params = list(self.model.parameters())
        grads = [p.grad for p in params]
        states = [
            v for s in self.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0
        ]
        return _bytes(params) + _bytes(grads) + _bytes(states)


def measure(method: Method, batch, device: str) -> tuple[float, float]:
    """(seconds, peak bytes) of one step."""
    saved: list = []
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    method.step(batch, saved)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return time.perf_counter() - start, float(torch.cuda.max_memory_allocated())
    seconds = time.perf_counter() - start
    return seconds, float(method.state_bytes() + _bytes(saved))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="T")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--fisher-samples", type=int, default=16)
    ap.add_argument("--inner-steps", type=int, default=5)
    ap.add_argument("--family", default="ns_gauss")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.manual_seed(0)

    family = get_family(args.family)
    gen = family.generate(args.batch + 2, args.resolution, 3, seed=0)
    trajs = [
        Trajectory(gen.u[i], gen.t, list(family.fields), args.family, gen.params[i])
        for i in range(len(gen.params))
    ]
    pairs = pair_dataset(trajs, POSEIDON_FIELDS)
    batch = move_batch(next(iter(DataLoader(pairs, batch_size=args.batch, shuffle=True))), args.device)

    base = ScOT(ScOTConfig.from_preset(args.preset, image_size=args.resolution)).to(args.device).train()
    n_params = sum(p.numel() for p in base.parameters())

    full_model = copy.deepcopy(base)
    full = Method("full", full_model, torch.optim.AdamW(poseidon_param_groups(full_model)))
    lora_model = lora_method.wrap(copy.deepcopy(base), lora_method.LoraOptions(rank=args.lora_rank))
    lora = Method("lora", lora_model, torch.optim.AdamW(lora_method.param_groups(lora_model)))
    pg_model = copy.deepcopy(base)
    opts = pg.PhysGuardOptions(n_samples=args.fisher_samples)
    t0 = time.perf_counter()
    bases = pg.compute_bases(pg_model, pairs, opts)
    basis_seconds = time.perf_counter() - t0
    rank = sum(U.shape[1] for U in bases.values())
    guard = Method(
        "physguard",
        pg_model,
        torch.optim.AdamW(poseidon_param_groups(pg_model)),
        pg.Projector(pg_model, bases),
    )
    bf16_model = copy.deepcopy(base)
    bf16 = Method(
        "full-bf16", bf16_model, torch.optim.AdamW(poseidon_param_groups(bf16_model)), dtype=torch.bfloat16
    )
    methods = [full, lora, guard, bf16]

    meta_model = copy.deepcopy(base)
    meta_opts = meta_method.MetaOptions(inner_steps=args.inner_steps)
    half = max(1, len(pairs) // 2)
    task = meta_method.Task(
        args.family,
        {},
        torch.utils.data.Subset(pairs, range(half)),
        torch.utils.data.Subset(pairs, range(half, len(pairs))),
    )
    meta_optim = torch.optim.AdamW(meta_model.parameters(), lr=meta_opts.outer_lr)

    def meta_step():
        grads, _, _ = meta_method.meta_gradient(
            meta_model, task, meta_opts, meta_opts.inner_lr, batch_size=args.batch, device=args.device
        )
        for n, p in meta_model.named_parameters():
            p.grad = grads[n]
        meta_optim.step()

    times = {m.name: [] for m in methods} | {"meta": []}
    memory = {m.name: 0.0 for m in methods}
    for m in methods:  # warm-up (allocates optimizer state)
        measure(m, batch, args.device)
    meta_step()
    for _ in range(args.repeats):
        for m in methods:
            seconds, peak = measure(m, batch, args.device)
            times[m.name].append(seconds)
            memory[m.name] = max(memory[m.name], peak)
        start = time.perf_counter()
        meta_step()
        times["meta"].append(time.perf_counter() - start)

    print(
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, device {args.device}"
    )
    print(
        f"model: ScOT preset {args.preset}, {n_params / 1e6:.2f}M parameters, {args.resolution}x{args.resolution}, "
        f"batch {args.batch}, LoRA rank {args.lora_rank} ({sum(p.numel() for p in lora_model.parameters() if p.requires_grad) / 1e3:.1f}k trainable)"
    )
    print(
        f"physguard basis: {len(bases)} tensors, total rank {rank}, from {args.fisher_samples} samples in {basis_seconds:.1f} s"
    )
    mem_kind = (
        "cuda max_memory_allocated"
        if args.device.startswith("cuda")
        else "params+grads+optimizer state+saved activations"
    )
    ref_t, ref_m = statistics.median(times["full"]), memory["full"]
    print(
        f"{'method':<10} {'step s (median)':>16} {'x full':>8} {'peak MiB':>10} {'x full':>8}   [{mem_kind}]"
    )
    for name in ("full", "lora", "physguard", "meta", "full-bf16"):
        t = statistics.median(times[name])
        mem = memory.get(name)
        mem_s = f"{mem / 2**20:>10.1f} {mem / ref_m:>8.2f}" if mem else f"{'n/a':>10} {'':>8}"
        print(f"{name:<10} {t:>16.3f} {t / ref_t:>8.2f} {mem_s}")
    print(
        f"targets: LoRA peak memory {memory['lora'] / ref_m:.2f}x (<= 0.7), "
        f"PhysGuard step time {statistics.median(times['physguard']) / ref_t:.2f}x (<= 1.15)"
    )
    print(
        f"bf16 autocast vs fp32 (full fine-tuning step time): {statistics.median(times['full-bf16']) / ref_t:.2f}x"
    )


if __name__ == "__main__":
    main()
