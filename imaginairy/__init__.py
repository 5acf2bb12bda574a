"""imaginAIry: images from text (and images) with Stable Diffusion, on your own machine.

    from imaginairy import imagine, ImaginePrompt
    for result in imagine([ImaginePrompt("a scenic landscape", seed=1)]):
        result.save("landscape.jpg")

The names below are imported on first use, so importing the package (and starting the CLI) stays fast.
"""

import importlib

__all__ = [
    "ImaginePrompt",
    "ImagineResult",
    "LazyLoadingImage",
    "WeightedPrompt",
    "generate_caption",
    "imagine",
    "imagine_image_files",
]

_LOCATIONS = {
    "imagine": "imaginairy.api",
    "imagine_image_files": "imaginairy.api",
    "ImaginePrompt": "imaginairy.schema",
    "ImagineResult": "imaginairy.schema",
    "LazyLoadingImage": "imaginairy.utils.images",
    "WeightedPrompt": "imaginairy.schema",
    "generate_caption": "imaginairy.enhancers.describe",
}


def __getattr__(name):
    if name not in _LOCATIONS:
        raise AttributeError(f"module 'imaginairy' has no attribute {name!r}")
    return getattr(importlib.import_module(_LOCATIONS[name]), name)


def __dir__():
    return sorted(__all__)
