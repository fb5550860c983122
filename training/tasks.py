"""What differs between the two tasks: data, preprocessing, architecture, targets, loss and metrics.

``train.py`` and ``evaluate.py`` are task-agnostic loops over a :class:`TaskData`; everything specific to
emotion or age/gender lives here, behind :func:`build_task`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from models.age_gender import GENDER_CLASSES, MAX_AGE, decode_age_gender, split_age_gender
from models.emotion import EMOTION_CLASSES
from models.preprocess import PreprocessConfig
from training import metrics as M
from training.data.fer2013 import FerData, load_fer2013
from training.data.utkface import RACE_CLASSES, UtkData, load_utkface
from training.template import TemplateResult

TASKS = ("emotion", "age_gender")
AGE_SIGMA = 2.5  # years: width of the Gaussian label distribution around the true age
AGE_L1_WEIGHT = 0.05  # small L1 on the expected age sharpens the mean without fighting the distribution
GENDER_WEIGHT = 1.0
ADULTS = (18, 70)  # years, inclusive: the "adults" line of the age/gender figures


@dataclass
class TaskData:
    """A task's data, ready for the generic loops.

    ``images`` are uint8 (N, S, S, C) crops as ``models.preprocess.resize_face`` makes them; ``targets``
    is a float32 (N, T) tensor the loss understands; ``splits`` maps split names to row indices.
    """

    task: str
    images: np.ndarray
    targets: np.ndarray
    splits: dict[str, np.ndarray]
    select_split: str  # model selection happens here
    test_split: str  # reported once, at the end
    description: dict
    load_for_template: Callable[[int], np.ndarray]  # row -> image framed like the training crops
    template_upscale: int
    extra: dict = field(default_factory=dict)  # labels the metrics need (races, ...)
    template: TemplateResult | None = None  # measured in advance (a data pack carries one)


@dataclass(frozen=True)
class Recipe:
    """A network and what it reads: architecture, its arguments, its input, and how it starts."""

    arch: str
    arch_args: dict
    preprocess: PreprocessConfig  # the template is filled in later, once measured
    imagenet_init: bool = False  # start the backbone from ImageNet weights (training only)


_GRAY = {"channels": "gray", "mean": (0.5,), "std": (0.5,)}
_RGB = {"channels": "rgb", "mean": (0.5,) * 3, "std": (0.5,) * 3}
RECIPES: dict[str, dict[str, Recipe]] = {
    "emotion": {
        "cnn": Recipe("emotion_cnn", {}, PreprocessConfig(input_size=48, **_GRAY)),
        # FER2013's 48 px faces enlarged to 64: ImageNet filters expect bigger structures than 48 px
        # leaves after the stride-2 stem; 64 px keeps both heads above 300 faces/s (bench/photo_latency.py).
        "lite0": Recipe("emotion_efficientnet_lite0", {}, PreprocessConfig(input_size=64, source_size=48, **_GRAY),
                        imagenet_init=True),
    },
    "age_gender": {
        "cnn": Recipe("age_gender_cnn", {"widths": [32, 64, 128, 256, 256], "depths": [1, 1, 1, 2, 1]},
                      PreprocessConfig(input_size=64, **_RGB)),
        "lite0": Recipe("age_gender_efficientnet_lite0", {}, PreprocessConfig(input_size=64, **_RGB),
                        imagenet_init=True),
    },
}
ARCHS = ("cnn", "lite0")


def recipe_for(task: str, arch: str = "cnn") -> Recipe:
    if task not in RECIPES:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if arch not in RECIPES[task]:
        raise ValueError(f"unknown --arch {arch!r} for {task}; expected one of {tuple(RECIPES[task])}")
    return RECIPES[task][arch]


def preprocess_for(task: str, arch: str = "cnn") -> PreprocessConfig:
    """The input the task's network gets (the template is filled in later, once measured)."""
    return recipe_for(task, arch).preprocess


def labels_for(task: str) -> dict:
    if task == "emotion":
        return {"emotion": list(EMOTION_CLASSES)}
    return {"gender": list(GENDER_CLASSES), "max_age": MAX_AGE}


# -- data ---------------------------------------------------------------------------------------------
def load_task_data(task: str, data: str | Path, seed: int = 0, ferplus: float = 0.0,
                   cache_dir: str | Path | None = None, preprocess: PreprocessConfig | None = None) -> TaskData:
    """The task's data with images at the data set's cached size (``preprocess``: the UTKFace cache's size)."""
    from training.pack import is_pack, read_pack  # here: training.pack imports this module

    if is_pack(data):  # e.g. on a lent GPU machine
        pack = read_pack(data, task)
        if ferplus and ferplus != pack.description.get("ferplus_weight", 0.0):
            raise ValueError(f"{data} was packed with FER+ weight {pack.description.get('ferplus_weight', 0.0)}; "
                             f"pack it again for --ferplus {ferplus}")
        return pack
    kwargs = {} if cache_dir is None else {"cache_dir": cache_dir}
    if task == "emotion":
        fer = load_fer2013(data, ferplus=bool(ferplus), **kwargs)
        return _emotion_data(fer, ferplus)
    if task == "age_gender":
        utk = load_utkface(data, preprocess or preprocess_for(task), seed=seed, **kwargs)
        return _age_gender_data(utk, seed)
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def _emotion_data(fer: FerData, ferplus: float) -> TaskData:
    n, k = len(fer), len(EMOTION_CLASSES)
    onehot = np.eye(k, dtype=np.float32)[fer.labels]
    targets = onehot
    if ferplus and fer.votes is not None:
        # Soft targets: mix the FER2013 label with the FER+ annotators' vote distribution. Rows whose
        # votes all went to contempt / unknown / not-a-face keep the plain label.
        totals = fer.votes.sum(1, keepdims=True)
        dist = np.where(totals > 0, fer.votes / np.maximum(totals, 1), onehot)
        targets = (1 - ferplus) * onehot + ferplus * dist
    targets = np.concatenate([targets, fer.labels[:, None].astype(np.float32)], axis=1)  # last column: hard label
    src = fer.source
    return TaskData(
        task="emotion", images=fer.images[..., None], targets=targets.astype(np.float32),
        splits={s: fer.indices(s) for s in ("Training", "PublicTest", "PrivateTest")},
        select_split="PublicTest", test_split="PrivateTest",
        description={"dataset": "FER2013", "file": src.name, "bytes": src.stat().st_size, "rows": n,
                     "split_sizes": fer.split_sizes(),
                     "ferplus_weight": float(ferplus) if fer.votes is not None else 0.0},
        load_for_template=lambda i: fer.images[i], template_upscale=3,
    )


def _age_gender_data(utk: UtkData, seed: int) -> TaskData:
    from training.data.utkface import read_rgb

    ages = np.minimum(utk.ages, MAX_AGE).astype(np.float32)  # the head has bins 0..MAX_AGE
    targets = np.stack([ages, utk.genders.astype(np.float32)], axis=1)
    names, folder = utk.names, utk.folder
    return TaskData(
        task="age_gender", images=utk.images, targets=targets,
        splits={s: utk.indices(s) for s in ("train", "val", "test")},
        select_split="val", test_split="test",
        description={"dataset": "UTKFace aligned & cropped", "folder": folder.name, **utk.stats,
                     "split_sizes": utk.split_sizes(), "split_seed": seed,
                     "split_rule": "training.data.utkface.make_split: sort by blake2b content hash, "
                                   "numpy default_rng(seed).permutation, 80/10/10"},
        # Native 200 px files: the template is measured where MTCNN sees a full-resolution face.
        load_for_template=lambda i: read_rgb(folder / names[i]), template_upscale=1,
        extra={"ages": utk.ages, "races": utk.races, "names": utk.names},
    )


# -- losses -------------------------------------------------------------------------------------------
def emotion_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.1,
                 log_prior_shift: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy against the (possibly soft) target distribution, with label smoothing.

    ``log_prior_shift`` (``tau * log(class prior)``, shape (classes,)): the logit-adjusted loss of Menon et
    al. (2021), trained on ``logits + shift`` and served on the plain logits, so that the network need not
    learn the classes' frequencies and rare classes are said more often; ``None``: plain cross-entropy.
    """
    dist = targets[:, :-1]
    k = dist.shape[1]
    dist = dist * (1 - label_smoothing) + label_smoothing / k
    logits = logits.float()
    if log_prior_shift is not None:
        logits = logits + log_prior_shift.to(logits.device)
    return -(dist * F.log_softmax(logits, dim=1)).sum(1).mean()


def log_prior_shift(labels: np.ndarray, classes: int, tau: float) -> torch.Tensor:
    """``tau * log(prior)`` of the training labels (each class counted at least once)."""
    counts = np.bincount(labels.astype(np.int64), minlength=classes).astype(np.float64) + 1.0
    return torch.tensor(tau * np.log(counts / counts.sum()), dtype=torch.float32)


def gaussian_age_targets(ages: torch.Tensor, num_bins: int, sigma: float = AGE_SIGMA) -> torch.Tensor:
    """(N,) ages -> (N, num_bins) normalised Gaussian label distributions over whole years."""
    bins = torch.arange(num_bins, device=ages.device, dtype=torch.float32)
    logp = -0.5 * ((bins[None, :] - ages[:, None].float()) / sigma) ** 2
    return torch.softmax(logp, dim=1)


def age_gender_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Label-distribution loss (KL up to a constant) + small L1 on the expected age + BCE for gender.

    ``targets``: [age, female], or with a teacher (``training.distill.with_teacher``) [age, female,
    soft female, soft age-bin distribution...]; the soft columns then replace the Gaussian and the label.
    """
    age_logits, gender_logit = split_age_gender(outputs.float())
    ages, female = targets[:, 0], targets[:, 1]
    logp = F.log_softmax(age_logits, dim=1)
    if targets.shape[1] > 2:
        female, dist = targets[:, 2], targets[:, 3:]
    else:
        dist = gaussian_age_targets(ages, age_logits.shape[1])
    ldl = -(dist * logp).sum(1).mean()
    expected = (logp.exp() * torch.arange(age_logits.shape[1], device=outputs.device)).sum(1)
    l1 = (expected - ages).abs().mean()
    # Rows with no gender to learn (training.expression_faces) carry NaN there and teach age only.
    known = ~torch.isnan(female)
    bce = F.binary_cross_entropy_with_logits(gender_logit[known], female[known]) if known.any() else \
        gender_logit.sum() * 0.0
    return ldl + AGE_L1_WEIGHT * l1 + GENDER_WEIGHT * bce


def loss_fn(task: str, label_smoothing: float = 0.1, log_prior_shift: torch.Tensor | None = None
            ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if task == "emotion":
        return lambda out, tgt: emotion_loss(out, tgt, label_smoothing, log_prior_shift)
    return age_gender_loss


# -- metrics ------------------------------------------------------------------------------------------
def emotion_metrics(logits: torch.Tensor, labels: np.ndarray, full: bool = False) -> dict:
    """Accuracy, balanced accuracy and macro-F1 (``full``: plus per-class scores and the confusion matrix)."""
    pred = logits.argmax(1).cpu().numpy()
    report = M.classification_report(labels, pred, EMOTION_CLASSES)
    if full:
        return report
    return {k: report[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "n")}


def age_gender_metrics(outputs: torch.Tensor, ages: np.ndarray, genders: np.ndarray,
                       races: np.ndarray | None = None, full: bool = False) -> dict:
    """MAE, CS@5 and gender accuracy (``full``: plus per age band, per gender and per race).

    Errors are measured against the true age clipped to MAX_AGE, the oldest age the head can output.
    """
    dec = decode_age_gender(outputs)
    age_pred = dec.age_mean.cpu().numpy()
    gender_pred = (dec.p_female.cpu().numpy() >= 0.5).astype(np.int64)
    true_age = np.minimum(ages, MAX_AGE)
    adults = (ages >= ADULTS[0]) & (ages <= ADULTS[1])  # the faces the app mostly serves, as their own line
    out = {"mae": M.mae(true_age, age_pred), "cs5": M.cumulative_score(true_age, age_pred, 5),
           "gender_accuracy": M.accuracy(genders, gender_pred), "n": int(len(ages)),
           "adults": {"ages": list(ADULTS), "n": int(adults.sum()), "mae": M.mae(true_age[adults], age_pred[adults]),
                      "gender_accuracy": M.accuracy(genders[adults], gender_pred[adults])}}
    if not full:
        return out
    bands = M.age_band(ages)
    band_names = [b[0] for b in M.AGE_BANDS]
    out["mae_by_age_band"] = M.grouped(M.mae, true_age, age_pred, bands, band_names)
    out["cs5_by_age_band"] = M.grouped(M.cumulative_score, true_age, age_pred, bands, band_names)
    out["gender_accuracy_by_age_band"] = M.grouped(M.accuracy, genders, gender_pred, bands, band_names)
    gnames = np.asarray(GENDER_CLASSES)[genders]
    out["mae_by_gender"] = M.grouped(M.mae, true_age, age_pred, gnames, GENDER_CLASSES)
    out["cs5_by_gender"] = M.grouped(M.cumulative_score, true_age, age_pred, gnames, GENDER_CLASSES)
    out["gender_accuracy_by_gender"] = M.grouped(M.accuracy, genders, gender_pred, gnames, GENDER_CLASSES)
    if races is not None:
        rnames = np.asarray(RACE_CLASSES)[races]
        out["mae_by_race"] = M.grouped(M.mae, true_age, age_pred, rnames, RACE_CLASSES)
        out["cs5_by_race"] = M.grouped(M.cumulative_score, true_age, age_pred, rnames, RACE_CLASSES)
        out["gender_accuracy_by_race"] = M.grouped(M.accuracy, genders, gender_pred, rnames, RACE_CLASSES)
    return out


def split_metrics(data: TaskData, outputs: torch.Tensor, split: str, full: bool = False) -> dict:
    idx = data.splits[split]
    if data.task == "emotion":
        return emotion_metrics(outputs, data.targets[idx, -1].astype(np.int64), full)
    return age_gender_metrics(outputs, data.extra["ages"][idx], data.targets[idx, 1].astype(np.int64),
                              data.extra["races"][idx], full)


SELECTION_RULES = {"emotion": "max PublicTest accuracy",
                   "age_gender": "max -(val MAE + 20 * (1 - val gender accuracy))"}


def selection_score(task: str, m: dict) -> float:
    """One number to pick the best epoch by, higher is better.

    Emotion: accuracy. Age/gender: -(MAE + 20 * gender error), i.e. one point of gender accuracy is worth
    0.2 years of MAE, roughly the ratio between the two targets' gaps.
    """
    if task == "emotion":
        return m["accuracy"]
    return -(m["mae"] + 20.0 * (1.0 - m["gender_accuracy"]))
