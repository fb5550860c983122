"""Shared fixtures: one inference service per test session (loading models is the slow part), a
fresh app per test, the Flask test client and CLI runner, and real face photos shipped by packages."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from app import create_app
from helpers import TestConfig


@pytest.fixture(scope="session", autouse=True)
def onnx_models():
    """The onnxruntime backend (the CPU default) exports the models once per set of weights into
    ONNX_DIR; do it first, so a server the browser tests start finds them made."""
    from models.onnx_backend import exported_models

    exported_models(TestConfig.ONNX_DIR, TestConfig.EMOTION_WEIGHTS, TestConfig.AGE_GENDER_WEIGHTS)


@pytest.fixture(scope="session")
def service():
    from app.inference.service import InferenceService

    svc = InferenceService.from_config(TestConfig)
    yield svc
    svc.close()


@pytest.fixture
def app(service):
    return create_app(TestConfig, service=service)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


# -- real faces shipped inside packages ---------------------------------------------------------
@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """Eileen Collins, one smiling frontal face, 512x512 (face box about x 180-268, y 62-172)."""
    import skimage.data

    return skimage.data.astronaut()


@pytest.fixture(scope="session")
def grace_hopper() -> np.ndarray:
    """Grace Hopper in uniform, one face, 512x600."""
    import matplotlib.cbook

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        return np.asarray(Image.open(f).convert("RGB"))


@pytest.fixture(scope="session")
def side_by_side(astronaut, grace_hopper) -> np.ndarray:
    """The two photos next to each other: two faces."""
    h = max(astronaut.shape[0], grace_hopper.shape[0])
    pad = lambda im: np.pad(im, ((0, h - im.shape[0]), (0, 0), (0, 0)))  # noqa: E731
    return np.concatenate([pad(astronaut), pad(grace_hopper)], axis=1)
