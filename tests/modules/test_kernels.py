"""The CPU fast paths of the model layers: oneDNN-backed linear and blockwise bf16 attention, against float64."""

import pytest
import torch
import torch.nn.functional as F

from imaginairy.modules import attention as attention_module
from imaginairy.modules.attention import attention
from imaginairy.modules.layers import Linear, linear


def float64_attention(q, k, v):
    scores = (q.double() @ k.double().transpose(-1, -2)) / q.shape[-1] ** 0.5
    return scores.softmax(-1) @ v.double()


@pytest.mark.parametrize(
    "shape",
    [(2, 4096 // 64, 320), (7, 320), (3, 5, 11, 320)],
    ids=["tokens", "rows", "4d"],
)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_float64(shape, bias):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator)
    weight = torch.randn(96, 320, generator=generator) / 320**0.5
    b = torch.randn(96, generator=generator) if bias else None
    expected = F.linear(x.double(), weight.double(), None if b is None else b.double())
    out = linear(x, weight, b)
    assert out.shape == expected.shape and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, atol=2e-6, rtol=2e-6)


def test_linear_accepts_a_transposed_view_and_keeps_nn_linear_parameters():
    layer = Linear(320, 64)
    assert set(layer.state_dict()) == {"weight", "bias"}
    x = torch.randn(2, 320, 50).transpose(1, 2)  # [B, tokens, C] view of a channels-first map
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=2e-6, rtol=2e-6)


def test_bfloat16_linear_is_close_to_float64():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 100, 320, generator=generator)
    weight = torch.randn(640, 320, generator=generator) / 320**0.5
    out = linear(x.bfloat16(), weight.bfloat16())
    assert out.dtype == torch.bfloat16
    expected = F.linear(x.bfloat16().double(), weight.bfloat16().double())
    torch.testing.assert_close(out.double(), expected, atol=2e-2, rtol=1e-2)


def random_qkv(heads, tokens, keys, dim, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    # [B, heads, tokens, dim] views of [B, tokens, heads * dim] projections, as the UNet makes them.
    q = torch.randn(2, tokens, heads * dim, generator=generator).unflatten(-1, (heads, -1)).transpose(1, 2)
    k, v = (torch.randn(2, keys, heads * dim, generator=generator).unflatten(-1, (heads, -1)).transpose(1, 2)
            for _ in range(2))  # fmt: skip
    return q.to(dtype), k.to(dtype), v.to(dtype)


# Uneven sizes: a last query block shorter than 256 and head blocks that do not divide the head count.
@pytest.mark.parametrize(
    ("heads", "tokens", "keys", "dim"), [(5, 600, 600, 40), (8, 300, 1100, 24), (1, 257, 4096, 64)]
)
def test_blockwise_bfloat16_attention_is_close_to_float64(heads, tokens, keys, dim, monkeypatch):
    q, k, v = random_qkv(heads, tokens, keys, dim, torch.bfloat16)

    def refuse(*args, **kwargs):
        raise AssertionError("the fused kernel was called for bf16 on the CPU with many keys")

    monkeypatch.setattr(attention_module.F, "scaled_dot_product_attention", refuse)
    out = attention(q, k, v)
    assert out.shape == (2, heads, tokens, dim) and out.dtype == torch.bfloat16
    expected = float64_attention(q, k, v)
    # bf16 scores and probabilities: errors of a few bf16 roundings (2**-8) of values of order 0.1.
    torch.testing.assert_close(out.double(), expected, atol=1e-2, rtol=0)
    assert (out.double() - expected).abs().mean() < 1e-3


@pytest.mark.parametrize(("dtype", "keys"), [(torch.float32, 600), (torch.bfloat16, 77)])
def test_float32_and_short_contexts_use_the_fused_kernel(dtype, keys):
    q, k, v = random_qkv(4, 300, keys, 40, dtype)
    assert torch.equal(attention(q, k, v), F.scaled_dot_product_attention(q, k, v))


def test_fast_paths_trace_without_graph_breaks_under_torch_compile():
    """Under torch.compile the plain F.linear / scaled_dot_product_attention are traced (inductor lowers them to its
    own kernels), so a user compiling the UNet gets one graph."""
    import torch._dynamo

    q, k, v = random_qkv(2, 300, 300, 16, torch.bfloat16)
    weight = torch.randn(32, 32, dtype=torch.bfloat16)

    def block(q, k, v, weight):
        return linear(attention(q, k, v).transpose(1, 2).flatten(2), weight)

    explanation = torch._dynamo.explain(block)(q, k, v, weight)
    assert explanation.graph_break_count == 0
    assert explanation.graph_count == 1
