"""The Stable Diffusion denoising UNet, in the CompVis `openaimodel.UNetModel` parameter layout.

Built from the `unet_config.params` of a CompVis model config (SD 1.x / 2.x) or the `network_config.params` of a
Stability generative-models config (SDXL: `sd_xl_base.yaml`, `sd_xl_refiner.yaml`), so the checkpoints'
`model.diffusion_model.*` tensors load with strict=True. forward(x, timesteps, context, y) returns the model's
prediction (noise or v) for latents x; `y` is SDXL's added embedding input (pooled text and size embeddings).
"""

import torch
import torch.nn.functional as F
from torch import nn

from imaginairy.errors import ModelLoadError
from imaginairy.modules.attention import SpatialTransformer
from imaginairy.modules.layers import TileableConv2d, group_norm, repeat_batch, timestep_embedding

# CompVis options that would change the architecture; only their defaults are supported.
UNSUPPORTED_CONFIG_DEFAULTS = {
    "dims": 2,
    "use_scale_shift_norm": False,
    "resblock_updown": False,
    "conv_resample": True,
    "num_heads_upsample": -1,
    "disable_self_attentions": None,
    "num_attention_blocks": None,
    "disable_middle_self_attn": False,
}


def check_unet_config(ignored_config: dict) -> None:
    for key, default in UNSUPPORTED_CONFIG_DEFAULTS.items():
        if key in ignored_config and ignored_config[key] != default:
            raise ModelLoadError(
                f"UNet config sets {key}={ignored_config[key]!r}, which imaginairy does not support; "
                f"use a Stable Diffusion 1.x/2.x/XL config"
            )


def depth_per_level(transformer_depth, levels: int) -> list[int]:
    """`transformer_depth` is one depth for every level (SD 1/2, SDXL refiner) or a list by level (SDXL base:
    [1, 2, 10], the first unused since the top level has no attention)."""
    if isinstance(transformer_depth, int):
        return [transformer_depth] * levels
    if len(transformer_depth) != levels:
        raise ModelLoadError(f"UNet config: transformer_depth {list(transformer_depth)} needs one depth per level")
    return [int(depth) for depth in transformer_depth]


class ResBlock(nn.Module):
    """Two 3x3 convolutions with the timestep embedding added in between, plus a (projected) skip connection."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int):
        super().__init__()
        self.in_layers = nn.Sequential(
            group_norm(channels), nn.SiLU(inplace=True), TileableConv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        # out_layers.2 was dropout in training; the Identity keeps the checkpoint index of the conv at 3.
        self.out_layers = nn.Sequential(
            group_norm(out_channels),
            nn.SiLU(inplace=True),
            nn.Identity(),
            TileableConv2d(out_channels, out_channels, 3, padding=1),
        )
        if channels == out_channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h += repeat_batch(self.emb_layers(emb), h.shape[0])[:, :, None, None]
        h = self.out_layers(h)
        return h.add_(self.skip_connection(x))


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = TileableConv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double the resolution (nearest neighbour; to `size` when given), then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = TileableConv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: torch.Size | None = None) -> torch.Tensor:
        if size is None:
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class TimestepBlock(nn.ModuleList):
    """One UNet stage: a sequence of ResBlock / SpatialTransformer / Down- or Upsample layers.

    `upsample_size` is the resolution an Upsample must reach: the next skip connection's, which is not twice the
    current one when a side was odd on the way down (latent sides that are not a multiple of 2**levels).
    """

    def forward(
        self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None, upsample_size: torch.Size | None = None
    ) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, Upsample):
                x = layer(x, upsample_size)
            else:
                x = layer(x)
        return x


class UNetModel(nn.Module):
    """Takes the CompVis `unet_config.params`: SD 1.x sets num_heads (1x1-conv projections in the transformers),
    SD 2.x sets num_head_channels and use_linear_in_transformer; in_channels=9 gives the inpainting UNet.
    SDXL also sets a transformer depth per level and `num_classes: sequential` with `adm_in_channels`: the width of
    the added embedding `y` (`label_emb`, an MLP like `time_embed`, whose output is added to the time embedding):
    2816 for the base model (1280 pooled text + 6 sizes x 256), 2560 for the refiner (1280 + 5 x 256).
    Keys that do not change the architecture (image_size, use_checkpoint, use_fp16, legacy, dropout...) are ignored.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        model_channels: int,
        attention_resolutions,
        num_res_blocks: int,
        channel_mult=(1, 2, 4, 8),
        num_heads: int = -1,
        num_head_channels: int = -1,
        context_dim=None,
        transformer_depth=1,
        use_linear_in_transformer: bool = False,
        num_classes: str | None = None,
        adm_in_channels: int | None = None,
        **ignored_config,
    ):
        super().__init__()
        check_unet_config(ignored_config)
        if (num_heads == -1) == (num_head_channels == -1):
            raise ModelLoadError("UNet config must set exactly one of num_heads and num_head_channels")
        if num_classes not in (None, "sequential") or (num_classes == "sequential") != (adm_in_channels is not None):
            raise ModelLoadError(
                f"UNet config sets num_classes={num_classes!r}, adm_in_channels={adm_in_channels!r}: imaginairy "
                f"supports only the SDXL added embedding (num_classes: sequential with adm_in_channels) or neither"
            )
        if isinstance(context_dim, (list, tuple)):  # SDXL refiner configs give one width per level, all the same
            if len(set(context_dim)) != 1:
                raise ModelLoadError(f"UNet config: context_dim {list(context_dim)} must be one width")
            context_dim = context_dim[0]
        self.model_channels = model_channels
        self.adm_in_channels = adm_in_channels
        attention_resolutions = set(attention_resolutions)
        depths = depth_per_level(transformer_depth, len(channel_mult))
        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, time_embed_dim), nn.SiLU(), nn.Linear(time_embed_dim, time_embed_dim)
        )
        if adm_in_channels is not None:
            self.label_emb = nn.Sequential(
                nn.Sequential(
                    nn.Linear(adm_in_channels, time_embed_dim), nn.SiLU(), nn.Linear(time_embed_dim, time_embed_dim)
                )
            )

        def attention_layer(channels: int, depth: int) -> SpatialTransformer:
            if num_head_channels == -1:
                heads, dim_head = num_heads, channels // num_heads
            else:
                heads, dim_head = channels // num_head_channels, num_head_channels
            return SpatialTransformer(channels, heads, dim_head, depth, context_dim, use_linear_in_transformer)

        self.input_blocks = nn.ModuleList([TimestepBlock([TileableConv2d(in_channels, model_channels, 3, padding=1)])])
        skip_channels = [model_channels]
        channels = model_channels
        downsampling = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [ResBlock(channels, time_embed_dim, model_channels * mult)]
                channels = model_channels * mult
                if downsampling in attention_resolutions:
                    layers.append(attention_layer(channels, depths[level]))
                self.input_blocks.append(TimestepBlock(layers))
                skip_channels.append(channels)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepBlock([Downsample(channels)]))
                skip_channels.append(channels)
                downsampling *= 2

        self.middle_block = TimestepBlock(
            [
                ResBlock(channels, time_embed_dim, channels),
                attention_layer(channels, depths[-1]),
                ResBlock(channels, time_embed_dim, channels),
            ]
        )

        self.output_blocks = nn.ModuleList([])
        for level, mult in reversed(list(enumerate(channel_mult))):
            for index in range(num_res_blocks + 1):
                layers = [ResBlock(channels + skip_channels.pop(), time_embed_dim, model_channels * mult)]
                channels = model_channels * mult
                if downsampling in attention_resolutions:
                    layers.append(attention_layer(channels, depths[level]))
                if level and index == num_res_blocks:
                    layers.append(Upsample(channels))
                    downsampling //= 2
                self.output_blocks.append(TimestepBlock(layers))

        self.out = nn.Sequential(
            group_norm(channels), nn.SiLU(inplace=True), TileableConv2d(channels, out_channels, 3, padding=1)
        )

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        control_residuals: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x: latents [B, in_channels, H, W] in the model dtype; timesteps: [B] (or scalar), may be fractional;
        context: text embeddings [k*B, tokens, context_dim] in the model dtype; y (SDXL only, required there):
        the added embedding input [k*B, adm_in_channels], one row per context row; control_residuals: a ControlNet's
        outputs, one per skip connection then the middle block's (added where diffusers adds its
        `down_block_additional_residuals` / `mid_block_additional_residual`).

        With k > 1 contexts per latent (classifier-free guidance: k = 2, [uncond; cond]), the output is that of the
        latents stacked k times, [x; x], but the layers before the first cross-attention, whose rows would be
        identical, run once on B rows. With `y` the rows differ from the first ResBlock (the embedding added there
        differs), so the latents are stacked at the start.
        """
        if context is not None and context.shape[0] % x.shape[0]:
            raise ValueError(f"context batch {context.shape[0]} is not a multiple of the latent batch {x.shape[0]}")
        if (y is None) != (self.adm_in_channels is None):
            needs = "needs" if y is None else "takes no"
            raise ValueError(f"this UNet {needs} the added embedding input y (SDXL pooled text and sizes)")
        timesteps = timesteps.expand(x.shape[0]) if timesteps.ndim == 0 else timesteps
        time_features = timestep_embedding(timesteps, self.model_channels)
        emb = self.time_embed(time_features.to(self.time_embed[0].weight.dtype))

        h = x
        if y is not None:
            if y.shape[0] % x.shape[0] or (context is not None and y.shape[0] != context.shape[0]):
                raise ValueError(f"y batch {y.shape[0]} must be the context batch, a multiple of the latent batch")
            emb = repeat_batch(emb, y.shape[0]) + self.label_emb(y.to(emb.dtype))
            h = repeat_batch(x, y.shape[0])
        skips = []
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        residuals = list(control_residuals or [])
        if residuals:
            h = h + repeat_batch(residuals.pop(), h.shape[0])
        for block in self.output_blocks:
            skip = repeat_batch(skips.pop(), h.shape[0])
            if residuals:
                skip = skip + repeat_batch(residuals.pop(), h.shape[0])
            h = torch.cat([h, skip], dim=1)
            h = block(h, emb, context, skips[-1].shape[-2:] if skips else None)
        return self.out(h)
