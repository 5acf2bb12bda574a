"""Runtime policy: how and where a prompt's networks run. Precision ("auto" made concrete, the weights' dtype),
device placement, and the memory modes, each decided here and nowhere else.

Memory modes (`ImaginePrompt.memory_mode`): "high" keeps everything on the device; "mid" also makes precision
"auto" half precision on a GPU (fp16 where bf16 is not supported); "low" does that too, keeps the model on the CPU
and moves each submodel (text encoder, UNet, VAE) to the device only while it runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import TYPE_CHECKING

import torch

from imaginairy.utils.devices import resolve_precision

if TYPE_CHECKING:
    from imaginairy.models.cache import ModelCache
    from imaginairy.modules.diffusion import LatentDiffusion
    from imaginairy.schema import ImaginePrompt

PRECISION_DTYPES = {"full": torch.float32, "autocast": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def offloads(memory_mode: str) -> bool:
    """Whether the model waits on the CPU, each submodel moved to the device only while it runs (memory mode low)."""
    return memory_mode == "low"


def resolve_runtime_settings(prompt: ImaginePrompt, device) -> ImaginePrompt:
    """The prompt with precision "auto" made concrete for `device`; with memory modes "mid" and "low", "auto" is
    half precision on a GPU (fp16 where bf16 is not supported)."""
    precision = resolve_precision(prompt.precision, device)
    on_gpu = torch.device(device).type == "cuda"
    if on_gpu and prompt.memory_mode != "high" and prompt.precision == "auto" and precision == "full":
        precision = "fp16"
    return dataclasses.replace(prompt, precision=precision) if precision != prompt.precision else prompt


def load_model(prompt: ImaginePrompt, device, cache: ModelCache) -> LatentDiffusion:
    """The prompt's model from the cache (loaded on a miss), its weights in the dtype of the resolved precision;
    memory mode "low" keeps it on the CPU, the pipeline moving each submodel to `device` while it runs."""
    from imaginairy.models.loading import load_diffusion_model, resolve_checkpoint
    from imaginairy.models.registry import resolve_model

    spec = resolve_model(prompt.model, prompt.model_config)
    dtype = PRECISION_DTYPES[resolve_runtime_settings(prompt, device).precision]
    if offloads(prompt.memory_mode):
        device = "cpu"
    key = (spec.weights, str(spec.config_path), str(device), dtype, prompt.vae)
    # the weights file's size bounds the loaded model's (a float32 file loaded in 16 bits takes half)
    checkpoint = resolve_checkpoint(spec.weights)
    expected_bytes = sum(p.stat().st_size for p in checkpoint.rglob("*") if p.is_file()) if checkpoint.is_dir() \
        else checkpoint.stat().st_size  # fmt: skip
    return cache.get(key, lambda: load_diffusion_model(spec, device=device, dtype=dtype, vae=prompt.vae),
                     expected_bytes)


@contextlib.contextmanager
def submodel_on(submodel: torch.nn.Module, device: torch.device, memory_mode: str):
    """Runs the block with `submodel` on `device`; with memory mode "low" it is moved there for the block only and
    back to the CPU afterwards, so only the running submodel takes device memory."""
    if not offloads(memory_mode) or device.type == "cpu":
        yield
        return
    submodel.to(device)
    try:
        yield
    finally:
        submodel.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def model_dtype(model: LatentDiffusion) -> torch.dtype:
    return next(model.unet.parameters()).dtype


def precision_context(precision: str, device: torch.device):
    """`autocast` runs matmuls and convolutions in half precision on a float32 model; other modes need nothing."""
    if precision != "autocast":
        return contextlib.nullcontext()
    half = torch.bfloat16 if device.type == "cpu" else torch.float16
    return torch.autocast(device.type, dtype=half)


def unet_function(model: LatentDiffusion):
    """The UNet as the samplers call it, `(x, t, context, *, concat=None)`: float32 in and out, the model's own
    dtype inside. `concat` ([1, c, h, w], the same for every row) is appended to the latent's channels: the mask
    and masked-image latent of a 9-channel inpainting UNet.

    The latents go in channels-last (NHWC): every convolution then keeps that layout, which oneDNN and cuDNN run
    faster than NCHW, and the attention layers' [B, H*W, C] token views of it need no copy. The weights stay as
    loaded (a memory-mapped checkpoint is not copied).
    """
    dtype = model_dtype(model)

    def unet(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, concat: torch.Tensor | None = None):
        if concat is not None:
            x = torch.cat([x, concat.expand(x.shape[0], -1, -1, -1)], dim=1)
        x = x.to(dtype=dtype, memory_format=torch.channels_last)
        return model.unet(x, t, context.to(dtype)).float()

    return unet
