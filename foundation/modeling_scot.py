"""`ScOT`: the scOT / Poseidon operator transformer as a transformers `PreTrainedModel`.

A Swin-V2 U-Net with time-conditioned norms (Herde et al., Poseidon, 2024): patch embedding, four levels of
shifted-window attention with patch merging, ConvNeXt-processed additive skips, a mirrored decoder with patch
unmerging, and a transposed-conv patch recovery. Parameter names equal Poseidon's, so its checkpoints load as
they are (see `foundation.loading`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from foundation.attention import ScaledCosineSelfAttention, WindowAttention
from foundation.conditioning import OperatorEmbedding, OperatorModulation, TimeScale, make_norm
from foundation.configuration_scot import ScOTConfig
from foundation.loss import masked_output_and_loss
from foundation.resampling import fft_resample


@dataclass
class ScOTOutput(ModelOutput):
    """`output` [B, C_out, H, W] (masked channels replaced by the labels) and, given labels, the loss."""

    loss: torch.Tensor | None = None
    output: torch.Tensor | None = None


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

    def forward(self, x, time, operator=None, *, grid: int):
        x = x + _drop_path(
            self.layernorm_before(self.attention(x, grid), time, operator), self.drop_path, self.training
        )
        mlp = self.output(self.intermediate(x))
        return x + _drop_path(self.layernorm_after(mlp, time, operator), self.drop_path, self.training)


class PatchMerging(nn.Module):
    """Halve the grid: concatenate 2x2 neighbours (Swin order), Linear(4d -> 2d), conditioned norm."""

    def __init__(self, config: ScOTConfig, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = make_norm(config, 2 * dim)

    def forward(self, x, time, operator, grid: int):
        b, _, c = x.shape
        x = x.view(b, grid, grid, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.norm(self.reduction(x.reshape(b, -1, 4 * c)), time, operator)


class PatchUnmerging(nn.Module):
    """Double the grid: Linear(d -> 2d) split into 2x2 sub-tokens of width d/2, conditioned norm, Linear mixup."""

    def __init__(self, config: ScOTConfig, dim: int):
        super().__init__()
        self.upsample = nn.Linear(dim, 2 * dim, bias=False)
        self.mixup = nn.Linear(dim // 2, dim // 2, bias=False)
        self.norm = make_norm(config, dim // 2)

    def forward(self, x, time, operator, grid: int):
        b, _, c = x.shape
        x = self.upsample(x).view(b, grid, grid, 2, 2, c // 2).permute(0, 1, 3, 2, 4, 5)
        x = x.reshape(b, 4 * grid * grid, c // 2)
        return self.mixup(self.norm(x, time, operator))


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


class EncoderStage(nn.Module):
    def __init__(self, config: ScOTConfig, level: int, drop_paths: list[float]):
        super().__init__()
        dim, heads = config.embed_dim * 2**level, config.num_heads[level]
        self.blocks = nn.ModuleList(
            SwinBlock(config, dim, heads, shifted=j % 2 == 1, drop_path=drop_paths[j])
            for j in range(config.depths[level])
        )
        self.downsample = PatchMerging(config, dim) if level < config.num_layers - 1 else None


class DecoderStage(nn.Module):
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
    _no_split_modules = ["SwinBlock", "ConvNeXtBlock"]

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
        self.post_init()
        if self.operator_embedding is not None:
            self.operator_embedding.reset_parameters()

    def compile_blocks(self, **options) -> None:
        """`torch.compile` every Swin and ConvNeXt block in place (regional compilation).

        Blocks of one width and shift share compiled code, so the cost is a few small graphs rather than the
        whole network (scOT-T on 2 CPU cores: about 2 min, 20 s from a warm on-disk cache; a whole-model
        compile did not finish in 15 min). Each (width, shift, grad mode, train/eval) variant is one entry of
        dynamo's cache for the shared block code, hence the raised recompile limit. `options` go to
        `torch.compile` (default `dynamic=False`).
        """
        blocks = [m for m in self.modules() if isinstance(m, (SwinBlock, ConvNeXtBlock))]
        limit = torch._dynamo.config.recompile_limit
        torch._dynamo.config.recompile_limit = max(limit, 4 * len(blocks))
        options.setdefault("dynamic", False)
        for block in blocks:
            block.compile(**options)

    def forward(
        self,
        pixel_values: torch.Tensor,
        time: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        pde_id: torch.Tensor | None = None,
        coefficients: torch.Tensor | None = None,
    ) -> ScOTOutput:
        """pixel_values [B, C_in, H, H], time [B] lead time in [0, 1]; pixel_mask [B, C_out] or [B, C_out, H, H]
        (True = not scored: the output takes the label there); labels [B, C_out, H, H]; with operator conditioning
        pde_id [B] (family index) and coefficients [B, num_coefficients] in [0, 1], otherwise they are ignored.
        """
        if not torch.compiler.is_compiling():
            _check_inputs(self.config, pixel_values, time, pixel_mask, labels, pde_id, coefficients)
        cfg = self.config
        side = pixel_values.shape[-1]
        resample = side % cfg.min_side != 0
        x = fft_resample(pixel_values, cfg.image_size) if resample else pixel_values
        time = time.reshape(-1, 1).to(x.dtype)
        operator = (
            self.operator_embedding(pde_id, coefficients) if self.operator_embedding is not None else None
        )

        grid = x.shape[-1] // cfg.patch_size
        hidden = self.embeddings(x, time, operator)
        skips = []
        for level, stage in enumerate(self.encoder.layers):
            stage_input = hidden
            for block in stage.blocks:
                hidden = block(hidden, time, operator, grid=grid >> level)
            skip = hidden
            for convnext in self.residual_blocks[level]:
                skip = convnext(skip, time, operator, grid >> level)
            skips.append(skip)
            if stage.downsample is not None:
                hidden = stage.downsample(hidden + stage_input, time, operator, grid >> level)

        hidden = skips[-1]
        for k, stage in enumerate(self.decoder.layers):
            level = cfg.num_layers - 1 - k
            if k > 0:
                hidden = hidden + skips[level]
            for block in stage.blocks:
                hidden = block(hidden, time, operator, grid=grid >> level)
            if stage.upsample is not None:
                hidden = stage.upsample(hidden, time, operator, grid >> level)

        output = self.patch_recovery(hidden, grid)
        if cfg.learn_residual:
            output = output + x[:, : cfg.num_out_channels]
        if resample:
            output = fft_resample(output, side)
        output, loss = masked_output_and_loss(
            output, labels, pixel_mask, cfg.channel_slice_list_normalized_loss, cfg.p
        )
        return ScOTOutput(loss=loss, output=output)


def _shape_error(name: str, expected: str, got) -> ValueError:
    return ValueError(f"ScOT.forward: {name} must have shape {expected}, got {tuple(got)}")


def _check_inputs(cfg, pixel_values, time, pixel_mask, labels, pde_id, coefficients) -> None:
    """Clear errors for inputs the model cannot take: wrong rank/channels/shape, non-square, NaN/Inf."""
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
    tensors = {"pixel_values": pixel_values, "time": time}
    if labels is not None:
        if tuple(labels.shape) != (b, cout, h, w):
            raise _shape_error("labels", f"[{b}, {cout}, {h}, {w}]", labels.shape)
        tensors["labels"] = labels
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
        if pde_id.min() < 0 or pde_id.max() >= cfg.num_pde_families:
            raise ValueError(
                f"ScOT.forward: pde_id must lie in [0, {cfg.num_pde_families}), got {pde_id.tolist()}"
            )
        if tuple(coefficients.shape) != (b, cfg.num_coefficients):
            raise _shape_error("coefficients", f"[{b}, {cfg.num_coefficients}]", coefficients.shape)
        tensors["coefficients"] = coefficients
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = (~torch.isfinite(tensor)).sum().item()
            raise ValueError(f"ScOT.forward: {name} {tuple(tensor.shape)} has {bad} NaN/Inf entries")


AutoConfig.register(ScOTConfig.model_type, ScOTConfig)
AutoModel.register(ScOTConfig, ScOT)
