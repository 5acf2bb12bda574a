"""imagine() and imagine_image_files(): turn prompts into results and files."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from imaginairy.errors import DeviceOutOfMemoryError, ModelNotFoundError
from imaginairy.samplers.table import SELF_STEPPING_SAMPLERS
from imaginairy.schema import ImaginePrompt, ImagineResult
from imaginairy.settings import Settings

logger = logging.getLogger(__name__)

def imagine(
    prompts: ImaginePrompt | str | Iterable[ImaginePrompt | str],
    *,
    device=None,
    progress_callback=None,
    cancel_event: threading.Event | None = None,
    model_cache=None,
    settings: Settings | None = None,
    models_dir=None,
) -> Iterator[ImagineResult]:
    """Yield one ImagineResult per prompt, loading (and switching) models as the prompts name them.

    Names of checkpoints, LoRAs and VAEs are looked up in the models folder `models_dir` (default:
    `settings.models_dir`, $IMAGINAIRY_MODELS_DIR; see imaginairy.models.library).

    `progress_callback(step, total, latents)` is called after every sampler step; returning True stops the
    generation, as does setting `cancel_event`: either raises `imaginairy.errors.GenerationCancelled`.
    `settings` (device, safety mode, local model folders) are read from the environment when not given.
    """
    import torch

    from imaginairy.models.cache import shared_model_cache
    from imaginairy.models.library import models_dir as library_folder
    from imaginairy.models.lora import applied_loras
    from imaginairy.models.runtime import load_model, resolve_runtime_settings
    from imaginairy.pipeline import generate
    from imaginairy.utils.devices import as_device, default_device

    settings = settings if settings is not None else Settings.from_environment()
    # "" when the settings name no device: the best one present, without reading the environment again
    device = as_device(device) if device is not None else default_device(settings.device or "")
    cache = model_cache if model_cache is not None else shared_model_cache(device.type)
    folder = library_folder(models_dir or settings.models_dir)
    prompts = [resolve_library_names(prompt, folder) for prompt in normalize_prompts(prompts)]
    fetch_weights_first(prompts, settings)
    for prompt in prompts:
        prompt = resolve_runtime_settings(prompt, device)
        model = load_model(prompt, device, cache)
        logger.info("Generating 🖼 : %s", prompt_summary(size_to_generate(prompt, model)))
        try:
            with applied_loras(model, [(lora.path_or_name, lora.weight) for lora in prompt.loras]):
                result = generate(prompt, model, progress_callback=progress_callback, cancel_event=cancel_event,
                                  device=device, settings=settings)
        except torch.cuda.OutOfMemoryError as e:
            raise DeviceOutOfMemoryError(
                f"{device} ran out of memory generating {prompt.width}x{prompt.height}px: try a smaller size, "
                "--precision fp16 or --memory-mode low"
            ) from e
        result.metadata.update(resource_metadata(prompt))
        yield result


def imagine_image_files(
    prompts: ImaginePrompt | str | Iterable[ImaginePrompt | str],
    outdir: str | Path,
    *,
    output_file_extension: str = "jpg",
    show_progress: bool = True,
    **imagine_kwargs,
) -> list[Path]:
    """Generate every prompt and save each of its images under `outdir/<kind>/` (`generated`, `upscaled`, ...),
    never overwriting a file; an image's files in the kinds' folders share one number, above every number in them.
    Returns the paths of the final images."""
    from imaginairy.utils.outputs import (
        check_outdir_writable,
        next_free_counter_in,
        numbered_name_counter,
        prepare_outdir,
        save_result,
    )

    outdir = Path(outdir)
    check_outdir_writable(outdir / "generated")
    paths = []
    callback = imagine_kwargs.pop("progress_callback", None)
    with ProgressBar(show_progress, callback) as progress:
        for result in imagine(prompts, progress_callback=progress, **imagine_kwargs):
            counter = next_free_counter_in([outdir / kind for kind in result.images])
            for kind in result.images:
                path = save_result(result, prepare_outdir(outdir / kind), output_file_extension, image_type=kind,
                                   min_counter=counter)
                counter = numbered_name_counter(path)
                logger.info("    saved %s image to %s", kind, path)
                if kind == result.final_kind:
                    paths.append(path)
    return paths


def fetch_weights_first(prompts: list[ImaginePrompt], settings: Settings | None = None) -> None:
    """Before any generation, get every weights file the prompts need (downloading what is not cached) and settle
    each safety mode (`filter` without its checker fails here), so a missing file stops the run before the work
    rather than after it. Every file that cannot be had is named in one error, not one per run. `settings` are
    read from the environment when not given."""
    settings = settings if settings is not None else Settings.from_environment()
    from imaginairy.control.modes import CONTROL_MODES
    from imaginairy.enhancers.describe import blip_model_dir
    from imaginairy.enhancers.face_fix import CODEFORMER, RETINAFACE
    from imaginairy.enhancers.safety import ensure_safety_available
    from imaginairy.enhancers.upscale import REALESRGAN
    from imaginairy.errors import SafetyCheckUnavailableError, WeightsUnavailableError
    from imaginairy.masking.clipseg import clipseg_folder
    from imaginairy.models.controlnets import controlnet_weights_file
    from imaginairy.models.loading import resolve_checkpoint
    from imaginairy.models.registry import resolve_model

    fetches = {}  # one fetch per distinct file
    for prompt in prompts:
        fetches[("safety", prompt.safety_mode)] = lambda mode=prompt.safety_mode: ensure_safety_available(
            mode, model_location=settings.safety_checker_model, settings=settings)
        location = resolve_model(prompt.model, prompt.model_config).weights
        fetches[location] = lambda location=location: resolve_checkpoint(location)
        for helper, wanted in ((REALESRGAN, prompt.upscale), (RETINAFACE, prompt.fix_faces),
                               (CODEFORMER, prompt.fix_faces)):
            if wanted:
                fetches[helper] = helper.resolve
        if prompt.caption:
            fetches["blip"] = lambda: blip_model_dir(settings.blip_model)
        if prompt.mask_prompt:
            fetches["clipseg"] = lambda: clipseg_folder(settings.clipseg_model)
        for control in prompt.control_inputs:
            location = str(control.model or CONTROL_MODES[control.mode].weights)
            fetches[location] = lambda location=location: controlnet_weights_file(location)
    missing = []
    for fetch in fetches.values():
        try:
            fetch()
        except (WeightsUnavailableError, SafetyCheckUnavailableError) as error:
            missing.append(error)
    if len(missing) == 1:
        raise missing[0]
    if missing:
        listed = "".join(f"\n- {error}" for error in missing)
        raise WeightsUnavailableError(f"{len(missing)} weights files this run needs cannot be had:{listed}")


def resolve_library_names(prompt: ImaginePrompt, folder) -> ImaginePrompt:
    """The prompt with the names of its checkpoint, LoRAs and VAE replaced by the files' paths (models folder
    `folder`), and the folder's embeddings/ searched for textual-inversion triggers; a name that is nowhere raises
    ModelNotFoundError listing close matches."""
    import dataclasses

    from imaginairy.models import library
    from imaginairy.models.registry import registered_models
    from imaginairy.schema import LoRA

    changes = {}
    model_is_a_name = not Path(prompt.model).expanduser().exists() and "://" not in prompt.model
    if prompt.model not in registered_models() and model_is_a_name and folder is not None:
        try:
            changes["model"] = str(library.find("checkpoints", prompt.model, folder))
        except ModelNotFoundError:
            pass  # the registry's error (naming the registered models) is the clearer one
    if prompt.loras:
        changes["loras"] = [LoRA(str(library.resolve("loras", lora.path_or_name, folder)), lora.weight)
                            for lora in prompt.loras]  # fmt: skip
    if prompt.vae is not None:
        changes["vae"] = str(library.resolve("vae", prompt.vae, folder))
    embeddings_folder = folder / "embeddings" if folder is not None else None
    if embeddings_folder is not None and embeddings_folder.is_dir():
        changes["embeddings"] = (*prompt.embeddings, str(embeddings_folder))
    return dataclasses.replace(prompt, **changes) if changes else prompt


def resource_metadata(prompt: ImaginePrompt) -> dict:
    """The files that made the image, with their paths and A1111's hashes (cached on disk after the first time)."""
    from imaginairy.models.library import file_hashes
    from imaginairy.models.loading import resolve_checkpoint
    from imaginairy.models.registry import resolve_model
    from imaginairy.models.vae import sidecar_vae

    checkpoint = resolve_checkpoint(resolve_model(prompt.model, prompt.model_config).weights)
    resources = {}
    if checkpoint.is_file():
        hashes = file_hashes(checkpoint)
        resources["model_file"] = {"path": str(checkpoint), "sha256": hashes.sha256, "hash": hashes.model_hash}
    vae = prompt.vae or sidecar_vae(checkpoint)
    if vae is not None:
        hashes = file_hashes(vae)
        resources["vae_file"] = {"path": str(vae), "sha256": hashes.sha256, "hash": hashes.model_hash}
    resources["lora_files"] = [
        {"path": lora.path_or_name, "weight": lora.weight, "name": Path(lora.path_or_name).stem,
         "hash": file_hashes(lora.path_or_name).lora_hash, "sha256": file_hashes(lora.path_or_name).sha256}
        for lora in prompt.loras
    ]  # fmt: skip
    resources["embedding_files"] = [
        {"path": str(embedding.path), "name": embedding.name, "hash": file_hashes(embedding.path).embedding_hash,
         "sha256": file_hashes(embedding.path).sha256}
        for embedding in triggered_embeddings(prompt)
    ]  # fmt: skip
    return resources


def triggered_embeddings(prompt: ImaginePrompt) -> list:
    """The textual-inversion embeddings the prompt's texts (positive and negative) trigger."""
    from imaginairy.prompts.embeddings import find_embeddings

    return find_embeddings([wp.text for wp in (*prompt.prompts, *prompt.negative_prompts)], prompt.embeddings)


def normalize_prompts(prompts) -> list[ImaginePrompt]:
    if isinstance(prompts, (str, ImaginePrompt)):
        prompts = [prompts]
    return [p if isinstance(p, ImaginePrompt) else ImaginePrompt(p) for p in prompts]


def size_to_generate(prompt: ImaginePrompt, model) -> ImaginePrompt:
    """The prompt with the size it will be generated at: an outpainted canvas's own, else the model's default."""
    import dataclasses

    from imaginairy.masking.inpaint import generation_frame, is_edit
    from imaginairy.masking.outpaint import OutpaintAmounts, parse_outpaint_spec
    from imaginairy.pipeline import resolve_size

    if not is_edit(prompt):
        return resolve_size(prompt, model)
    amounts = parse_outpaint_spec(prompt.outpaint) if prompt.outpaint else OutpaintAmounts()
    canvas_size = amounts.canvas_size(*prompt.init_image.size)
    width, height, _ = generation_frame(prompt, canvas_size, model.settings.default_size, outpainting=bool(amounts))
    return dataclasses.replace(prompt, width=width, height=height)


def prompt_summary(prompt: ImaginePrompt) -> str:
    text = " | ".join(p.text if p.weight == 1 else f"{p.text}:{p.weight}" for p in prompt.prompts)
    size = f"{prompt.width}x{prompt.height}px" if prompt.width and prompt.height else "default size"
    return (
        f'"{text}" {size} seed:{prompt.seed} prompt-strength:{prompt.prompt_strength} '
        f"steps:{'adaptive' if prompt.sampler_type in SELF_STEPPING_SAMPLERS else prompt.steps}"
        f" sampler-type:{prompt.sampler_type}"
    )


class ProgressBar:
    """A tqdm bar per image, fed by the sampler's progress callback, passing the call on to `inner`."""

    def __init__(self, enabled: bool, inner=None):
        self.enabled = enabled
        self.inner = inner
        self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._close()

    def __call__(self, step, total, latents):
        if self.enabled:
            from tqdm import tqdm

            if self._bar is None or self._bar.total != total or step < self._bar.n:
                self._close()
                self._bar = tqdm(total=total, unit="step", leave=False)
            self._bar.update(step - self._bar.n)
        return self.inner(step, total, latents) if self.inner else None

    def _close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
