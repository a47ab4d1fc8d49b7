"""PhysGuard: fine-tune while projecting gradients off the Fisher directions of the simulation data.

Offline, once (after the PhysGuard reference implementation): per-sample gradients g_i of the loss on N
simulation (pretraining) examples, batch size 1, with `torch.func` (vmap over grad, in chunks of c examples;
one autograd pass per example where the forward cannot be vmapped); for each parameter tensor m the Gram
matrix K = G G^T (N x N, G = [g_i]), its eigen-decomposition, the smallest rank k whose eigenvalues hold a
fraction `tau` of the energy (capped), and the lifted basis U = G^T V_k / sqrt(lambda): the top eigenvectors
of the empirical Fisher G^T G. The bases are cached to safetensors in half precision.

Every fine-tuning step: g <- g - alpha U U^T g, after clipping and before the optimizer. With alpha = 1
and plain SGD the update leaves the protected directions unchanged; AdamW's per-coordinate scaling
does not preserve that exactly (as in the paper).

Scale (Poseidon-B/L): everything stays on the model's device. The protected tensors are split into groups
whose half-precision gradient rows 2 N D_g bytes fit `gradient_budget_gb`; each group costs one pass over the N
examples (chunks of c), which fills its rows G_g, then each tensor's Gram (fp32, over column blocks), eigh
(fp64 on the host, N x N), lift and QR (fp32, one tensor at a time), after which the rows are freed. Every
tensor keeps at most k_cap = min(max_rank, N, basis_budget / (2 P)) directions, P the protected entries, so
the bases fit `basis_budget_gb`. Peak memory (`memory_formula`), with W the weight bytes, A the bytes one
example's forward saves for backward, D_g the largest group's and d_max the largest tensor's entries, and E
the bytes of one example:

    device = W + c A + 4 c D_g + 2 N D_g + 4 N^2 + 4 B + 8 d_max k_cap + 2 k_cap P + 2 c E
    host   = 24 N^2 + 2 c E + 2 d_max k_cap          (bases are saved and loaded one tensor at a time)

(B = GRAM_BLOCK, the fp32 entries of one column block).

Unlike the reference implementation, tensors with few entries are not special-cased (its
"first k coordinates" rule); the Gram decomposition is used for every tensor.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils.data import DataLoader, Dataset, Subset

from finetune.methods.full import FullOptions, poseidon_param_groups
from finetune.methods.registry import GradTransform, Method, MethodContext, register_method
from finetune.trainer import FORWARD_KEYS

BASIS_FILE = "physguard_basis.safetensors"


@dataclass
class PhysGuardOptions(FullOptions):
    """Full fine-tuning's learning rates plus the protection: which simulation data, how much, how strongly."""

    sim_data: str | None = None
    """Simulation (pretraining) data whose Fisher directions are protected: file, corpus folder or Hub id
    (from Python also a list of trajectories)."""
    basis: str | None = None
    """A cached physguard_basis.safetensors to use instead of computing one from sim_data."""
    tau: float = 0.9
    """Cumulative eigen-energy cutoff of each tensor's protected rank (<= 0: always max_rank)."""
    alpha: float = 1.0
    """Projection strength (1: remove the protected components of every gradient)."""
    n_samples: int = field(default=200, metadata={"flag": "--fisher-samples"})
    """Simulation examples of the empirical Fisher."""
    max_rank: int = 200
    """Maximum protected rank per parameter tensor."""
    protected: tuple[str, ...] = ()
    """Protect only parameters whose name contains one of these substrings (default: all)."""
    chunk_size: int = field(default=8, metadata={"flag": "--fisher-chunk-size"})
    """Examples per vmapped per-sample-gradient chunk."""
    storage_dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    """Precision of the gradient rows and of the stored bases."""
    gradient_budget_gb: float = 8.0
    """Device memory for one group's per-sample gradient rows (more groups, i.e. passes, when smaller)."""
    basis_budget_gb: float = 4.0
    """Device memory the stored bases may take: caps every tensor's rank at budget / (2 bytes x entries)."""


def _protected_names(model: nn.Module, substrings: Sequence[str]) -> list[str]:
    return [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and (not substrings or any(s in n for s in substrings))
    ]


def _sample(data: Dataset, n: int, seed: int) -> Dataset:
    if len(data) <= n:
        return data
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    return Subset(data, idx)


GIB = 2**30


def rank_cap(options: PhysGuardOptions, n_samples: int, protected_numel: int) -> int:
    """The most directions any tensor keeps: max_rank, the sample count, and the basis budget shared evenly
    (2 bytes x protected entries per direction), so that the half-precision bases fit `basis_budget_gb`."""
    per_direction = 2 * max(protected_numel, 1)
    return max(1, min(options.max_rank, n_samples, int(options.basis_budget_gb * GIB) // per_direction))


def tensor_groups(sizes: dict[str, int], n_samples: int, budget_bytes: float) -> list[list[str]]:
    """Consecutive tensors whose half-precision gradient rows (2 N numel bytes) fit `budget_bytes` together;
    a tensor larger than the budget is a group of its own."""
    groups: list[list[str]] = []
    used = budget_bytes + 1
    for name, numel in sizes.items():
        need = 2 * n_samples * numel
        if used + need > budget_bytes:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += need
    return groups


def memory_formula(
    sizes: dict[str, int],
    options: PhysGuardOptions,
    *,
    n_samples: int,
    weight_bytes: int,
    activation_bytes: int,
    example_bytes: int,
) -> dict[str, float]:
    """Peak device and host bytes of `compute_bases` (the module docstring derives each term).

    `sizes`: protected tensor sizes; `weight_bytes`: the model's parameters and buffers; `activation_bytes`:
    what one example's forward saves for backward (`activation_bytes()` measures it); `example_bytes`: one
    training example's tensors.
    """
    n, c = n_samples, min(options.chunk_size, n_samples)
    k = rank_cap(options, n, sum(sizes.values()))
    groups = tensor_groups(sizes, n, options.gradient_budget_gb * GIB)
    group_numel = max(sum(sizes[t] for t in g) for g in groups)
    largest = max(sizes.values())
    device = {
        "weights": weight_bytes,
        "activations": c * activation_bytes,
        "chunk_gradients": 4 * c * group_numel,
        "gradient_rows": 2 * n * group_numel,
        "gram": 4 * n * n + 4 * GRAM_BLOCK,
        "lift": 8 * largest * k,
        "bases": 2 * k * sum(sizes.values()),
        "examples": 2 * c * example_bytes,
    }
    host = {"eigh": 3 * 8 * n * n, "examples": 2 * c * example_bytes, "save": 2 * largest * k}
    return {
        "device_bytes": float(sum(device.values())),
        "host_bytes": float(sum(host.values())),
        "groups": len(groups),
        "rank_cap": k,
        **{f"device_{key}": float(v) for key, v in device.items()},
        **{f"host_{key}": float(v) for key, v in host.items()},
    }


def activation_bytes(model: nn.Module, example: dict[str, torch.Tensor]) -> int:
    """Bytes one example's forward keeps for backward (autograd's saved tensors, by storage); runs on any
    device, the meta device included."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        seen[id(storage)] = storage.nbytes()
        return t

    batch = {k: v.unsqueeze(0) for k, v in example.items()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**batch)
    return sum(seen.values())


GRAM_BLOCK = 1 << 22
"""Columns of G turned to fp32 at a time for the Gram matrix and the lift (N x 4M x 4 bytes at most)."""


def _chunk_gradients(
    model: nn.Module, params: dict[str, torch.Tensor], frozen: dict, batch: dict, use_vmap: bool
) -> tuple[dict[str, torch.Tensor], bool]:
    """Per-example gradients `{name: [b, *shape]}` of the chunk's losses with respect to `params` (on the
    model's device), by vmap over grad where the forward allows it, else one autograd pass per example."""
    if use_vmap:

        def loss_one(p, example):
            one = {k: v.unsqueeze(0) for k, v in example.items()}
            return functional_call(model, (p, frozen), args=(), kwargs=one, strict=False).loss

        try:
            return vmap(grad(loss_one), in_dims=(None, 0), randomness="same")(params, batch), True
        except (RuntimeError, NotImplementedError, ValueError):
            pass
    rows = []
    for i in range(batch["pixel_values"].shape[0]):
        leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
        one = {k: v[i : i + 1] for k, v in batch.items()}
        loss = functional_call(model, (leaves, frozen), args=(), kwargs=one, strict=False).loss
        rows.append(torch.autograd.grad(loss, list(leaves.values()), allow_unused=True))
    grads = {
        n: torch.stack([r[j] if r[j] is not None else torch.zeros_like(params[n]) for r in rows])
        for j, n in enumerate(params)
    }
    return grads, False


def per_sample_gradients(
    model: nn.Module,
    data: Dataset,
    names: Sequence[str],
    *,
    chunk_size: int = 8,
    dtype: torch.dtype = torch.float16,
) -> dict[str, torch.Tensor]:
    """Flattened gradients of the single-example losses, `{name: G [N, numel]}` in `dtype` on the model's
    device, filled chunk by chunk (only `chunk_size` examples' fp32 gradients exist at a time)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    wanted = set(names)
    params = {n: p.detach() for n, p in model.named_parameters() if n in wanted}
    frozen = {n: p.detach() for n, p in model.named_parameters() if n not in wanted}
    frozen.update(dict(model.named_buffers()))
    rows = {n: torch.empty(len(data), p.numel(), dtype=dtype, device=device) for n, p in params.items()}
    start, use_vmap = 0, True
    for batch in DataLoader(data, batch_size=chunk_size, shuffle=False):
        batch = {k: batch[k].to(device) for k in FORWARD_KEYS if k in batch}
        grads, use_vmap = _chunk_gradients(model, params, frozen, batch, use_vmap)
        stop = start + batch["pixel_values"].shape[0]
        for n, g in grads.items():
            rows[n][start:stop] = g.reshape(g.shape[0], -1)
        start = stop
        del grads
    model.train(was_training)
    return rows


def protected_basis(gradients: torch.Tensor, tau: float, max_rank: int) -> torch.Tensor:
    """Orthonormal basis `[d, k]` (fp32, on the gradients' device) of the top Fisher directions from
    per-sample gradients `[N, d]` in any precision.

    K = G G^T is accumulated in fp32 over column blocks and eigen-decomposed in fp64 on the host; k is the
    smallest count whose eigenvalues hold a fraction `tau` of the total (tau <= 0: the cap), capped at
    min(max_rank, N, d) and at the numerical rank; k = 0 when the gradients vanish. U = G^T V_k / sqrt(lambda)
    is lifted block by block and re-orthonormalised (QR).
    """
    n, d = gradients.shape
    blocks = range(0, d, max(1, GRAM_BLOCK // max(n, 1)))
    gram = torch.zeros(n, n, dtype=torch.float32, device=gradients.device)
    for j in blocks:
        part = gradients[:, j : j + blocks.step].float()
        gram.addmm_(part, part.T)
    lam, V = torch.linalg.eigh(gram.cpu().double())
    lam, V = lam.flip(0).clamp_min(0.0), V.flip(1)
    total = float(lam.sum())
    cap = min(max_rank, n, d)
    if total <= 0.0 or cap == 0:
        return torch.zeros(d, 0, dtype=torch.float32, device=gradients.device)
    rank = int((lam > lam[0] * max(n, d) * torch.finfo(torch.float32).eps).sum())
    if tau > 0:
        k = int(torch.searchsorted(torch.cumsum(lam, 0) / total, torch.tensor(tau, dtype=torch.float64))) + 1
    else:
        k = cap
    k = max(1, min(k, cap, rank))
    Vk = (V[:, :k] / lam[:k].sqrt()).to(torch.float32).to(gradients.device)
    U = torch.empty(d, k, dtype=torch.float32, device=gradients.device)
    for j in blocks:
        torch.mm(gradients[:, j : j + blocks.step].float().T, Vk, out=U[j : j + blocks.step])
    return torch.linalg.qr(U).Q


def compute_bases(
    model: nn.Module, sim_data: Dataset, options: PhysGuardOptions | None = None, *, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Protected bases `{parameter name: U [numel, k]}` in `storage_dtype` on the model's device, from
    `n_samples` simulation examples (tensors with k = 0 omitted), one tensor group at a time."""
    opts = options or PhysGuardOptions()
    names = _protected_names(model, opts.protected)
    if not names:
        raise ValueError(f"PhysGuard: no trainable parameter matches protected={list(opts.protected)}")
    data = _sample(sim_data, opts.n_samples, seed)
    params = dict(model.named_parameters())
    sizes = {n: params[n].numel() for n in names}
    cap = rank_cap(opts, len(data), sum(sizes.values()))
    dtype = getattr(torch, opts.storage_dtype)
    bases = {}
    for group in tensor_groups(sizes, len(data), opts.gradient_budget_gb * GIB):
        rows = per_sample_gradients(model, data, group, chunk_size=opts.chunk_size, dtype=dtype)
        for name in group:
            U = protected_basis(rows.pop(name), opts.tau, cap)
            if U.shape[1] > 0:
                bases[name] = U.to(dtype)
            del U
    return bases


def save_bases(bases: dict[str, torch.Tensor], path: str | Path, options: PhysGuardOptions) -> Path:
    """Writes the bases to safetensors, one tensor at a time (host memory: the largest basis), with the
    options that produced them as metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"tau": str(options.tau), "n_samples": str(options.n_samples), "max_rank": str(options.max_rank)}
    header: dict = {"__metadata__": meta}
    offset = 0
    for name, U in bases.items():
        nbytes = U.numel() * U.element_size()
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[U.dtype],
            "shape": list(U.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for U in bases.values():
            f.write(U.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    os.replace(tmp, path)
    return path


SAFETENSORS_DTYPES = {
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.float64: "F64",
}


def load_bases(path: str | Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """Bases cached by `save_bases`, read one tensor at a time onto the model's device and checked against
    its parameter names and sizes."""
    params = dict(model.named_parameters())
    device = next(model.parameters()).device
    bases = {}
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        for name in f.keys():
            if name not in params:
                raise ValueError(
                    f"{path}: basis for {name!r}, which is not a parameter of {type(model).__name__}"
                )
            shape = f.get_slice(name).get_shape()
            if len(shape) != 2 or shape[0] != params[name].numel():
                raise ValueError(
                    f"{path}: basis {name!r} has shape {tuple(shape)}, expected [{params[name].numel()}, k] "
                    f"for parameter shape {tuple(params[name].shape)}"
                )
            bases[name] = f.get_tensor(name)
    return bases


class Projector:
    """The gradient transform g <- g - alpha U U^T g for every parameter with a protected basis.

    The stored (half-precision) bases are re-orthonormalised once in the parameter's dtype, so the
    projection is exact in the precision the gradients have.
    """

    def __init__(self, model: nn.Module, bases: dict[str, torch.Tensor], alpha: float = 1.0):
        params = dict(model.named_parameters())
        self.alpha = alpha
        self.targets = [
            (params[n], torch.linalg.qr(U.to(params[n].device, params[n].dtype)).Q) for n, U in bases.items()
        ]

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> None:
        for p, U in self.targets:
            if p.grad is None:
                continue
            g = p.grad.view(-1)
            g.addmv_(U, U.T @ g, alpha=-self.alpha)  # g - alpha U (U^T g), without a temporary of g's size


@register_method
class PhysGuard(Method):
    """Full fine-tuning with gradients projected off the simulation data's top Fisher directions."""

    name = "physguard"
    Options = PhysGuardOptions
    summary = (
        "Poseidon's full fine-tuning with every gradient projected off the top empirical-Fisher directions of "
        "the simulation data (PhysGuard), so that what the model knows of it is kept."
    )
    lr_field = "lr_backbone"
    keeps_channels = True
    """Its bases protect what the pretrained embedding, recovery and backbone compute on the simulation
    data, through the checkpoint's own channels: fresh channels would replace what it protects."""

    def prepare(self, model: nn.Module, options: PhysGuardOptions, context: MethodContext):
        if "bases" not in context.state:
            if options.basis is not None:
                context.state["bases"] = load_bases(options.basis, model)
            elif options.sim_data is not None:
                from finetune.data import load_trajectories

                sim = context.pairs(load_trajectories(options.sim_data))
                context.state["bases"] = compute_bases(
                    model.to(context.device), sim, options, seed=context.train.seed
                )
            else:
                raise ValueError(
                    "physguard needs protected bases: give sim_data (the simulation data to protect, "
                    "--sim-data) or a cached basis (--basis)"
                )
        return model, poseidon_param_groups(model, options)

    def gradient_transform(
        self, model: nn.Module, options: PhysGuardOptions, context: MethodContext
    ) -> GradTransform:
        return Projector(model.to(context.device), context.state["bases"], options.alpha)

    def save(
        self, model: nn.Module, out: Path, options: PhysGuardOptions, context: MethodContext
    ) -> dict[str, Path]:
        paths = super().save(model, out, options, context)
        paths["basis"] = save_bases(context.state["bases"], out / BASIS_FILE, options)
        return paths

    def card(self, options: PhysGuardOptions) -> str:
        return (
            f"PhysGuard: gradients projected off the top Fisher directions of {options.n_samples} simulation "
            f"examples (tau {options.tau}, at most {options.max_rank} per tensor, alpha {options.alpha}); the "
            f"bases are in `{BASIS_FILE}`."
        )
