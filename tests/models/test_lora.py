"""LoRA merging against diffusers' own LoRA loading (`load_lora_weights` + PEFT), exactness of the restore, and every
bad LoRA input.

diffusers reads the kohya and PEFT files with its own key converters into its own UNet (built from our checkpoint
file by its converters), so a layer our name mapping sends to the wrong place, a wrong alpha/rank scale or a wrong
conv reshape moves the result. The text embeddings are computed by us with the LoRAs applied and given to both as
`prompt_embeds` (the text encoder's LoRA layers are checked against the formula below).

Tolerance: float32 both sides, sums in other orders (as tests/test_pipeline_parity.py). Over 4 k_euler steps the
final latents differ by at most 2.9e-4..4.2e-4 (measured for the six cases), while the LoRAs move them by 40-80 (the
tiny random LoRAs are as large as the weights): we allow 2e-3 absolute, no relative term. The text encoder's output
agrees with diffusers' to ~1.5e-6 (1e-5 allowed), PEFT's LoHa/LoKr merges to 1e-5.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers_reference import diffusers_pipeline, scheduler_and_call

from imaginairy import ImaginePrompt, pipeline
from imaginairy.errors import IncompatibleModelError, ModelLoadError
from imaginairy.models.cache import ModelCache
from imaginairy.models.lora import applied_loras
from imaginairy.models.runtime import load_model
from imaginairy.models.weights import load_state_dict, save_state_dict

LATENT_TOLERANCE = {"atol": 2e-3, "rtol": 0}
STEPS = 4


@pytest.fixture(scope="module")
def sd15(tiny_models):
    prompt = ImaginePrompt("a red apple", model=str(tiny_models["tiny-sd15"]), precision="full")
    return load_model(prompt, "cpu", ModelCache(max_bytes=2**30))


def our_latent(model, weights_path, loras):
    prompt = ImaginePrompt("a red apple", negative_prompt="blurry", model=str(weights_path), steps=STEPS, seed=7,
                           sampler_type="k_euler", precision="full")
    prompt = pipeline.resolve_size(prompt, model)
    with applied_loras(model, loras), torch.inference_mode():
        cond = pipeline.weighted_text_embedding(model, prompt.prompts)
        uncond = pipeline.weighted_text_embedding(model, prompt.negative_prompts)
        latent = pipeline.generate_latent(prompt, model)
    noise = pipeline.initial_noise(torch.Generator().manual_seed(prompt.seed), prompt.width, prompt.height)
    return prompt, cond, uncond, noise, latent


def unet_part(path):
    """The file's UNet layers only: the diffusers pipeline has no text encoder (it gets our prompt embeddings)."""
    return {k: v for k, v in load_state_dict(path).items() if not k.startswith(("lora_te", "text_encoder."))}


def reference_latent(weights_path, loras, prompt, cond, uncond, noise, fuse):
    scheduler, call = scheduler_and_call("k_euler", STEPS)
    reference = diffusers_pipeline(StableDiffusionPipeline, weights_path, scheduler)
    names = [f"lora{i}" for i in range(len(loras))]
    for name, (path, _weight) in zip(names, loras):
        reference.load_lora_weights(unet_part(path), adapter_name=name)
    reference.set_adapters(names, adapter_weights=[weight for _path, weight in loras])
    if fuse:
        reference.fuse_lora(adapter_names=names)
    with torch.inference_mode():
        return reference(prompt_embeds=cond, negative_prompt_embeds=uncond, latents=noise.clone(),
                         guidance_scale=prompt.prompt_strength, height=prompt.height, width=prompt.width,
                         output_type="latent", **call).images


@pytest.mark.parametrize(
    ("lora_names", "weights", "fuse"),
    [(["kohya-sd15"], [1.0], True), (["kohya-sd15"], [0.5], False), (["peft-sd15"], [0.5], True),
     (["peft-sd15"], [1.0], False), (["kohya-sd15", "peft-sd15"], [0.5, 1.0], False),
     (["kohya-sd15", "kohya-sd15-b"], [1.0, 0.5], True)],
    ids=["kohya-1.0-fused", "kohya-0.5", "peft-0.5-fused", "peft-1.0", "kohya+peft", "two-kohya-fused"],
)
def test_lora_matches_diffusers(tiny_models, tiny_loras, sd15, lora_names, weights, fuse):
    weights_path = tiny_models["tiny-sd15"]
    loras = [(tiny_loras[name], weight) for name, weight in zip(lora_names, weights)]
    prompt, cond, uncond, noise, latent = our_latent(sd15, weights_path, loras)
    _, _, _, _, plain_latent = our_latent(sd15, weights_path, [])
    expected = reference_latent(weights_path, loras, prompt, cond, uncond, noise, fuse)
    print(f"max |latent difference| {(latent - expected).abs().max():.2e}, "
          f"LoRA effect {(latent - plain_latent).abs().max():.2e}")
    torch.testing.assert_close(latent, expected, **LATENT_TOLERANCE)
    assert (latent - plain_latent).abs().max() > 0.05  # the LoRA changes the image far beyond the tolerance


def test_state_dict_and_image_bit_identical_after_loras(tiny_models, tiny_loras, sd15):
    before = {name: tensor.clone() for name, tensor in sd15.state_dict().items()}
    _, _, _, _, plain_latent = our_latent(sd15, tiny_models["tiny-sd15"], [])
    _, _, _, _, lora_latent = our_latent(sd15, tiny_models["tiny-sd15"],
                                         [(tiny_loras["kohya-sd15"], 1.0), (tiny_loras["peft-sd15"], -0.7)])
    after = sd15.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
    _, _, _, _, again = our_latent(sd15, tiny_models["tiny-sd15"], [])
    assert torch.equal(again, plain_latent)
    assert not torch.equal(lora_latent, plain_latent)
    # and equal to a fresh load of the file (a fresh process)
    fresh = load_model(ImaginePrompt("x", model=str(tiny_models["tiny-sd15"]), precision="full"), "cpu",
                       ModelCache(max_bytes=2**30))
    assert all(torch.equal(fresh.state_dict()[name], after[name]) for name in after)


def test_text_encoder_layers_merged_by_the_formula(tiny_loras, sd15):
    """W + weight * (alpha / rank) * up @ down on exactly the named Hugging Face CLIP layers (kohya lora_te_ names)."""
    lora = load_state_dict(tiny_loras["kohya-sd15"])
    layer = sd15.cond_stage_model.transformer.text_model.encoder.layers[1].mlp.fc1
    name = "lora_te_text_model_encoder_layers_1_mlp_fc1"
    down, up, alpha = lora[f"{name}.lora_down.weight"], lora[f"{name}.lora_up.weight"], lora[f"{name}.alpha"]
    original = layer.weight.clone()
    untouched = sd15.cond_stage_model.transformer.text_model.encoder.layers[0].mlp.fc1.weight.clone()
    with applied_loras(sd15, [(tiny_loras["kohya-sd15"], 0.8)]):
        expected = original + 0.8 * (alpha / down.shape[0]) * up @ down
        torch.testing.assert_close(layer.weight, expected, atol=1e-6, rtol=0)
        assert torch.equal(sd15.cond_stage_model.transformer.text_model.encoder.layers[0].mlp.fc1.weight, untouched)


def test_openclip_text_encoder_rows(tiny_models, tiny_loras):
    """SD 2.x: a k_proj LoRA layer changes only the k rows of OpenCLIP's fused in_proj_weight."""
    model = load_model(ImaginePrompt("x", model=str(tiny_models["tiny-sd21-v"]), precision="full"), "cpu",
                       ModelCache(max_bytes=2**30))
    lora = load_state_dict(tiny_loras["kohya-sd21"])
    name = "lora_te_text_model_encoder_layers_1_self_attn_k_proj"
    update = lora[f"{name}.alpha"] / 4 * lora[f"{name}.lora_up.weight"] @ lora[f"{name}.lora_down.weight"]
    attention = model.cond_stage_model.model.transformer.resblocks[1].attn
    original = attention.in_proj_weight.clone()
    with applied_loras(model, [(tiny_loras["kohya-sd21"], 1.0)]):
        expected = original.clone()
        expected[32:64] += update
        torch.testing.assert_close(attention.in_proj_weight, expected, atol=1e-6, rtol=0)
    assert torch.equal(attention.in_proj_weight, original)


def test_old_diffusers_names_merge_like_peft(tmp_path, tiny_loras, sd15):
    """`.lora.down/.lora.up` and the attention-processor `to_q_lora.down` names are the same layers as PEFT's."""
    peft = load_state_dict(tiny_loras["peft-sd15"])
    old = {}
    for key, tensor in peft.items():
        key = key.replace(".lora_A.weight", ".lora.down.weight").replace(".lora_B.weight", ".lora.up.weight")
        if ".attn2.to_v." in key:  # the processor form for one layer
            key = key.replace(".attn2.to_v.lora.", ".attn2.processor.to_v_lora.")
        old[key] = tensor
    save_state_dict(old, tmp_path / "old.safetensors")
    with applied_loras(sd15, [(tiny_loras["peft-sd15"], 1.0)]):
        merged_peft = {k: v.clone() for k, v in sd15.state_dict().items()}
    with applied_loras(sd15, [(tmp_path / "old.safetensors", 1.0)]):
        assert all(torch.equal(v, merged_peft[k]) for k, v in sd15.state_dict().items())


@pytest.mark.parametrize(("lora_name", "theirs"), [("kohya-sd21", "SD 2.x"), ("kohya-sdxl", "SDXL")])
def test_lora_for_another_architecture_is_refused(tiny_loras, sd15, lora_name, theirs):
    with pytest.raises(IncompatibleModelError, match=f"made for {theirs} models; the model in use is SD 1.x"):
        with applied_loras(sd15, [(tiny_loras[lora_name], 1.0)]):
            pass


def test_sd15_lora_on_sd21_is_refused(tiny_models, tiny_loras):
    model = load_model(ImaginePrompt("x", model=str(tiny_models["tiny-sd21-v"]), precision="full"), "cpu",
                       ModelCache(max_bytes=2**30))
    with pytest.raises(IncompatibleModelError, match="made for SD 1.x models; the model in use is SD 2.x"):
        with applied_loras(model, [(tiny_loras["kohya-sd15"], 1.0)]):
            pass


def test_bad_lora_files(tmp_path, sd15, tiny_loras):
    empty = tmp_path / "empty.safetensors"
    save_state_dict({}, empty)
    with pytest.raises(ModelLoadError, match="holds no tensors"):
        with applied_loras(sd15, [(empty, 1.0)]):
            pass
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(tiny_loras["kohya-sd15"].read_bytes()[:300])
    with pytest.raises(ModelLoadError, match="not a valid safetensors file"):
        with applied_loras(sd15, [(corrupt, 1.0)]):
            pass
    checkpoint = tmp_path / "not-a-lora.safetensors"
    save_state_dict({"model.diffusion_model.out.2.weight": torch.zeros(1)}, checkpoint)
    with pytest.raises(ModelLoadError, match="is not a LoRA file"):
        with applied_loras(sd15, [(checkpoint, 1.0)]):
            pass
    unknown_layer = tmp_path / "unknown-layer.safetensors"
    save_state_dict({"lora_unet_nonexistent_layer.lora_down.weight": torch.zeros(4, 32),
                     "lora_unet_nonexistent_layer.lora_up.weight": torch.zeros(32, 4)}, unknown_layer)
    with pytest.raises(IncompatibleModelError, match="does not have, e.g. lora_unet_nonexistent_layer"):
        with applied_loras(sd15, [(unknown_layer, 1.0)]):
            pass
    wrong_rank = tmp_path / "wrong-shape.safetensors"
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    save_state_dict({f"{name}.lora_down.weight": torch.zeros(4, 48), f"{name}.lora_up.weight": torch.zeros(32, 4)},
                    wrong_rank)
    with pytest.raises(IncompatibleModelError, match=r"has shape \(32, 48\), the model's has \(32, 32\)"):
        with applied_loras(sd15, [(wrong_rank, 1.0)]):
            pass
    oft = tmp_path / "oft.safetensors"
    save_state_dict({f"{name}.oft_blocks": torch.zeros(4, 8, 8)}, oft)
    with pytest.raises(IncompatibleModelError, match="is a OFT network"):
        with applied_loras(sd15, [(oft, 1.0)]):
            pass


LYCORIS_LAYERS = {"lin": "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
                  "conv": "lora_unet_down_blocks_0_resnets_0_conv1"}  # fmt: skip


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_lycoris_loha_and_lokr_merge_as_peft_does(tmp_path, sd15, kind):
    """PEFT's LoHa / LoKr layers (an independent implementation of the LyCORIS formulas), on copies of two of our
    layers (a linear and a 3x3 convolution), merged by PEFT; the same tensors in a LyCORIS file merged by us."""
    from peft import LoHaConfig, LoKrConfig, get_peft_model
    from torch import nn

    to_q = sd15.unet.input_blocks[1][1].transformer_blocks[0].attn1.to_q
    conv1 = sd15.unet.input_blocks[1][0].in_layers[2]

    class Layers(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(32, 32, bias=False)
            self.conv = nn.Conv2d(32, 32, 3, padding=1)

    layers = Layers()
    with torch.no_grad():
        layers.lin.weight.copy_(to_q.weight)
        layers.conv.weight.copy_(conv1.weight)
    alpha = 3.0
    config = (LoHaConfig(r=2, alpha=alpha, target_modules=["lin", "conv"]) if kind == "loha" else
              LoKrConfig(r=2, alpha=alpha, decompose_both=True, decompose_factor=8, target_modules=["lin", "conv"]))
    wrapped = get_peft_model(layers, config)
    generator = torch.Generator().manual_seed(9)
    state_dict = {}
    for name, param in wrapped.named_parameters():
        if "base_layer" in name:
            continue
        with torch.no_grad():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
        layer, tensor_name = name.split(".")[2], name.split(".")[3]
        state_dict[f"{LYCORIS_LAYERS[layer]}.{tensor_name}"] = param.detach().clone()
    for layer in LYCORIS_LAYERS.values():
        state_dict[f"{layer}.alpha"] = torch.tensor(alpha)
    merged = wrapped.merge_and_unload()
    save_state_dict(state_dict, tmp_path / f"{kind}.safetensors")
    with applied_loras(sd15, [(tmp_path / f"{kind}.safetensors", 1.0)]):
        torch.testing.assert_close(to_q.weight, merged.lin.weight, atol=1e-5, rtol=0)
        torch.testing.assert_close(conv1.weight, merged.conv.weight, atol=1e-5, rtol=0)
    assert (merged.lin.weight - to_q.weight).abs().max() > 0.01  # (to_q restored) the update is real


@pytest.mark.parametrize("weight", [0.5, 1.0])
def test_text_encoder_lora_matches_diffusers(tiny_loras, sd15, weight):
    """diffusers' `load_lora_into_text_encoder` on a copy of our (Hugging Face) CLIP text model, from the same kohya
    file: the prompt embeddings agree to float tolerance."""
    import copy

    from diffusers.utils import scale_lora_layers

    from imaginairy.modules.tokenizer import tokenize

    path = tiny_loras["kohya-sd15"]
    text_model = copy.deepcopy(sd15.cond_stage_model.transformer.text_model)
    state_dict, alphas = StableDiffusionPipeline.lora_state_dict(str(path))
    StableDiffusionPipeline.load_lora_into_text_encoder(state_dict, alphas, text_model, prefix="text_encoder")
    scale_lora_layers(text_model, weight)  # what diffusers' encode_prompt does with a lora_scale
    token_ids = tokenize(["a red apple"], pad_token=sd15.cond_stage_model.pad_token, max_length=77)
    with torch.inference_mode():
        expected = text_model(input_ids=token_ids).last_hidden_state
        plain = sd15.cond_stage_model(["a red apple"])
    with applied_loras(sd15, [(path, weight)]), torch.inference_mode():
        ours = sd15.cond_stage_model(["a red apple"])
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    assert (ours - plain).abs().max() > 0.1


def test_sd1_lora_with_te1_names_merges_like_te(tmp_path, tiny_loras, sd15):
    """Some SD 1 LoRAs call their one text encoder `lora_te1_` (A1111 falls back to the SD 1 encoder for them)."""
    kohya = load_state_dict(tiny_loras["kohya-sd15"])
    renamed = {k.replace("lora_te_", "lora_te1_"): v for k, v in kohya.items()}
    save_state_dict(renamed, tmp_path / "te1.safetensors")
    with applied_loras(sd15, [(tiny_loras["kohya-sd15"], 1.0)]):
        expected = {k: v.clone() for k, v in sd15.state_dict().items()}
    with applied_loras(sd15, [(tmp_path / "te1.safetensors", 1.0)]):
        assert all(torch.equal(v, expected[k]) for k, v in sd15.state_dict().items())


def test_lora_pt_with_code_does_not_run_it(tmp_path, sd15):
    """A pickled LoRA whose unpickling would create a file: refused as needing code, and the file never appears."""
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(1), "trap": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ModelLoadError, match="it needs code to load"):
        with applied_loras(sd15, [(tmp_path / "evil.pt", 1.0)]):
            pass
    assert not marker.exists()


def test_half_precision_model_merges_in_float32_and_restores(tiny_models, tiny_loras):
    model = load_model(ImaginePrompt("x", model=str(tiny_models["tiny-sd15"]), precision="bf16"), "cpu",
                       ModelCache(max_bytes=2**30))
    conv = model.unet.input_blocks[1][0].in_layers[2]  # a 3x3 kernel, channels-last
    original = conv.weight
    lora = load_state_dict(tiny_loras["kohya-sd15"])
    name = "lora_unet_down_blocks_0_resnets_0_conv1"
    down, up = lora[f"{name}.lora_down.weight"], lora[f"{name}.lora_up.weight"]
    update = (lora[f"{name}.alpha"] / 4 * up.flatten(1) @ down.flatten(1)).reshape(original.shape)
    with applied_loras(model, [(tiny_loras["kohya-sd15"], 1.0)]):
        assert conv.weight.dtype == torch.bfloat16
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        expected = (original.float() + update).bfloat16()  # rounded once; sums in other orders may differ by 1 ulp
        torch.testing.assert_close(conv.weight.float(), expected.float(), atol=0, rtol=2**-7)
        assert (conv.weight.float() - original.float()).abs().max() > 0.05
    assert conv.weight is original
