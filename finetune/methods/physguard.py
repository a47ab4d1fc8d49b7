"""PhysGuard: fine-tune while projecting gradients off the Fisher directions of the simulation data.

Offline, once (lemon_physguard notes §8): per-sample gradients g_i of the loss on N simulation
(pretraining) examples, batch size 1, with `torch.func` (vmap over grad) where the model allows it and a
plain autograd loop otherwise; for each parameter tensor m the Gram matrix K = G G^T (N x N, G = [g_i]),
its eigen-decomposition, the smallest rank k whose eigenvalues hold a fraction `tau` of the energy
(capped at `max_rank`), and the lifted basis U = G^T V_k, re-orthonormalised: the top eigenvectors of
the empirical Fisher G^T G. The bases are cached to safetensors.

Every fine-tuning step: g <- g - alpha U U^T g, after clipping and before the optimizer. With alpha = 1
and plain SGD the update leaves the protected directions unchanged; AdamW's per-coordinate scaling
does not preserve that exactly (as in the paper).

Unlike the reference implementation, tensors with few entries are not special-cased (its
"first k coordinates" rule); the Gram decomposition is used for every tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file
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
    """Precision of the stored bases."""


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


def per_sample_gradients(
    model: nn.Module,
    data: Dataset,
    names: Sequence[str],
    *,
    chunk_size: int = 8,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Flattened gradients of the single-example loss, `{name: [N, numel]}` on CPU in `dtype`.

    Uses vmap(grad(loss)) over chunks of examples; falls back to one autograd pass per example when the
    model's forward cannot be vmapped (data-dependent indexing, in-place writes).
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    params = {n: p.detach() for n, p in model.named_parameters() if n in set(names)}
    buffers = dict(model.named_buffers())

    def loss_one(p, example):
        batch = {k: v.unsqueeze(0) for k, v in example.items()}
        return functional_call(model, (p, buffers), args=(), kwargs=batch, strict=False).loss

    per_chunk = vmap(grad(loss_one), in_dims=(None, 0), randomness="same")
    out: dict[str, list[torch.Tensor]] = {n: [] for n in params}
    use_vmap = True
    for batch in DataLoader(data, batch_size=chunk_size, shuffle=False):
        batch = {k: batch[k].to(device) for k in FORWARD_KEYS if k in batch}
        grads = None
        if use_vmap:
            try:
                grads = per_chunk(params, batch)
            except (RuntimeError, NotImplementedError, ValueError):
                use_vmap = False
        if grads is None:
            grads = _looped_gradients(model, params, batch)
        for n, g in grads.items():
            out[n].append(g.reshape(g.shape[0], -1).to("cpu", dtype))
    model.train(was_training)
    return {n: torch.cat(chunks) for n, chunks in out.items()}


def _looped_gradients(
    model: nn.Module, params: dict[str, torch.Tensor], batch: dict
) -> dict[str, torch.Tensor]:
    """Per-example gradients by one autograd pass per example (the fallback when vmap does not fit)."""
    named = dict(model.named_parameters())
    targets = [named[n] for n in params]
    rows = []
    for i in range(batch["pixel_values"].shape[0]):
        loss = model(**{k: v[i : i + 1] for k, v in batch.items()}).loss
        rows.append(torch.autograd.grad(loss, targets, allow_unused=True))
    return {
        n: torch.stack([r[j] if r[j] is not None else torch.zeros_like(targets[j]) for r in rows])
        for j, n in enumerate(params)
    }


def protected_basis(gradients: torch.Tensor, tau: float, max_rank: int) -> torch.Tensor:
    """Orthonormal basis `[d, k]` of the top Fisher directions from per-sample gradients `[N, d]`.

    k is the smallest count whose Gram eigenvalues hold a fraction `tau` of the total (tau <= 0: the cap),
    capped at min(max_rank, N, d) and at the numerical rank; k = 0 when the gradients vanish.
    """
    G = gradients.to(torch.float64)
    n, d = G.shape
    lam, V = torch.linalg.eigh(G @ G.T)
    lam, V = lam.flip(0).clamp_min(0.0), V.flip(1)
    total = float(lam.sum())
    cap = min(max_rank, n, d)
    if total <= 0.0 or cap == 0:
        return torch.zeros(d, 0, dtype=torch.float32)
    rank = int((lam > lam[0] * max(n, d) * torch.finfo(torch.float32).eps).sum())
    if tau > 0:
        k = int(torch.searchsorted(torch.cumsum(lam, 0) / total, torch.tensor(tau, dtype=torch.float64))) + 1
    else:
        k = cap
    k = max(1, min(k, cap, rank))
    U = G.T @ V[:, :k]
    U, _ = torch.linalg.qr(U / U.norm(dim=0, keepdim=True))
    return U.to(torch.float32)


def compute_bases(
    model: nn.Module, sim_data: Dataset, options: PhysGuardOptions | None = None, *, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Protected bases `{parameter name: U [numel, k]}` from `n_samples` simulation examples (k = 0 omitted)."""
    opts = options or PhysGuardOptions()
    names = _protected_names(model, opts.protected)
    if not names:
        raise ValueError(f"PhysGuard: no trainable parameter matches protected={list(opts.protected)}")
    data = _sample(sim_data, opts.n_samples, seed)
    dtype = getattr(torch, opts.storage_dtype)
    grads = per_sample_gradients(model, data, names, chunk_size=opts.chunk_size, dtype=dtype)
    bases = {n: protected_basis(grads.pop(n), opts.tau, opts.max_rank) for n in names}
    return {n: U for n, U in bases.items() if U.shape[1] > 0}


def save_bases(bases: dict[str, torch.Tensor], path: str | Path, options: PhysGuardOptions) -> Path:
    """Caches the bases to safetensors with the options that produced them as metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"tau": str(options.tau), "n_samples": str(options.n_samples), "max_rank": str(options.max_rank)}
    save_file({n: U.contiguous() for n, U in bases.items()}, str(path), metadata=meta)
    return path


def load_bases(path: str | Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """Bases cached by `save_bases`, checked against `model`'s parameter names and sizes."""
    bases = load_file(str(path))
    params = dict(model.named_parameters())
    for name, U in bases.items():
        if name not in params:
            raise ValueError(
                f"{path}: basis for {name!r}, which is not a parameter of {type(model).__name__}"
            )
        if U.ndim != 2 or U.shape[0] != params[name].numel():
            raise ValueError(
                f"{path}: basis {name!r} has shape {tuple(U.shape)}, expected [{params[name].numel()}, k] "
                f"for parameter shape {tuple(params[name].shape)}"
            )
    return bases


class Projector:
    """The gradient transform g <- g - alpha U U^T g for every parameter with a protected basis."""

    def __init__(self, model: nn.Module, bases: dict[str, torch.Tensor], alpha: float = 1.0):
        params = dict(model.named_parameters())
        self.alpha = alpha
        self.targets = [(params[n], U.to(params[n].device, params[n].dtype)) for n, U in bases.items()]

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
