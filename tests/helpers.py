"""Small helpers shared by the tests."""
from __future__ import annotations

import io
import tempfile

import numpy as np
from PIL import Image

from app.config import Config


class TestConfig(Config):
    __test__ = False  # a config, not a test class
    TESTING = True
    DEVICE = "cpu"
    MAX_WAIT_MS = 2.0
    UPLOAD_FOLDER = tempfile.mkdtemp(prefix="faceapp-test-uploads-")


def encode(image: np.ndarray, fmt: str = "JPEG", **save_kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, fmt, **save_kwargs)
    return buf.getvalue()


def upload(data: bytes, name: str = "photo.jpg"):
    """A multipart file tuple for the Flask test client."""
    return (io.BytesIO(data), name)


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


ASTRONAUT_FACE = (180, 62, 268, 172)
