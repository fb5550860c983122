"""One way to write a face (app/formatting.py) and burned-in labels sized to the frame."""
from __future__ import annotations

import numpy as np
import pytest

from app.formatting import face_label, format_age, format_percent, label_parts
from app.video.processing import TRACK_COLORS, draw_label, label_text_height


def test_a_face_is_written_as_on_the_pages():
    assert face_label(1, "happy", 34.5, "female") == "#1 happy · 35 · F"  # half up, as Math.round
    assert label_parts(12, "neutral", 36.49, "male") == ("#12 neutral", "36", "M")
    assert format_age(51.3, 11.4) == "51 ± 11 years"
    assert format_percent(0.975) == "98%" and format_percent(1.0) == "100%"


def tag_rows(width: int, height: int, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Bounds (left, top, right, bottom) of the tag drawn for a face at ``box`` on a black frame."""
    image = np.zeros((height, width, 3), np.uint8)
    draw_label(image, label_parts(1, "neutral", 36, "female"), box, label_text_height(width, height), TRACK_COLORS[0])
    ys, xs = np.nonzero((image == TRACK_COLORS[0]).all(axis=2))
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


@pytest.mark.parametrize("width, height", [(596, 336), (1280, 720), (1920, 1080)])
def test_label_text_scales_with_the_frame(width, height):
    left, top, right, bottom = tag_rows(width, height, (width // 3, height // 2, width // 2, height * 3 // 4))
    # ~4% of the frame's longer side: the same share of the picture on a phone as on a desktop
    assert 0.03 <= (bottom - top) / max(width, height) <= 0.05, (bottom - top)
    assert bottom == height // 2  # just above the box


def test_a_label_at_the_edge_stays_in_the_frame():
    left, top, right, bottom = tag_rows(596, 336, (560, 0, 596, 60))
    assert top >= 60 - 1 and right <= 596  # below the box at the top edge, moved left at the right edge
