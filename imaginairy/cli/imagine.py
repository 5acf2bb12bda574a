"""The `imagine` command: prompts in, image files out."""

from __future__ import annotations

import logging

import click

from imaginairy.cli.control import CONTROL_OPTIONS, control_inputs, control_options
from imaginairy.cli.errors import reported_errors
from imaginairy.samplers.table import SCHEDULES
from imaginairy.schema import (
    DEFAULT_EDIT_MODEL,
    DEFAULT_MODEL,
    MASK_MODES,
    MAX_CLIP_SKIP,
    MEMORY_MODES,
    PRECISIONS,
    PROMPT_SYNTAXES,
    SAFETY_MODES,
    SAMPLER_TYPES,
    ImaginePrompt,
)
from imaginairy.utils.outputs import DEFAULT_OUTPUT_FILE_EXTENSION, OUTPUT_FILE_EXTENSIONS

DEFAULTS = ImaginePrompt.defaults()  # the one source of the defaults shown and used here
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_LOG_LEVEL = "INFO"


class ImagineCommand(click.Command):
    """`-h` is `--height` (as in the original imaginAIry), but `-h` with no number after it shows the help, as
    people type it for that."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        for index, arg in enumerate(args):
            if arg == "--":
                break
            if arg == "-h" and (index + 1 == len(args) or not args[index + 1].lstrip("-").isdigit()):
                click.echo(self.get_help(ctx), color=ctx.color)
                ctx.exit()
        return super().parse_args(ctx, args)


@click.command(cls=ImagineCommand, context_settings={"help_option_names": ["--help"]})
@click.argument("prompt_texts", nargs=-1, metavar="PROMPT...")
@click.option("--negative-prompt", help="What the image should not show.")
@click.option("--prompt-syntax", type=click.Choice(PROMPT_SYNTAXES), default=DEFAULTS["prompt_syntax"],
              show_default=True, help="a1111: (emphasis:1.2), [less], BREAK and prompts of any length; "
              "plain: the text as typed, in one 75-token window.")
@click.option("--clip-skip", type=click.IntRange(1, MAX_CLIP_SKIP), default=DEFAULTS["clip_skip"], show_default=True,
              help="Stop the text encoder this many layers from the end, counted as in A1111 (1 = the last "
              "layer, 2 = the penultimate); SD 1.x models.")
@click.option("--embeddings", "embeddings", multiple=True, type=click.Path(exists=True),
              help="A textual-inversion file or a folder of them; each is used where its file name appears in a "
              "prompt, e.g. easynegative in --negative-prompt. Repeatable.")
@click.option("--prompt-strength", type=float,
              help="How closely to follow the prompt (classifier-free guidance scale) "
              f"[default: the model's; else {DEFAULTS['prompt_strength']}].")
@click.option("--init-image", help="Start from this image (a path or an http(s) URL) instead of pure noise.")
@click.option("--init-image-strength", type=float, default=DEFAULTS["init_image_strength"], show_default=True,
              help="How much of the init image to keep: 0 ignores it, 1 returns it unchanged.")
@click.option("--mask-prompt", help='Edit only what this describes in the init image, e.g. "fruit OR fruit stem{*1.5}" '
              "(AND, OR, NOT, parentheses, strength modifiers {*1.5} {+0.1}).")
@click.option("--mask-image", help="Edit only the white area of this black/white image (a path or an http(s) URL). "
              "Without a mask, a PNG init image's transparent pixels are the mask.")
@click.option("--mask-mode", type=click.Choice(MASK_MODES), default=DEFAULTS["mask_mode"], show_default=True,
              help="replace: regenerate the mask area; keep: keep it and regenerate everything else.")
@click.option("--mask-modify-original/--no-mask-modify-original", default=DEFAULTS["mask_modify_original"],
              show_default=True, help="Also save the init image at full size with only the mask area changed.")
@click.option("--outpaint", help="Extend the init image's canvas and fill it, e.g. all100,up50,left200 "
              "(pixels per side; a named side overrides all).")
@click.option("--seamless-boost", type=float, default=DEFAULTS["seamless_boost"], show_default=True,
              help="0..1: start the area to regenerate from noise shaped like the image and let the protected "
              "area near the mask change too, by this much.")
@click.option("--outdir", default="./outputs", show_default=True, type=click.Path(file_okay=False),
              help="Where to write the images (into OUTDIR/generated).")
@click.option("-r", "--repeats", type=click.IntRange(min=1), default=1, show_default=True,
              help="How many images to make of each prompt (with --seed: seeds SEED, SEED+1, ...).")
@click.option("-h", "--height", type=int, help="Image height in pixels, a multiple of 8 [default: the model's].")
@click.option("-w", "--width", type=int, help="Image width in pixels, a multiple of 8 [default: the model's].")
@click.option("--steps", type=int, help=f"Sampler steps [default: the model's; else {DEFAULTS['steps']}].")
@click.option("--seed", type=int, help="Random seed, 0 <= SEED < 2**64 [default: random].")
@click.option("--sampler-type", metavar="NAME",
              help=f"The sampling algorithm: {', '.join(SAMPLER_TYPES)}, or an AUTOMATIC1111 name such as "
              f'"DPM++ 2M Karras" or "Euler a" [default: the model\'s; else {DEFAULTS["sampler_type"]}].')
@click.option("--schedule", type=click.Choice(SCHEDULES), default=DEFAULTS["schedule"], show_default=True,
              help="The noise levels the k-samplers step through (uniform: the model's own timesteps).")
@click.option("--ddim-eta", type=float, default=DEFAULTS["ddim_eta"], show_default=True,
              help="Noise added per DDIM step (0 = deterministic DDIM).")
@click.option("--tile", "tile_mode", flag_value="xy", help="Make an image that tiles in both directions.")
@click.option("--tile-x", "tile_mode", flag_value="x", help="Make an image that tiles left to right.")
@click.option("--tile-y", "tile_mode", flag_value="y", help="Make an image that tiles top to bottom.")
@click.option("--model", help="A model name (see README) or the path of a .safetensors/.ckpt file "
              f"[default: {DEFAULT_MODEL}; with a mask or --outpaint: {DEFAULT_EDIT_MODEL}].")
@click.option("--model-config", type=click.Path(dir_okay=False),
              help="CompVis-style yaml describing the model's architecture, for weights files it cannot infer.")
@click.option("--lora", "loras", multiple=True, metavar="PATH_OR_NAME[:WEIGHT]",
              help="Merge a LoRA file (a path, or a name in MODELS_DIR/loras) at WEIGHT (-10..10, default 1); "
                   "repeatable. Prompts may also say <lora:NAME:WEIGHT>.")
@click.option("--vae", help="A VAE file (a path, or a name in MODELS_DIR/vae) replacing the checkpoint's.")
@click.option("--models-dir", type=click.Path(file_okay=False),
              help="Folder with checkpoints/, loras/, embeddings/, vae/ where names are looked up "
                   "[default: $IMAGINAIRY_MODELS_DIR].")
@click.option("--precision", type=click.Choice(PRECISIONS), default=DEFAULTS["precision"], show_default=True,
              help="Number format of the computation; auto: bf16 where the CPU or GPU computes it natively, else full.")
@click.option("--memory-mode", type=click.Choice(MEMORY_MODES), default=DEFAULTS["memory_mode"], show_default=True,
              help="high: models stay on the device; mid: half precision on a GPU; low: also only the running "
                   "submodel on the device.")
@click.option("--fix-faces", is_flag=True, help="Restore faces with CodeFormer.")
@click.option("--fix-faces-fidelity", type=click.FloatRange(0, 1), default=DEFAULTS["fix_faces_fidelity"],
              show_default=True, help="0 = the restorer's own face, 1 = closest to the generated face.")
@click.option("--upscale", is_flag=True, help="Upscale the image 4x with RealESRGAN.")
@click.option("--caption", is_flag=True, help="Describe the finished image with BLIP (printed and stored).")
@click.option(
    "--safety-mode",
    type=click.Choice(SAFETY_MODES),
    help="NSFW check: off, classify (flag it), filter (blur it) [default: $IMAGINAIRY_SAFETY_MODE or classify].",
)
@click.option("--output-file-extension", type=click.Choice(OUTPUT_FILE_EXTENSIONS),
              default=DEFAULT_OUTPUT_FILE_EXTENSION, show_default=True)
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default=DEFAULT_LOG_LEVEL,
              show_default=True)
@click.option("-q", "--quiet", is_flag=True, help="Only print warnings, errors, where the images went and the summary.")
@control_options
def imagine_cmd(prompt_texts, outdir, repeats, output_file_extension, log_level, quiet, models_dir, **prompt_options):
    """Make images from text PROMPTs with Stable Diffusion, on this machine.

    \b
    imagine "a scenic landscape" "a photo of a dog"
    imagine --init-image photo.jpg --init-image-strength 0.4 "an oil painting"
    """
    import time

    from imaginairy.utils.dependency_noise import quiet_dependency_warnings

    started = time.monotonic()
    quiet_dependency_warnings()
    configure_logging("WARNING" if quiet else log_level)
    if not prompt_texts:
        raise click.UsageError('give at least one prompt, e.g. imagine "a scenic landscape"')
    control_settings = {name: prompt_options.pop(name) for name in CONTROL_OPTIONS}
    given = {name: value for name, value in prompt_options.items() if value is not None}  # unset: the field's default
    seed = given.pop("seed", None)
    with reported_errors():
        given["loras"] = [lora_option(option) for option in given.get("loras", ())]
        given["control_inputs"] = control_inputs(**control_settings)
        prompts = [
            ImaginePrompt(text, seed=None if seed is None else seed + repeat, **given)
            for text in prompt_texts
            for repeat in range(repeats)
        ]
        check_before_loading(prompts)
        from imaginairy.api import imagine_image_files

        paths = imagine_image_files(prompts, outdir, output_file_extension=output_file_extension,
                                    show_progress=not quiet, models_dir=models_dir)
    if quiet:
        for path in paths:
            click.echo(str(path))
    click.echo(run_summary(paths, time.monotonic() - started))


def lora_option(option: str):
    """`--lora PATH_OR_NAME[:WEIGHT]` -> LoRA (a last `:part` that is not a number belongs to the name)."""
    from imaginairy.schema import LoRA

    name, _, weight_text = option.rpartition(":")
    try:
        weight = float(weight_text)
    except ValueError:
        return LoRA(option)
    return LoRA(name, weight) if name else LoRA(option)


def check_before_loading(prompts: list[ImaginePrompt]) -> None:
    """What can be checked without torch, checked before it is imported, so a usage error comes back at once: the
    model names (and files), and that local input images are images."""
    from imaginairy.models.registry import resolve_model

    for prompt in prompts:
        resolve_model(prompt.model, prompt.model_config)
        for image in (prompt.init_image, prompt.mask_image):
            if image is not None and image.filepath is not None:
                check_image_header(image.filepath)


def check_image_header(filepath: str) -> None:
    """ImageLoadError unless PIL recognises the file's format from its first bytes (the pixels are read later)."""
    from PIL import Image

    from imaginairy.errors import ImageLoadError

    try:
        with Image.open(filepath):
            pass
    except Image.UnidentifiedImageError as e:
        raise ImageLoadError(f"Not an image file (unknown or unsupported format): {filepath}") from e
    except OSError as e:
        raise ImageLoadError(f"Cannot read image {filepath}: {e.strerror or e}") from e


def run_summary(paths: list, seconds: float) -> str:
    """E.g. "3 images in outputs/generated/, 41 s"."""
    import os

    folders = list(dict.fromkeys(f"{os.path.dirname(path)}{os.sep}" for path in paths))
    count = f"{len(paths)} image{'' if len(paths) == 1 else 's'}"
    duration = f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    return f"{count} in {', '.join(folders)}, {duration}" if folders else f"no images, {duration}"


class EchoHandler(logging.Handler):
    """Log records printed with click.echo to the current stderr, so they show up wherever the CLI's output goes;
    while a progress bar is drawn, on a line of their own above it (not glued onto it)."""

    def emit(self, record: logging.LogRecord) -> None:
        import sys

        tqdm_module = sys.modules.get("tqdm")
        if tqdm_module is not None and getattr(tqdm_module.tqdm, "_instances", None):
            tqdm_module.tqdm.write(self.format(record), file=sys.stderr)
        else:
            click.echo(self.format(record), err=True)


def configure_logging(level: str) -> None:
    logger = logging.getLogger("imaginairy")
    logger.setLevel(level.upper())
    if not any(isinstance(h, EchoHandler) for h in logger.handlers):
        logger.addHandler(EchoHandler())
        logger.propagate = False
