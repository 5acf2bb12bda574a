"""Tokenizer and text encoders, checked against independent implementations.

Parity with the diffusers/transformers reference runs in float64 on identical random weights, so any difference
left is rounding from a different order of operations (OpenCLIP's fused qkv projection vs transformers' split one):
a tolerance of 1e-10 on activations of order 1 leaves room for that and nothing else. The reference uses
transformers' SDPA attention because its eager attention takes the softmax in float32 (errors near 1e-7).
"""

import logging

import pytest
import torch
from clip_reference import clip_tokenizer, load_flattened_clip_text_model
from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from imaginairy.modules.text_encoders import LEGACY_POSITION_IDS_KEY, CLIPTextEncoder, OpenCLIPTextEncoder
from imaginairy.modules.tokenizer import END_OF_TEXT, SD1_PAD_TOKEN, SD2_PAD_TOKEN, START_OF_TEXT, tokenize

FLOAT64_TOLERANCE = 1e-10
PROMPTS = ["a photo of an astronaut riding a horse", "Cyberpunk city, 8k; neon-lit streets & rain!", ""]
TINY_CLIP = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64)
TINY_OPENCLIP = dict(width=32, layers=3, heads=4, output_dim=24)


def randomize_weights(module: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter drawn afresh, so no weight keeps a structured default (ones, zeros) a mapping bug could hide
    behind."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return module


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory) -> CLIPTokenizer:
    return clip_tokenizer(tmp_path_factory.mktemp("clip-tokenizer"))


def test_tokenize_known_prompt():
    ids = tokenize(["a photo of an astronaut riding a horse"], pad_token=SD1_PAD_TOKEN)
    expected_start = [START_OF_TEXT, 320, 1125, 539, 550, 18376, 6765, 320, 4558, END_OF_TEXT]
    assert ids.dtype == torch.long
    assert ids.shape == (1, 77)
    assert ids[0, :10].tolist() == expected_start


@pytest.mark.parametrize("prompt", PROMPTS)
def test_tokenize_matches_huggingface_clip_tokenizer(hf_tokenizer, prompt):
    expected = hf_tokenizer([prompt], padding="max_length", max_length=77, truncation=True).input_ids
    assert hf_tokenizer.bos_token_id == START_OF_TEXT and hf_tokenizer.eos_token_id == END_OF_TEXT
    assert tokenize([prompt], pad_token=SD1_PAD_TOKEN).tolist() == expected


def test_padding_differs_between_sd1_and_sd2():
    sd1 = tokenize(["a cat", "a photo of a dog"], pad_token=SD1_PAD_TOKEN)
    sd2 = tokenize(["a cat", "a photo of a dog"], pad_token=SD2_PAD_TOKEN)
    cat_ids = [START_OF_TEXT, 320, 2368, END_OF_TEXT]
    assert sd1[0].tolist() == cat_ids + [END_OF_TEXT] * 73
    assert sd2[0].tolist() == cat_ids + [0] * 73
    assert sd2[1, :7].tolist() == sd1[1, :7].tolist()
    assert sd2[1, 7:].eq(0).all() and sd1[1, 7:].eq(END_OF_TEXT).all()


def test_long_prompt_is_truncated_with_warning(hf_tokenizer, caplog):
    prompt = " ".join(["cat"] * 100)
    with caplog.at_level(logging.WARNING, logger="imaginairy.modules.tokenizer"):
        ids = tokenize([prompt], pad_token=SD2_PAD_TOKEN)
    assert ids.shape == (1, 77)
    assert ids[0].tolist() == [START_OF_TEXT] + [2368] * 75 + [END_OF_TEXT]
    assert ids[0].tolist() == hf_tokenizer([prompt], max_length=77, truncation=True).input_ids[0]
    assert "dropped the last 25 of 100 tokens" in caplog.text


def test_short_prompt_does_not_warn(caplog):
    with caplog.at_level(logging.WARNING, logger="imaginairy.modules.tokenizer"):
        tokenize([" ".join(["cat"] * 75)], pad_token=SD1_PAD_TOKEN)
    assert caplog.text == ""


def reference_clip_text_model(state_dict: dict) -> CLIPTextModel:
    config = CLIPTextConfig(**TINY_CLIP, hidden_act="quick_gelu", attn_implementation="sdpa")
    return load_flattened_clip_text_model(CLIPTextModel(config), state_dict).double()


def checkpoint_of(encoder: nn.Module) -> dict:
    return {f"cond_stage_model.{key}": value for key, value in encoder.state_dict().items()}


@torch.no_grad()
def test_clip_text_encoder_matches_diffusers_conversion():
    encoder = randomize_weights(CLIPTextEncoder(**TINY_CLIP)).double().eval()
    reference = reference_clip_text_model(convert_ldm_clip_checkpoint(checkpoint_of(encoder)))
    token_ids = tokenize(PROMPTS, pad_token=SD1_PAD_TOKEN)

    ours = encoder(PROMPTS)
    theirs = reference(input_ids=token_ids).last_hidden_state

    assert ours.shape == (3, 77, 32) and ours.dtype == torch.float64
    assert ours.std() > 0.1
    torch.testing.assert_close(ours, theirs, rtol=0, atol=FLOAT64_TOLERANCE)


@torch.no_grad()
def test_clip_text_encoder_hidden_layer_is_clip_skip_without_final_norm():
    encoder = randomize_weights(CLIPTextEncoder(**TINY_CLIP, layer="hidden", layer_idx=-2)).double().eval()
    reference = reference_clip_text_model(convert_ldm_clip_checkpoint(checkpoint_of(encoder)))
    token_ids = tokenize(PROMPTS, pad_token=SD1_PAD_TOKEN)

    ours = encoder.encode_tokens(token_ids)
    theirs = reference(input_ids=token_ids, output_hidden_states=True).hidden_states[-2]

    torch.testing.assert_close(ours, theirs, rtol=0, atol=FLOAT64_TOLERANCE)


def diffusers_openclip_reference(encoder: OpenCLIPTextEncoder, layers_kept: int) -> CLIPTextModel:
    """A CLIPTextModel loaded through diffusers' SD 2.x conversion (the projection, if converted, belongs to
    CLIPTextModelWithProjection and is left out)."""
    checkpoint = checkpoint_of(encoder)
    dropped_block = f"cond_stage_model.model.transformer.resblocks.{layers_kept}."
    checkpoint = {key: value for key, value in checkpoint.items() if not key.startswith(dropped_block)}
    config = CLIPTextConfig(
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=128,
        num_hidden_layers=layers_kept,
        hidden_act="gelu",
        attn_implementation="sdpa",
    )
    model = CLIPTextModel(config)
    converted = convert_open_clip_checkpoint(model, checkpoint)
    converted.pop("text_projection.weight", None)
    return load_flattened_clip_text_model(model, converted).double()


@pytest.mark.parametrize(("layer", "layers_kept"), [("penultimate", 2), ("last", 3)])
@torch.no_grad()
def test_openclip_text_encoder_matches_diffusers_conversion(layer, layers_kept):
    """diffusers drops the last block of the SD 2.x encoder and uses the final-layer-norm output; for the tiny
    3-block model that is block 2 (diffusers' own ignore list names block 23 of the real 24)."""
    encoder = randomize_weights(OpenCLIPTextEncoder(**TINY_OPENCLIP, layer=layer)).double().eval()
    reference = diffusers_openclip_reference(encoder, layers_kept)
    token_ids = tokenize(PROMPTS, pad_token=SD2_PAD_TOKEN)

    ours = encoder(PROMPTS)
    theirs = reference(input_ids=token_ids).last_hidden_state

    assert ours.shape == (3, 77, 32) and ours.dtype == torch.float64
    assert ours.std() > 0.1
    torch.testing.assert_close(ours, theirs, rtol=0, atol=FLOAT64_TOLERANCE)


def test_openclip_state_dict_keys_match_checkpoint_layout():
    encoder = OpenCLIPTextEncoder(width=32, layers=1, heads=4, output_dim=24)
    block = "model.transformer.resblocks.0."
    expected = {
        "model.token_embedding.weight": (49408, 32),
        "model.positional_embedding": (77, 32),
        block + "ln_1.weight": (32,),
        block + "ln_1.bias": (32,),
        block + "attn.in_proj_weight": (96, 32),
        block + "attn.in_proj_bias": (96,),
        block + "attn.out_proj.weight": (32, 32),
        block + "attn.out_proj.bias": (32,),
        block + "ln_2.weight": (32,),
        block + "ln_2.bias": (32,),
        block + "mlp.c_fc.weight": (128, 32),
        block + "mlp.c_fc.bias": (128,),
        block + "mlp.c_proj.weight": (32, 128),
        block + "mlp.c_proj.bias": (32,),
        "model.ln_final.weight": (32,),
        "model.ln_final.bias": (32,),
        "model.text_projection": (32, 24),
        "model.logit_scale": (),
    }
    assert {key: tuple(value.shape) for key, value in encoder.state_dict().items()} == expected


def test_clip_state_dict_keys_match_checkpoint_layout():
    keys = set(CLIPTextEncoder(**TINY_CLIP).state_dict())
    assert "transformer.text_model.embeddings.token_embedding.weight" in keys
    assert "transformer.text_model.encoder.layers.2.self_attn.q_proj.weight" in keys
    assert "transformer.text_model.final_layer_norm.weight" in keys
    assert LEGACY_POSITION_IDS_KEY not in keys
    assert all(key.startswith("transformer.text_model.") for key in keys)


class CheckpointHolder(nn.Module):
    """Stands in for the full diffusion model, so the text encoder loads under `cond_stage_model.`."""

    def __init__(self, text_encoder: nn.Module):
        super().__init__()
        self.cond_stage_model = text_encoder


@pytest.mark.parametrize("with_legacy_position_ids", [False, True])
@torch.no_grad()
def test_clip_strict_load_round_trip(with_legacy_position_ids):
    source = randomize_weights(CLIPTextEncoder(**TINY_CLIP), seed=1).eval()
    checkpoint = checkpoint_of(source)
    if with_legacy_position_ids:
        checkpoint["cond_stage_model." + LEGACY_POSITION_IDS_KEY] = torch.arange(77).unsqueeze(0).float()
    keys_before = set(checkpoint)

    target = CheckpointHolder(CLIPTextEncoder(**TINY_CLIP)).eval()
    target.load_state_dict(checkpoint, strict=True)

    assert set(checkpoint) == keys_before
    torch.testing.assert_close(target.cond_stage_model(PROMPTS), source(PROMPTS), rtol=0, atol=0)
    position_ids = target.cond_stage_model.transformer.text_model.embeddings.position_ids
    assert position_ids.dtype == torch.long and position_ids[0].tolist() == list(range(77))


@torch.no_grad()
def test_openclip_strict_load_round_trip():
    source = randomize_weights(OpenCLIPTextEncoder(**TINY_OPENCLIP), seed=1).eval()
    target = CheckpointHolder(OpenCLIPTextEncoder(**TINY_OPENCLIP)).eval()
    target.load_state_dict(checkpoint_of(source), strict=True)
    torch.testing.assert_close(target.cond_stage_model(PROMPTS), source(PROMPTS), rtol=0, atol=0)


@pytest.mark.parametrize(
    "encoder_class, params",
    [(CLIPTextEncoder, TINY_CLIP), (OpenCLIPTextEncoder, TINY_OPENCLIP)],
)
@torch.no_grad()
def test_encoder_built_on_meta_device_loads_by_assignment(encoder_class, params):
    source = randomize_weights(encoder_class(**params), seed=2).eval()
    with torch.device("meta"):
        target = encoder_class(**params)
    target.load_state_dict(source.state_dict(), strict=True, assign=True)
    assert not any(tensor.is_meta for tensor in target.state_dict(keep_vars=True).values())
    assert not any(buffer.is_meta for buffer in target.buffers())
    torch.testing.assert_close(target.eval()(PROMPTS), source(PROMPTS), rtol=0, atol=0)


@pytest.mark.parametrize(
    "encoder_class, params",
    [(CLIPTextEncoder, TINY_CLIP), (OpenCLIPTextEncoder, TINY_OPENCLIP)],
)
@torch.no_grad()
def test_output_dtype_follows_module(encoder_class, params):
    encoder = encoder_class(**params).to(torch.bfloat16).eval()
    output = encoder(["a cat"])
    assert output.dtype == torch.bfloat16 and output.shape == (1, 77, 32)
    assert torch.isfinite(output).all()


def test_compvis_config_params_are_accepted():
    CLIPTextEncoder(**TINY_CLIP, version="openai/clip-vit-large-patch14", device="cuda", max_length=77, freeze=True)
    OpenCLIPTextEncoder(
        **TINY_OPENCLIP, arch="ViT-H-14", version="laion2b_s32b_b79k", device="cuda", max_length=77, freeze=True
    )


@pytest.mark.parametrize(
    "make_encoder",
    [
        lambda: CLIPTextEncoder(**TINY_CLIP, layer="pooled"),
        lambda: CLIPTextEncoder(**TINY_CLIP, layer="hidden"),
        lambda: CLIPTextEncoder(**TINY_CLIP, layer="hidden", layer_idx=5),
        lambda: OpenCLIPTextEncoder(**TINY_OPENCLIP, layer="hidden"),
    ],
)
def test_unknown_layer_settings_are_rejected(make_encoder):
    with pytest.raises(ValueError, match="layer"):
        make_encoder()
