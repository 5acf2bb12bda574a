"""Our ControlNet against diffusers' ControlNetModel on the same tiny weights, in both file layouts.

diffusers' model is its own folder (written by diffusers' own converter from the original-layout file), so the key
mapping, the hint encoder and the encoder maths are checked independently of our code. float32 on both sides,
sums in different orders: the residuals (values up to ~11) differ by at most ~1e-5 (~1e-6 relative); we allow
5e-5 absolute + 1e-5 relative.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import ControlNetModel

from imaginairy.errors import ModelLoadError
from imaginairy.models.controlnets import check_fits, load_controlnet
from imaginairy.modules.controlnet import original_key_from_diffusers

TOLERANCE = {"atol": 5e-5, "rtol": 1e-5}


def inputs(batch=1, contexts=2, height=8, width=12):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(batch, 4, height, width, generator=generator)
    context = torch.randn(contexts * batch, 7, 32, generator=generator)
    hint = torch.rand(1, 3, 8 * height, 8 * width, generator=generator)
    return x, context, hint


@pytest.mark.parametrize("layout", ["tiny-controlnet-sd15", "tiny-controlnet-sd15-diffusers"])
def test_residuals_match_diffusers(tiny_controlnets, layout):
    ours = load_controlnet(str(tiny_controlnets[layout]), "cpu", torch.float32)
    reference = ControlNetModel.from_pretrained(tiny_controlnets["tiny-controlnet-sd15-diffusers"]).eval()
    x, context, hint = inputs()
    t = torch.tensor([321.0, 321.0])
    with torch.inference_mode():
        residuals = ours(x, t[:1], context, hint)
        down, mid = reference(x.repeat(2, 1, 1, 1), t, encoder_hidden_states=context,
                              controlnet_cond=hint.repeat(2, 1, 1, 1), return_dict=False)
    expected = [*down, mid]
    assert len(residuals) == len(expected)
    for ours_residual, reference_residual in zip(residuals, expected):
        torch.testing.assert_close(ours_residual.expand_as(reference_residual), reference_residual, **TOLERANCE)
    assert expected[-1].abs().max() > 0.1  # the zero convolutions are not zero in the tiny weights


def test_both_layouts_load_the_same_weights(tiny_controlnets):
    original = load_controlnet(str(tiny_controlnets["tiny-controlnet-sd15"]), "cpu", torch.float32)
    converted = load_controlnet(str(tiny_controlnets["tiny-controlnet-sd15-diffusers"]), "cpu", torch.float32)
    for (name, a), (_, b) in zip(original.state_dict().items(), converted.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_sd15_level_without_attention_maps_downsamplers():
    # SD 1.5's last level has no attention: its down_blocks.3 resnets are input blocks 10 and 11
    key = original_key_from_diffusers("down_blocks.3.resnets.1.conv1.weight", 2)
    assert key == "input_blocks.11.0.in_layers.2.weight"
    assert original_key_from_diffusers("down_blocks.2.downsamplers.0.conv.bias", 2) == "input_blocks.9.0.op.bias"
    assert original_key_from_diffusers("controlnet_cond_embedding.blocks.5.weight", 2) == "input_hint_block.12.weight"


def test_controlnet_for_another_architecture_is_refused(tiny_controlnets, tiny_models, tmp_path):
    from make_tiny_models import make_tiny_controlnet

    from imaginairy.models.loading import load_diffusion_model
    from imaginairy.models.registry import resolve_model

    wider = make_tiny_controlnet(tmp_path, "tiny-controlnet-wider", 5, {"model_channels": 64})
    model = load_diffusion_model(resolve_model(str(tiny_models["tiny-sd15"])))
    check_fits(load_controlnet(str(tiny_controlnets["tiny-controlnet-sd15"]), "cpu", torch.float32), model.unet, "ok")
    with pytest.raises(ModelLoadError, match="for another architecture"):
        check_fits(load_controlnet(str(wider), "cpu", torch.float32), model.unet, wider.name)
