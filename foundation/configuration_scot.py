"""`ScOTConfig`: the scOT / Poseidon configuration as a transformers config, with size presets.

Every field of Poseidon's config.json is carried with Poseidon's meaning, so a Poseidon checkpoint's config
loads unchanged; pdefm adds `field_names` and the (off by default) operator-conditioning fields.
"""

from __future__ import annotations

from transformers import PretrainedConfig

POSEIDON_FIELDS = ("rho", "u", "v", "p")
"""Channel names of Poseidon's pretraining data, in channel order."""
ATTENTION_IMPLEMENTATIONS = ("auto", "eager", "sdpa", "chunked")
"""Window-attention implementations (`foundation.attention`); "auto" picks per call and device."""

_ARCH_DEFAULTS = dict(
    image_size=128,
    patch_size=4,
    window_size=16,
    skip_connections=(2, 2, 2, 0),
    num_heads=(3, 6, 12, 24),
    mlp_ratio=4.0,
)
PRESETS: dict[str, dict] = {
    # The size of Poseidon's tiny reference model (1.67M parameters; tests/fixtures holds one).
    "tiny": dict(
        _ARCH_DEFAULTS,
        image_size=64,
        window_size=8,
        embed_dim=24,
        depths=(2, 1, 1, 1),
        num_heads=(2, 4, 8, 16),
    ),
    "T": dict(_ARCH_DEFAULTS, embed_dim=48, depths=(4, 4, 4, 4)),
    "B": dict(_ARCH_DEFAULTS, embed_dim=96, depths=(8, 8, 8, 8)),
    "L": dict(_ARCH_DEFAULTS, embed_dim=192, depths=(8, 8, 8, 8)),
}


class ScOTConfig(PretrainedConfig):
    """Configuration of scOT (Swin-V2 U-Net operator transformer with time-conditioned norms).

    Defaults are Poseidon-T's values. `use_operator_conditioning` adds a PDE-family embedding and a
    coefficient vector to every conditioned norm (see `foundation.conditioning`); with it off the model is
    weight-compatible with Poseidon. `attn_implementation` chooses how window attention is computed (same
    values either way): "eager", "sdpa", "chunked", or "auto" (SDPA, except the chunked Function for CPU training).
    """

    model_type = "pdefm_scot"
    attribute_map = {"num_attention_heads": "num_heads", "num_hidden_layers": "num_layers"}

    def __init__(
        self,
        image_size: int = 128,
        patch_size: int = 4,
        num_channels: int = 4,
        num_out_channels: int = 4,
        embed_dim: int = 48,
        depths: list[int] = (4, 4, 4, 4),
        num_heads: list[int] = (3, 6, 12, 24),
        skip_connections: list[int] = (2, 2, 2, 0),
        window_size: int = 16,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        drop_path_rate: float = 0.0,
        hidden_act: str = "gelu",
        use_absolute_embeddings: bool = False,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-5,
        p: int = 1,
        channel_slice_list_normalized_loss: list[int] | None = (0, 1, 3, 4),
        residual_model: str = "convnext",
        use_conditioning: bool = True,
        learn_residual: bool = False,
        pretrained_window_sizes: list[int] | None = None,
        field_names: list[str] | None = None,
        use_operator_conditioning: bool = False,
        num_pde_families: int = 64,
        num_coefficients: int = 8,
        operator_embed_dim: int = 64,
        pde_vocabulary: list[str] | None = None,
        attn_implementation: str = "auto",
        **kwargs,
    ):
        depths, num_heads = list(depths), list(num_heads)
        for derived in ("num_layers", "hidden_size"):  # saved for Poseidon compatibility, recomputed below
            kwargs.pop(derived, None)
        if len(depths) != len(num_heads) or len(skip_connections) != len(depths):
            raise ValueError(
                f"ScOTConfig: depths ({len(depths)}), num_heads ({len(num_heads)}) and skip_connections "
                f"({len(skip_connections)}) must have one entry per level"
            )
        if residual_model != "convnext":
            raise ValueError(
                f"ScOTConfig.residual_model: only 'convnext' is supported, got {residual_model!r}"
            )
        if use_absolute_embeddings:
            raise ValueError(
                "ScOTConfig.use_absolute_embeddings=True is not supported (no Poseidon model uses it)"
            )
        if p not in (1, 2):
            raise ValueError(f"ScOTConfig.p must be 1 (L1) or 2 (MSE), got {p!r}")
        if hidden_act != "gelu":
            raise ValueError(f"ScOTConfig.hidden_act: only 'gelu' is supported, got {hidden_act!r}")
        if attn_implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"ScOTConfig.attn_implementation must be one of {list(ATTENTION_IMPLEMENTATIONS)}, "
                f"got {attn_implementation!r}"
            )
        if use_operator_conditioning and not use_conditioning:
            raise ValueError("ScOTConfig: use_operator_conditioning needs use_conditioning=True")
        if field_names is None:
            field_names = (
                list(POSEIDON_FIELDS) if num_channels == 4 else [f"ch{i}" for i in range(num_channels)]
            )
        if len(field_names) != num_channels:
            raise ValueError(
                f"ScOTConfig.field_names has {len(field_names)} names but num_channels is {num_channels}"
            )
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.num_out_channels = num_out_channels
        self.embed_dim = embed_dim
        self.depths = depths
        self.num_layers = len(depths)
        self.num_heads = num_heads
        self.skip_connections = list(skip_connections)
        self.window_size = window_size
        self.mlp_ratio = mlp_ratio
        self.qkv_bias = qkv_bias
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.drop_path_rate = drop_path_rate
        self.hidden_act = hidden_act
        self.use_absolute_embeddings = use_absolute_embeddings
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.p = p
        self.channel_slice_list_normalized_loss = (
            None if channel_slice_list_normalized_loss is None else list(channel_slice_list_normalized_loss)
        )
        self.residual_model = residual_model
        self.use_conditioning = use_conditioning
        # Poseidon forces learn_residual off for unconditioned models.
        self.learn_residual = bool(learn_residual and use_conditioning)
        # Poseidon's constructor always overwrites this field with zeros (CPB normalised by the window).
        self.pretrained_window_sizes = [0] * len(depths)
        self.hidden_size = int(embed_dim * 2 ** (len(depths) - 1))
        self.field_names = list(field_names)
        self.use_operator_conditioning = use_operator_conditioning
        self.num_pde_families = num_pde_families
        self.num_coefficients = num_coefficients
        self.operator_embed_dim = operator_embed_dim
        # the PDE families the model was trained on (pretraining records them, fine-tuning appends); with
        # operator conditioning pde_id i is pde_vocabulary[i] (foundation.conditioning)
        self.pde_vocabulary = None if pde_vocabulary is None else list(pde_vocabulary)
        if (
            use_operator_conditioning
            and self.pde_vocabulary is not None
            and len(self.pde_vocabulary) > num_pde_families
        ):
            raise ValueError(
                f"ScOTConfig.pde_vocabulary has {len(self.pde_vocabulary)} families but num_pde_families is "
                f"{num_pde_families}"
            )
        self.attn_implementation = attn_implementation
        super().__init__(**kwargs)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> ScOTConfig:
        """Config of a named size ("tiny", "T", "B", "L"), with any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown ScOT preset {name!r}; expected one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @property
    def min_side(self) -> int:
        """Input sides that are multiples of this run natively (patching and three 2x merges)."""
        return self.patch_size * 2 ** (self.num_layers - 1)
