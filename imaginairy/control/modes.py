"""The ControlNet modes: which public checkpoint each uses and how its hint is made from an image.

The checkpoints are lllyasviel's ControlNet 1.1 for SD 1.5 (https://huggingface.co/lllyasviel/ControlNet-v1-1), in
their original layout. `preprocessor` says how a photo becomes the hint: "canny" (OpenCV edges), "image" (the mode's
hint is the image itself: tile's low-resolution source, ip2p's picture to edit), or None: no preprocessor yet, so the
control image must already be the hint (a depth map, a pose skeleton...), which the user says with `preprocess=False`.
"""

from __future__ import annotations

from dataclasses import dataclass

CONTROLNET_REPO = "hf://lllyasviel/ControlNet-v1-1"


@dataclass(frozen=True)
class ControlMode:
    name: str
    weights: str
    preprocessor: str | None
    hint: str  # what the hint image shows, for messages and help


CONTROL_MODES = {
    mode.name: mode
    for mode in [
        ControlMode("canny", f"{CONTROLNET_REPO}/control_v11p_sd15_canny.pth", "canny", "white Canny edges on black"),
        ControlMode("depth", f"{CONTROLNET_REPO}/control_v11f1p_sd15_depth.pth", None, "a depth map, near is bright"),
        ControlMode("openpose", f"{CONTROLNET_REPO}/control_v11p_sd15_openpose.pth", None, "an OpenPose skeleton"),
        ControlMode("lineart", f"{CONTROLNET_REPO}/control_v11p_sd15_lineart.pth", None, "white line art on black"),
        ControlMode("softedge", f"{CONTROLNET_REPO}/control_v11p_sd15_softedge.pth", None, "HED / PiDi soft edges"),
        ControlMode("scribble", f"{CONTROLNET_REPO}/control_v11p_sd15_scribble.pth", None, "white scribbles on black"),
        ControlMode("normalbae", f"{CONTROLNET_REPO}/control_v11p_sd15_normalbae.pth", None, "a BAE normal map"),
        ControlMode("seg", f"{CONTROLNET_REPO}/control_v11p_sd15_seg.pth", None, "an ADE20k segmentation map"),
        ControlMode("tile", f"{CONTROLNET_REPO}/control_v11f1e_sd15_tile.pth", "image", "the image itself"),
        ControlMode("ip2p", f"{CONTROLNET_REPO}/control_v11e_sd15_ip2p.pth", "image", "the image to edit"),
    ]
}
# Modes of ControlNet 1.1 whose conditioning is more than a hint image; refused with these reasons.
UNSUPPORTED_MODES = {
    "shuffle": "its ControlNet pools its residuals globally and takes a randomly warped image, not implemented yet",
    "inpaint": "its hint marks the masked pixels with -1, which an image cannot carry; not implemented yet",
}
