"""3x3 convolutions of large float32 feature maps computed band of rows by band of rows.

At 512x512 the VAE decoder's last levels hold maps of 128-256 channels x 512 x 512 (134-268 MB each in float32).
`conv(silu(group_norm(x)))` and `conv(upsample(x))` would each materialise an input-sized intermediate before the
convolution; here the intermediate exists one band of rows (plus a one-row halo) at a time, so the decoder's peak
memory drops by about that intermediate. The group norm statistics are those of the whole map (as F.group_norm),
so the result is the unbanded one up to float32 summation order.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from imaginairy.modules.layers import TileableConv2d

# Maps of at least this many elements (128 MiB of float32) are convolved in bands of about BAND_ELEMENTS each.
MIN_BANDED_ELEMENTS = 1 << 25
BAND_ELEMENTS = 1 << 22


def uses_bands(conv: TileableConv2d, x: torch.Tensor, scale: int = 1) -> bool:
    """Whether `conv` of `x` (upsampled `scale` times first) is computed in bands: large float32 maps, ordinary
    zero padding (tile modes wrap rows around, which bands do not)."""
    return x.dtype == torch.float32 and not conv.tile_mode and x.numel() * scale * scale >= MIN_BANDED_ELEMENTS


def conv_in_bands(
    conv: TileableConv2d, x: torch.Tensor, prepare: Callable[[torch.Tensor], torch.Tensor], scale: int = 1
) -> torch.Tensor:
    """conv(prepare(x)) for a stride-1 3x3 `conv` with 1-pixel zero padding. `prepare` maps a band of x's rows to
    `scale` times as many rows of the convolution's input, each row depending only on its own source row."""
    batch, _, height, width = x.shape
    out_height, out_width = height * scale, width * scale
    band_rows = max(8, BAND_ELEMENTS // (x.shape[1] * out_width))
    out = torch.empty(
        batch, conv.out_channels, out_height, out_width, dtype=x.dtype, device=x.device,
        memory_format=torch.channels_last,
    )  # fmt: skip
    for top in range(0, out_height, band_rows):
        bottom = min(top + band_rows, out_height)
        first, last = max(top - 1, 0), min(bottom + 1, out_height)  # the input rows this band of output reads
        source_first = first // scale
        rows = prepare(x[:, :, source_first : (last - 1) // scale + 1])
        rows = rows[:, :, first - source_first * scale : last - source_first * scale]
        rows = F.pad(rows, (0, 0, int(top == 0), int(bottom == out_height)))  # zero rows beyond the map's edges
        out[:, :, top:bottom] = F.conv2d(rows, conv.weight, conv.bias, padding=(0, 1))
    return out


def norm_silu_conv(norm: nn.GroupNorm, conv: TileableConv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(silu(norm(x))), in bands when `uses_bands`."""
    if not uses_bands(conv, x):
        return conv(F.silu(norm(x), inplace=True))
    mean, variance = group_mean_and_variance(x, norm.num_groups)
    scale = torch.rsqrt(variance + norm.eps) * norm.weight
    shift = norm.bias - mean * scale
    scale, shift = scale[:, :, None, None], shift[:, :, None, None]
    return conv_in_bands(conv, x, lambda rows: F.silu(torch.addcmul(shift, rows, scale), inplace=True))


def group_mean_and_variance(x: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each channel's group mean and (biased) variance, [B, C], in two passes (the mean, then the squared deviations
    one band at a time): as accurate as F.group_norm's statistics, without a map-sized temporary."""
    batch, channels, height, width = x.shape
    per_group = channels // groups
    count = per_group * height * width

    def per_channel(channel_sums: torch.Tensor) -> torch.Tensor:
        group_values = channel_sums.view(batch, groups, per_group).sum(-1) / count
        return group_values.repeat_interleave(per_group, dim=1)

    mean = per_channel(x.sum(dim=(2, 3)))
    band_rows = max(1, BAND_ELEMENTS // (channels * width))
    squares = torch.zeros_like(mean)
    for top in range(0, height, band_rows):
        deviations = x[:, :, top : top + band_rows] - mean[:, :, None, None]
        squares += deviations.square_().sum(dim=(2, 3))
    return mean, per_channel(squares)


def upsample_conv(conv: TileableConv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(nearest 2x upsampling of x), in bands when `uses_bands`."""
    if not uses_bands(conv, x, scale=2):
        return conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    return conv_in_bands(conv, x, lambda rows: F.interpolate(rows, scale_factor=2.0, mode="nearest"), scale=2)
