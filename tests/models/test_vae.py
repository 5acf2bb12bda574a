"""VAE swap: a VAE file in each shared layout replaces the checkpoint's, and decodes as diffusers' AutoencoderKL
built from the same file by diffusers' converter does (float32, other summation orders: 1e-4 on pixels in [-1, 1])."""

from __future__ import annotations

import pytest
import torch
import yaml
from diffusers import AutoencoderKL
from diffusers.loaders import single_file_utils as convert

from imaginairy.errors import IncompatibleModelError
from imaginairy.models.loading import load_diffusion_model
from imaginairy.models.registry import resolve_model
from imaginairy.models.vae import vae_state_dict
from imaginairy.models.weights import load_state_dict, save_state_dict


def diffusers_vae(vae_file, config_path):
    checkpoint = {"first_stage_model." + k: v for k, v in load_state_dict(vae_file).items()
                  if k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv."))}
    vae_config = convert.create_vae_diffusers_config_from_ldm(yaml.safe_load(config_path.read_text()), checkpoint)
    vae = AutoencoderKL(**vae_config)
    vae.load_state_dict(convert.convert_ldm_vae_checkpoint(checkpoint, vae_config))
    return vae.eval()


@pytest.fixture(scope="module")
def reference_vae(tiny_models, tiny_variants):
    return diffusers_vae(tiny_variants["vae"], tiny_models["tiny-sd15"].with_suffix(".yaml"))


def decoded(model, latent):
    with torch.inference_mode():
        return model.first_stage_model.decode(latent)


@pytest.mark.parametrize("layout", ["bare", "compvis", "diffusers", "sidecar"])
def test_vae_swap_matches_diffusers(tmp_path, tiny_models, tiny_variants, reference_vae, layout):
    checkpoint = tiny_models["tiny-sd15"]
    vae = {"bare": tiny_variants["vae"], "compvis": tiny_variants["vae-compvis"], "sidecar": None}.get(layout)
    if layout == "diffusers":
        vae = tmp_path / "diffusion_pytorch_model.safetensors"
        save_state_dict(reference_vae.state_dict(), vae)
    if layout == "sidecar":
        checkpoint = tiny_variants["sidecar"]
    model = load_diffusion_model(resolve_model(str(checkpoint)), vae=vae)
    plain = load_diffusion_model(resolve_model(str(tiny_models["tiny-sd15"])))
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        expected = reference_vae.decode(latent).sample
    ours = decoded(model, latent)
    print(f"max |pixel difference| {(ours - expected).abs().max():.2e}")
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)
    assert (decoded(plain, latent) - expected).abs().max() > 0.05  # the swap changed the decoder
    assert torch.equal(model.unet.out[2].weight, plain.unet.out[2].weight)


def test_not_a_vae_is_refused(tmp_path, tiny_loras):
    with pytest.raises(IncompatibleModelError, match="is not a VAE"):
        vae_state_dict(tiny_loras["kohya-sd15"])
