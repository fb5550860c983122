"""Uploaded bytes -> RGB pixels, with every way that can go wrong turned into a clear error."""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from app.errors import InputError, client_message

# Formats we accept, recognised by their first bytes (never by file name or client-sent type).
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class ImageError(InputError):
    """An upload that cannot become a picture."""


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # (H, W, 3) uint8 RGB, EXIF orientation applied; reduced when the picture is larger
    format: str
    width: int  # the picture's own size (EXIF-oriented): boxes are reported in these pixels
    height: int

    @property
    def scale(self) -> tuple[float, float]:
        """Original pixels per decoded pixel, x and y ((1, 1) when decoded at full size)."""
        return self.width / self.pixels.shape[1], self.height / self.pixels.shape[0]


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


def image_pixels(data: bytes, max_pixels: int) -> int:
    """The picture's pixel count from its header alone (nothing decoded): what decoding it may cost.

    Raises:
        ImageError: as :func:`decode_image`, for what the header already shows.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is checked
        img, _fmt = _open(data, max_pixels)
        return img.size[0] * img.size[1]


def decode_image(data: bytes, max_pixels: int, max_side: int | None = None) -> DecodedImage:
    """Decode an uploaded image.

    ``max_side``: a larger picture is decoded reduced: a JPEG at a reduced DCT scale (Pillow's ``draft``;
    never materialised at full size) to a longest side between ``max_side / 2`` and ``max_side``, other
    formats to ``max_side`` right after decoding.

    Raises:
        ImageError: 400 empty or corrupt, 415 not a supported image type, 422 too many pixels.
    """
    with warnings.catch_warnings():
        # We enforce our own pixel limit (in _open); PIL's bomb warning would only duplicate it.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img, fmt = _open(data, max_pixels)
        try:
            width, height = img.size
            if img.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8):  # a quarter turn
                width, height = height, width
            if max_side and max(width, height) > max_side and fmt == "JPEG":
                # draft decodes at the smallest DCT scale (1/2, 1/4, 1/8) whose picture still covers the
                # size asked for. Asking for half of max_side lands between max_side / 2 and max_side:
                # the picture is never materialised at full size (asking for max_side itself would
                # keep a 7296 px photo at full size, as 3648 < 4096).
                ratio = max_side / 2 / max(width, height)
                img.draft("RGB", (max(1, int(img.size[0] * ratio)), max(1, int(img.size[1] * ratio))))
            img.load()
            img = ImageOps.exif_transpose(img)
            if max_side and max(img.size) > max_side:
                img = _reduce(img, max_side)
            pixels = _to_rgb(img)
        except Image.DecompressionBombError:
            raise ImageError(422, "too_many_pixels", f"the image has more than {max_pixels:,} pixels") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageError(400, "corrupt_image",
                             client_message(f"the {fmt} file is corrupt or truncated ({exc})")) from None
    return DecodedImage(pixels=pixels, format=fmt, width=width, height=height)


def _open(data: bytes, max_pixels: int) -> tuple[Image.Image, str]:
    """The picture opened lazily (its header read, nothing decoded), its format sniffed from the bytes
    and its pixel count checked."""
    if not data:
        raise ImageError(400, "empty_file", "the uploaded file is empty")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageError(415, "unsupported_media_type", "unsupported file type: send a JPEG, PNG, WebP or BMP image")
    try:
        img = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError:
        raise ImageError(422, "too_many_pixels", f"the image has more than {max_pixels:,} pixels") from None
    except UnidentifiedImageError:
        # Its message quotes the file object ("cannot identify image file <_io.BytesIO object at 0x...>").
        raise ImageError(400, "corrupt_image", f"the {fmt} file is corrupt: its header cannot be read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(400, "corrupt_image",
                         client_message(f"the {fmt} file is corrupt or truncated ({exc})")) from None
    w, h = img.size
    if w * h > max_pixels:
        raise ImageError(422, "too_many_pixels", f"the image is {w}x{h} = {w * h:,} pixels; the limit is {max_pixels:,}")
    return img, fmt


def _reduce(img: Image.Image, max_side: int) -> Image.Image:
    """Longest side down to ``max_side``: integer box reduction first (cheap), then box resampling."""
    if img.mode not in ("L", "LA", "RGB", "RGBA", "CMYK", "YCbCr"):
        # 1-bit, palette and 16/32-bit modes: Pillow would resample them by nearest neighbour, or not at all.
        has_alpha = img.mode in ("PA",) or "transparency" in img.info
        img = img.convert("RGBA" if has_alpha else "RGB" if img.mode == "P" else "L")
    w, h = img.size
    ratio = max_side / max(w, h)
    size = (max(1, round(w * ratio)), max(1, round(h * ratio)))
    return img.resize(size, Image.Resampling.BOX, reducing_gap=2.0)


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent areas become white, as a viewer shows them, not black.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
