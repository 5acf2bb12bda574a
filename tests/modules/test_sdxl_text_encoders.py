"""SDXL's two text encoders against transformers' CLIPTextModel / CLIPTextModelWithProjection loaded through
diffusers' single-file converters from the same tiny checkpoint (`conditioner.embedders.*` keys).

As in test_text_encoders.py the comparison runs in float64, so the 1e-10 tolerance leaves room only for a
different order of operations (OpenCLIP's fused qkv projection vs transformers' split one).
"""

import pytest
import torch
from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from imaginairy.modules.text_encoders import OpenCLIPPooledTextEncoder, SDXLTextEncoders
from imaginairy.modules.tokenizer import SD1_PAD_TOKEN, SD2_PAD_TOKEN, tokenize

FLOAT64_TOLERANCE = 1e-10
PROMPTS = ["a photo of an astronaut riding a horse", "Cyberpunk city, 8k; neon-lit streets & rain!", ""]
CLIP_L = {"target": "sgm.modules.encoders.modules.FrozenCLIPEmbedder",
          "params": {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 64,
                     "layer": "hidden", "layer_idx": 2}}
BIG_G = {"target": "sgm.modules.encoders.modules.FrozenOpenCLIPEmbedder2",
         "params": {"width": 48, "layers": 3, "heads": 4, "output_dim": 40, "layer": "penultimate",
                    "always_return_pooled": True, "legacy": False, "arch": "ViT-bigG-14"}}
SIZES = {"target": "sgm.modules.encoders.modules.ConcatTimestepEmbedderND", "params": {"outdim": 256}}
BASE_EMBEDDERS = [CLIP_L, BIG_G, {**SIZES, "input_key": "original_size_as_tuple"},
                  {**SIZES, "input_key": "crop_coords_top_left"}, {**SIZES, "input_key": "target_size_as_tuple"}]
REFINER_EMBEDDERS = [BIG_G, {**SIZES, "input_key": "original_size_as_tuple"},
                     {**SIZES, "input_key": "crop_coords_top_left"}, {**SIZES, "input_key": "aesthetic_score"}]


def randomized(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return module.double().eval()


def checkpoint_of(encoders: SDXLTextEncoders) -> dict:
    return {f"conditioner.{key}": value for key, value in encoders.state_dict().items()}


def reference_clip_l(checkpoint: dict) -> CLIPTextModel:
    """diffusers' text_encoder: CLIPTextModel from `conditioner.embedders.0.transformer.text_model.*`."""
    params = CLIP_L["params"]
    config = CLIPTextConfig(hidden_size=params["hidden_size"], num_hidden_layers=params["num_hidden_layers"],
                            num_attention_heads=params["num_attention_heads"],
                            intermediate_size=params["intermediate_size"], hidden_act="quick_gelu",
                            attn_implementation="sdpa")
    model = CLIPTextModel(config)
    converted = convert_ldm_clip_checkpoint(checkpoint)  # strips conditioner.embedders.0.transformer.
    model.load_state_dict({key.removeprefix("text_model."): value for key, value in converted.items()}, strict=True)
    return model.double().eval()


def reference_big_g(checkpoint: dict, prefix: str) -> CLIPTextModelWithProjection:
    """diffusers' text_encoder_2: CLIPTextModelWithProjection converted from the OpenCLIP keys under `prefix`."""
    params = BIG_G["params"]
    config = CLIPTextConfig(hidden_size=params["width"], num_hidden_layers=params["layers"],
                            num_attention_heads=params["heads"], intermediate_size=4 * params["width"],
                            projection_dim=params["output_dim"], hidden_act="gelu", attn_implementation="sdpa")
    model = CLIPTextModelWithProjection(config)
    model.load_state_dict(convert_open_clip_checkpoint(model, checkpoint, prefix=prefix), strict=True)
    return model.double().eval()


@torch.no_grad()
def test_sdxl_base_context_and_pooled_match_diffusers_encoders():
    encoders = randomized(SDXLTextEncoders(BASE_EMBEDDERS))
    checkpoint = checkpoint_of(encoders)
    assert any(key.startswith("conditioner.embedders.0.transformer.text_model.") for key in checkpoint)
    assert "conditioner.embedders.1.model.text_projection" in checkpoint
    clip_l, big_g = reference_clip_l(checkpoint), reference_big_g(checkpoint, "conditioner.embedders.1.model.")

    context, pooled = encoders(PROMPTS)
    # As diffusers' StableDiffusionXLPipeline.encode_prompt: each encoder's hidden_states[-2] (its tokenizer pads
    # with end-of-text for CLIP-L and "!" = 0 for OpenCLIP), concatenated; the pooled output from text_encoder_2.
    clip_ids, big_g_ids = tokenize(PROMPTS, SD1_PAD_TOKEN), tokenize(PROMPTS, SD2_PAD_TOKEN)
    clip_hidden = clip_l(input_ids=clip_ids, output_hidden_states=True).hidden_states[-2]
    big_g_out = big_g(input_ids=big_g_ids, output_hidden_states=True)
    expected_context = torch.cat([clip_hidden, big_g_out.hidden_states[-2]], dim=-1)

    assert context.shape == (3, 77, 32 + 48) and pooled.shape == (3, 40)
    assert context.std() > 0.1 and pooled.std() > 0.1
    torch.testing.assert_close(context, expected_context, rtol=0, atol=FLOAT64_TOLERANCE)
    torch.testing.assert_close(pooled, big_g_out.text_embeds, rtol=0, atol=FLOAT64_TOLERANCE)


@torch.no_grad()
def test_sdxl_refiner_has_only_the_openclip_encoder_as_embedder_0():
    encoders = randomized(SDXLTextEncoders(REFINER_EMBEDDERS), seed=3)
    checkpoint = checkpoint_of(encoders)
    big_g = reference_big_g(checkpoint, "conditioner.embedders.0.model.")

    context, pooled = encoders(PROMPTS)
    expected = big_g(input_ids=tokenize(PROMPTS, SD2_PAD_TOKEN), output_hidden_states=True)

    assert not encoders.has_clip_l
    assert encoders.number_keys == ["original_size_as_tuple", "crop_coords_top_left", "aesthetic_score"]
    torch.testing.assert_close(context, expected.hidden_states[-2], rtol=0, atol=FLOAT64_TOLERANCE)
    torch.testing.assert_close(pooled, expected.text_embeds, rtol=0, atol=FLOAT64_TOLERANCE)


@torch.no_grad()
def test_pooled_output_is_taken_at_the_end_of_text_token():
    """The end-of-text token sits at a different position in each prompt: pooling at a fixed position (the last
    or the first token) gives another answer."""
    encoder = randomized(OpenCLIPPooledTextEncoder(**{**BIG_G["params"], "arch": None}))
    ids = tokenize(PROMPTS, SD2_PAD_TOKEN)
    _, pooled = encoder.encode_tokens_pooled(ids)
    _, pooled_short = encoder.encode_tokens_pooled(ids[:, :20])
    assert torch.allclose(pooled[2], pooled_short[2])  # causal: tokens after end-of-text do not matter
    assert not torch.allclose(pooled[0], pooled[1])


@pytest.mark.parametrize("change", [{"legacy": True}, {"layer": "last"}, {"always_return_pooled": False}])
def test_sdxl_openclip_settings_other_than_sdxl_are_refused(change):
    with pytest.raises(ValueError, match="penultimate, legacy=False"):
        OpenCLIPPooledTextEncoder(**{**BIG_G["params"], **change})


def test_unknown_embedder_is_refused():
    with pytest.raises(ValueError, match="not supported"):
        SDXLTextEncoders([BIG_G, {"target": "sgm.modules.encoders.modules.FrozenT5Embedder"}])


def test_checkpoint_without_logit_scale_loads_strictly_on_the_meta_device():
    """Some merged SDXL files drop the unused `logit_scale`; everything else must still be present."""
    source = randomized(SDXLTextEncoders(BASE_EMBEDDERS))
    state = {key: value for key, value in source.state_dict().items() if not key.endswith("logit_scale")}
    with torch.device("meta"):
        target = SDXLTextEncoders(BASE_EMBEDDERS)
    target.load_state_dict(state, strict=True, assign=True)
    assert not any(tensor.is_meta for tensor in target.state_dict().values())
    del state["embedders.1.model.text_projection"]
    with pytest.raises(RuntimeError, match="text_projection"):
        SDXLTextEncoders(BASE_EMBEDDERS).load_state_dict(state, strict=True)
