"""`ScOT`: the scOT / Poseidon operator transformer as a transformers `PreTrainedModel`.

A Swin-V2 U-Net with time-conditioned norms (Herde et al., Poseidon, 2024): patch embedding, four levels of
shifted-window attention with patch merging, ConvNeXt-processed additive skips, a mirrored decoder with patch
unmerging, and a transposed-conv patch recovery. Parameter names equal Poseidon's, so its checkpoints load as
they are (see `foundation.loading`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from foundation.attention import (
    ScaledCosineSelfAttention,
    WindowAttention,
    WindowTables,
    compute_dtype,
    level_attention_inputs,
    window_and_shift,
)
from foundation.conditioning import (
    OperatorEmbedding,
    OperatorModulation,
    TimeConditionedNorm,
    TimeScale,
    make_norm,
)
from foundation.configuration_scot import ATTENTION_IMPLEMENTATIONS, ScOTConfig
from foundation.loss import masked_output_and_loss
from foundation.resampling import fft_resample


@dataclass
class ScOTOutput(ModelOutput):
    """`output` [B, C_out, H, W] (masked channels replaced by the labels) and, given labels, the loss.

    With `output_hidden_states`, Poseidon's hidden states: the decoder's input and its stage outputs, then the
    embedding output and the encoder's stage outputs before merging, as tokens [B, n*n, d] (`hidden_states`)
    and as maps [B, d, n, n] (`reshaped_hidden_states`).
    """

    loss: torch.Tensor | None = None
    output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    reshaped_hidden_states: tuple[torch.Tensor, ...] | None = None


def _drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch per sample."""
    if rate == 0.0 or not training:
        return x
    keep = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device, dtype=x.dtype) >= rate
    return x * keep / (1.0 - rate)


class Intermediate(nn.Module):
    """MLP expansion (key `intermediate.dense`)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.dense = nn.Linear(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class Output(nn.Module):
    """MLP contraction (key `output.dense`)."""

    def __init__(self, hidden: int, dim: int, dropout: float):
        super().__init__()
        self.dense = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense(x))


def norm_modulation(norms: Sequence[nn.Module], time: torch.Tensor, operator) -> torch.Tensor | None:
    """The per-sample (gamma, beta) of several time-conditioned norms from one product: [B, sum of 2d], laid out
    norm by norm as (gamma [d], beta [d]), the values each norm's own Linear(1, d) maps (plus its operator
    modulation) give. None for plain LayerNorms (`use_conditioning=False`)."""
    if not isinstance(norms[0], TimeConditionedNorm):
        return None
    weight = torch.cat([p.view(-1) for n in norms for p in (n.weight.weight, n.bias.weight)])
    bias = torch.cat([p for n in norms for p in (n.weight.bias, n.bias.bias)])
    modulation = torch.addcmul(bias, time.to(weight.dtype), weight)
    if norms[0].operator is not None:
        mod_weight = torch.cat([n.operator.weight for n in norms])
        mod_bias = torch.cat([n.operator.bias for n in norms])
        modulation = modulation + F.linear(operator.to(mod_weight.dtype), mod_weight, mod_bias)
    return modulation


def _split_modulation(modulation: torch.Tensor | None, count: int) -> list:
    """[B, count*2d] -> count (gamma, beta) pairs of [B, d] (views; their gradients are stacked, not scattered)."""
    if modulation is None:
        return [None] * count
    parts = modulation.view(modulation.shape[0], 2 * count, -1).unbind(1)
    return [parts[2 * i : 2 * i + 2] for i in range(count)]


class ModulatedLayerNorm(torch.autograd.Function):
    """residual + gamma * LayerNorm(x) + beta for x [B, T, d] with per-sample gamma, beta [B, d] (a time-conditioned
    norm with its precomputed modulation, plus an optional residual): three ops forward and five backward, where
    autograd's composition of the same takes nine. LayerNorm runs in x's dtype (no autocast upcast)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, gamma, beta, residual, eps):
        normed, mean, rstd = torch.native_layer_norm(x, (x.shape[-1],), None, None, eps)
        shift = beta.unsqueeze(1) if residual is None else residual + beta.unsqueeze(1)
        return torch.addcmul(shift, normed, gamma.unsqueeze(1)), normed, mean, rstd

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, gamma, _, residual, _ = inputs
        _, normed, mean, rstd = output
        ctx.mark_non_differentiable(normed, mean, rstd)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, gamma, normed, mean, rstd)
        ctx.residual = residual is not None

    @staticmethod
    def backward(ctx, grad, *_):
        if grad is None:
            return None, None, None, None, None
        x, gamma, normed, mean, rstd = ctx.saved_tensors
        grad_normed = (grad * gamma.unsqueeze(1)).to(x.dtype)
        grad_x = torch.ops.aten.native_layer_norm_backward(
            grad_normed, x, [x.shape[-1]], mean, rstd, None, None, [True, False, False]
        )[0]
        grad_gamma = (grad * normed).sum(1)
        return grad_x, grad_gamma, grad.sum(1), grad if ctx.residual else None, None


def _norm(norm: nn.Module, x: torch.Tensor, modulation, residual: torch.Tensor | None = None) -> torch.Tensor:
    """A conditioned norm with its precomputed (gamma, beta) [B, d], i.e. TimeConditionedNorm's
    gamma * LN(x) + beta for x [B, T, d], plus `residual`; a plain LayerNorm without modulation."""
    if modulation is None:
        out = norm(x, None)
        return out if residual is None else residual + out
    gamma, beta = modulation
    return ModulatedLayerNorm.apply(x, gamma, beta, residual, norm.eps)[0]


class SwinBlock(GradientCheckpointingLayer):
    """Res-post-norm Swin-V2 block: x + LN(W-MSA(x)), then x + LN(MLP(x)), both norms time-conditioned."""

    def __init__(self, config: ScOTConfig, dim: int, num_heads: int, shifted: bool, drop_path: float):
        super().__init__()
        self.drop_path = drop_path
        self.attention = WindowAttention(dim, num_heads, config.window_size, shifted, config)
        self.layernorm_before = make_norm(config, dim)
        hidden = int(dim * config.mlp_ratio)
        self.intermediate = Intermediate(dim, hidden)
        self.output = Output(hidden, dim, config.hidden_dropout_prob)
        self.layernorm_after = make_norm(config, dim)

    def norms(self) -> list[nn.Module]:
        return [self.layernorm_before, self.layernorm_after]

    def forward(self, x, modulation, *attention, grid: int):
        """modulation [B, 4d] of both norms (`norm_modulation`) and the attention's inputs
        (`level_attention_inputs`): computed once per stage for all its blocks."""
        before, after = _split_modulation(modulation, 2)
        x = self._residual(x, self.layernorm_before, self.attention(x, grid, *attention), before)
        return self._residual(x, self.layernorm_after, self.output(self.intermediate(x)), after)

    def _residual(self, x, norm, branch, modulation):
        if self.drop_path and self.training:
            return x + _drop_path(_norm(norm, branch, modulation), self.drop_path, self.training)
        return _norm(norm, branch, modulation, residual=x)


class PatchMerging(nn.Module):
    """Halve the grid: concatenate 2x2 neighbours (Swin order), Linear(4d -> 2d), conditioned norm."""

    def __init__(self, config: ScOTConfig, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = make_norm(config, 2 * dim)

    def norms(self) -> list[nn.Module]:
        return [self.norm]

    def forward(self, x, modulation, grid: int):
        b, _, c = x.shape
        x = x.view(b, grid, grid, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        (mod,) = _split_modulation(modulation, 1)
        return _norm(self.norm, self.reduction(x.reshape(b, -1, 4 * c)), mod)


class PatchUnmerging(nn.Module):
    """Double the grid: Linear(d -> 2d) split into 2x2 sub-tokens of width d/2, conditioned norm, Linear mixup."""

    def __init__(self, config: ScOTConfig, dim: int):
        super().__init__()
        self.upsample = nn.Linear(dim, 2 * dim, bias=False)
        self.mixup = nn.Linear(dim // 2, dim // 2, bias=False)
        self.norm = make_norm(config, dim // 2)

    def norms(self) -> list[nn.Module]:
        return [self.norm]

    def forward(self, x, modulation, grid: int):
        b, _, c = x.shape
        x = self.upsample(x).view(b, grid, grid, 2, 2, c // 2).permute(0, 1, 3, 2, 4, 5)
        x = x.reshape(b, 4 * grid * grid, c // 2)
        (mod,) = _split_modulation(modulation, 1)
        return self.mixup(_norm(self.norm, x, mod))


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block on the skip path: depthwise 7x7, norm, 4x MLP, layer scale `weight`, residual."""

    def __init__(self, config: ScOTConfig, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = make_norm(config, dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.weight = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x, time, operator, grid: int):
        b, _, c = x.shape
        y = self.dwconv(x.transpose(1, 2).reshape(b, c, grid, grid)).flatten(2).transpose(1, 2)
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y, time, operator))))
        return x + self.weight * y


def _mark_batch_dynamic(module: nn.Module, *tensors) -> None:
    """For a module compiled on its own (compile_blocks), mark the batch dimension of its inputs dynamic, so one
    graph serves every batch size (partial and evaluation batches included) from the first compile on."""
    if module._compiled_call_impl is not None and not torch.compiler.is_compiling():
        for tensor in tensors:
            if tensor is not None:
                torch._dynamo.maybe_mark_dynamic(tensor, 0)


class _Stage(nn.Module):
    """Blocks on one token grid plus a resampling module, with their norm modulations and attention inputs
    computed once per forward for all blocks (a stage is the FSDP wrapping unit, so it owns all it reads)."""

    def _prepare(self, x, time, operator, tables, grid: int):
        """Per block (its norms' modulation, attention mask, q/k/v coefficients) and the resampler's modulation.

        The blocks' modulations are rows of one [B, n, 4d] tensor: each block's view has the same strides and a
        batch-independent offset, so compiled blocks (compile_blocks) share code across stages and batch sizes.
        """
        norms = [n for block in self.blocks for n in block.norms()]
        modulation = norm_modulation(norms, time, operator)
        if modulation is not None:
            modulation = modulation.view(modulation.shape[0], len(self.blocks), -1).unbind(1)
        else:
            modulation = [None] * len(self.blocks)
        sampler = None if self.sampler is None else norm_modulation(self.sampler.norms(), time, operator)
        attentions = [block.attention for block in self.blocks]
        shifted = [window_and_shift(grid, a.window_size, a.shifted)[1] > 0 for a in attentions]
        inputs = level_attention_inputs([a.self for a in attentions], shifted, tables, compute_dtype(x))
        return modulation, inputs, sampler

    def _run_blocks(self, x, modulation, inputs, grid: int):
        for block, mod, attention in zip(self.blocks, modulation, inputs, strict=True):
            _mark_batch_dynamic(block, x, mod)
            x = block(x, mod, *attention, grid=grid)
        return x


class EncoderStage(_Stage):
    def __init__(self, config: ScOTConfig, level: int, drop_paths: list[float]):
        super().__init__()
        dim, heads = config.embed_dim * 2**level, config.num_heads[level]
        self.blocks = nn.ModuleList(
            SwinBlock(config, dim, heads, shifted=j % 2 == 1, drop_path=drop_paths[j])
            for j in range(config.depths[level])
        )
        self.downsample = PatchMerging(config, dim) if level < config.num_layers - 1 else None

    @property
    def sampler(self):
        return self.downsample

    def forward(self, x, time, operator, tables, *, grid: int):
        """-> (the blocks' output: the skip state; the merged input of the next level, None at the last)."""
        modulation, inputs, sampler = self._prepare(x, time, operator, tables, grid)
        state = self._run_blocks(x, modulation, inputs, grid)
        if self.downsample is None:
            return state, None
        return state, self.downsample(state + x, sampler, grid)


class DecoderStage(_Stage):
    """Blocks are built in reverse order as in Poseidon, so block j is shifted iff (depth - 1 - j) is odd."""

    def __init__(self, config: ScOTConfig, level: int, drop_paths: list[float]):
        super().__init__()
        dim, heads, depth = config.embed_dim * 2**level, config.num_heads[level], config.depths[level]
        self.blocks = nn.ModuleList(
            SwinBlock(
                config, dim, heads, shifted=(depth - 1 - j) % 2 == 1, drop_path=drop_paths[depth - 1 - j]
            )
            for j in range(depth)
        )
        self.upsample = PatchUnmerging(config, dim) if level > 0 else None

    @property
    def sampler(self):
        return self.upsample

    def forward(self, x, time, operator, tables, *, grid: int):
        """-> the blocks' output, unmerged to the next finer grid (except at level 0)."""
        modulation, inputs, sampler = self._prepare(x, time, operator, tables, grid)
        x = self._run_blocks(x, modulation, inputs, grid)
        return x if self.upsample is None else self.upsample(x, sampler, grid)


class Encoder(nn.Module):
    def __init__(self, config: ScOTConfig, drop_paths: list[list[float]]):
        super().__init__()
        self.layers = nn.ModuleList(EncoderStage(config, i, drop_paths[i]) for i in range(config.num_layers))


class Decoder(nn.Module):
    def __init__(self, config: ScOTConfig, drop_paths: list[list[float]]):
        super().__init__()
        levels = range(config.num_layers - 1, -1, -1)
        self.layers = nn.ModuleList(DecoderStage(config, i, drop_paths[i]) for i in levels)


class PatchEmbeddings(nn.Module):
    def __init__(self, config: ScOTConfig):
        super().__init__()
        p = config.patch_size
        self.projection = nn.Conv2d(config.num_channels, config.embed_dim, kernel_size=p, stride=p)


class Embeddings(nn.Module):
    """Non-overlapping patch projection, flattened row-major to tokens, then the conditioned norm."""

    def __init__(self, config: ScOTConfig):
        super().__init__()
        self.patch_embeddings = PatchEmbeddings(config)
        self.norm = make_norm(config, config.embed_dim)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, pixel_values, time, operator):
        x = self.patch_embeddings.projection(pixel_values).flatten(2).transpose(1, 2)
        return self.dropout(self.norm(x, time, operator))


class PatchRecovery(nn.Module):
    """Tokens to fields: ConvTranspose2d(C -> C_out, k=s=patch), then a bias-free 5x5 conv (`mixup`)."""

    def __init__(self, config: ScOTConfig):
        super().__init__()
        p = config.patch_size
        self.projection = nn.ConvTranspose2d(
            config.embed_dim, config.num_out_channels, kernel_size=p, stride=p
        )
        self.mixup = nn.Conv2d(config.num_out_channels, config.num_out_channels, 5, padding=2, bias=False)

    def forward(self, x, grid: int):
        b, _, c = x.shape
        return self.mixup(self.projection(x.transpose(1, 2).reshape(b, c, grid, grid)))


class ScOTPreTrainedModel(PreTrainedModel):
    config_class = ScOTConfig
    base_model_prefix = "scot"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _no_split_modules = ["EncoderStage", "DecoderStage", "ConvNeXtBlock"]

    def get_correct_attn_implementation(
        self, requested_attention: str | None, is_init_check: bool = False
    ) -> str:
        """transformers' `attn_implementation=` (from_pretrained, set_attn_implementation) sets pdefm's own choice,
        `ScOTConfig.attn_implementation`; transformers' attention registry does not apply to window attention."""
        if requested_attention is None:
            return self.config.attn_implementation
        if requested_attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"attn_implementation must be one of {list(ATTENTION_IMPLEMENTATIONS)}, got {requested_attention!r}"
            )
        self.config.attn_implementation = requested_attention
        return requested_attention

    @torch.no_grad()
    def _init_weights(self, module):
        """Poseidon's released init (N(0, 0.02) linears/convs, zero biases, logit scale ln 10, layer scale 1e-6),
        except that each time-conditioned norm starts as a plain LayerNorm: gamma(t) = 1 + O(0.02) t.

        Poseidon's generic init zeroes gamma's bias, so every norm outputs ~0 and training from scratch
        stalls at relative error 1 for its first hundred steps (measured: tiny scOT on ns_sines at 32x32,
        mean loss over steps 70-80 is 0.73 with gamma ~ 0 and 0.34 with gamma ~ 1). Loading a checkpoint
        overwrites every init. Operator-conditioning projections start at zero, so switching conditioning
        on changes nothing at init.
        """
        super()._init_weights(module)
        if isinstance(module, TimeScale):
            module.bias.fill_(1.0)
        elif isinstance(module, ScaledCosineSelfAttention):
            module.logit_scale.fill_(torch.log(torch.tensor(10.0)).item())
        elif isinstance(module, ConvNeXtBlock):
            module.weight.fill_(1e-6)
        elif isinstance(module, OperatorModulation):
            module.weight.zero_()
            module.bias.zero_()
        elif isinstance(module, WindowTables):
            module.reset_tables()  # non-persistent: transformers materialises them uninitialised when loading


class ScOT(ScOTPreTrainedModel):
    """scOT / Poseidon. `forward(pixel_values, time, pixel_mask, labels, pde_id, coefficients) -> ScOTOutput`."""

    def __init__(self, config: ScOTConfig):
        super().__init__(config)
        if config.image_size % config.min_side:
            raise ValueError(
                f"ScOTConfig.image_size={config.image_size} must be a multiple of patch_size*2^(levels-1)="
                f"{config.min_side}"
            )
        total = sum(config.depths)
        rates = [config.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        drop_paths = [
            rates[sum(config.depths[:i]) : sum(config.depths[: i + 1])] for i in range(config.num_layers)
        ]
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config, drop_paths)
        self.decoder = Decoder(config, drop_paths)
        self.patch_recovery = PatchRecovery(config)
        self.residual_blocks = nn.ModuleList(
            nn.ModuleList(ConvNeXtBlock(config, config.embed_dim * 2**i) for _ in range(n))
            for i, n in enumerate(config.skip_connections)
        )
        self.operator_embedding = (
            OperatorEmbedding(config.num_pde_families, config.num_coefficients, config.operator_embed_dim)
            if config.use_operator_conditioning
            else None
        )
        self.window_tables = WindowTables(config)
        self.post_init()
        if self.operator_embedding is not None:
            self.operator_embedding.reset_parameters()

    def compile_blocks(self, **options) -> None:
        """`torch.compile` every Swin and ConvNeXt block in place (regional compilation).

        Blocks of one width and shift share compiled code, so the cost is a few small graphs rather than the
        whole network. The batch dimension of every block input is marked dynamic, so partial and evaluation
        batches reuse the graphs instead of recompiling. Each (width, shift, grad mode, train/eval) variant is
        one entry of dynamo's cache for the shared block code, hence the raised recompile limit. `options` go to
        `torch.compile`.
        """
        blocks = [m for m in self.modules() if isinstance(m, (SwinBlock, ConvNeXtBlock))]
        limit = torch._dynamo.config.recompile_limit
        torch._dynamo.config.recompile_limit = max(limit, 4 * len(blocks))
        options.setdefault("dynamic", None)
        for block in blocks:
            block.compile(**options)

    def compile_model(self, **options) -> None:
        """`torch.compile` the whole forward in place: one graph, the fewest kernel launches (the fastest steps on a
        GPU) for a longer first step. `options` go to `torch.compile`; with the default `dynamic=None` a second
        batch size recompiles once with a dynamic batch dimension, and later sizes reuse that graph."""
        options.setdefault("dynamic", None)
        self.compile(**options)

    def forward(
        self,
        pixel_values: torch.Tensor,
        time: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        pde_id: torch.Tensor | None = None,
        coefficients: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ScOTOutput | tuple:
        """pixel_values [B, C_in, H, H], time [B] lead time in [0, 1]; pixel_mask [B, C_out] or [B, C_out, H, H]
        (True = not scored: the output takes the label there); labels [B, C_out, H, H]; with operator conditioning
        pde_id [B] (family index) and coefficients [B, num_coefficients] in [0, 1], otherwise they are ignored.

        Checks shapes only, never values (that would wait on the device): callers feeding untrusted data run
        `check_batch_values` at their data boundary. `return_dict=False` gives `ScOTOutput.to_tuple()`.
        """
        cfg = self.config
        output_hidden_states = (
            cfg.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        return_dict = cfg.return_dict if return_dict is None else return_dict
        if not torch.compiler.is_compiling():
            _check_shapes(cfg, pixel_values, time, pixel_mask, labels, pde_id, coefficients)
        side = pixel_values.shape[-1]
        resample = side % cfg.min_side != 0
        x = fft_resample(pixel_values, cfg.image_size) if resample else pixel_values
        time = time.reshape(-1, 1).to(x.dtype)
        operator = (
            self.operator_embedding(pde_id, coefficients) if self.operator_embedding is not None else None
        )

        grid = x.shape[-1] // cfg.patch_size
        hidden = self.embeddings(x, time, operator)
        encoder_states, decoder_states, skips = [(hidden, grid)], [], []
        for level, stage in enumerate(self.encoder.layers):
            g = grid >> level
            state, hidden = stage(hidden, time, operator, self.window_tables.get(level, g, x.device), grid=g)
            encoder_states.append((state, g))
            for convnext in self.residual_blocks[level]:
                _mark_batch_dynamic(convnext, state, time, operator)
                state = convnext(state, time, operator, g)
            skips.append(state)

        hidden = skips[-1]
        decoder_states.append((hidden, grid >> (cfg.num_layers - 1)))
        for k, stage in enumerate(self.decoder.layers):
            level = cfg.num_layers - 1 - k
            if k > 0:
                hidden = hidden + skips[level]
            g = grid >> level
            hidden = stage(hidden, time, operator, self.window_tables.get(level, g, x.device), grid=g)
            decoder_states.append((hidden, grid >> max(level - 1, 0)))

        output = self.patch_recovery(hidden, grid)
        if cfg.learn_residual:
            output = output + x[:, : cfg.num_out_channels]
        if resample:
            output = fft_resample(output, side)
        output, loss = masked_output_and_loss(
            output, labels, pixel_mask, cfg.channel_slice_list_normalized_loss, cfg.p
        )
        result = ScOTOutput(loss=loss, output=output)
        if output_hidden_states:
            states = decoder_states + encoder_states
            result.hidden_states = tuple(h for h, _ in states)
            result.reshaped_hidden_states = tuple(
                h.view(h.shape[0], g, g, h.shape[-1]).permute(0, 3, 1, 2) for h, g in states
            )
        return result if return_dict else result.to_tuple()


def _shape_error(name: str, expected: str, got) -> ValueError:
    return ValueError(f"ScOT.forward: {name} must have shape {expected}, got {tuple(got)}")


def _check_shapes(cfg, pixel_values, time, pixel_mask, labels, pde_id, coefficients) -> None:
    """Clear errors for inputs the model cannot take (rank, channels, shapes, dtypes): metadata only, no sync."""
    cin, cout = cfg.num_channels, cfg.num_out_channels
    for name, value in (("pixel_values", pixel_values), ("time", time)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"ScOT.forward: {name} must be a torch.Tensor, got {type(value).__name__}")
    if pixel_values.dim() != 4 or pixel_values.shape[1] != cin:
        raise _shape_error("pixel_values", f"[B, {cin}, H, W]", pixel_values.shape)
    b, _, h, w = pixel_values.shape
    if h != w:
        raise ValueError(f"ScOT.forward: pixel_values must be square, got H={h}, W={w}")
    if h < cfg.patch_size:
        raise ValueError(f"ScOT.forward: pixel_values side {h} is smaller than patch_size {cfg.patch_size}")
    if tuple(time.shape) not in ((b,), (b, 1)):
        raise _shape_error("time", f"[{b}] (one lead time per sample)", time.shape)
    if labels is not None and tuple(labels.shape) != (b, cout, h, w):
        raise _shape_error("labels", f"[{b}, {cout}, {h}, {w}]", labels.shape)
    if pixel_mask is not None:
        if labels is None:
            raise ValueError("ScOT.forward: pixel_mask needs labels (masked entries take the label's value)")
        if tuple(pixel_mask.shape) not in ((b, cout), (b, cout, h, w)) or pixel_mask.dtype != torch.bool:
            raise ValueError(
                f"ScOT.forward: pixel_mask must be bool [{b}, {cout}] or [{b}, {cout}, {h}, {w}], "
                f"got {pixel_mask.dtype} {tuple(pixel_mask.shape)}"
            )
    if cfg.use_operator_conditioning:
        if pde_id is None or coefficients is None:
            raise ValueError(
                "ScOT.forward: this model uses operator conditioning; pass pde_id and coefficients"
            )
        if tuple(pde_id.shape) != (b,) or pde_id.is_floating_point():
            raise _shape_error("pde_id", f"int [{b}]", pde_id.shape)
        if tuple(coefficients.shape) != (b, cfg.num_coefficients):
            raise _shape_error("coefficients", f"[{b}, {cfg.num_coefficients}]", coefficients.shape)


def check_batch_values(batch: Mapping[str, torch.Tensor], config: ScOTConfig) -> None:
    """Value checks for one batch of `ScOT.forward` inputs, for data loaders to run where data enters (one host
    sync for all fields): NaN/Inf in pixel_values, time, labels or coefficients, and, with operator
    conditioning, pde_id outside [0, num_pde_families). Raises ValueError naming the field."""
    floats = ("pixel_values", "time", "labels", "coefficients")
    names = [k for k in floats if isinstance(batch.get(k), torch.Tensor) and batch[k].is_floating_point()]
    counts = [(~torch.isfinite(batch[k])).sum() for k in names]
    pde_id = batch.get("pde_id") if config.use_operator_conditioning else None
    if pde_id is not None:
        counts.append(((pde_id < 0) | (pde_id >= config.num_pde_families)).sum())
    if not counts:
        return
    found = torch.stack([c.to(counts[0].device) for c in counts]).tolist()
    for name, bad in zip(names, found, strict=False):
        if bad:
            raise ValueError(f"{name} {tuple(batch[name].shape)} has {bad} NaN/Inf entries")
    if pde_id is not None and found[-1]:
        raise ValueError(f"pde_id must lie in [0, {config.num_pde_families}), got {pde_id.tolist()}")


AutoConfig.register(ScOTConfig.model_type, ScOTConfig)
AutoModel.register(ScOTConfig, ScOT)
