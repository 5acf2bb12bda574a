"""LoRA and LyCORIS files merged into a loaded model's weights for one generation, and taken out again exactly.

A LoRA stores, for some of the model's linear and convolution layers, a low-rank update `up @ down` (rank r) and
optionally `alpha`; the layer's weight becomes `W + weight * (alpha / r) * up @ down` (no alpha: alpha = r). Merging
it into W keeps the UNet step exactly as expensive as without the LoRA. The original weight tensors are kept (not
copied: the parameter objects themselves), so taking the LoRAs out puts back the very same tensors, and the next
prompt without LoRAs computes bit for bit what a fresh process computes.

Key layouts read (facts from diffusers' `loaders/lora_conversion_utils.py` and AUTOMATIC1111's
`extensions-builtin/Lora/networks.py`, `lora_convert.py`, `network_lora.py`, `network_hada.py`, `network_lokr.py`):

- kohya / A1111: `lora_unet_<diffusers module path with "_" for ".">.lora_down.weight` / `.lora_up.weight` /
  `.alpha` (also the sgm/CompVis spelling `lora_unet_input_blocks_1_1_...` that kohya writes for SDXL), text encoder
  `lora_te_text_model_encoder_layers_0_self_attn_q_proj...` (`lora_te1_` / `lora_te2_`: the two SDXL encoders; SD 2's
  OpenCLIP encoder is addressed by the same CLIP names: q/k/v_proj = rows of `attn.in_proj_weight`, mlp_fc1/fc2 =
  `mlp.c_fc` / `mlp.c_proj`);
  convolution LoRAs (LoCon) have 4-d `lora_down` (k x k) and `lora_up` (1 x 1), optionally a Tucker `lora_mid`.
- LyCORIS LoHa (`hada_w1_a`, `hada_w1_b`, `hada_w2_a`, `hada_w2_b`): update (w1_a @ w1_b) * (w2_a @ w2_b), r =
  w1_b rows; LoKr (`lokr_w1` or `lokr_w1_a`/`_b`, `lokr_w2` or `lokr_w2_a`/`_b`): update kron(w1, w2), r = the
  rows of the decomposed factor's b (scale 1 when neither factor is decomposed).
- diffusers / PEFT: `unet.<diffusers module path>.lora_A.weight` / `.lora_B.weight`, `text_encoder.<path>...`, and
  the older diffusers names `.lora.down.weight` / `.lora.up.weight`, `.lora_linear_layer.down/up` and the attention
  processor form `attn1.processor.to_q_lora.down.weight`.

Our modules follow the CompVis checkpoint layout; `diffusers_unet_module_names` maps them to diffusers' names by
walking the UNet's blocks (diffusers' `convert_ldm_unet_checkpoint` is the same mapping in the other direction).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from imaginairy.errors import IncompatibleModelError, ModelLoadError
from imaginairy.models.weights import load_state_dict

logger = logging.getLogger(__name__)

# suffixes of one layer's tensors, by the name we give them; the longest suffixes first
LORA_SUFFIXES = {
    ".lora_down.weight": "down", ".lora_up.weight": "up", ".lora_mid.weight": "mid",
    ".lora_linear_layer.down.weight": "down", ".lora_linear_layer.up.weight": "up",
    ".lora.down.weight": "down", ".lora.up.weight": "up",
    ".lora_A.weight": "down", ".lora_B.weight": "up",
    "_lora.down.weight": "down", "_lora.up.weight": "up",
    ".hada_w1_a": "hada_w1_a", ".hada_w1_b": "hada_w1_b", ".hada_w2_a": "hada_w2_a", ".hada_w2_b": "hada_w2_b",
    ".hada_t1": "hada_t1", ".hada_t2": "hada_t2",
    ".lokr_w1": "lokr_w1", ".lokr_w1_a": "lokr_w1_a", ".lokr_w1_b": "lokr_w1_b",
    ".lokr_w2": "lokr_w2", ".lokr_w2_a": "lokr_w2_a", ".lokr_w2_b": "lokr_w2_b", ".lokr_t2": "lokr_t2",
    ".alpha": "alpha",
}  # fmt: skip
# LyCORIS / A1111 network kinds we do not merge, by a tensor suffix that marks them
UNSUPPORTED_KINDS = {
    ".diff": "LyCORIS full-weight difference", ".w_norm": "LyCORIS norm", ".oft_blocks": "OFT",
    ".oft_diag": "OFT", ".on_input": "IA3", ".a1.weight": "GLoRA", ".hada_t1": "LoHa with Tucker factors",
    ".lokr_t2": "LoKr with a Tucker factor", ".dora_scale": "DoRA", ".lora_magnitude_vector": "DoRA",
}  # fmt: skip
# the cross-attention context width of each family, seen in the key/value projections' inputs
CONTEXT_DIM_ARCHITECTURES = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}
# `lora_te1_` alone is no proof of SDXL: some SD 1 LoRAs name their one text encoder so (A1111's lora_convert.py
# falls back to the SD 1 encoder for them); a second encoder is
SDXL_PREFIXES = ("lora_te2_", "text_encoder_2.")


@dataclass(frozen=True)
class Target:
    """Where a LoRA layer goes: a parameter of one of our modules, or (OpenCLIP's fused q/k/v projection) rows of it."""

    module: nn.Module
    param_name: str
    rows: slice | None = None

    @property
    def shape(self) -> torch.Size:
        weight = getattr(self.module, self.param_name)
        return weight.shape if self.rows is None else weight[self.rows].shape


def model_architecture(model: nn.Module) -> str:
    """The family a loaded model belongs to, as it is called in LoRA files' descriptions."""
    encoder = type(model.cond_stage_model).__name__
    return {"CLIPTextEncoder": "SD 1.x", "OpenCLIPTextEncoder": "SD 2.x"}.get(encoder, encoder)


def lora_architecture(layers: dict[str, dict[str, torch.Tensor]]) -> str | None:
    """The family a LoRA was made for, from its layer names and shapes (None when they do not tell).

    SDXL files name two text encoders; otherwise the width of a cross-attention key projection's input is the
    context width (768 SD 1.x, 1024 SD 2.x, 2048 SDXL); else SD 1.x's transformers project in with 1x1
    convolutions, SD 2.x's with linear layers.
    """
    if any(name.startswith(SDXL_PREFIXES) for name in layers):
        return "SDXL"
    for name, tensors in layers.items():
        down = tensors.get("down")
        if down is not None and re.search(r"attn2[._](processor[._])?to[._]k", name):
            if down.shape[1] in CONTEXT_DIM_ARCHITECTURES:
                return CONTEXT_DIM_ARCHITECTURES[down.shape[1]]
    for name, tensors in layers.items():
        down = tensors.get("down")
        if down is not None and re.search(r"proj[._]in$", name):
            return "SD 1.x" if down.ndim == 4 else "SD 2.x"
    return None


def read_lora_layers(path: str | os.PathLike) -> dict[str, dict[str, torch.Tensor]]:
    """The file's tensors grouped by layer: {layer name as in the file: {"down"/"up"/"alpha"/"hada_w1_a"...: t}}."""
    path = Path(path)
    state_dict = load_state_dict(path)
    if not state_dict:
        raise ModelLoadError(f"LoRA file {path} holds no tensors; it is empty or not a LoRA")
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        for suffix, kind in UNSUPPORTED_KINDS.items():
            if key.endswith(suffix):
                raise IncompatibleModelError(
                    f"{path.name} is a {kind} network ({key}), which imaginairy does not merge; "
                    "use a LoRA, LoCon, LoHa or LoKr file"
                )
        suffix = next((s for s in LORA_SUFFIXES if key.endswith(s)), None)
        if suffix is None:
            raise ModelLoadError(f"{path.name} is not a LoRA file: tensor {key!r} is not part of a LoRA layer")
        layer = _common_layer_name(key[: -len(suffix)])
        layers.setdefault(layer, {})[LORA_SUFFIXES[suffix]] = tensor
    return layers


def _common_layer_name(name: str) -> str:
    """A diffusers layer name in today's spelling: the attention-processor form (`attn1.processor.to_q`,
    `to_out` for `to_out.0`; `self_attn.to_q` for the text encoder's `q_proj`) and PEFT's wrapper prefix undone."""
    name = name.removeprefix("base_model.model.")
    if ".processor." in name:
        name = re.sub(r"\.to_out$", ".to_out.0", name.replace(".processor.", "."))
    if name.startswith("text_encoder"):
        name = re.sub(r"self_attn\.to_(q|k|v)$", r"self_attn.\1_proj", name)
        name = re.sub(r"self_attn\.to_out$", "self_attn.out_proj", name)
    return name


def lora_targets(model: nn.Module) -> dict[str, Target]:
    """Every name a LoRA file may give one of the model's layers -> that layer's weight."""
    targets: dict[str, Target] = {}
    for compvis_name, diffusers_name in diffusers_unet_module_names(model.unet).items():
        module = model.unet.get_submodule(compvis_name)
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        target = Target(module, "weight")
        for name in (diffusers_name, compvis_name):
            targets[f"unet.{name}"] = target
            targets["lora_unet_" + name.replace(".", "_")] = target
    encoder = model.cond_stage_model
    if hasattr(encoder, "transformer"):  # CLIP (SD 1.x): the Hugging Face names are the LoRA files' names
        for name, module in encoder.transformer.named_modules():
            if isinstance(module, nn.Linear):
                _add_text_encoder_target(targets, name, Target(module, "weight"))
    else:  # OpenCLIP (SD 2.x): LoRA files use the Hugging Face CLIP names, q/k/v are rows of in_proj_weight
        for index, block in enumerate(encoder.model.transformer.resblocks):
            layer = f"text_model.encoder.layers.{index}"
            width = block.attn.embed_dim
            for row, projection in enumerate(("q_proj", "k_proj", "v_proj")):
                rows = slice(row * width, (row + 1) * width)
                target = Target(block.attn, "in_proj_weight", rows)
                _add_text_encoder_target(targets, f"{layer}.self_attn.{projection}", target)
            _add_text_encoder_target(targets, f"{layer}.self_attn.out_proj", Target(block.attn.out_proj, "weight"))
            _add_text_encoder_target(targets, f"{layer}.mlp.fc1", Target(block.mlp.c_fc, "weight"))
            _add_text_encoder_target(targets, f"{layer}.mlp.fc2", Target(block.mlp.c_proj, "weight"))
    return targets


def _add_text_encoder_target(targets: dict[str, Target], hf_name: str, target: Target) -> None:
    targets[f"text_encoder.{hf_name}"] = target
    for prefix in ("lora_te_", "lora_te1_"):
        targets[prefix + hf_name.replace(".", "_")] = target


def diffusers_unet_module_names(unet: nn.Module) -> dict[str, str]:
    """{our (CompVis) module path: diffusers' module path} for every submodule of the UNet.

    Blocks: input_blocks.0.0 = conv_in; then per level, for each res block, input_blocks.n.0 = down_blocks.L.resnets.j
    and input_blocks.n.1 = down_blocks.L.attentions.j, and a Downsample block = down_blocks.L.downsamplers.0; the
    middle block's layers are mid_block.resnets.0, attentions.0, resnets.1; output blocks likewise with up_blocks,
    the Upsample = up_blocks.L.upsamplers.0. Inside: ResBlock in_layers.0/2, emb_layers.1, out_layers.0/3,
    skip_connection = norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut; op / conv of the samplers = conv;
    transformers keep their names. time_embed.0/2 = time_embedding.linear_1/2, out.0/2 = conv_norm_out / conv_out.
    """
    from imaginairy.modules.unet import Downsample, ResBlock, Upsample

    blocks = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
              "out.0": "conv_norm_out", "out.2": "conv_out", "input_blocks.0.0": "conv_in"}  # fmt: skip

    def add_block(compvis: str, block: nn.Module, level_name: str, index: int) -> None:
        for position, layer in enumerate(block):
            if isinstance(layer, ResBlock):
                blocks[f"{compvis}.{position}"] = f"{level_name}.resnets.{index}"
            elif isinstance(layer, (Downsample, Upsample)):
                kind = "downsamplers" if isinstance(layer, Downsample) else "upsamplers"
                blocks[f"{compvis}.{position}"] = f"{level_name}.{kind}.0"
            else:
                blocks[f"{compvis}.{position}"] = f"{level_name}.attentions.{index}"

    level, index = 0, 0
    for number, block in enumerate(unet.input_blocks[1:], start=1):
        if isinstance(block[0], Downsample):
            add_block(f"input_blocks.{number}", block, f"down_blocks.{level}", 0)
            level, index = level + 1, 0
        else:
            add_block(f"input_blocks.{number}", block, f"down_blocks.{level}", index)
            index += 1
    for position, layer in enumerate(unet.middle_block):
        kind = "resnets" if isinstance(layer, ResBlock) else "attentions"
        blocks[f"middle_block.{position}"] = f"mid_block.{kind}.{(position // 2) if kind == 'resnets' else 0}"
    level, index = 0, 0
    for number, block in enumerate(unet.output_blocks):
        add_block(f"output_blocks.{number}", block, f"up_blocks.{level}", index)
        index += 1
        if isinstance(block[-1], Upsample):
            level, index = level + 1, 0

    resblock_parts = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                      "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut",
                      "op": "conv"}  # fmt: skip
    names = {}
    for compvis_name, _module in unet.named_modules():
        block = next((b for b in sorted(blocks, key=len, reverse=True)
                      if compvis_name == b or compvis_name.startswith(b + ".")), None)  # fmt: skip
        if block is None:
            continue
        rest = compvis_name[len(block) + 1 :]
        names[compvis_name] = ".".join(filter(None, (blocks[block], resblock_parts.get(rest, rest))))
    return names


def layer_update(
    name: str, tensors: dict[str, torch.Tensor], target_shape: torch.Size, source: str, multiplier: float = 1.0
) -> torch.Tensor:
    """The float32 update of one layer's weight: multiplier * (alpha / rank) * the product the file stores."""
    factors = low_rank_factors(tensors, multiplier)
    if factors is not None:
        up, down = factors
        _check_factors(up, down, target_shape, name, source)
        return (up @ down).reshape(target_shape)
    t = {kind: tensor.float() for kind, tensor in tensors.items()}
    if "down" in t and "up" in t and "mid" in t:  # Tucker LoCon: up (1x1) . mid (k x k, rank -> rank) . down (1x1)
        rank = t["down"].shape[0]
        product = torch.einsum("ijkl,jr,pi->prkl", t["mid"], t["down"].flatten(1), t["up"].flatten(1))
    elif "hada_w1_a" in t:
        rank = t["hada_w1_b"].shape[0]
        product = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])
    elif "lokr_w1" in t or "lokr_w1_a" in t:
        w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
        w2 = t["lokr_w2"] if "lokr_w2" in t else t["lokr_w2_a"] @ t["lokr_w2_b"]
        rank = t["lokr_w1_b"].shape[0] if "lokr_w1_b" in t else t["lokr_w2_b"].shape[0] if "lokr_w2_b" in t else None
        if len(target_shape) == 4 and w2.ndim == 2:
            w2 = w2.reshape(-1, target_shape[1] // w1.shape[1], *target_shape[2:])
        product = torch.kron(w1.reshape(*w1.shape, *([1] * (w2.ndim - 2))), w2)
        if rank is None:
            t.pop("alpha", None)
            rank = 1
    else:
        raise ModelLoadError(f"{source}: layer {name} has only {', '.join(sorted(t))}; the file is incomplete")
    _check_size(product, target_shape, name, source)
    scale = multiplier * (t["alpha"].item() / rank if "alpha" in t else 1.0)
    return product.reshape(target_shape) * scale


def low_rank_factors(tensors: dict[str, torch.Tensor], multiplier: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A plain LoRA / LoCon layer's update as (multiplier * alpha / rank * up [out, r], down [r, in * k * k]) in
    float32, the scale put on the small factor; None for the other kinds."""
    if "down" not in tensors or "up" not in tensors or "mid" in tensors:
        return None
    down = tensors["down"].float().flatten(1)
    alpha = tensors["alpha"].item() if "alpha" in tensors else down.shape[0]
    return tensors["up"].float().flatten(1) * (multiplier * alpha / down.shape[0]), down


def merged_weight(original: torch.Tensor, entries: list) -> torch.Tensor:
    """A new tensor, laid out like `original` (channels-last kernels stay so): original + every entry's update.

    A plain low-rank update is added by one matrix product into the new tensor's memory (BLAS `addmm`: the original
    read once, the result written once, no update tensor); other kinds add their computed update. Half-precision
    weights are merged in float32 and rounded once.
    """
    base = original if original.dtype == torch.float32 else original.float()
    layout = torch.channels_last if _is_channels_last_kernel(original) else torch.contiguous_format
    new = torch.empty_like(base, memory_format=layout)  # so that _matrix_view(new) is a view
    started = False
    for target, name, tensors, weight, source in entries:
        factors = low_rank_factors(tensors, weight) if target.rows is None else None
        if factors is not None:
            up, down = (factor.to(base.device) for factor in factors)
            _check_factors(up, down, target.shape, name, source)
            down = _in_memory_order(down, base)
            if started:
                _matrix_view(new).addmm_(up, down)
            else:
                torch.addmm(_matrix_view(base), up, down, out=_matrix_view(new))
            started = True
            continue
        update = layer_update(name, tensors, target.shape, source, weight).to(base.device)
        if not started:
            new.copy_(base)
            started = True
        (new if target.rows is None else new[target.rows]).add_(update)
    return new if original.dtype == torch.float32 else new.to(original.dtype)


def _is_channels_last_kernel(t: torch.Tensor) -> bool:
    return t.ndim == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _matrix_view(t: torch.Tensor) -> torch.Tensor:
    """A weight's memory as an [out, everything else] matrix, in the order it is stored (no copy)."""
    return (t.permute(0, 2, 3, 1) if _is_channels_last_kernel(t) else t).reshape(t.shape[0], -1)


def _in_memory_order(down: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The down factor [r, *kernel shape] as a matrix whose columns follow `like`'s memory order."""
    if _is_channels_last_kernel(like):
        down = down.reshape(down.shape[0], *like.shape[1:]).permute(0, 2, 3, 1)
    return down.reshape(down.shape[0], -1)


def _check_factors(up: torch.Tensor, down: torch.Tensor, target_shape: torch.Size, name: str, source: str) -> None:
    if (up.shape[0], down.shape[1]) != (target_shape[0], target_shape.numel() // target_shape[0]):
        raise IncompatibleModelError(
            f"{source}: layer {name} has shape {(up.shape[0], down.shape[1])}, the model's has {tuple(target_shape)}"
        )


def _check_size(product: torch.Tensor, target_shape: torch.Size, name: str, source: str) -> None:
    if product.numel() != target_shape.numel():
        raise IncompatibleModelError(
            f"{source}: layer {name} has shape {tuple(product.shape)}, the model's has {tuple(target_shape)}"
        )


def lora_layers_for_model(model: nn.Module, path: str | os.PathLike) -> list[tuple[Target, str, dict]]:
    """The layers of one LoRA file with their targets in `model`: [(target, layer name, tensors)]. Raises
    IncompatibleModelError, naming both architectures, for a LoRA made for another family, and for layers the model
    does not have."""
    path = Path(path)
    layers = read_lora_layers(path)
    ours, theirs = model_architecture(model), lora_architecture(layers)
    if theirs is not None and theirs != ours:
        raise IncompatibleModelError(f"LoRA {path.name} is made for {theirs} models; the model in use is {ours}")
    targets = lora_targets(model)
    missing = [name for name in layers if name not in targets]
    if missing:
        raise IncompatibleModelError(
            f"LoRA {path.name} changes {len(missing)} layers the model ({ours}) does not have, e.g. {missing[0]};"
            f" it is made for {theirs or 'another architecture'}"
        )
    return [(targets[name], name, tensors) for name, tensors in layers.items()]


@contextlib.contextmanager
def applied_loras(model: nn.Module, loras: Iterable[tuple[str | os.PathLike, float]]) -> Iterator[None]:
    """Runs the block with each (LoRA file, weight) merged into `model`'s weights; afterwards the model holds its
    original parameter objects again (bit-identical, nothing re-read). Several LoRAs add up.

    One parameter at a time (`merged_weight`), so memory grows by the touched layers' size and no more.
    """
    loras = list(loras)
    if not loras:
        yield
        return
    plan: dict[tuple[int, str], list] = {}
    for path, weight in loras:
        source = f"LoRA {Path(path).name}"
        for target, name, tensors in lora_layers_for_model(model, path):
            plan.setdefault((id(target.module), target.param_name), []).append((target, name, tensors, weight, source))
    ours = model_architecture(model)
    originals = []
    try:
        for entries in plan.values():
            module, param_name = entries[0][0].module, entries[0][0].param_name
            original = getattr(module, param_name)
            try:
                new = merged_weight(original, entries)
            except IncompatibleModelError as error:
                raise IncompatibleModelError(f"{error}: it is not made for {ours} models like this one") from error
            originals.append((module, param_name, original))
            setattr(module, param_name, nn.Parameter(new, requires_grad=False))
        logger.info("merged %d LoRA(s) into %d layers", len(loras), len(originals))
        yield
    finally:
        for module, param_name, original in reversed(originals):
            setattr(module, param_name, original)
