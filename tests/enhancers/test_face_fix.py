"""Face fixing on a real photograph, `skimage.data.astronaut()`.

RetinaFace's weights are a download, so these tests detect faces with OpenCV's Haar cascade, which ships inside
opencv-python. It gives only a box; the five landmarks the alignment needs are placed at typical positions
inside that box (an approximation, good enough for a frontal face).
"""

import logging

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from imaginairy.enhancers.face_fix import (
    FACE_SIZE,
    FACE_TEMPLATE_512,
    DetectedFace,
    codeformer_restorer,
    face_alignment_matrix,
    fix_faces,
    paste_mask,
    retinaface_detector,
)
from imaginairy.errors import InvalidInputError, ModelLoadError, WeightsUnavailableError

# the astronaut's face, (x0, y0, x1, y1), checked by eye on a saved crop
ASTRONAUT_FACE_BOX = (177, 66, 272, 161)
# eyes, nose tip and mouth corners as fractions of a Haar face box, in the order of FACE_TEMPLATE_512
LANDMARKS_IN_HAAR_BOX = np.array([[0.30, 0.38], [0.70, 0.38], [0.50, 0.60], [0.34, 0.80], [0.66, 0.80]])


def haar_face_detector(pixels: np.ndarray) -> list[DetectedFace]:
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    gray = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
    boxes = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(32, 32))
    return [
        DetectedFace(box=(x, y, x + w, y + h), landmarks=np.array([x, y]) + LANDMARKS_IN_HAAR_BOX * [w, h])
        for x, y, w, h in boxes
    ]


class SpyRestorer:
    """Records the faces it is given and returns them inverted, so the paste-back is visible."""

    def __init__(self):
        self.calls = []

    def __call__(self, face: np.ndarray, fidelity: float) -> np.ndarray:
        self.calls.append((face.copy(), fidelity))
        return 255 - face


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(skimage.data.astronaut())


@pytest.fixture(scope="module")
def tiny_codeformer_path(tmp_path_factory):
    from tiny_enhancers import make_tiny_codeformer

    return make_tiny_codeformer(tmp_path_factory.mktemp("face-fix") / "codeformer.pth")


def astronaut_face(astronaut) -> DetectedFace:
    (face,) = haar_face_detector(np.asarray(astronaut))
    return face


def test_haar_detector_finds_the_astronauts_face_where_it_is(astronaut):
    face = astronaut_face(astronaut)
    np.testing.assert_allclose(face.box, ASTRONAUT_FACE_BOX, atol=10)


def test_restorer_gets_the_face_aligned_to_the_template_in_a_512_crop(astronaut):
    face = astronaut_face(astronaut)
    restorer = SpyRestorer()
    fix_faces(astronaut, fidelity=0.7, detector=haar_face_detector, restorer=restorer)

    ((crop, fidelity),) = restorer.calls
    assert crop.shape == (FACE_SIZE, FACE_SIZE, 3)
    assert crop.dtype == np.uint8
    assert fidelity == 0.7
    matrix = face_alignment_matrix(face.landmarks)
    aligned_landmarks = face.landmarks @ matrix[:, :2].T + matrix[:, 2]
    np.testing.assert_allclose(aligned_landmarks, FACE_TEMPLATE_512, atol=12)
    # the crop is the face itself: the pixels between the eyes match the photo there
    between_eyes = face.landmarks[:2].mean(axis=0).round().astype(int)
    expected = np.asarray(astronaut)[between_eyes[1], between_eyes[0]].astype(int)
    template_between_eyes = FACE_TEMPLATE_512[:2].mean(axis=0).round().astype(int)
    assert np.abs(crop[template_between_eyes[1], template_between_eyes[0]].astype(int) - expected).max() < 40


def test_only_the_face_region_changes(astronaut):
    original = np.asarray(astronaut)
    fixed = np.asarray(fix_faces(astronaut, detector=haar_face_detector, restorer=SpyRestorer()))
    mask = paste_mask(face_alignment_matrix(astronaut_face(astronaut).landmarks), astronaut.size)

    assert fixed.shape == original.shape
    np.testing.assert_array_equal(fixed[mask == 0], original[mask == 0])
    assert (fixed[mask > 0.99] != original[mask > 0.99]).any(axis=-1).all()
    # the mask surrounds the face box and stays near it
    rows, columns = np.nonzero(mask)
    x0, y0, x1, y1 = ASTRONAUT_FACE_BOX
    assert columns.min() < x0 and columns.max() > x1 and rows.min() < y0 and rows.max() > y1
    assert columns.min() > x0 - 60 and columns.max() < x1 + 60 and rows.min() > y0 - 60 and rows.max() < y1 + 60


def test_tiny_codeformer_restores_through_the_real_spandrel_loading(astronaut, tiny_codeformer_path):
    restorer = codeformer_restorer(tiny_codeformer_path, device="cpu")
    original = np.asarray(astronaut)
    fixed = np.asarray(fix_faces(astronaut, detector=haar_face_detector, restorer=restorer))
    mask = paste_mask(face_alignment_matrix(astronaut_face(astronaut).landmarks), astronaut.size)

    np.testing.assert_array_equal(fixed[mask == 0], original[mask == 0])
    assert (fixed[mask > 0.99] != original[mask > 0.99]).any()


def test_image_without_a_face_is_returned_unchanged_with_a_log_note(caplog):
    flat = Image.new("RGB", (128, 96), (90, 140, 200))
    restorer = SpyRestorer()
    with caplog.at_level(logging.INFO, logger="imaginairy.enhancers.face_fix"):
        fixed = fix_faces(flat, detector=haar_face_detector, restorer=restorer)

    assert fixed.tobytes() == flat.tobytes() and fixed.size == flat.size
    assert restorer.calls == []
    assert any("No face found" in record.getMessage() for record in caplog.records)


def test_transparency_is_kept(astronaut):
    img = astronaut.convert("RGBA")
    img.putalpha(200)
    fixed = fix_faces(img, detector=haar_face_detector, restorer=SpyRestorer())
    assert fixed.mode == "RGBA"
    assert fixed.getchannel("A").getextrema() == (200, 200)


@pytest.mark.parametrize("fidelity", [-0.1, 1.5, float("nan"), "high", None])
def test_fidelity_outside_0_to_1_is_invalid_input(astronaut, fidelity):
    with pytest.raises(InvalidInputError, match="fidelity"):
        fix_faces(astronaut, fidelity=fidelity, detector=haar_face_detector, restorer=SpyRestorer())


def test_weights_file_that_is_not_a_model_is_a_model_load_error(tmp_path):
    not_a_model = tmp_path / "codeformer.pth"
    not_a_model.write_bytes(b"\x80\x02 definitely not a checkpoint")
    with pytest.raises(ModelLoadError, match="Cannot load"):
        codeformer_restorer(not_a_model, device="cpu")


def test_upscaler_weights_are_not_a_face_restorer(tmp_path):
    from tiny_enhancers import make_tiny_realesrgan

    with pytest.raises(ModelLoadError, match="not CodeFormer"):
        codeformer_restorer(make_tiny_realesrgan(tmp_path / "RealESRGAN_x4plus.pth"), device="cpu")


def test_default_detector_offline_is_unavailable_with_a_clear_error():
    with pytest.raises(WeightsUnavailableError, match="detection_Resnet50_Final.pth"):
        retinaface_detector(device="cpu")


def test_retinaface_detector_loads_weights_in_its_checkpoint_layout(tmp_path):
    from facexlib.detection.retinaface import RetinaFace

    weights = tmp_path / "detection_Resnet50_Final.pth"
    torch.manual_seed(0)
    state_dict = RetinaFace(network_name="resnet50", device="cpu").state_dict()
    torch.save({f"module.{name}": tensor for name, tensor in state_dict.items()}, weights)
    detect = retinaface_detector(weights, device="cpu", min_score=0.0)  # random weights: keep every detection
    pixels = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    faces = detect(pixels)
    assert faces and all(isinstance(face, DetectedFace) for face in faces)
    # facexlib's rows are [x0, y0, x1, y1, score, then five (x, y) landmarks], for the image given as BGR
    from imaginairy.enhancers.face_fix import _load_retinaface

    with torch.inference_mode():
        rows = _load_retinaface(str(weights), "cpu").detect_faces(np.ascontiguousarray(pixels[:, :, ::-1]), 0.0)
    assert len(rows) == len(faces)
    for face, row in zip(faces, rows):
        np.testing.assert_array_equal(face.box, row[:4])
        assert face.score == pytest.approx(row[4])
        np.testing.assert_array_equal(face.landmarks, row[5:15].reshape(5, 2))


def test_tiny_retinaface_loads_strictly_in_the_real_architecture_and_reports_faces(tmp_path):
    """The tiny RetinaFace (facexlib's MobileNet-0.25 variant, `module.`-prefixed like the published files) goes
    through the real loader; its biased heads report faces with five landmarks on any image."""
    from tiny_retinaface import make_tiny_retinaface

    from imaginairy.enhancers.face_fix import retinaface_detector

    detect = retinaface_detector(make_tiny_retinaface(tmp_path / "retinaface.pth"), device="cpu")
    faces = detect(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    assert 1 <= len(faces) <= 8
    assert all(face.landmarks.shape == (5, 2) and face.score > 0.97 for face in faces)


def test_retinaface_weights_that_do_not_fit_name_the_setting(tmp_path):
    import torch

    from imaginairy.enhancers.face_fix import retinaface_detector
    from imaginairy.errors import ModelLoadError

    torch.save({"module.body.layer1.0.conv1.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(ModelLoadError, match="point IMAGINAIRY_RETINAFACE_MODEL at detection_Resnet50_Final.pth"):
        retinaface_detector(tmp_path / "wrong.pth", device="cpu")
