"""The UNet's spatial transformer: self- and cross-attention over the pixels of a feature map.

Parameter names follow the CompVis `ldm.modules.attention` layout (to_q/to_k/to_v/to_out.0, ff.net.0.proj,
ff.net.2, norm1..3, proj_in/proj_out) so Stable Diffusion checkpoints load unchanged.
"""

import torch
import torch.nn.functional as F
from torch import nn

from imaginairy.modules.layers import Linear, group_norm, linear, repeat_batch

# Blockwise attention: each block of scores (heads x queries x keys) is about 2 MiB of bf16, so it stays in cache.
BLOCK_SCORES = 1 << 20
BLOCK_QUERIES = 256
# Below this many keys (the 77 text tokens of cross-attention) PyTorch's fused kernel is as fast.
BLOCKWISE_MIN_KEYS = 256
# Values are zero-padded to a multiple of this many columns: oneDNN's probabilities x values product runs ~25% faster
# at 48 columns than at SD 1.x's head size 40, and the padding columns (zeros) are dropped from the output.
VALUE_COLUMNS_MULTIPLE = 16


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v of [B, heads, tokens, d] tensors, like F.scaled_dot_product_attention.

    bf16 on the CPU with many keys is computed in blocks of plain matrix products and softmax instead: oneDNN's bf16
    matrix products make that 1.3-2.4x as fast as PyTorch's fused CPU kernel at Stable Diffusion's shapes (4096
    tokens x head size 40, 1024 x 80; `scripts/bench.py --only kernels`). Like diffusers' sliced attention, the
    scores are rounded to bf16 before the softmax (the fused kernel keeps them in float32): about 4x its rounding
    error, well inside what bf16 weights already cost.
    """
    batch, heads, tokens, dim = q.shape
    keys = k.shape[2]
    blockwise = q.device.type == "cpu" and q.dtype == torch.bfloat16 and keys >= BLOCKWISE_MIN_KEYS
    if torch.compiler.is_compiling() or not blockwise:
        return F.scaled_dot_product_attention(q, k, v)
    out = q.new_empty(batch, tokens, heads, dim)
    heads_per_block = max(1, min(heads, BLOCK_SCORES // (BLOCK_QUERIES * keys)))
    for index in range(batch):
        queries = (q[index] * dim**-0.5).contiguous()
        keys_t = k[index].transpose(1, 2).contiguous()
        values = F.pad(v[index], (0, -dim % VALUE_COLUMNS_MULTIPLE))
        for first_head in range(0, heads, heads_per_block):
            head_block = slice(first_head, first_head + heads_per_block)
            for first_query in range(0, tokens, BLOCK_QUERIES):
                query_block = slice(first_query, first_query + BLOCK_QUERIES)
                scores = torch.bmm(queries[head_block, query_block], keys_t[head_block]).softmax(-1)
                weighted = torch.bmm(scores, values[head_block])[..., :dim]
                out[index, query_block, head_block] = weighted.transpose(0, 1)
    return out.transpose(1, 2)


class CrossAttention(nn.Module):
    """Multi-head attention of `x` [B, N, query_dim] over `context` [B, M, context_dim] (itself when None)."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None):
        super().__init__()
        inner_dim = heads * dim_head
        self.heads = heads
        self.to_q = Linear(query_dim, inner_dim, bias=False)
        self.to_k = Linear(context_dim or query_dim, inner_dim, bias=False)
        self.to_v = Linear(context_dim or query_dim, inner_dim, bias=False)
        # to_out.1 was a dropout layer in training; only the linear layer at index 0 holds weights.
        self.to_out = nn.ModuleList([Linear(inner_dim, query_dim)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        batch, tokens, _ = x.shape
        q = self.to_q(x).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        k = self.to_k(context).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        v = self.to_v(context).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        out = attention(q, k, v)
        return self.to_out[0](out.transpose(1, 2).reshape(batch, tokens, -1))


class GEGLU(nn.Module):
    """Gated GELU: one projection to twice the width, half of it gating the other half."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return F.gelu(gate).mul_(value)


class FeedForward(nn.Module):
    """GEGLU feed-forward with a 4x hidden width. `net.1` was dropout in training and holds no weights."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner_dim = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner_dim), nn.Identity(), Linear(inner_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention to the text context, then feed-forward; each with a residual."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int | None):
        super().__init__()
        self.attn1 = CrossAttention(dim, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, heads, dim_head, context_dim=context_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        h = self.attn1(self.norm1(x))
        x = h.add_(x)
        if context is not None:
            x = repeat_batch(x, context.shape[0])
        h = self.attn2(self.norm2(x), context)
        x = h.add_(x)
        h = self.ff(self.norm3(x))
        return h.add_(x)


class SpatialTransformer(nn.Module):
    """Transformer over the H*W positions of a [B, C, H, W] feature map, added back as a residual.

    SD 1.x projects in and out with 1x1 convolutions, SD 2.x (`use_linear`) with linear layers after flattening.
    """

    def __init__(
        self,
        in_channels: int,
        heads: int,
        dim_head: int,
        depth: int = 1,
        context_dim: int | None = None,
        use_linear: bool = False,
    ):
        super().__init__()
        inner_dim = heads * dim_head
        self.use_linear = use_linear
        self.norm = group_norm(in_channels, eps=1e-6)
        if use_linear:
            self.proj_in = Linear(in_channels, inner_dim)
            self.proj_out = Linear(inner_dim, in_channels)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1)
            self.proj_out = nn.Conv2d(inner_dim, in_channels, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner_dim, heads, dim_head, context_dim) for _ in range(depth)]
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        _, channels, height, width = x.shape
        h = self.norm(x)
        if self.use_linear:
            h = self.proj_in(h.flatten(2).transpose(1, 2))
        else:
            h = self.proj_in(h).flatten(2).transpose(1, 2)
        for block in self.transformer_blocks:
            h = block(h, context)
        # A 1x1 convolution is a linear map over channels: applying it to the [B, H*W, C] tokens directly saves
        # a copy back to [B, C, H, W] layout; the residual add below writes the result in that layout anyway.
        h = linear(h, self.proj_out.weight.view(channels, -1), self.proj_out.bias)
        return repeat_batch(x, h.shape[0]) + h.transpose(1, 2).unflatten(2, (height, width))
