"""Knowledge distillation: an ensemble of trained checkpoints teaches a new network.

    python -m training.distill emotion --data ../shared/data/fer2013 --out .cache/teachers/emotion.npz \
        --teachers runs/emotion-lite0/emotion.pt runs/emotion-stage3/emotion.pt ...
    python -m training.train emotion ... --teacher .cache/teachers/emotion.npz --teacher-weight 0.7

Serving can afford one small network per head (≥ 300 faces/s at batch 32 on 2 CPU threads), but several
networks averaged, each with flip TTA, predict better than any one of them. So the ensemble runs once,
offline, over every row of the data set; its averaged probabilities are saved (``--out``, a git-ignored
file: it is derived from the research-only data), and training mixes them into the targets:

- emotion: target distribution = (1 - w) * label distribution + w * ensemble class probabilities;
- age/gender: age-bin distribution = (1 - w) * Gaussian around the true age + w * ensemble age-bin
  probabilities, and the gender target = (1 - w) * label + w * ensemble P(female).

Teachers are averaged in probability space (``--weights`` for a weighted mean); each checkpoint teacher's own
output is the mean of its logits on the crop and its mirror image (``training.engine.predict(..., tta=True)``).
Outside teachers (``--external``) are pretrained nets run once by ``training/teachers/`` in their own
environments, whose outputs are joined to the rows by file name or row number:

- face-api.js (``training.teachers.faceapi``): emotion probabilities; an age in years, spread into bins as
  a Gaussian of :data:`EXTERNAL_AGE_SIGMA`, and P(female);
- Cydral's dlib nets (``training.teachers.dlib_age_gender``): an age distribution over 0.25, 1, ..., 80
  years, moved into our one-year bins, and P(female). The ensemble's own metrics on every
split (the training rows too: how far its targets are from the labels there) are printed and stored with
the outputs, so a card can quote them.
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from models.age_gender import split_age_gender
from models.checkpoint import load_checkpoint
from training.engine import fit_to, predict, resolve_device
from training.metrics import rounded
from training.tasks import TASKS, TaskData, gaussian_age_targets, labels_for, load_task_data, split_metrics

log = logging.getLogger("training.distill")

TEACHER_FORMAT = "faceapp-teacher-outputs"
EXTERNAL_AGE_SIGMA = 4.0  # years: how a teacher's single age becomes a distribution over the bins


@dataclass
class TeacherOutputs:
    """An ensemble's probabilities for every row of a task's data, and what they were made from.

    ``probs``: (N, 7) class probabilities for emotion; (N, A + 1) age-bin probabilities then P(female)
    for age/gender. ``data_identity`` must match the data they are applied to.
    """

    task: str
    probs: np.ndarray
    teachers: list[dict]
    data_identity: dict
    metrics: dict


def data_identity(data: TaskData) -> dict:
    """What must match for row i of the outputs to be row i of the data."""
    return {"task": data.task, "rows": int(len(data.targets)),
            "split_sizes": {k: int(len(v)) for k, v in data.splits.items()}}


def ensemble_probs(task: str, outputs: list[torch.Tensor]) -> torch.Tensor:
    """Each teacher's raw outputs -> averaged probabilities (see :class:`TeacherOutputs`)."""
    if task == "emotion":
        return torch.stack([o.float().softmax(1) for o in outputs]).mean(0)
    parts = []
    for o in outputs:
        age_logits, gender_logit = split_age_gender(o.float())
        parts.append(torch.cat([age_logits.softmax(1), torch.sigmoid(gender_logit)[:, None]], 1))
    return torch.stack(parts).mean(0)


def probs_as_outputs(task: str, probs: torch.Tensor) -> torch.Tensor:
    """Averaged probabilities -> outputs shaped like a network's, so the usual metrics can score them."""
    if task == "emotion":
        return probs.clamp_min(1e-12).log()
    age, female = probs[:, :-1], probs[:, -1].clamp(1e-6, 1 - 1e-6)
    return torch.cat([age.clamp_min(1e-12).log(), torch.logit(female)[:, None]], 1)


def row_keys(data: TaskData) -> list[str]:
    """How outside teachers name the rows: UTKFace file names, FER2013 ``row:<i>`` in file order."""
    if data.task == "age_gender":
        return [str(n) for n in data.extra["names"]]
    return [f"row:{i}" for i in range(len(data.targets))]


def external_probs(data: TaskData, path: str | Path) -> tuple[torch.Tensor, dict]:
    """An outside teacher's saved outputs for every row of ``data``, as probabilities in the layout of
    :func:`ensemble_probs`; raises when a row has no output."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays.pop("meta").tobytes().decode()) if "meta" in arrays else {}
    keys = arrays.get("keys", arrays.get("names"))
    if keys is None:
        raise ValueError(f"{path}: no keys/names: not a training/teachers output")
    where = {str(k): i for i, k in enumerate(keys.tolist())}
    try:
        rows = np.array([where[k] for k in row_keys(data)])
    except KeyError as exc:
        raise ValueError(f"{path} has no output for row {exc.args[0]!r} of this data: run the teacher on the "
                         f"same data set") from None
    if data.task == "emotion":
        if "emotion" not in arrays or not np.any(arrays["emotion"]):
            raise ValueError(f"{path} holds no emotion outputs")
        probs = torch.from_numpy(arrays["emotion"][rows].astype(np.float32))
        return probs / probs.sum(1, keepdim=True), meta
    bins = labels_for("age_gender")["max_age"] + 1
    if "age_probs" in arrays:  # a distribution over the teacher's own age classes
        years = np.clip(np.rint(arrays["age_years"]), 0, bins - 1).astype(np.int64)
        age = np.zeros((len(rows), bins), np.float32)
        np.add.at(age.T, years, arrays["age_probs"][rows].astype(np.float32).T)
        age = torch.from_numpy(age)
    elif "age" in arrays:  # one age per face
        age = gaussian_age_targets(torch.from_numpy(arrays["age"][rows].astype(np.float32)), bins,
                                   sigma=EXTERNAL_AGE_SIGMA)
    else:
        raise ValueError(f"{path} holds no age outputs")
    female = torch.from_numpy(arrays["p_female"][rows].astype(np.float32))[:, None]
    return torch.cat([age / age.sum(1, keepdim=True), female], 1), meta


def run_teachers(data: TaskData, paths: list[str], device: torch.device, external: list[str] = (),
                 weights: list[float] | None = None) -> TeacherOutputs:
    """Every teacher over every row, then their (weighted) mean in probability space."""
    n = len(paths) + len(external)
    weights = [1.0] * n if not weights else [float(w) for w in weights]
    if len(weights) != n or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"--weights needs {n} non-negative numbers (checkpoints first, then --external)")
    probs_list, teachers = [], []
    for path in paths:
        loaded = load_checkpoint(path, data.task, map_location=device)
        card, model = loaded.card, loaded.model.float().to(device)
        if json.dumps(card.labels) != json.dumps(labels_for(data.task)):
            raise ValueError(f"{path}: labels {card.labels} are not this project's {labels_for(data.task)}")
        out = predict(model, fit_to(data.images, card.preprocess), card.preprocess, device, tta=True)
        probs_list.append(ensemble_probs(data.task, [out]))
        teachers.append({"checkpoint": str(path), "arch": card.arch, "metrics": card.metrics})
        log.info("teacher %s (%s): %s", path, card.arch,
                 {s: rounded(split_metrics(data, out[data.splits[s]], s), 5) for s in _scored(data)})
    for path in external:
        probs, meta = external_probs(data, path)
        probs_list.append(probs)
        as_out = probs_as_outputs(data.task, probs)
        metrics = {s: rounded(split_metrics(data, as_out[data.splits[s]], s), 5) for s in _scored(data)}
        teachers.append({"external": str(path), **meta, "own_metrics": metrics})
        log.info("outside teacher %s (%s): %s", path, meta.get("teacher", "?"), metrics)
    for t, w in zip(teachers, weights):
        t["weight"] = w
    probs = sum(w * p for w, p in zip(weights, probs_list)) / sum(weights)
    as_out = probs_as_outputs(data.task, probs)
    metrics = {s: rounded(split_metrics(data, as_out[data.splits[s]], s), 5) for s in _scored(data)}
    log.info("ensemble of %d: %s", n, metrics)
    return TeacherOutputs(data.task, probs.numpy().astype(np.float32), teachers, data_identity(data), metrics)


def _scored(data: TaskData) -> list[str]:
    """Every non-empty split: the training rows too, where the teacher's targets are used."""
    return [s for s, rows in data.splits.items() if len(rows)]





def save_teacher_outputs(t: TeacherOutputs, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": TEACHER_FORMAT, "task": t.task, "teachers": t.teachers, "data_identity": t.data_identity,
            "metrics": t.metrics}
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, probs=t.probs.astype(np.float16), meta=np.frombuffer(
        json.dumps(meta).encode(), dtype=np.uint8))
    tmp.replace(path)
    return path


def load_teacher_outputs(path: str | Path) -> TeacherOutputs:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(z["meta"].tobytes().decode())
        probs = z["probs"].astype(np.float32)
    if meta.get("format") != TEACHER_FORMAT:
        raise ValueError(f"{path} is not a file of teacher outputs (python -m training.distill)")
    return TeacherOutputs(meta["task"], probs, meta["teachers"], meta["data_identity"], meta["metrics"])


def with_teacher(data: TaskData, teacher: TeacherOutputs, weight: float) -> TaskData:
    """The data with the ensemble mixed into its targets (see the module docstring).

    Emotion keeps its layout (distribution, then the hard label). Age/gender targets grow from
    [age, female] to [age, female, soft female, soft age-bin distribution...]; the loss reads the soft
    columns when they are there, and the metrics keep reading the hard ones.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"teacher weight must lie in [0, 1], got {weight}")
    if teacher.data_identity != data_identity(data):
        raise ValueError(f"teacher outputs were made for {teacher.data_identity}, not this data "
                         f"{data_identity(data)}: run python -m training.distill on the same --data")
    probs = teacher.probs
    if data.task == "emotion":
        targets = data.targets.copy()
        k = targets.shape[1] - 1
        targets[:, :k] = (1 - weight) * targets[:, :k] + weight * probs
    else:
        ages, female = data.targets[:, 0], data.targets[:, 1]
        bins = probs.shape[1] - 1
        label_dist = gaussian_age_targets(torch.from_numpy(ages), bins).numpy()
        soft_age = (1 - weight) * label_dist + weight * probs[:, :-1]
        soft_female = (1 - weight) * female + weight * probs[:, -1]
        targets = np.concatenate([data.targets[:, :2], soft_female[:, None], soft_age], axis=1)
    return replace(data, targets=targets.astype(np.float32))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.distill", description=__doc__.split("\n\n")[0])
    p.add_argument("task", choices=TASKS)
    p.add_argument("--data", required=True, help="the same --data the student will train on")
    p.add_argument("--teachers", nargs="*", default=[], metavar="CHECKPOINT")
    p.add_argument("--external", nargs="*", default=[], metavar="NPZ",
                   help="outside teachers' outputs (python -m training.teachers.faceapi / .dlib_age_gender)")
    p.add_argument("--weights", nargs="*", type=float, default=None,
                   help="one weight per teacher, checkpoints first, then --external (default: equal)")
    p.add_argument("--out", required=True, help="e.g. .cache/teachers/emotion.npz (git-ignored)")
    p.add_argument("--seed", type=int, default=0, help="UTKFace split seed (the student's --seed)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--cache-dir", default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> TeacherOutputs:
    a = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if a.threads:
        torch.set_num_threads(a.threads)
    if not a.teachers and not a.external:
        raise SystemExit("give --teachers and/or --external")
    data = load_task_data(a.task, a.data, seed=a.seed, cache_dir=a.cache_dir)
    outputs = run_teachers(data, a.teachers, resolve_device(a.device), a.external, a.weights)
    path = save_teacher_outputs(outputs, a.out)
    print(json.dumps({"out": str(path), "ensemble": outputs.metrics,
                      "teachers": [t.get("checkpoint") or t.get("external") for t in outputs.teachers]}, indent=2))
    return outputs


if __name__ == "__main__":
    main()
