"""The `aimg` command: imaginAIry's image tools, and an interactive shell when run without a command.

Start-up stays fast: torch, transformers and the models are imported inside the commands that use them.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import click

from imaginairy.cli.errors import reported_errors
from imaginairy.errors import ImageDownloadError, InvalidInputError
from imaginairy.utils.outputs import DEFAULT_OUTPUT_FILE_EXTENSION, OUTPUT_FILE_EXTENSIONS

SHELL_PROMPT = "imaginAIry> "
SHELL_HISTORY_FILE = "shell_history"
# commands defined in other modules, imported only when used (or listed by --help)
LAZY_COMMANDS = {
    "control-preview": ("imaginairy.cli.control", "control_preview"),
    "imagine": ("imaginairy.cli.imagine", "imagine_cmd"),
    "server": ("imaginairy.cli.server", "server_cmd"),
}
BYTES_PER_GIB = 1024**3


class AimgGroup(click.Group):
    """A command group that also offers the commands in LAZY_COMMANDS, importing each when it is first needed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in LAZY_COMMANDS:
            return super().get_command(ctx, cmd_name)
        module_name, command_name = LAZY_COMMANDS[cmd_name]
        return getattr(importlib.import_module(module_name), command_name)


class ShellGroup(AimgGroup):
    """The commands of the interactive shell: aimg's, plus `help`, `exit` and `quit`.

    A failure in a command is reported in one line and the shell goes on; `failed` remembers that one did.
    """

    failed = False

    def invoke(self, ctx: click.Context):
        from click_repl.exceptions import ExitReplException

        try:
            return super().invoke(ctx)
        except ExitReplException:
            raise
        except click.exceptions.Exit as error:
            self.failed = self.failed or error.exit_code != 0
            raise
        except SystemExit as error:
            self.failed = self.failed or error.code not in (None, 0)
            raise
        except (click.ClickException, click.Abort):
            self.failed = True
            raise
        except KeyboardInterrupt as error:
            self.failed = True
            raise click.ClickException("Interrupted.") from error
        except Exception as error:
            self.failed = True
            raise click.ClickException(f"unexpected {type(error).__name__}: {error}") from error


@click.group(cls=AimgGroup, invoke_without_command=True)
@click.pass_context
def aimg(ctx: click.Context) -> None:
    """imaginAIry image tools. Run without a command to open an interactive shell.

    \b
    aimg describe photo.jpg https://example.com/cat.png
    aimg upscale photo.jpg --outdir upscaled
    aimg imagine "a scenic landscape"
    """
    from imaginairy.utils.dependency_noise import quiet_dependency_warnings

    quiet_dependency_warnings()
    if ctx.invoked_subcommand is None:
        run_shell(ctx.info_name or "aimg")


def run_shell(name: str) -> None:
    """Read commands from the terminal (or stdin) and run them until `exit`, `quit`, Ctrl-D or, on a
    non-terminal stdin, an empty line. Fed by a pipe (a script), the shell exits with 1 if a command failed."""
    import sys

    from click_repl import repl

    shell = ShellGroup(
        name=name,
        commands={**aimg.commands, "help": shell_help, "exit": shell_exit, "quit": shell_exit},
        help="imaginAIry shell: type any aimg command as you would after `aimg`, e.g. `describe photo.jpg`.",
    )
    with click.Context(shell, info_name=name) as shell_ctx:
        repl(shell_ctx, prompt_kwargs={"message": SHELL_PROMPT, **_shell_history()}, allow_system_commands=False)
    if shell.failed and not sys.stdin.isatty():
        sys.exit(1)


@click.command("help")
@click.argument("command_name", required=False, metavar="[COMMAND]")
@click.pass_context
def shell_help(ctx: click.Context, command_name: str | None) -> None:
    """Show the shell's commands, or how to use COMMAND."""
    shell_ctx = ctx.parent
    if command_name is None:
        click.echo(shell_ctx.get_help())
        return
    command = shell_ctx.command.get_command(shell_ctx, command_name)
    if command is None:
        raise click.UsageError(f"No such command {command_name!r}; type `help` for the list.")
    click.echo(command.get_help(click.Context(command, info_name=command_name, parent=shell_ctx)))


@click.command("exit")
def shell_exit() -> None:
    """Leave the shell (`exit`, `quit` or Ctrl-D)."""
    from click_repl.exceptions import ExitReplException

    raise ExitReplException()


@aimg.command()
@click.argument("images", nargs=-1, required=True, metavar="FILES_OR_URLS...")
@click.pass_context
def describe(ctx: click.Context, images: tuple[str, ...]) -> None:
    """Print a caption for each image: a file path or an http(s) URL.

    The caption model (BLIP) is read from the Hugging Face cache, or from the folder in IMAGINAIRY_BLIP_MODEL.
    An image that cannot be read is reported and the others are still described; the exit code is then 1.
    """
    failures = 0
    with reported_errors():
        from imaginairy.enhancers.describe import generate_caption

        for location in images:
            try:
                image = open_input_image(location).as_pil()
            except (InvalidInputError, ImageDownloadError) as error:
                click.echo(f"Error: {error}", err=True)
                failures += 1
                continue
            click.echo(f"{location}: {generate_caption(image)}")
    if failures:
        ctx.exit(1)


@aimg.command()
@click.argument("images", nargs=-1, required=True, metavar="FILES_OR_URLS...")
@click.option("--outdir", default="./outputs/upscaled", show_default=True, type=click.Path(file_okay=False),
              help="Where to write the upscaled images; existing files are never replaced.")
@click.option("--model", "weights", metavar="LOCATION",
              help="Upscaler weights: a file path, an https:// URL or hf://owner/repo/file"
                   " [default: $IMAGINAIRY_REALESRGAN_MODEL, else RealESRGAN x4plus].")
@click.option(
    "--output-file-extension",
    type=click.Choice(OUTPUT_FILE_EXTENSIONS),
    default=DEFAULT_OUTPUT_FILE_EXTENSION,
    show_default=True,
)
@click.pass_context
def upscale(ctx: click.Context, images: tuple[str, ...], outdir: str, weights: str | None,
            output_file_extension: str) -> None:
    """Make each image 4x larger with RealESRGAN: file paths or http(s) URLs.

    Writes OUTDIR/NNNNNN_<name>_upscaled.<ext>, numbered so nothing is overwritten. An image that cannot be read
    is reported and the others are still upscaled; the exit code is then 1.
    """
    failures = 0
    with reported_errors():
        from imaginairy.enhancers.upscale import load_upscaler, upscale_image
        from imaginairy.utils.outputs import prompt_slug, write_numbered_file

        model = load_upscaler(weights)
        for location in images:
            try:
                loaded = open_input_image(location)
                image = loaded.as_rgba() if loaded.alpha is not None else loaded.as_pil()
            except (InvalidInputError, ImageDownloadError) as error:
                click.echo(f"Error: {error}", err=True)
                failures += 1
                continue
            upscaled = upscale_image(image, model=model)
            stem = prompt_slug(_location_stem(location))
            path = write_numbered_file(
                outdir,
                lambda counter, stem=stem: f"{counter:06d}_{stem}_upscaled.{output_file_extension}",
                lambda file, file_format, image=upscaled: _save_image(image, file, file_format),
            )
            click.echo(f"{location}: {path}")
    if failures:
        ctx.exit(1)


@aimg.command("models")
@click.option("--models-dir", type=click.Path(file_okay=False),
              help="The models folder [default: $IMAGINAIRY_MODELS_DIR].")
def models_cmd(models_dir: str | None) -> None:
    """List the registered models and the files in the models folder: architecture, size and A1111 hash.

    The first listing hashes each file once (a few seconds per GB); later ones read the hashes from the cache.
    """
    from imaginairy.models import library
    from imaginairy.models.registry import registered_models
    from imaginairy.settings import Settings

    with reported_errors():
        for name, spec in registered_models().items():
            click.echo(f"{name:24} {spec.description}")
        root = library.models_dir(models_dir or Settings.from_environment().models_dir)
        if root is None:
            click.echo(f"(no models folder: pass --models-dir or set {library.MODELS_DIR_ENV})")
            return
        if not root.is_dir():
            raise InvalidInputError(f"models folder {root} does not exist")
        for kind in library.KINDS:
            files = library.list_files(kind, root)
            click.echo(f"\n{root / kind}: {len(files)} file(s)")
            for path in files:
                info = library.describe(kind, path)
                size = f"{info['bytes'] / 2**20:,.1f} MB"
                click.echo(f"  {library.file_name(kind, root, path):32} {info['architecture']:24} {size:>12}  "
                           f"{info['hash']}")


@aimg.command("system-info")
def system_info() -> None:
    """Print versions, the compute device and memory (useful in bug reports)."""
    with reported_errors():
        for name, value in system_info_rows():
            click.echo(f"{name}: {value}")


def system_info_rows() -> list[tuple[str, str]]:
    """(name, value) pairs: imaginairy, python, platform and torch versions, the device, and memory."""
    import platform

    import psutil
    import torch

    from imaginairy.utils.devices import default_device

    memory = psutil.virtual_memory()
    rows = [
        ("imaginairy", _package_version("imaginairy")),
        ("python", platform.python_version()),
        ("platform", platform.platform()),
        ("torch", torch.__version__),
        ("transformers", _package_version("transformers")),
        ("device", str(default_device())),
        ("cuda", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available"),
        ("mps", "available" if torch.backends.mps.is_available() else "not available"),
        ("cpu cores", str(os.cpu_count())),
        ("memory", f"{memory.total / BYTES_PER_GIB:.1f} GiB total, {memory.available / BYTES_PER_GIB:.1f} GiB free"),
    ]
    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        rows.append(("gpu memory", f"{total / BYTES_PER_GIB:.1f} GiB total"))
    return rows


def open_input_image(location: str):
    """A LazyLoadingImage for a file path or an http(s) URL (loaded when used)."""
    from imaginairy.schema import LazyLoadingImage

    if location.lower().startswith(("http://", "https://")):
        return LazyLoadingImage(url=location)
    return LazyLoadingImage(filepath=location)


def _location_stem(location: str) -> str:
    from urllib.parse import urlparse

    path = urlparse(location).path if location.lower().startswith(("http://", "https://")) else location
    return Path(path).stem or "image"


def _save_image(image, file, file_format: str) -> None:
    if file_format == "JPEG":
        image = image.convert("RGB")
    image.save(file, format=file_format)


def _shell_history() -> dict:
    """A FileHistory under ~/.cache/imaginairy when the shell runs in a terminal; else nothing (in memory)."""
    import sys

    from prompt_toolkit.history import FileHistory

    if not sys.stdin.isatty():
        return {}
    cache_dir = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "imaginairy"
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError:
        return {}
    return {"history": FileHistory(str(cache_dir / SHELL_HISTORY_FILE))}


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed (running from source)" if name == "imaginairy" else "not installed"
