"""A function over an image (or latent) in overlapping tiles, so large inputs need memory for one tile only: the
VAE's encode and decode (`imaginairy.modules.tiling`) and the upscaler. Not the seamless `tile_mode`, which makes
an image wrap around.

Each tile goes through the function on its own; where tiles overlap their outputs are blended with 1D weights per
axis (their product per tile), normalised by the summed weights, so a per-pixel function gives the untiled result.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# (tile starts along an axis, the tile's index, the axis length, tile side, nominal overlap, output scale) -> the
# tile's weights along that axis, one per output pixel
EdgeWeights = Callable[[list[int], int, int, int, int, float], torch.Tensor]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of side `tile` covering `length`, neighbours overlapping by at least `overlap`; the
    last tile ends at the edge."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    return starts + [length - tile]


def blend_ramp(length: int, overlap: int, rise: bool, fall: bool) -> torch.Tensor:
    """Weights along one tile side: rising over the first `overlap` entries (if `rise`), falling over the last."""
    weights = torch.ones(length)
    ramp = (torch.arange(overlap, dtype=torch.float32) + 0.5) / overlap
    overlap = min(overlap, length)
    if rise:
        weights[:overlap] = torch.minimum(weights[:overlap], ramp[:overlap])
    if fall:
        weights[-overlap:] = torch.minimum(weights[-overlap:], ramp[:overlap].flip(0))
    return weights


def linear_edge_weights(starts: list[int], index: int, length: int, tile: int, overlap: int, scale: float):
    """Ramps over the nominal overlap towards each inner edge (the VAE's): every output pixel counts."""
    out_length = int((min(starts[index] + tile, length) - starts[index]) * scale)
    return blend_ramp(out_length, int(overlap * scale), rise=index > 0, fall=index < len(starts) - 1)


def margin_edge_weights(starts: list[int], index: int, length: int, tile: int, overlap: int, scale: float):
    """Across the actual overlap with each neighbour (the upscaler's): 0 on the outer quarter (pixels computed with
    too little context), a linear ramp to 1 across the middle half, 1 on the inner quarter; the neighbour's weights
    are the mirror image, so where two tiles overlap the weights sum to 1."""
    start = starts[index]
    end = min(start + tile, length)
    weights = torch.ones(int((end - start) * scale))
    overlap_before = int((starts[index - 1] + tile - start) * scale) if index > 0 else 0
    overlap_after = int((end - starts[index + 1]) * scale) if index < len(starts) - 1 else 0
    if overlap_before:
        weights[:overlap_before] = torch.minimum(weights[:overlap_before], _rising_weights(overlap_before))
    if overlap_after:
        weights[-overlap_after:] = torch.minimum(weights[-overlap_after:], _rising_weights(overlap_after).flip(0))
    return weights


def _rising_weights(overlap: int) -> torch.Tensor:
    margin = overlap // 4
    ramp_length = overlap - 2 * margin
    return ((torch.arange(overlap) + 0.5 - margin) / ramp_length).clamp(0, 1)


def apply_in_tiles(
    function, x: torch.Tensor, tile: int, overlap: int, scale: float, edge_weights: EdgeWeights = linear_edge_weights
) -> torch.Tensor:
    """`function` over overlapping tiles of x [B, C, H, W] (tile side and overlap in x's pixels), outputs blended.

    `function` maps a [B, C, h, w] tile to [B, C', h * scale, w * scale]; the result is float32, on the device of
    the function's outputs.
    """
    height, width = x.shape[-2:]
    rows, columns = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    row_weights = [edge_weights(rows, i, height, tile, overlap, scale) for i in range(len(rows))]
    column_weights = [edge_weights(columns, i, width, tile, overlap, scale) for i in range(len(columns))]
    output = None
    for top, top_weights in zip(rows, row_weights):
        for left, left_weights in zip(columns, column_weights):
            tile_out = function(x[..., top : top + tile, left : left + tile]).float()
            if output is None:
                output = tile_out.new_zeros((*tile_out.shape[:2], int(height * scale), int(width * scale)))
            weights = torch.outer(top_weights, left_weights).to(tile_out.device)
            out_top, out_left = int(top * scale), int(left * scale)
            out_h, out_w = weights.shape
            output[..., out_top : out_top + out_h, out_left : out_left + out_w] += tile_out * weights
    # the tile grid is a product of rows and columns, so the summed weight at (y, x) is row_sum[y] * column_sum[x]
    row_sums = summed_at_starts(row_weights, rows, output.shape[-2], scale).to(output.device)
    column_sums = summed_at_starts(column_weights, columns, output.shape[-1], scale).to(output.device)
    output /= row_sums[:, None]
    output /= column_sums[None, :]
    return output


def summed_at_starts(weights: list[torch.Tensor], starts: list[int], length: int, scale: float) -> torch.Tensor:
    total = torch.zeros(length)
    for start, tile_weights in zip(starts, weights):
        total[int(start * scale) : int(start * scale) + len(tile_weights)] += tile_weights
    return total
