"""The Stable Diffusion KL autoencoder (VAE), in the CompVis `ldm.models.autoencoder.AutoencoderKL` layout.

Built from `first_stage_config.params` (ddconfig, embed_dim), so `first_stage_model.*` checkpoint weights load
with strict=True. encode() maps images in [-1, 1] to the mean and log-variance of the latent posterior;
decode() maps latents back to images in roughly [-1, 1]. The latent scale factor is applied by the caller.
"""

import torch
import torch.nn.functional as F
from torch import nn

from imaginairy.modules.attention import attention
from imaginairy.modules.banded import norm_silu_conv, upsample_conv
from imaginairy.modules.layers import TileableConv2d, group_norm, pad_for_tile_mode

# The latent space of every Stable Diffusion VAE: one latent pixel per 8x8 image pixels, 4 channels.
LATENT_SCALE = 8
LATENT_CHANNELS = 4


def vae_norm(channels: int) -> nn.GroupNorm:
    return group_norm(channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """Norm, SiLU, 3x3 conv, twice, plus a skip connection (1x1 `nin_shortcut` when the width changes)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = vae_norm(in_channels)
        self.conv1 = TileableConv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = vae_norm(out_channels)
        self.conv2 = TileableConv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        else:
            self.nin_shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = norm_silu_conv(self.norm1, self.conv1, x)
        h = norm_silu_conv(self.norm2, self.conv2, h)
        return h.add_(self.nin_shortcut(x))


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, with 1x1 convolutions as projections."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = vae_norm(channels)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        h = self.norm(x)
        q, k, v = (proj(h).flatten(2).transpose(1, 2)[:, None] for proj in (self.q, self.k, self.v))
        h = attention(q, k, v)
        h = h[:, 0].transpose(1, 2).reshape(batch, channels, height, width)
        return self.proj_out(h).add_(x)


class Downsample(nn.Module):
    """Halve the resolution: pad one pixel on the right and bottom, then a stride-2 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = TileableConv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(pad_for_tile_mode(x, (0, 1, 0, 1), self.conv.tile_mode))


class Upsample(nn.Module):
    """Double the resolution (nearest neighbour), then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = TileableConv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_conv(self.conv, x)


class MidBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Level(nn.Module):
    """One resolution level: `block` (ResnetBlocks), `attn` (AttnBlocks, often none), optional down/upsample.

    The encoder and decoder run `layers()` one by one in their own loop rather than calling the level: a call would
    keep the level's input alive in the caller until the whole level is done (a 268 MB map at 512x512 in float32).
    """

    def __init__(self, blocks: list[nn.Module], attentions: list[nn.Module]):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attentions)

    def layers(self) -> list[nn.Module]:
        """The level's layers in order: each ResnetBlock, followed by its AttnBlock if any, then the resampling."""
        layers = []
        for index, block in enumerate(self.block):
            layers.append(block)
            if self.attn:
                layers.append(self.attn[index])
        for resample in ("downsample", "upsample"):
            if hasattr(self, resample):
                layers.append(getattr(self, resample))
        return layers


class Encoder(nn.Module):
    def __init__(
        self,
        ch: int,
        ch_mult,
        num_res_blocks: int,
        attn_resolutions,
        in_channels: int,
        resolution: int,
        z_channels: int,
        double_z: bool = True,
    ):
        super().__init__()
        self.conv_in = TileableConv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        channels = ch
        current_resolution = resolution
        for level, mult in enumerate(ch_mult):
            blocks, attentions = [], []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(channels, ch * mult))
                channels = ch * mult
                if current_resolution in attn_resolutions:
                    attentions.append(AttnBlock(channels))
            down = Level(blocks, attentions)
            if level != len(ch_mult) - 1:
                down.downsample = Downsample(channels)
                current_resolution //= 2
            self.down.append(down)
        self.mid = MidBlock(channels)
        self.norm_out = vae_norm(channels)
        self.conv_out = TileableConv2d(channels, 2 * z_channels if double_z else z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for down in self.down:
            for layer in down.layers():
                h = layer(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h), inplace=True))


class Decoder(nn.Module):
    def __init__(
        self,
        ch: int,
        out_ch: int,
        ch_mult,
        num_res_blocks: int,
        attn_resolutions,
        resolution: int,
        z_channels: int,
    ):
        super().__init__()
        channels = ch * ch_mult[-1]
        current_resolution = resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = TileableConv2d(z_channels, channels, 3, padding=1)
        self.mid = MidBlock(channels)
        levels = []
        for level in reversed(range(len(ch_mult))):
            blocks, attentions = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(channels, ch * ch_mult[level]))
                channels = ch * ch_mult[level]
                if current_resolution in attn_resolutions:
                    attentions.append(AttnBlock(channels))
            up = Level(blocks, attentions)
            if level != 0:
                up.upsample = Upsample(channels)
                current_resolution *= 2
            levels.insert(0, up)
        self.up = nn.ModuleList(levels)
        self.norm_out = vae_norm(channels)
        self.conv_out = TileableConv2d(channels, out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for up in reversed(self.up):
            for layer in up.layers():
                h = layer(h)
        return self.conv_out(F.silu(self.norm_out(h), inplace=True))


class AutoencoderKL(nn.Module):
    def __init__(self, ddconfig: dict, embed_dim: int, **ignored_config):
        super().__init__()
        self.encoder = Encoder(
            ch=ddconfig["ch"],
            ch_mult=list(ddconfig["ch_mult"]),
            num_res_blocks=ddconfig["num_res_blocks"],
            attn_resolutions=list(ddconfig.get("attn_resolutions", [])),
            in_channels=ddconfig["in_channels"],
            resolution=ddconfig["resolution"],
            z_channels=ddconfig["z_channels"],
            double_z=ddconfig.get("double_z", True),
        )
        self.decoder = Decoder(
            ch=ddconfig["ch"],
            out_ch=ddconfig["out_ch"],
            ch_mult=list(ddconfig["ch_mult"]),
            num_res_blocks=ddconfig["num_res_blocks"],
            attn_resolutions=list(ddconfig.get("attn_resolutions", [])),
            resolution=ddconfig["resolution"],
            z_channels=ddconfig["z_channels"],
        )
        self.quant_conv = nn.Conv2d(2 * ddconfig["z_channels"], 2 * embed_dim, kernel_size=1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], kernel_size=1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [B, 3, H, W] in [-1, 1] -> (mean, logvar) of the latent posterior, each [B, embed_dim, H/f, W/f]."""
        moments = self.quant_conv(self.encoder(x))
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents [B, embed_dim, h, w] (unscaled) -> images [B, 3, h*f, w*f] in roughly [-1, 1]."""
        return self.decoder(self.post_quant_conv(z))
