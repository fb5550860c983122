"""Uploaded bytes -> RGB pixels, with every way that can go wrong turned into a clear error."""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from app.errors import InputError, client_message

# Formats we accept, recognised by their first bytes (never by file name or client-sent type).
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class ImageError(InputError):
    """An upload that cannot become a picture."""


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # (H, W, 3) uint8 RGB, EXIF orientation applied
    format: str


def sniff_format(data: bytes) -> str | None:
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:2] == b"BM":
        return "BMP"
    return None


def decode_image(data: bytes, max_pixels: int) -> DecodedImage:
    """Decode an uploaded image.

    Raises:
        ImageError: 400 empty or corrupt, 415 not a supported image type, 422 too many pixels.
    """
    if not data:
        raise ImageError(400, "empty_file", "the uploaded file is empty")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageError(415, "unsupported_media_type",
                         "unsupported file type: send a JPEG, PNG, WebP or BMP image")
    try:
        with warnings.catch_warnings():
            # We enforce our own pixel limit below; PIL's bomb warning would only duplicate it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=[fmt])
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(422, "too_many_pixels",
                                 f"the image is {w}x{h} = {w * h:,} pixels; the limit is {max_pixels:,}")
            img.load()
            img = ImageOps.exif_transpose(img)
            pixels = _to_rgb(img)
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(422, "too_many_pixels", f"the image has more than {max_pixels:,} pixels") from None
    except UnidentifiedImageError:
        # Its message quotes the file object ("cannot identify image file <_io.BytesIO object at 0x...>").
        raise ImageError(400, "corrupt_image", f"the {fmt} file is corrupt: its header cannot be read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(400, "corrupt_image",
                         client_message(f"the {fmt} file is corrupt or truncated ({exc})")) from None
    return DecodedImage(pixels=pixels, format=fmt)


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent areas become white, as a viewer shows them, not black.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
