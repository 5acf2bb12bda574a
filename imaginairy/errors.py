"""Exceptions users can catch.

`InvalidInputError` and its subclasses mean the request itself is wrong (the CLI exits with code 2);
every other `ImaginAIryError` is a failure while carrying out a valid request (the CLI exits with code 1).
"""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name when the message is empty), so the errors we raise
    on top of another library's stay one line long."""
    lines = str(error).strip().splitlines()
    return lines[0].strip() if lines else type(error).__name__


class ImaginAIryError(Exception):
    """Base class of every error imaginairy raises on purpose."""


class InvalidInputError(ImaginAIryError, ValueError):
    """A setting, prompt or file given by the user cannot be used as it is."""


class ImageLoadError(InvalidInputError):
    """An input image is missing, unreadable or not an image."""


class ModelNotFoundError(InvalidInputError):
    """A model name is not in the registry and is not a path to a weights file."""


class ImageDownloadError(ImaginAIryError):
    """An image URL could not be fetched."""


class ModelLoadError(ImaginAIryError):
    """A weights file is corrupt or does not fit the architecture it is loaded into."""


class WeightsUnavailableError(ModelLoadError):
    """A weights file could not be downloaded and is not in the local cache."""


class OutputWriteError(ImaginAIryError):
    """An output file could not be written."""


class GenerationCancelled(ImaginAIryError):
    """Generation was stopped by a cancel event or a progress callback before it finished."""


class SafetyCheckUnavailableError(ModelLoadError):
    """The safety checker is required (safety mode `filter`) but its weights cannot be had."""


class MaskExpressionError(InvalidInputError):
    """A mask prompt is not a valid mask expression (the message names the column and what was expected)."""


class EmptyMaskError(InvalidInputError):
    """A mask leaves nothing to regenerate (it found nothing, or covers nothing the generation sees)."""


class DeviceOutOfMemoryError(ImaginAIryError):
    """The GPU ran out of memory; a smaller image, half precision or memory mode "low" needs less."""


class IncompatibleModelError(InvalidInputError):
    """A LoRA, VAE or embedding file is made for another model architecture than the one in use, or is not one."""


class NonFiniteOutputError(ImaginAIryError):
    """The model computed NaN or inf values (broken weights, or a half-precision overflow); nothing was saved."""


class EmbeddingError(InvalidInputError):
    """A textual-inversion embedding file is missing, unreadable, of an unknown layout or does not fit the model."""
