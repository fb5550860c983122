"""Emotion and age/gender teacher: face-api.js's nets (``@vladmandic/face-api@1.7.15``, MIT), run under Node.

Training time only. Install once, outside the project's ``node_modules`` (the pages never load it)::

    mkdir -p .cache/faceapi && (cd .cache/faceapi && npm init -y >/dev/null && npm install \
        @vladmandic/face-api@1.7.15 @tensorflow/tfjs@4.22.0 @tensorflow/tfjs-backend-wasm@4.22.0)
    python -m training.teachers.faceapi emotion --data ../shared/data/fer2013 --out .cache/teachers/faceapi_fer.npz
    python -m training.teachers.faceapi age_gender --data ../shared/data/utkface/UTKFace \
        --out .cache/teachers/faceapi_utk.npz
    python -m training.teachers.faceapi age_gender --faces fer2013 --data ../shared/data/fer2013 \
        --out .cache/teachers/faceapi_fer_age.npz      # ages of faces of every expression

Both nets read 112 px RGB face boxes. FER2013's 48 px grey faces are enlarged (bicubic) and given as
grey RGB; UTKFace's 200 px aligned crops are cut to their central 150 px, about where a face detector's
box sits, then reduced. The output (git-ignored: derived from the research-only data) holds ``keys``
(FER2013: ``"row:<i>"`` in file order; UTKFace: file names), ``emotion`` (N, 7) in FER2013 class order,
``age`` (N,) years and ``p_female`` (N,).
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from models.emotion import EMOTION_CLASSES

log = logging.getLogger("training.teachers.faceapi")

PACKAGE = "@vladmandic/face-api@1.7.15"
SIZE = 112
SCRIPT = Path(__file__).with_name("faceapi_teacher.cjs")
DEFAULT_NODE_MODULES = Path(__file__).resolve().parents[2] / ".cache" / "faceapi" / "node_modules"
# face-api's expression order (faceapi_teacher.cjs) -> FER2013's
_FACEAPI_EXPRESSIONS = ("neutral", "happy", "sad", "angry", "fearful", "disgusted", "surprised")
_FACEAPI_NAME = {"angry": "angry", "disgust": "disgusted", "fear": "fearful", "happy": "happy", "sad": "sad",
                 "surprise": "surprised", "neutral": "neutral"}  # FER2013 class -> face-api's name
UTK_CENTRE = 150  # px of a 200 px UTKFace crop given as the face box


def fer_crops(folder: str | Path) -> tuple[list[str], np.ndarray]:
    from training.data.fer2013 import load_fer2013

    fer = load_fer2013(folder)
    crops = np.stack([cv2.resize(im, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC) for im in fer.images])
    return [f"row:{i}" for i in range(len(fer))], np.repeat(crops[..., None], 3, axis=3)


def utk_crops(folder: str | Path) -> tuple[list[str], np.ndarray]:
    from training.data.utkface import read_rgb

    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.name.lower().endswith(".jpg"))
    crops = []
    for p in files:
        im = read_rgb(p)
        h, w = im.shape[:2]
        s = min(UTK_CENTRE * min(h, w) // 200, h, w)
        y, x = (h - s) // 2, (w - s) // 2
        crops.append(cv2.resize(im[y:y + s, x:x + s], (SIZE, SIZE), interpolation=cv2.INTER_AREA))
    return [p.name for p in files], np.stack(crops)


def run_faceapi(crops: np.ndarray, node_modules: Path = DEFAULT_NODE_MODULES, mode: str = "both") -> np.ndarray:
    """(N, 112, 112, 3) uint8 RGB -> (N, 9): 7 expression probabilities (face-api order), age, P(female).

    ``mode``: ``emotion`` or ``age_gender`` runs one net only (the other's columns stay 0); ``both``.
    """
    if not (node_modules / "@vladmandic" / "face-api").is_dir():
        raise FileNotFoundError(f"{node_modules}: {PACKAGE} is not installed there (see the module docstring)")
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "crops.u8", Path(tmp) / "out.f32"
        np.ascontiguousarray(crops, dtype=np.uint8).tofile(src)
        subprocess.run(["node", str(SCRIPT), str(node_modules), str(src), str(len(crops)), str(SIZE), str(dst), mode],
                       check=True)
        return np.fromfile(dst, dtype=np.float32).reshape(len(crops), 9)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.teachers.faceapi", description=__doc__.split("\n\n")[0])
    p.add_argument("task", choices=("emotion", "age_gender"))
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--faces", choices=("fer2013", "utkface"), default=None,
                   help="whose faces the net reads (default: FER2013 for emotion, UTKFace for age_gender); "
                        "age_gender on FER2013 gives ages for faces of every expression")
    p.add_argument("--node-modules", type=Path, default=DEFAULT_NODE_MODULES)
    a = p.parse_args(argv)
    faces = a.faces or ("fer2013" if a.task == "emotion" else "utkface")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    keys, crops = fer_crops(a.data) if faces == "fer2013" else utk_crops(a.data)
    log.info("%d faces from %s", len(keys), a.data)
    out = run_faceapi(crops, a.node_modules, mode=a.task)
    order = [_FACEAPI_EXPRESSIONS.index(_FACEAPI_NAME[c]) for c in EMOTION_CLASSES]
    meta = {"teacher": PACKAGE, "licence": "MIT", "task": a.task, "data": Path(a.data).name, "faces": len(keys),
            "source": faces}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(a.out, keys=np.asarray(keys), emotion=out[:, order].astype(np.float32), age=out[:, 7],
                        p_female=out[:, 8], meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    log.info("wrote %s", a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
