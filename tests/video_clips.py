"""Short test clips made on the fly: the astronaut's face moving across a plain background."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

FACE_REGION = (140, 20, 310, 215)  # x1, y1, x2, y2 around the astronaut's face, with margin


def moving_face_frames(astronaut: np.ndarray, frames: int = 24, width: int = 320, height: int = 240,
                       face_width: int = 120) -> list[np.ndarray]:
    x1, y1, x2, y2 = FACE_REGION
    face = astronaut[y1:y2, x1:x2]
    face_height = round(face_width * face.shape[0] / face.shape[1])
    face = cv2.resize(face, (face_width, face_height), interpolation=cv2.INTER_AREA)
    top = (height - face_height) // 2
    span = width - face_width
    out = []
    for i in range(frames):
        frame = np.full((height, width, 3), (90, 110, 130), dtype=np.uint8)
        left = round(span * i / max(1, frames - 1))
        frame[top:top + face_height, left:left + face_width] = face
        out.append(frame)
    return out


def write_clip(path: Path, frames: list[np.ndarray], fps: int = 12, faststart: bool = True) -> Path:
    """H.264 MP4 of RGB frames (even sides)."""
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", options=options) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def decode_all(path: Path) -> tuple[str, list[np.ndarray]]:
    """Codec name and every frame (RGB)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return stream.codec_context.name, [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
