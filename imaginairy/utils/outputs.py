"""Output file names, and writing files that never replace an existing one.

A file is first written completely to a hidden temporary file in the destination folder, then given its
final name with an operation that fails if the name exists (a hard link, or an exclusive create followed by
an atomic replace where links are unsupported). So readers never see a partial file, an existing file is
never overwritten, and a failure leaves nothing behind. Numbered names are chosen under a lock on the folder
(where the OS offers one), so processes writing into one folder at once get distinct numbers.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import unicodedata
import uuid
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable, Iterator

from imaginairy.errors import InvalidInputError, OutputWriteError

if TYPE_CHECKING:
    from imaginairy.schema import ImaginePrompt, ImagineResult

FILE_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG"}
OUTPUT_FILE_EXTENSIONS = ("jpg", "png")  # what the command lines offer
DEFAULT_OUTPUT_FILE_EXTENSION = "jpg"
COUNTER_DIGITS = 6
MAX_SLUG_CHARS = 60
MAX_NAME_ATTEMPTS = 1000
COUNTER_PATTERN = re.compile(r"^(\d+)_")
# errno values meaning "this file system cannot hard-link": fall back to exclusive create + replace.
LINK_UNSUPPORTED_ERRNOS = {errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}

FileWriter = Callable[[IO[bytes], str], None]


def file_format_for(path: str | os.PathLike) -> str:
    """The image format ("JPEG" or "PNG") that a file name's extension asks for."""
    extension = os.path.splitext(os.fspath(path))[1].lstrip(".").lower()
    if extension not in FILE_FORMATS:
        allowed = ", ".join(FILE_FORMATS)
        raise InvalidInputError(
            f"Cannot save {os.fspath(path)}: unsupported extension {extension!r}; use one of: {allowed}."
        )
    return FILE_FORMATS[extension]


def prompt_slug(text: str, max_chars: int = MAX_SLUG_CHARS) -> str:
    """`text` reduced to ASCII letters, digits and single underscores, at most `max_chars` long."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^A-Za-z0-9]+", "_", ascii_text).strip("_")
    return slug[:max_chars].rstrip("_") or "no_prompt"


def sampler_short_name(sampler_type: str) -> str:
    return sampler_type.replace("_", "").upper()


def image_filename(counter: int, prompt: ImaginePrompt, image_type: str = "generated", extension: str = "jpg") -> str:
    """E.g. `000001_557988237_PLMS40_PS7.5_a_scenic_landscape.jpg`; kinds other than "generated" add a suffix."""
    from imaginairy.samplers.table import SELF_STEPPING_SAMPLERS

    prompt_text = " ".join(wp.text for wp in prompt.prompts)
    kind_suffix = "" if image_type == "generated" else f"_{prompt_slug(image_type)}"
    steps = "" if prompt.sampler_type in SELF_STEPPING_SAMPLERS else prompt.steps  # the file says what was used
    return (
        f"{counter:0{COUNTER_DIGITS}d}_{prompt.seed}_{sampler_short_name(prompt.sampler_type)}{steps}"
        f"_PS{prompt.prompt_strength:g}_{prompt_slug(prompt_text)}{kind_suffix}.{extension.lstrip('.').lower()}"
    )


def next_free_counter(outdir: str | os.PathLike) -> int:
    """One more than the highest number that starts a file name (`000012_...`) in `outdir`; 1 if none does."""
    numbers = [int(match.group(1)) for name in os.listdir(outdir) if (match := COUNTER_PATTERN.match(name))]
    return max(numbers, default=0) + 1


def prepare_outdir(outdir: str | os.PathLike) -> Path:
    """Create the output folder if needed (OutputWriteError if it cannot be); call before the slow work."""
    outdir = os.fspath(outdir)
    try:
        os.makedirs(outdir, exist_ok=True)
    except OSError as e:
        raise OutputWriteError(f"Cannot create output folder {outdir}: {_reason(e)}; choose a writable folder.") from e
    if not os.path.isdir(outdir):
        raise OutputWriteError(f"Output folder {outdir} is not a folder; choose a writable folder.")
    return Path(outdir)


def check_outdir_writable(outdir: str | os.PathLike) -> None:
    """OutputWriteError now, before the slow work, if `outdir` could not be created or written; creates nothing, so
    a run that fails later leaves no empty folder behind."""
    existing = Path(outdir).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputWriteError(f"Cannot create output folder {outdir}: {existing} is not a folder; choose another.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputWriteError(f"Cannot create output folder {outdir}: {existing} is not writable; choose another.")


def save_result(
    result: ImagineResult, outdir: str | os.PathLike, extension: str = "jpg", image_type: str = "generated",
    min_counter: int = 1,
) -> Path:
    """Save one image of `result` into `outdir` under the next free numbered name (at least `min_counter`), with its
    metadata embedded."""
    from imaginairy.utils.metadata import write_image_with_metadata

    img = result.image_of_type(image_type)
    return write_numbered_file(
        outdir,
        lambda counter: image_filename(counter, result.prompt, image_type, extension),
        lambda file, file_format: write_image_with_metadata(img, file, file_format, result.metadata),
        min_counter=min_counter,
    )


def numbered_name_counter(path: str | os.PathLike) -> int:
    """The number a numbered file name starts with (`000012_...` -> 12)."""
    return int(COUNTER_PATTERN.match(os.path.basename(path)).group(1))


def next_free_counter_in(folders: list[Path]) -> int:
    """One more than the highest number starting a file name in any of `folders` (those that exist)."""
    return max((next_free_counter(folder) for folder in folders if folder.is_dir()), default=1)


def save_image(result: ImagineResult, path: str | os.PathLike, image_type: str) -> Path:
    """Write the `image_type` image of `result` to `path` (format from the extension) with the metadata embedded;
    OutputWriteError if `path` exists."""
    from imaginairy.utils.metadata import write_image_with_metadata

    img = result.image_of_type(image_type)
    return write_new_file(path, lambda file, file_format: write_image_with_metadata(img, file, file_format,
                                                                                    result.metadata))


def write_new_file(path: str | os.PathLike, write: FileWriter) -> Path:
    """Create `path` with what `write(file, file_format)` writes; OutputWriteError if it exists or on any failure."""
    path = os.fspath(path)
    file_format = file_format_for(path)
    outdir = os.path.dirname(os.path.abspath(path))
    prepare_outdir(outdir)
    with _temporary_file(outdir, write, file_format) as temp_path:
        if not _place_exclusively(temp_path, path):
            raise OutputWriteError(f"Not overwriting existing file {path}; choose another name.")
    return Path(path)


def write_numbered_file(
    outdir: str | os.PathLike, filename_for_counter: Callable[[int], str], write: FileWriter, min_counter: int = 1
) -> Path:
    """Create `outdir/filename_for_counter(n)` for the next free number n >= `min_counter`, with what `write` writes.

    The format comes from the file name's extension. Returns the path written.
    """
    outdir = os.fspath(outdir)
    prepare_outdir(outdir)
    file_format = file_format_for(filename_for_counter(1))
    with _temporary_file(outdir, write, file_format) as temp_path, _folder_lock(outdir):
        counter = max(min_counter, _free_counter(outdir))
        for _ in range(MAX_NAME_ATTEMPTS):
            final_path = os.path.join(outdir, filename_for_counter(counter))
            if _place_exclusively(temp_path, final_path):
                return Path(final_path)
            counter = max(counter + 1, _free_counter(outdir))
    raise OutputWriteError(f"Cannot find a free file name in {outdir} after {MAX_NAME_ATTEMPTS} attempts.")


@contextlib.contextmanager
def _temporary_file(outdir: str, write: FileWriter, file_format: str) -> Iterator[str]:
    """A hidden file in `outdir` holding what `write` wrote; removed on exit whatever happens."""
    temp_path = os.path.join(outdir, f".imaginairy-{uuid.uuid4().hex}.tmp")
    try:
        try:
            fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except OSError as e:
            raise OutputWriteError(f"Cannot write into output folder {outdir}: {_reason(e)}.") from e
        try:
            with os.fdopen(fd, "wb") as file:
                write(file, file_format)
                file.flush()
                os.fsync(file.fileno())
        except (OSError, ValueError) as e:  # PIL raises ValueError for images or metadata it cannot encode
            raise OutputWriteError(f"Cannot write image file in {outdir}: {_reason(e)}.") from e
        yield temp_path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp_path)


def _place_exclusively(temp_path: str, final_path: str) -> bool:
    """Give the temporary file `final_path` as its name unless that name exists; True if it was placed."""
    try:
        os.link(temp_path, final_path)
        return True
    except FileExistsError:
        return False
    except OSError as e:
        if e.errno not in LINK_UNSUPPORTED_ERRNOS:
            raise OutputWriteError(f"Cannot write {final_path}: {_reason(e)}.") from e
    try:
        os.close(os.open(final_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except FileExistsError:
        return False
    except OSError as e:
        raise OutputWriteError(f"Cannot write {final_path}: {_reason(e)}.") from e
    try:
        os.replace(temp_path, final_path)
    except OSError as e:
        raise OutputWriteError(f"Cannot write {final_path}: {_reason(e)}.") from e
    return True


@contextlib.contextmanager
def _folder_lock(outdir: str) -> Iterator[None]:
    """Hold an exclusive lock on the folder (POSIX flock); elsewhere, or if it cannot be opened, no lock."""
    try:
        import fcntl

        fd = os.open(outdir, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _free_counter(outdir: str) -> int:
    try:
        return next_free_counter(outdir)
    except OSError as e:
        raise OutputWriteError(f"Cannot list output folder {outdir}: {_reason(e)}.") from e


def _reason(error: OSError) -> str:
    return error.strerror or str(error)
