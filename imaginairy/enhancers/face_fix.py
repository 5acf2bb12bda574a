"""Restoring faces with CodeFormer.

For each face a detector finds, the face is aligned by its five landmarks (eyes, nose tip, mouth corners) to the
FFHQ face template and cropped to 512x512, restored, warped back and blended in through a feathered mask.
Pixels outside the mask are left exactly as they were.

The detector and the restorer are plain callables, so either can be swapped (the tests use OpenCV's Haar
cascade, which ships inside opencv-python, because RetinaFace's weights are a download):

- a `FaceDetector` takes an RGB uint8 array (H, W, 3) and returns a list of `DetectedFace`;
- a `FaceRestorer` takes an aligned RGB uint8 face (512, 512, 3) and the fidelity, and returns the restored face
  in the same form.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from imaginairy.enhancers.spandrel_models import load_image_model
from imaginairy.errors import InvalidInputError, ModelLoadError
from imaginairy.models.cache import in_shared_cache
from imaginairy.models.weights import HelperWeights

logger = logging.getLogger(__name__)

CODEFORMER_WEIGHTS = "https://github.com/sczhou/CodeFormer/releases/download/v0.1.0/codeformer.pth"
RETINAFACE_WEIGHTS = "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth"
CODEFORMER = HelperWeights("CodeFormer face restorer", CODEFORMER_WEIGHTS, "IMAGINAIRY_CODEFORMER_MODEL")
RETINAFACE = HelperWeights("RetinaFace face detector", RETINAFACE_WEIGHTS, "IMAGINAIRY_RETINAFACE_MODEL")
DEFAULT_FIDELITY = 0.2
RETINAFACE_MIN_SCORE = 0.97
FACE_SIZE = 512
# where the five landmarks of a face sit in a 512x512 FFHQ-aligned crop (x, y): the eye on the viewer's left,
# the other eye, the nose tip, the mouth corner on the viewer's left, the other mouth corner
FACE_TEMPLATE_512 = np.array(
    [[192.98, 239.95], [318.90, 240.19], [256.63, 314.02], [201.26, 371.41], [313.09, 371.15]], dtype=np.float32
)
# the paste-back mask is 1 inside the crop, falling to 0 over this many crop pixels towards the crop's edges
FEATHER_WIDTH = 32
CROP_BORDER_GRAY = (128, 128, 128)


@dataclass(frozen=True)
class DetectedFace:
    """One face in an image: its box (x0, y0, x1, y1) and five landmarks as a (5, 2) array of (x, y), in the
    order of FACE_TEMPLATE_512, all in image pixels."""

    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    score: float = 1.0


FaceDetector = Callable[[np.ndarray], list[DetectedFace]]
FaceRestorer = Callable[[np.ndarray, float], np.ndarray]


def fix_faces(
    img: Image.Image,
    *,
    fidelity: float = DEFAULT_FIDELITY,
    detector: FaceDetector | None = None,
    restorer: FaceRestorer | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Image.Image:
    """`img` with every detected face restored; the rest of the image unchanged.

    `fidelity` in [0, 1]: 0 favours a clean face, 1 faithfulness to the input. The default detector is RetinaFace
    and the default restorer CodeFormer, both loaded (and downloaded once) on first use, on `device`.
    With no face found, a copy of `img` is returned and the log says so.
    """
    check_fidelity(fidelity)
    pixels = np.asarray(img.convert("RGB"))
    detector = detector or retinaface_detector(device=device)
    faces = detector(pixels)
    if not faces:
        logger.info("No face found; the image is left unchanged")
        return img.copy()
    restorer = restorer or codeformer_restorer(device=device, dtype=dtype)
    logger.info("Restoring %d face(s) with fidelity %s", len(faces), fidelity)
    for face in faces:
        matrix = face_alignment_matrix(face.landmarks)
        if matrix is None:
            logger.info("Skipped a face at %s: its landmarks do not define an alignment", face.box)
            continue
        restored = restorer(align_face(pixels, matrix), fidelity)
        pixels = paste_face(pixels, restored, matrix)
    fixed = Image.fromarray(pixels, "RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        fixed.putalpha(img.getchannel("A"))
    return fixed


def check_fidelity(fidelity: float) -> None:
    if isinstance(fidelity, bool) or not isinstance(fidelity, (int, float)) or not 0 <= fidelity <= 1:
        raise InvalidInputError(f"Face fix fidelity must be a number from 0 to 1, got {fidelity!r}")


def face_alignment_matrix(landmarks: np.ndarray) -> np.ndarray | None:
    """The 2x3 similarity transform (rotation, uniform scale, shift) taking the landmarks onto FACE_TEMPLATE_512,
    or None if the landmarks are degenerate."""
    import cv2

    matrix, _inliers = cv2.estimateAffinePartial2D(
        np.asarray(landmarks, dtype=np.float32), FACE_TEMPLATE_512, method=cv2.LMEDS
    )
    return matrix


def align_face(pixels: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The 512x512 aligned face crop of an RGB uint8 image; parts outside the image are gray."""
    import cv2

    return cv2.warpAffine(
        pixels,
        matrix,
        (FACE_SIZE, FACE_SIZE),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=CROP_BORDER_GRAY,
    )


def paste_mask(matrix: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """The feathered blending mask of an aligned face, as float32 (H, W) in [0, 1] over an image of
    `image_size` (width, height); exactly 0 outside the area the face crop covers."""
    import cv2

    crop_mask = np.zeros((FACE_SIZE, FACE_SIZE), dtype=np.float32)
    crop_mask[FEATHER_WIDTH:-FEATHER_WIDTH, FEATHER_WIDTH:-FEATHER_WIDTH] = 1
    crop_mask = cv2.blur(crop_mask, (FEATHER_WIDTH + 1, FEATHER_WIDTH + 1))
    return cv2.warpAffine(
        crop_mask,
        matrix,
        image_size,
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def paste_face(pixels: np.ndarray, face: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """`pixels` with the aligned `face` warped back through `matrix` and blended in through `paste_mask`."""
    import cv2

    height, width = pixels.shape[:2]
    face_in_image = cv2.warpAffine(
        face, matrix, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE
    )
    mask = paste_mask(matrix, (width, height))[:, :, None]
    blended = mask * face_in_image.astype(np.float32) + (1 - mask) * pixels.astype(np.float32)
    blended = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return np.where(mask > 0, blended, pixels)


def retinaface_detector(
    location: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    min_score: float = RETINAFACE_MIN_SCORE,
) -> FaceDetector:
    """A FaceDetector running facexlib's RetinaFace (ResNet-50) with the weights at `location` (default: the file in
    IMAGINAIRY_RETINAFACE_MODEL, else facexlib's release, downloaded once)."""
    from imaginairy.utils.devices import default_device

    device = torch.device(device) if device is not None else default_device()
    model = _load_retinaface(os.fspath(location or RETINAFACE.resolve()), str(device))

    def detect(pixels: np.ndarray) -> list[DetectedFace]:
        bgr = np.ascontiguousarray(pixels[:, :, ::-1])
        with torch.inference_mode():
            detections = model.detect_faces(bgr, min_score)
        return [
            DetectedFace(box=tuple(float(v) for v in row[:4]), landmarks=row[5:15].reshape(5, 2), score=float(row[4]))
            for row in detections
        ]

    return detect


def codeformer_restorer(
    location: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> FaceRestorer:
    """A FaceRestorer running CodeFormer, loaded through spandrel from the weights at `location` (default: the file in
    IMAGINAIRY_CODEFORMER_MODEL, else CodeFormer's release, downloaded once)."""
    location = location or CODEFORMER.resolve()
    descriptor = load_image_model(location, device=device, dtype=dtype)
    if descriptor.architecture.id != "CodeFormer":
        raise ModelLoadError(
            f"Cannot fix faces with {location}: it is a {descriptor.architecture.name} model, not CodeFormer;"
            f" point {CODEFORMER.env_var} at CodeFormer weights (codeformer.pth)"
        )
    network = descriptor.model

    def restore(face: np.ndarray, fidelity: float) -> np.ndarray:
        face_tensor = torch.from_numpy(face).permute(2, 0, 1)[None]
        # CodeFormer works on pixels in [-1, 1]; its `weight` is the fidelity
        face_tensor = face_tensor.to(device=descriptor.device, dtype=descriptor.dtype) / 127.5 - 1
        with torch.inference_mode():
            restored = network(face_tensor, weight=fidelity)[0]
        restored = ((restored[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return restored.permute(1, 2, 0).cpu().numpy()

    return restore


@in_shared_cache
def _load_retinaface(location: str, device: str):
    from facexlib.detection.retinaface import RetinaFace

    from imaginairy.models.weights import load_state_dict, resolve_weights

    path = resolve_weights(location)
    state_dict = {name.removeprefix("module."): tensor for name, tensor in load_state_dict(path).items()}
    # the two backbones the RetinaFace authors published: ResNet-50 (the default) and MobileNet-0.25
    network = "mobile0.25" if any(name.startswith("body.stage1.") for name in state_dict) else "resnet50"
    model = RetinaFace(network_name=network, half=False, device=torch.device(device))
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise ModelLoadError(
            f"Cannot load {path} as RetinaFace ({network}) face detector weights: the tensors do not fit;"
            f" point {RETINAFACE.env_var} at detection_Resnet50_Final.pth"
        ) from err
    return model.to(device).eval()
