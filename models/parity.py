"""How closely exported models match the PyTorch ones, on real faces (the figures in the model cards).

    python -m models.export --format onnx --out exported && python -m models.parity exported
    python -m models.export --format torchscript --out exported-ts && python -m models.parity exported-ts

Faces: skimage's astronaut and matplotlib's Grace Hopper (packages in requirements-dev.txt), each aligned
for each head as the service aligns it, and mirrored: a batch of 4. Prints the largest differences of
probabilities, age and P(female), whether every argmax agrees, and, for MTCNN, the largest differences of
boxes, landmarks and scores when the exported networks do the detection.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from models.age_gender import decode_age_gender
from models.checkpoint import load_checkpoint
from models.detector import FaceDetector
from models.export import HEADS, MTCNN_NETS
from models.preprocess import align_face, to_tensor


def real_faces() -> list[np.ndarray]:
    import matplotlib.cbook
    import skimage.data
    from PIL import Image

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = np.asarray(Image.open(f).convert("RGB"))
    return [skimage.data.astronaut(), hopper]


class _Exported:
    """One exported network called like the PyTorch one: torch tensor in, tuple of numpy arrays out."""

    def __init__(self, folder: Path, name: str, fmt: str):
        if fmt == "onnx":
            from models.onnx_backend import make_session

            session = make_session(folder / f"{name}.onnx", torch.device("cpu"))
            self._run = lambda x: tuple(session.run(None, {"input": x.numpy()}))
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(str(folder / f"{name}.torchscript.pt"))
            self._run = lambda x: tuple(o.numpy() for o in module(x))

    def __call__(self, x: torch.Tensor):
        with torch.inference_mode():
            return self._run(x)


def head_parity(folder: Path, fmt: str, images: list[np.ndarray], detector: FaceDetector) -> dict:
    heads = {task: load_checkpoint(Path(__file__).parent / "weights" / f"{task}.pt", task=task) for task in HEADS}
    crops = {task: [] for task in HEADS}
    for image in images:
        face = detector.detect(image)[0]
        for task in HEADS:
            crop = align_face(image, face.landmarks, heads[task].card.preprocess)
            crops[task] += [crop, np.ascontiguousarray(crop[:, ::-1])]
    x = {task: to_tensor(c, heads[task].card.preprocess) for task, c in crops.items()}
    with torch.inference_mode():
        probs = torch.softmax(heads["emotion"].model(x["emotion"]), 1).numpy()
        ag = decode_age_gender(heads["age_gender"].model(x["age_gender"]))
    _, got_probs = _Exported(folder, "emotion", fmt)(x["emotion"])
    _, got_age, _, got_female = _Exported(folder, "age_gender", fmt)(x["age_gender"])
    return {
        "faces": len(probs),
        "emotion_max_abs_prob_diff": float(np.abs(got_probs - probs).max()),
        "emotion_argmax_identical": bool((got_probs.argmax(1) == probs.argmax(1)).all()),
        "age_max_abs_diff_years": float(np.abs(got_age - ag.age_mean.numpy()).max()),
        "p_female_max_abs_diff": float(np.abs(got_female - ag.p_female.numpy()).max()),
    }


def detector_parity(folder: Path, fmt: str, images: list[np.ndarray], detector: FaceDetector) -> dict:
    exported = FaceDetector(device="cpu")
    nets = []
    for name in MTCNN_NETS:
        run = _Exported(folder, name, fmt)
        net = torch.nn.Module()
        net.dtype_probe = torch.nn.Parameter(torch.zeros(0), requires_grad=False)
        net.forward = lambda x, run=run: tuple(torch.from_numpy(np.ascontiguousarray(o)) for o in run(x))
        nets.append(net)
    exported.use_networks(*nets)
    box, landmark, score, faces = 0.0, 0.0, 0.0, 0
    for image in images:
        expected, got = detector.detect(image), exported.detect(image)
        if len(expected) != len(got):
            return {"same_faces": False}
        for e, g in zip(expected, got):
            box = max(box, float(np.abs(e.box - g.box).max()))
            landmark = max(landmark, float(np.abs(e.landmarks - g.landmarks).max()))
            score = max(score, abs(e.score - g.score))
            faces += 1
    return {"same_faces": True, "faces": faces, "box_max_abs_diff_px": box, "landmark_max_abs_diff_px": landmark,
            "score_max_abs_diff": score}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.parity", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="what python -m models.export wrote")
    args = parser.parse_args(argv)
    fmt = json.loads((args.folder / "manifest.json").read_text())["format"]
    torch.set_num_threads(1)
    images, detector = real_faces(), FaceDetector(device="cpu")
    report = {"format": fmt, "heads": head_parity(args.folder, fmt, images, detector),
              "mtcnn": detector_parity(args.folder, fmt, images, detector)}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
