"""Conditioned layer norms: Poseidon's time-conditioned LayerNorm, optionally also conditioned on the operator.

Poseidon: y = gamma(t) * LN(x) + beta(t) with gamma, beta = Linear(1, d)(t) (keys `weight.*` / `bias.*`).
pdefm's operator conditioning adds a zero-initialised Linear(E, 2d) of an embedding of the PDE family and its
coefficients, so a conditioned model starts out computing exactly what the unconditioned one does.

The PDE vocabulary (`ScOTConfig.pde_vocabulary`) names the families: `pde_id` i is the i-th name, and it is
saved in config.json with the weights. Pretraining builds it from the corpus (`build_vocabulary`),
fine-tuning on a new family appends to it (`extend_vocabulary`, existing ids unchanged, the family
embedding grown when full) and zero-shot prediction looks families up in it (`operator_inputs`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class OperatorModulation(nn.Linear):
    """Linear(E, 2d) from the operator embedding to (delta gamma, delta beta); initialised to zero."""


class TimeScale(nn.Linear):
    """Linear(1, d): the lead-time-dependent scale gamma(t) = W t + b of a time-conditioned norm."""


class TimeConditionedNorm(nn.Module):
    """LayerNorm without affine parameters whose scale and shift are affine functions of the lead time."""

    def __init__(self, dim: int, eps: float = 1e-5, operator_dim: int = 0):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = TimeScale(1, dim)
        self.bias = nn.Linear(1, dim)
        self.operator = OperatorModulation(operator_dim, 2 * dim) if operator_dim else None

    def forward(
        self, x: torch.Tensor, time: torch.Tensor, operator: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x [B, ..., d], time [B, 1], operator [B, E] (only with operator conditioning)."""
        x = F.layer_norm(x, (self.dim,), eps=self.eps)
        time = time.to(x.dtype)
        gamma = torch.addcmul(self.weight.bias, time, self.weight.weight.t())  # Linear(1, d)(t), one op
        beta = torch.addcmul(self.bias.bias, time, self.bias.weight.t())
        if self.operator is not None:
            d_gamma, d_beta = self.operator(operator.to(x.dtype)).chunk(2, dim=-1)
            gamma, beta = gamma + d_gamma, beta + d_beta
        shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (self.dim,)
        return torch.addcmul(beta.view(shape), x, gamma.view(shape))


class UnconditionedLayerNorm(nn.LayerNorm):
    """Plain LayerNorm with the conditioned norm's call signature (Poseidon with `use_conditioning=False`)."""

    def forward(
        self, x: torch.Tensor, time: torch.Tensor, operator: torch.Tensor | None = None
    ) -> torch.Tensor:
        return super().forward(x)


def make_norm(config, dim: int) -> nn.Module:
    """The norm used everywhere in scOT, as the config asks for it."""
    if not config.use_conditioning:
        return UnconditionedLayerNorm(dim, eps=config.layer_norm_eps)
    operator_dim = config.operator_embed_dim if config.use_operator_conditioning else 0
    return TimeConditionedNorm(dim, eps=config.layer_norm_eps, operator_dim=operator_dim)


class OperatorEmbedding(nn.Module):
    """Embeds (PDE family id, coefficients scaled to [0,1]) into one vector per sample."""

    def __init__(self, num_families: int, num_coefficients: int, dim: int):
        super().__init__()
        self.family = nn.Embedding(num_families, dim)
        self.mlp = nn.Sequential(nn.Linear(dim + num_coefficients, dim), nn.GELU(), nn.Linear(dim, dim))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """O(1) features (unit-normal family vectors, PyTorch's default Linear init) rather than the 0.02-std
        transformer init, so the zero-initialised modulations receive useful gradients from the first step."""
        self.family.weight.normal_()
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()

    def forward(self, pde_id: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
        family = self.family(pde_id)
        return self.mlp(torch.cat([family, coefficients.to(family.dtype)], dim=-1))


def build_vocabulary(families: Iterable[str]) -> list[str]:
    """The PDE vocabulary of a model pretrained on `families`: the distinct names, sorted (ids = positions)."""
    vocabulary = sorted(set(families))
    if not vocabulary:
        raise ValueError("operator conditioning: no PDE family to build a vocabulary from")
    return vocabulary


def _conditioned(model: nn.Module):
    config = getattr(model, "config", None)
    return config if getattr(config, "use_operator_conditioning", False) else None


def extend_vocabulary(model: nn.Module, families: Iterable[str]) -> list[str] | None:
    """The vocabulary of an operator-conditioned `model` with the unknown `families` appended (in order of
    appearance), or None for a model without operator conditioning (whose recorded vocabulary, if it has
    one, still gains the new families: it names what the model has been trained on).

    Existing ids are kept. When the vocabulary outgrows the family embedding, the embedding gets new rows
    (and `config.num_pde_families` follows); every new family's row starts at the mean of the known
    families' rows, so it begins as an average known operator.
    """
    config = _conditioned(model)
    if config is None:
        recorded = getattr(getattr(model, "config", None), "pde_vocabulary", None)
        if recorded is not None:
            model.config.pde_vocabulary = list(dict.fromkeys([*recorded, *families]))
        return None
    vocabulary = list(config.pde_vocabulary or [])
    known = len(vocabulary)
    vocabulary += [f for f in dict.fromkeys(families) if f not in vocabulary]
    if len(vocabulary) == known:
        return vocabulary
    embedding = model.get_submodule("operator_embedding").family
    with torch.no_grad():
        if len(vocabulary) > embedding.num_embeddings:
            grown = nn.Embedding(len(vocabulary), embedding.embedding_dim)
            grown.to(embedding.weight.device, embedding.weight.dtype)
            grown.weight[: embedding.num_embeddings] = embedding.weight
            model.get_submodule("operator_embedding").family = grown
            embedding = grown
            config.num_pde_families = len(vocabulary)
        if known:
            embedding.weight[known : len(vocabulary)] = embedding.weight[:known].mean(0)
    config.pde_vocabulary = vocabulary
    return vocabulary


def operator_inputs(config, pdes: Sequence[str], params: Sequence[dict]) -> dict[str, torch.Tensor]:
    """`pde_id` [B] and `coefficients` [B, K] for samples of families `pdes` with coefficients `params`, as an
    operator-conditioned model takes them (empty for other models); an unknown family is a ValueError."""
    if not getattr(config, "use_operator_conditioning", False):
        return {}
    from data_pipelines.semigroup import coefficient_vector

    vocabulary = list(config.pde_vocabulary or [])
    unknown = sorted(set(pdes) - set(vocabulary))
    if unknown:
        raise ValueError(
            f"operator conditioning: families {unknown} are not in the model's pde_vocabulary {vocabulary}; "
            "fine-tune on them first (that extends the vocabulary)"
        )
    ids = torch.tensor([vocabulary.index(p) for p in pdes], dtype=torch.int64)
    coefficients = torch.stack(
        [torch.from_numpy(coefficient_vector(p, q)) for p, q in zip(pdes, params, strict=True)]
    )
    return {"pde_id": ids, "coefficients": coefficients[:, : config.num_coefficients]}
