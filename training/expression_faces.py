"""FER2013's faces with an outside teacher's ages: faces of every expression for the age/gender network.

Why: a person's age does not change when they smile, but the age head's reading does. On
``one_face_talking.mp4`` the shipped head read the same woman at a median 24.8 years in frames it also read
as happy and 43.4 in frames it read as neutral, while face-api.js's age net, on the same frames, moved far
less. UTKFace cannot show this (each person appears once, and between people its happy and neutral faces
carry the same error, +0.03 in log space). FER2013 holds ~28,700 training faces of all seven expressions;
face-api.js's ages for them (``python -m training.teachers.faceapi age_gender --faces fer2013``, training
time only, MIT) become extra training rows: the age head learns that teacher's reading of smiling, frowning
and surprised faces alike.

The rows are FER2013's 48 px grey faces moved from FER2013's framing to the age checkpoint's (a similarity
transform between the two measured landmark templates), as grey RGB. Gender is not taught from them
(its target is NaN, which the loss skips): face-api.js's gender on 48 px grey faces is not worth learning.

The same teacher file measures the fault on FER2013 PublicTest (:func:`expression_bias`): the mean
log-age difference between the student and the teacher per FER2013 label, and the spread of those means.

    python -m training.expression_faces --weights models/weights/age_gender.pt \\
        --fer ../shared/data/fer2013 --teacher .cache/teachers/faceapi_fer_age.npz
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.age_gender import MAX_AGE
from models.emotion import EMOTION_CLASSES
from models.preprocess import PreprocessConfig, align_face

log = logging.getLogger("training.expression_faces")

# FER2013's framing is where MTCNN finds the landmarks of its 48 px faces: the emotion checkpoint measured it
# (its card's preprocess.template), so it is read from there, not copied.
EMOTION_WEIGHTS = Path(__file__).resolve().parents[1] / "models" / "weights" / "emotion.pt"
FER_SIZE = 48
MIN_SIGMA = 2.5  # years: the Gaussian around a teacher's age is max(MIN_SIGMA, REL_SIGMA * age) wide
REL_SIGMA = 0.15  # the teacher is no surer than ~15% (its UTKFace val MAE is 6.95 years)


@dataclass(frozen=True)
class TeacherAges:
    rows: np.ndarray  # FER2013 row indices
    ages: np.ndarray  # years


def load_teacher_ages(path: str | Path) -> TeacherAges:
    """A ``training.teachers.faceapi age_gender --faces fer2013`` file -> FER2013 rows and ages."""
    with np.load(path) as z:
        meta = json.loads(bytes(z["meta"]).decode()) if "meta" in z.files else {}
        if meta.get("source") != "fer2013" or meta.get("task") != "age_gender":
            raise ValueError(f"{path}: not an age teacher's output on FER2013 faces ({meta}); make it with "
                             f"python -m training.teachers.faceapi age_gender --faces fer2013 ...")
        rows = np.asarray([int(str(k).split(":", 1)[1]) for k in z["keys"]], dtype=np.int64)
        ages = z["age"].astype(np.float32)
    found = np.isfinite(ages)  # NaN where the teacher's net gave no reading (e.g. a blank face)
    # face-api.js's age is a plain regression: a few babies come out below zero.
    return TeacherAges(rows=rows[found], ages=np.maximum(ages[found], 0.0))


def fer_template(emotion_weights: str | Path = EMOTION_WEIGHTS) -> tuple[tuple[float, float], ...]:
    from models.checkpoint import load_checkpoint

    return load_checkpoint(emotion_weights, task="emotion").card.preprocess.template


def to_age_framing(faces: np.ndarray, cfg: PreprocessConfig, template=None) -> np.ndarray:
    """(N, 48, 48) grey FER2013 faces -> (N, S, S, 3) crops framed like the age checkpoint's training faces:
    ``template`` (FER2013's, default :func:`fer_template`) is moved onto ``cfg.template``."""
    landmarks = np.asarray(template or fer_template(), dtype=np.float64) * FER_SIZE
    return np.stack([align_face(np.repeat(f[:, :, None], 3, axis=2), landmarks, cfg) for f in faces])


def soft_age_targets(ages: np.ndarray, bins: int) -> np.ndarray:
    """Teacher ages -> (N, bins) Gaussian distributions over whole years, wider for older ages."""
    grid = np.arange(bins, dtype=np.float64)[None, :]
    sigma = np.maximum(MIN_SIGMA, REL_SIGMA * ages.astype(np.float64))[:, None]
    logp = -0.5 * ((grid - ages[:, None]) / sigma) ** 2
    p = np.exp(logp - logp.max(1, keepdims=True))
    return (p / p.sum(1, keepdims=True)).astype(np.float32)


def expression_rows(fer_images: np.ndarray, usage: np.ndarray, teacher: TeacherAges, cfg: PreprocessConfig,
                    count: int, bins: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` FER2013 *Training* faces with teacher ages, as (images, targets) in the soft target layout of
    ``training.distill.with_teacher``: [age, female, soft female, soft age-bin distribution...], female NaN."""
    train = teacher.rows[usage[teacher.rows] == "Training"]
    ages = dict(zip(teacher.rows.tolist(), teacher.ages.tolist()))
    pick = np.sort(np.random.default_rng(seed).choice(train, size=min(count, len(train)), replace=False))
    picked_ages = np.asarray([ages[int(i)] for i in pick], dtype=np.float32).clip(0, bins - 1)
    nan = np.full((len(pick), 1), np.nan, dtype=np.float32)
    targets = np.concatenate([picked_ages[:, None], nan, nan, soft_age_targets(picked_ages, bins)], axis=1)
    return to_age_framing(fer_images[pick], cfg), targets


def with_expression_faces(data, rows: np.ndarray, fer_folder: str | Path, teacher_path: str | Path, count: int,
                          cfg: PreprocessConfig, seed: int = 0,
                          cache_dir: str | Path | None = None) -> tuple[object, np.ndarray]:
    """A ``training.tasks.TaskData`` (age_gender) with ``count`` teacher-aged FER2013 faces appended, and the
    training ``rows`` with them. Targets move to the soft layout of ``training.distill.with_teacher`` if
    they are not in it yet (the same loss: the Gaussian around the label, and the label as soft gender)."""
    from dataclasses import replace

    from training.data.fer2013 import load_fer2013
    from training.tasks import gaussian_age_targets

    targets = data.targets
    bins = int(targets.shape[1] - 3) if targets.shape[1] > 2 else MAX_AGE + 1  # the head's bins 0..MAX_AGE
    if targets.shape[1] == 2:
        dist = gaussian_age_targets(torch.from_numpy(targets[:, 0].copy()), bins).numpy()
        targets = np.concatenate([targets, targets[:, 1:2], dist], axis=1).astype(np.float32)
    fer = load_fer2013(fer_folder, **({} if cache_dir is None else {"cache_dir": cache_dir}))
    images, extra = expression_rows(fer.images, fer.usage, load_teacher_ages(teacher_path), cfg, count, bins, seed)
    if images.shape[1:] != data.images.shape[1:]:
        raise ValueError(f"expression faces are {images.shape[1:]}, the task's images {data.images.shape[1:]}")
    first = len(data.images)
    data = replace(data, images=np.concatenate([data.images, images]), targets=np.concatenate([targets, extra]),
                   description={**data.description, "expression_faces": {
                       "rows": int(len(images)), "source": "FER2013 Training", "teacher": str(teacher_path),
                       "sigma": f"max({MIN_SIGMA}, {REL_SIGMA} x age)", "gender": "not taught"}})
    return data, np.concatenate([rows, np.arange(first, first + len(images))])


def expression_bias(model, cfg: PreprocessConfig, fer_images: np.ndarray, labels: np.ndarray, usage: np.ndarray,
                    teacher: TeacherAges, device: torch.device, split: str = "PublicTest") -> dict:
    """Per FER2013 label on ``split``: mean of log(1 + student age) - log(1 + teacher age); ``range``
    is the largest minus the smallest of those means (0: the student reads every expression as the
    teacher does, relative to one another); ``happy_minus_neutral`` the difference the clip showed."""
    from models.age_gender import decode_age_gender
    from training.engine import predict

    rows = teacher.rows[usage[teacher.rows] == split]
    ages = dict(zip(teacher.rows.tolist(), teacher.ages.tolist()))
    student = decode_age_gender(predict(model, to_age_framing(fer_images[rows], cfg), cfg, device)).age_mean.numpy()
    diff = np.log1p(student) - np.log1p(np.asarray([ages[int(i)] for i in rows]))
    per = {name: round(float(diff[labels[rows] == k].mean()), 4)
           for k, name in enumerate(EMOTION_CLASSES) if (labels[rows] == k).any()}
    return {"split": split, "faces": int(len(rows)), "mean_log_diff": per,
            "range": round(max(per.values()) - min(per.values()), 4),
            "happy_minus_neutral": round(per["happy"] - per["neutral"], 4)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.expression_faces", description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True, nargs="+", help="age_gender checkpoint(s)")
    p.add_argument("--fer", required=True, help="FER2013 CSV or its folder")
    p.add_argument("--teacher", required=True, type=Path, help="faceapi age_gender --faces fer2013 output")
    p.add_argument("--split", default="PublicTest", choices=("PublicTest", "PrivateTest"))
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from models.checkpoint import load_checkpoint
    from training.data.fer2013 import load_fer2013

    fer, teacher = load_fer2013(a.fer), load_teacher_ages(a.teacher)
    for path in a.weights:
        loaded = load_checkpoint(path, task="age_gender")
        bias = expression_bias(loaded.model, loaded.card.preprocess, fer.images, fer.labels, fer.usage, teacher,
                               torch.device("cpu"), a.split)
        print(json.dumps({"weights": path, **bias}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
