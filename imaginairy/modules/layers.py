"""Small pieces shared by the UNet and the autoencoder: group norm, tileable 3x3 convolution, timestep embedding,
and a linear layer whose CPU matrix product runs through oneDNN.
"""

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from imaginairy.modules.tile_modes import TILE_MODES


def group_norm(channels: int, eps: float = 1e-5) -> nn.GroupNorm:
    """The 32-group norm used throughout Stable Diffusion. It runs in the input dtype (bf16 and fp16 included)."""
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=eps, affine=True)


@functools.cache
def onednn_runs_cpu_convolutions() -> bool:
    """True on x86 CPUs, where PyTorch's convolutions run through oneDNN's JIT kernels for the CPU's own ISA."""
    return torch.backends.mkldnn.is_available() and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias); on x86 CPUs computed as a 1x1 convolution over a channels-last view of the tokens.

    PyTorch sends float32 CPU matrix products to MKL, which runs a slower code path on non-Intel CPUs (half of
    oneDNN's speed on an AVX-512 AMD EPYC: `scripts/bench.py --only kernels`); convolutions go to oneDNN, which is
    fast on both vendors and also beats PyTorch's bf16 matmul path. The same product, summed in another order.
    """
    if (
        torch.compiler.is_compiling()  # inductor lowers F.linear to its own (pre-packed) oneDNN kernels
        or x.device.type != "cpu"
        or x.dtype not in (torch.float32, torch.bfloat16)
        or not onednn_runs_cpu_convolutions()
    ):
        return F.linear(x, weight, bias)
    out_features, in_features = weight.shape
    # [..., in] -> [1, in, tokens, 1] whose memory is the tokens' rows: a channels-last view, no copy.
    tokens = x.reshape(1, -1, 1, in_features).permute(0, 3, 1, 2)
    out = F.conv2d(tokens, weight.view(out_features, in_features, 1, 1), bias)
    return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], out_features)


class Linear(nn.Linear):
    """nn.Linear (same parameters and state dict) computed by `linear` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def repeat_batch(x: torch.Tensor, batch: int) -> torch.Tensor:
    """`x` stacked `batch // len(x)` times along the batch: a latent shared by several text contexts, widened to
    their batch where the contexts first make the rows differ. Concatenation keeps the memory format."""
    if x.shape[0] == batch:
        return x
    return torch.cat([x] * (batch // x.shape[0]))


def pad_for_tile_mode(x: torch.Tensor, padding: tuple[int, int, int, int], tile_mode: str) -> torch.Tensor:
    """Pad (left, right, top, bottom): circularly along the tiled axes, with zeros along the others."""
    left, right, top, bottom = padding
    if "x" in tile_mode:
        x = F.pad(x, (left, right, 0, 0), mode="circular")
    else:
        x = F.pad(x, (left, right, 0, 0))
    if "y" in tile_mode:
        return F.pad(x, (0, 0, top, bottom), mode="circular")
    return F.pad(x, (0, 0, top, bottom))


class TileableConv2d(nn.Conv2d):
    """A Conv2d whose padding can wrap around the image edges, so generated images tile seamlessly.

    `tile_mode` is "" (ordinary zero padding), "x" (wrap left/right), "y" (wrap top/bottom) or "xy".
    The parameters and state dict are exactly those of nn.Conv2d.
    """

    tile_mode: str = ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.tile_mode:
            return super().forward(x)
        pad_h, pad_w = self.padding
        x = pad_for_tile_mode(x, (pad_w, pad_w, pad_h, pad_h), self.tile_mode)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def set_tile_mode(module: nn.Module, tile_mode: str) -> None:
    """Set `tile_mode` ("", "x", "y" or "xy") on every TileableConv2d inside `module`."""
    if tile_mode not in TILE_MODES:
        raise ValueError(f"tile_mode must be one of {TILE_MODES}, got {tile_mode!r}")
    for submodule in module.modules():
        if isinstance(submodule, TileableConv2d):
            submodule.tile_mode = tile_mode


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos | sin] of (possibly fractional) timesteps, shape [B] -> [B, dim], in float32."""
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) * (-math.log(max_period) / half)
    angles = timesteps.to(torch.float32)[:, None] * torch.exp(exponent)[None, :]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding
