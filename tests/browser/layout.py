"""Rectangles measured in a page, and the overlap checks the layout tests make with them."""
from __future__ import annotations

from dataclasses import dataclass

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
VIEWPORTS = {"desktop": DESKTOP, "phone": PHONE}


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    width: float
    height: float

    @classmethod
    def of(cls, d: dict) -> "Rect":
        return cls(d["x"], d["y"], d["width"], d["height"])

    def overlap(self, other: "Rect") -> float:
        """Area the two rectangles share (0 when they only touch)."""
        w = min(self.x + self.width, other.x + other.width) - max(self.x, other.x)
        h = min(self.y + self.height, other.y + other.height) - max(self.y, other.y)
        return w * h if w > 0 and h > 0 else 0.0

    def inside(self, other: "Rect", tolerance: float = 0.5) -> bool:
        return (self.x >= other.x - tolerance and self.y >= other.y - tolerance
                and self.x + self.width <= other.x + other.width + tolerance
                and self.y + self.height <= other.y + other.height + tolerance)


def overlaps_between(labels: dict[str, Rect], obstacles: dict[str, Rect]) -> list[str]:
    """'label covers obstacle' for every label that shares area with an obstacle (itself excluded)."""
    return [f"{name} covers {other} ({rect.overlap(box):.0f} px²)"
            for name, rect in labels.items() for other, box in obstacles.items()
            if other != name and rect.overlap(box) > 0]


