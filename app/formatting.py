"""How a face is written, for Python: the labels burned into videos and anything else printed for
people. The pages write it the same way (static/js/faces.js: faceLabelLines, formatAge, formatPercent),
so the same face reads "#1 happy · 34 · F" on a photo, a live frame and an annotated video."""
from __future__ import annotations

import math

SEPARATOR = " · "


def round_half_up(value: float) -> int:
    """As JavaScript's Math.round, so that a page and a video never show 34 and 35 for one value."""
    return int(math.floor(value + 0.5))


def label_parts(number: int, emotion: str, years: float, gender: str) -> tuple[str, str, str]:
    """The three parts of a face's label: "#1 happy", "34", "F"."""
    return f"#{number} {emotion}", str(round_half_up(years)), gender[:1].upper()


def face_label(number: int, emotion: str, years: float, gender: str) -> str:
    """"#1 happy · 34 · F"."""
    return SEPARATOR.join(label_parts(number, emotion, years, gender))


def format_percent(probability: float) -> str:
    """"98%"."""
    return f"{round_half_up(probability * 100)}%"


def format_age(years: float, std: float) -> str:
    """"34 ± 5 years"."""
    return f"{round_half_up(years)} ± {round_half_up(std)} years"
