"""The /live wire protocol: what a client sends with each ``frame`` event and what it gets back.

Client to server, event ``frame`` with an acknowledgement callback::

    {"seq": int >= 0, "image": <JPEG bytes>, "alpha": float (optional)}

The acknowledgement (the handler's return value) is one of::

    {"seq": int, "faces": [face, ...], "timings_ms": {stage: ms}}
    {"seq": int | None, "error": {"code": str, "message": str}}

Everything here is plain data in, plain data out: no sockets, no service.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from app.errors import error_body
from app.imaging import ImageError, decode_image, sniff_format
from app.inference.results import Face

# Bounds of the smoothing weight a client may ask for: 1 is no smoothing; below 0.05 a label would
# take seconds to follow a real change of expression.
MIN_ALPHA, MAX_ALPHA = 0.05, 1.0


class FrameError(ValueError):
    """A frame the server will not analyse; ``code`` and ``message`` go back in the acknowledgement."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Frame:
    seq: int
    jpeg: bytes
    alpha: float  # already clamped to [MIN_ALPHA, MAX_ALPHA]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def seq_of(payload: object) -> int | None:
    """The frame's sequence number if the payload carries a valid one (error answers echo it)."""
    seq = payload.get("seq") if isinstance(payload, dict) else None
    return seq if _is_int(seq) and seq >= 0 else None


def parse_frame(payload: object, max_bytes: int, default_alpha: float) -> Frame:
    """Checks a ``frame`` payload without decoding the picture (cheap, done before taking a slot).

    Raises:
        FrameError: ``invalid_payload``, ``invalid_seq``, ``frame_too_large`` or ``not_jpeg``.
    """
    if not isinstance(payload, dict):
        raise FrameError("invalid_payload", 'a frame must be an object {"seq", "image", "alpha"}, '
                                            f"got {type(payload).__name__}")
    seq = seq_of(payload)
    if seq is None:
        raise FrameError("invalid_seq", "'seq' must be a non-negative integer")
    image = payload.get("image")
    if not isinstance(image, (bytes, bytearray)):
        raise FrameError("invalid_payload", "'image' must be binary JPEG data (an ArrayBuffer in a browser), "
                                            f"got {type(image).__name__}")
    if len(image) > max_bytes:
        raise FrameError("frame_too_large", f"the frame is {len(image):,} bytes; the limit is {max_bytes:,}")
    if sniff_format(image) != "JPEG":
        raise FrameError("not_jpeg", "the frame is not a JPEG image")
    alpha = payload.get("alpha", default_alpha)
    if not _is_number(alpha):
        raise FrameError("invalid_payload", f"'alpha' must be a number (clamped to [{MIN_ALPHA}, {MAX_ALPHA}])")
    return Frame(seq=seq, jpeg=bytes(image), alpha=min(MAX_ALPHA, max(MIN_ALPHA, float(alpha))))


def decode_frame(jpeg: bytes, max_side: int) -> np.ndarray:
    """JPEG bytes -> RGB pixels, refusing frames whose longest side exceeds ``max_side``.

    Raises:
        FrameError: ``frame_too_large``, or the decoder's code (``corrupt_image``, ...).
    """
    too_large = f"the frame's longest side may be at most {max_side} pixels"
    try:
        # A pixel limit of max_side² stops a huge picture before it is decoded.
        pixels = decode_image(jpeg, max_pixels=max_side * max_side).pixels
    except ImageError as exc:
        if exc.code == "too_many_pixels":
            raise FrameError("frame_too_large", too_large) from None
        raise FrameError(exc.code, exc.message) from None
    h, w = pixels.shape[:2]
    if max(h, w) > max_side:
        raise FrameError("frame_too_large", f"{too_large}; this one is {w}x{h}")
    return pixels


def result_ack(seq: int, faces: Sequence[Face], timings_ms: dict[str, float]) -> dict:
    return {"seq": seq, "faces": [f.to_dict() for f in faces],
            "timings_ms": {k: round(v, 2) for k, v in timings_ms.items()}}


def error_ack(seq: int | None, code: str, message: str) -> dict:
    return {"seq": seq, **error_body(code, message)}
