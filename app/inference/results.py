"""Typed results of an analysis; ``to_dict`` gives the JSON the API, CLI and live mode send."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from app.inference.explain import Explanation
from app.inference.quality import FaceQuality

AGE_GROUPS: tuple[tuple[str, int, int], ...] = (
    ("child", 0, 12),
    ("teen", 13, 19),
    ("young adult", 20, 35),
    ("adult", 36, 59),
    ("senior", 60, 10_000),
)


def age_group(years: float) -> str:
    """Group of a (possibly fractional) age; boundaries apply to the rounded age."""
    y = int(round(years))
    for name, lo, hi in AGE_GROUPS:
        if lo <= y <= hi:
            return name
    return AGE_GROUPS[0][0] if y < 0 else AGE_GROUPS[-1][0]


def _r(x: float, nd: int = 4) -> float:
    return round(float(x), nd)


@dataclass
class Emotion:
    label: str
    probabilities: dict[str, float]

    def to_dict(self) -> dict:
        return {"label": self.label, "probabilities": {k: _r(v) for k, v in self.probabilities.items()}}


@dataclass
class Age:
    years: float
    # One frame: the spread of the predicted age distribution. A tracked face (video, live): the
    # uncertainty of the track's combined estimate, which shrinks as frames arrive. Shown as "34 ± 4".
    std: float
    group: str

    def to_dict(self) -> dict:
        return {"years": _r(self.years, 1), "std": _r(self.std, 1), "group": self.group}


@dataclass
class Gender:
    label: str  # "female" | "male"
    probability: float  # confidence of ``label``

    @classmethod
    def from_p_female(cls, p_female: float) -> "Gender":
        """The more likely label with its probability, from the probability of "female"."""
        return cls("female", p_female) if p_female >= 0.5 else cls("male", 1.0 - p_female)

    @property
    def p_female(self) -> float:
        return self.probability if self.label == "female" else 1.0 - self.probability

    def to_dict(self) -> dict:
        return {"label": self.label, "probability": _r(self.probability)}


@dataclass
class FacePrediction:
    """What the heads say about one face crop."""

    emotion: Emotion
    age: Age
    gender: Gender


@dataclass
class Face:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in input pixels
    score: float
    landmarks: list[tuple[float, float]]  # 5 points: eyes, nose, mouth corners
    emotion: Emotion
    age: Age
    gender: Gender
    track_id: int | None = None
    quality: FaceQuality | None = None  # how much this sighting counts in a track's age and gender
    explanation: Explanation | None = None  # ?explain=true: what drove the emotion label

    def to_dict(self) -> dict:
        d = {
            "box": [_r(v, 1) for v in self.box],
            "score": _r(self.score),
            "landmarks": [[_r(x, 1), _r(y, 1)] for x, y in self.landmarks],
            "emotion": self.emotion.to_dict(),
            "age": self.age.to_dict(),
            "gender": self.gender.to_dict(),
        }
        if self.quality is not None:
            d["quality"] = self.quality.to_dict()
        if self.track_id is not None:
            d["track_id"] = self.track_id
        if self.explanation is not None:
            d["explanation"] = self.explanation.to_dict()
        return d


@dataclass
class Analysis:
    width: int
    height: int
    faces: list[Face]
    timings_ms: dict[str, float] = field(default_factory=dict)

    def rescaled(self, sx: float, sy: float, width: int, height: int) -> "Analysis":
        """The same analysis in the pixels of a picture ``sx`` x ``sy`` times larger (one that was
        decoded reduced): boxes and landmarks scaled, the picture's own size reported."""
        if (sx, sy) == (1.0, 1.0):
            return replace(self, width=width, height=height)
        def scaled(box):
            return (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)

        faces = [replace(f, box=scaled(f.box), landmarks=[(x * sx, y * sy) for x, y in f.landmarks],
                         explanation=None if f.explanation is None else replace(f.explanation,
                                                                                box=scaled(f.explanation.box)))
                 for f in self.faces]
        return replace(self, width=width, height=height, faces=faces)

    def to_dict(self) -> dict:
        return {
            "width": self.width,
            "height": self.height,
            "faces": [f.to_dict() for f in self.faces],
            "timings_ms": {k: _r(v, 2) for k, v in self.timings_ms.items()},
        }
