"""The MTCNN pipeline (models/mtcnn_pipeline.py): OpenCV resampling around facenet-pytorch's networks
and box logic. It must find what facenet-pytorch's own ``detect_face`` finds, and small faces too."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from helpers import ASTRONAUT_FACE, TestConfig, box_iou
from models.detector import FaceDetector


@pytest.fixture(scope="module")
def detector():
    return FaceDetector(device="cpu")


def small_face_picture(astronaut, face_px: int, size: tuple[int, int], at: tuple[int, int]):
    """The astronaut shrunk until her face is ``face_px`` wide, on a textured background of ``size``
    (w, h) at ``at`` (x, y); returns the picture and where the face is."""
    scale = face_px / (ASTRONAUT_FACE[2] - ASTRONAUT_FACE[0])
    side = round(astronaut.shape[0] * scale)
    small = cv2.resize(astronaut, (side, side), interpolation=cv2.INTER_AREA)
    w, h = size
    rng = np.random.default_rng(0)
    background = cv2.resize(rng.integers(60, 200, (h // 16, w // 16, 3), dtype=np.uint8), (w, h))
    picture = background.copy()
    picture[at[1]:at[1] + side, at[0]:at[0] + side] = small
    face = tuple(at[i % 2] + v * scale for i, v in enumerate(ASTRONAUT_FACE))
    return picture, face


def test_a_24_pixel_face_is_found_in_a_photo(service, astronaut):
    """Photos are searched for faces down to PHOTO_MIN_FACE (24) pixels: a 24-pixel face in a 1280x960
    picture is found, through the service's photo path."""
    assert TestConfig.PHOTO_MIN_FACE == 24
    picture, face = small_face_picture(astronaut, 24, (1280, 960), (700, 400))
    found = service.analyze(picture).faces
    assert any(box_iou(f.box, face) > 0.5 for f in found), [f.box for f in found]


def test_boxes_of_a_downscaled_picture_come_back_in_its_own_pixels(detector, astronaut):
    """Over ``max_side`` the picture is searched on a reduced copy: a 48-pixel face in a 2560x1920
    picture is 24 pixels there, still found, and reported where it is in the picture."""
    picture, face = small_face_picture(astronaut, 48, (2560, 1920), (1500, 900))
    assert max(picture.shape[:2]) > detector.max_side
    found = detector.detect(picture, min_face=24)
    assert any(box_iou(d.box, face) > 0.5 for d in found), [d.box for d in found]


def test_a_larger_smallest_face_is_a_smaller_search(detector, astronaut):
    """min_face sets the pyramid's first level (12 / min_face of the picture): 24 searches 0.69x the
    pixels of 20, and the astronaut is found either way."""
    from models.mtcnn_pipeline import pyramid_scales

    area = lambda mf: sum(round(480 * s + 1) * round(640 * s + 1) for s in pyramid_scales(480, 640, mf))  # noqa: E731
    assert area(24) / area(20) < 0.72
    assert len(detector.detect(astronaut, min_face=24)) == len(detector.detect(astronaut, min_face=20)) == 1


@pytest.mark.parametrize("photo", ["astronaut", "grace_hopper", "side_by_side"])
def test_same_faces_as_facenet_pytorch(detector, request, photo):
    image = request.getfixturevalue(photo)
    boxes, probs = detector._mtcnn.detect(image)
    reference = [np.asarray(b, np.float32) for b, p in zip(boxes, probs) if p >= detector.min_score]
    found = detector.detect(image)
    assert len(found) == len(reference) >= 1
    # Another resampling moves boxes by a few pixels (as detecting on a downscaled copy does; the live
    # tests allow the same 0.85), and the landmarks the heads align with by less.
    for box in reference:
        assert max(box_iou(d.box, box) for d in found) > 0.85
