"""The one preprocessing path: alignment puts landmarks where the checkpoint's template says."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from models.preprocess import (DEFAULT_TEMPLATE, PreprocessConfig, align_face, resize_face,
                               similarity_transform, to_tensor)


def test_similarity_transform_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, size=(5, 2))
    angle, scale, shift = np.deg2rad(20), 1.7, np.array([12.0, -5.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ rot.T + shift
    m = similarity_transform(src, dst)
    np.testing.assert_allclose(m[:, :2], rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], shift, atol=1e-9)


@pytest.mark.parametrize("channels", ["gray", "rgb"])
def test_align_face_puts_landmarks_on_the_template(channels):
    cfg = PreprocessConfig(input_size=64, channels=channels, mean=(0.5,) * (1 if channels == "gray" else 3),
                           std=(0.5,) * (1 if channels == "gray" else 3))
    image = np.zeros((300, 400, 3), np.uint8)
    # Landmarks: the template, scaled x3, rotated 15 degrees and shifted: align_face must undo that.
    tpl = np.asarray(DEFAULT_TEMPLATE) * 64
    a = np.deg2rad(15)
    rot = 3 * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    landmarks = tpl @ rot.T + [150, 40]
    for x, y in landmarks.round().astype(int):
        image[y - 2:y + 3, x - 2:x + 3] = 255
    crop = align_face(image, landmarks, cfg)
    assert crop.shape == (64, 64, 1 if channels == "gray" else 3) and crop.dtype == np.uint8
    for x, y in tpl.round().astype(int):
        assert crop[y, x].max() > 100, "a landmark did not land on its template position"


def test_resize_face_and_to_tensor():
    cfg = PreprocessConfig(input_size=48, channels="gray", mean=(0.5,), std=(0.5,))
    crop = resize_face(np.full((100, 80, 3), 255, np.uint8), cfg)
    assert crop.shape == (48, 48, 1)
    x = to_tensor([crop, crop], cfg)
    assert x.shape == (2, 1, 48, 48) and x.dtype == torch.float32
    assert torch.allclose(x, torch.ones_like(x))  # (1 - 0.5) / 0.5


def test_config_round_trip_and_validation():
    cfg = PreprocessConfig(input_size=64, channels="rgb", mean=(0.1, 0.2, 0.3), std=(1, 1, 1))
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        PreprocessConfig(input_size=64, channels="rgb", mean=(0.5,), std=(0.5,))
    with pytest.raises(ValueError):
        PreprocessConfig(input_size=64, channels="bgr")


def test_source_size_frames_at_the_data_set_resolution_then_enlarges():
    """A 64 px network trained on 48 px faces: serving frames at 48 px, then enlarges, like training did."""
    native = PreprocessConfig(input_size=48, channels="gray", mean=(0.5,), std=(0.5,))
    enlarged = PreprocessConfig(input_size=64, channels="gray", mean=(0.5,), std=(0.5,), source_size=48)
    assert (native.frame_size, enlarged.frame_size) == (48, 48)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    landmarks = np.asarray(DEFAULT_TEMPLATE) * 150 + [60, 30]
    at_48 = align_face(image, landmarks, native)
    at_64 = align_face(image, landmarks, enlarged)
    assert at_64.shape == (64, 64, 1)
    np.testing.assert_array_equal(at_64, resize_face(at_48, enlarged))  # same path as a 48 px data-set face
    # ... and is blurrier than a face warped straight to 64 px, as an enlarged FER2013 face is.
    direct = align_face(image, landmarks, PreprocessConfig(input_size=64, channels="gray", mean=(0.5,), std=(0.5,)))

    def detail(crop):
        return np.abs(cv2.Laplacian(crop.astype(np.float32), cv2.CV_32F)).mean()

    assert detail(at_64) < 0.8 * detail(direct)
    assert PreprocessConfig.from_dict(enlarged.to_dict()) == enlarged
    old = native.to_dict()
    del old["source_size"]  # checkpoints written before source_size existed
    assert PreprocessConfig.from_dict(old).source_size is None
