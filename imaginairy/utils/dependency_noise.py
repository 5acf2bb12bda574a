"""Quieting what our dependencies print on every normal run and that a user can do nothing about.

Each filter names the one message it hides and why; everything else still shows. Called at the edges (the `imagine`
and `aimg` commands, the server), never at import, so a library user's own warning filters are left alone.
"""

from __future__ import annotations

import warnings

# (message regex, category, where it comes from)
DEPENDENCY_WARNINGS = (
    # spandrel and facexlib script some modules with torch.jit.script, which torch 2.10+ deprecates
    (r"`torch\.jit\.script` is deprecated", FutureWarning),
    # facexlib builds torchvision's ResNet with the old `pretrained=` / positional weights arguments
    (r"The parameter 'pretrained' is deprecated", UserWarning),
    (r"Arguments other than a weight enum or `None` for 'weights' are deprecated", UserWarning),
    # torchsde's Brownian tree (k_dpmpp_sde) compares float times that round past its end point
    (r"Should have (ta|tb)(<=|>=)t[01] but got", UserWarning),
    # PIL warns on images above 89 Mpx; we read them and scale them to at most 4096 px a side
    (r"Image size \(\d+ pixels\) exceeds limit", RuntimeWarning),
    # k-diffusion's package imports `clip`, which imports the deprecated pkg_resources
    (r"pkg_resources is deprecated", UserWarning),
)


def quiet_dependency_warnings() -> None:
    """Hide the DEPENDENCY_WARNINGS for the rest of the process."""
    for message, category in DEPENDENCY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def quiet_transformers_loading() -> None:
    """No "Loading weights" progress bar from transformers for the small helper models (called where they load)."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
