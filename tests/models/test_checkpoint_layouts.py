"""Every checkpoint layout in circulation loads into the same model: each variant of tiny-sd15 gives the base file's
weights exactly (16-bit files: the base weights rounded the same way); the diffusers-format folder and single file
are written by diffusers' own converters and `save_pretrained`, so the renaming is checked against diffusers."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers_reference import diffusers_unet_and_vae

from imaginairy.errors import IncompatibleModelError
from imaginairy.models import checkpoint_layouts, loading
from imaginairy.models.registry import ModelSpec, resolve_model
from imaginairy.models.weights import load_state_dict, save_state_dict


def load(path, config=None, dtype=torch.float32, vae=None):
    spec = resolve_model(str(path), config)
    return loading.load_diffusion_model(spec, dtype=dtype, vae=vae).state_dict()


@pytest.fixture(scope="module")
def base(tiny_models):
    return load(tiny_models["tiny-sd15"])


def assert_same(state_dict, expected, keys=None):
    keys = keys or expected.keys()
    assert state_dict.keys() == expected.keys()
    for key in keys:
        assert torch.equal(state_dict[key], expected[key]), key


@pytest.mark.parametrize("variant", ["unwrapped", "flat-clip", "ema-only", "ema-and-non-ema"])
def test_layouts_load_the_same_weights(tiny_variants, base, variant):
    assert_same(load(tiny_variants[variant]), base)


def test_wrapped_ckpt_loads_the_same_weights(tiny_models, base):
    assert_same(load(tiny_models["tiny-sd15"].with_suffix(".ckpt"), tiny_models["tiny-sd15"].with_suffix(".yaml")),
                base)


@pytest.mark.parametrize(("variant", "dtype"), [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_precision_files(tiny_variants, base, variant, dtype):
    loaded = load(tiny_variants[variant])
    for key, tensor in base.items():
        expected = tensor.to(dtype).float() if tensor.is_floating_point() else tensor
        assert torch.equal(loaded[key], expected), key
    assert loaded["model.diffusion_model.out.2.weight"].dtype == torch.float32  # loaded in the asked precision


def test_checkpoint_without_vae_gets_the_given_vae(tiny_variants, base):
    loaded = load(tiny_variants["no-vae"], vae=tiny_variants["vae"])
    vae = load_state_dict(tiny_variants["vae"])
    assert torch.equal(loaded["first_stage_model.decoder.conv_out.weight"], vae["decoder.conv_out.weight"])
    assert torch.equal(loaded["model.diffusion_model.out.2.weight"], base["model.diffusion_model.out.2.weight"])


@pytest.mark.parametrize("variant", ["no-vae", "no-text-encoder"])
def test_missing_components_come_from_the_family_default(monkeypatch, tiny_models, tiny_variants, base, variant,
                                                         caplog):
    registry = {"sd-1.5": ModelSpec("sd-1.5", str(tiny_models["tiny-sd15"]), None)}
    monkeypatch.setattr("imaginairy.models.registry.registered_models", lambda: registry)
    assert_same(load(tiny_variants[variant]), base)
    assert "using those of sd-1.5" in caplog.text


def test_diffusers_folder_and_single_file(tmp_path, tiny_models, base):
    weights_path = tiny_models["tiny-sd15"]
    checkpoint = load_state_dict(weights_path)
    unet, vae = diffusers_unet_and_vae(weights_path)
    prefix = "cond_stage_model.transformer."
    text_encoder = {k[len(prefix):]: v for k, v in checkpoint.items() if k.startswith(prefix)}
    folder = tmp_path / "tiny-diffusers"
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    save_state_dict(text_encoder, folder / "text_encoder" / "model.safetensors")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    config = str(weights_path.with_suffix(".yaml"))
    assert_same(load(folder, config), base, [k for k in base if "position_ids" not in k])
    single = {**{f"unet.{k}": v for k, v in unet.state_dict().items()},
              **{f"vae.{k}": v for k, v in vae.state_dict().items()},
              **{f"text_encoder.{k}": v for k, v in text_encoder.items()}}
    save_state_dict(single, tmp_path / "tiny-diffusers-single.safetensors")
    assert_same(load(tmp_path / "tiny-diffusers-single.safetensors", config), base)


@pytest.mark.parametrize(("key", "name"), [("conditioner.embedders.0.transformer.text_model.x", "SDXL"),
                                           ("model.diffusion_model.joint_blocks.0.x", "SD 3"),
                                           ("double_blocks.0.img_attn.qkv.weight", "Flux")])
def test_other_architectures_are_named(tmp_path, key, name):
    path = tmp_path / "other.safetensors"
    save_state_dict({key: torch.zeros(2)}, path)
    with pytest.raises(IncompatibleModelError, match=f"is a {name} model, which imaginairy does not load"):
        load(path)
    assert checkpoint_layouts.OTHER_ARCHITECTURE_KEYS
