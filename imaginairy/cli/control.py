"""ControlNet on the command line: the `--control-*` options of `imagine`, and `aimg control-preview`."""

from __future__ import annotations

import click

from imaginairy.cli.errors import reported_errors
from imaginairy.control.modes import CONTROL_MODES

MODE_NAMES = tuple(CONTROL_MODES)
# the parameters `control_options` adds, all taken by `control_inputs`
CONTROL_OPTIONS = ("control_modes", "control_images", "control_strengths", "control_starts", "control_ends",
                   "control_models", "control_image_is_hint")


def control_options(command):
    """The repeatable `--control-*` options: the i-th --control-image goes with the i-th --control-mode; a strength,
    start, end or model given once applies to every control."""
    options = [
        click.option("--control-mode", "control_modes", multiple=True, type=click.Choice(MODE_NAMES),
                     help="Guide the composition with a ControlNet of this mode (repeatable: several at once)."),
        click.option("--control-image", "control_images", multiple=True, metavar="PATH_OR_URL",
                     help="The control image of the matching --control-mode [default: the init image]."),
        click.option("--control-strength", "control_strengths", multiple=True, type=click.FloatRange(0, 10),
                     help="How strongly each ControlNet steers  [default: 1]."),
        click.option("--control-start", "control_starts", multiple=True, type=click.FloatRange(0, 1),
                     help="The fraction of the steps after which each ControlNet starts  [default: 0]."),
        click.option("--control-end", "control_ends", multiple=True, type=click.FloatRange(0, 1),
                     help="The fraction of the steps after which each ControlNet stops  [default: 1]."),
        click.option("--control-model", "control_models", multiple=True, metavar="LOCATION",
                     help="ControlNet weights (file, diffusers folder, hf://...) instead of the mode's public one."),
        click.option("--control-image-is-hint", is_flag=True,
                     help="The control images already are hints (edge map, depth map, pose...): no preprocessing."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def control_inputs(control_modes, control_images, control_strengths, control_starts, control_ends, control_models,
                   control_image_is_hint) -> list:
    from imaginairy.schema import ControlInput

    count = len(control_modes)
    values = {"image": control_images, "strength": control_strengths, "start": control_starts,
              "end": control_ends, "model": control_models}
    for name, given in values.items():
        if count == 0 and given:
            raise click.UsageError(f"--control-{name} needs a --control-mode")
        if len(given) not in (0, 1, count) or (name == "image" and len(given) not in (0, count)):
            raise click.UsageError(f"give --control-{name} once per --control-mode ({count}), or once for all")
    controls = []
    for index, mode in enumerate(control_modes):
        chosen = {name: given[index if len(given) > 1 else 0] for name, given in values.items() if given}
        controls.append(ControlInput(mode, preprocess=not control_image_is_hint, **chosen))
    return controls


@click.command("control-preview")
@click.argument("image", metavar="IMAGE_PATH_OR_URL")
@click.option("--mode", type=click.Choice(MODE_NAMES), default="canny", show_default=True)
@click.option("-w", "--width", type=int, help="Hint width in pixels [default: the image's].")
@click.option("-h", "--height", type=int, help="Hint height in pixels [default: the image's].")
@click.option("--canny-low", type=click.IntRange(0, 255), default=100, show_default=True)
@click.option("--canny-high", type=click.IntRange(0, 255), default=200, show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Where to write the hint [default: <image>-<mode>-hint.png in the current folder].")
def control_preview(image, mode, width, height, canny_low, canny_high, output):
    """Write the hint a ControlNet MODE would get from IMAGE, to check it before generating."""
    with reported_errors():
        from pathlib import Path

        from imaginairy.control.preprocess import make_hint
        from imaginairy.schema import ControlInput
        from imaginairy.utils.outputs import prompt_slug, write_new_file

        control = ControlInput(mode, image, canny_thresholds=(canny_low, canny_high))
        source = control.image.as_pil()
        hint = make_hint(mode, source, width or source.width, height or source.height,
                         canny_thresholds=control.canny_thresholds)
        output = output or f"{prompt_slug(Path(control.image.source).stem)}-{mode}-hint.png"
        path = write_new_file(output, lambda file, file_format: hint.save(file, format=file_format))
        click.echo(str(path))
