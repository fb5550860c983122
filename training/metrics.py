"""Evaluation metrics, pure numpy (no torch, no sklearn), so they are easy to check by hand.

Classification: accuracy, balanced accuracy, confusion matrix, per-class precision / recall / F1, macro-F1,
majority labels from annotators' votes (FER+).
Age regression: mean absolute error (MAE) and cumulative score CS@k (share of errors <= k years).
Grouped: any metric per group (age band, gender, race) for the fairness tables.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

# Age bands for grouped figures: (name, first year, last year inclusive).
AGE_BANDS: tuple[tuple[str, int, int], ...] = (
    ("0-12", 0, 12), ("13-19", 13, 19), ("20-35", 20, 35), ("36-59", 36, 59), ("60+", 60, 10**6),
)


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError("y_true and y_pred differ in shape")
    return float((y_true == y_pred).mean()) if y_true.size else float("nan")


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts (K, K): row = true class, column = predicted class."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if y_true.size and (min(y_true.min(), y_pred.min()) < 0 or max(y_true.max(), y_pred.max()) >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}")
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class from a confusion matrix.

    A class never predicted has precision 0 (and a class with no samples recall 0), the usual
    convention that keeps macro averages honest instead of skipping the hard classes.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    predicted, support = cm.sum(0), cm.sum(1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64)}


def macro_f1(cm: np.ndarray) -> float:
    return float(per_class_scores(cm)["f1"].mean())


def balanced_accuracy(cm: np.ndarray) -> float:
    """Mean recall over the classes that occur: what accuracy would be if every class were equally common."""
    scores = per_class_scores(cm)
    present = scores["support"] > 0
    return float(scores["recall"][present].mean()) if present.any() else float("nan")


def majority_labels(votes: np.ndarray) -> np.ndarray:
    """Annotators' vote counts (N, K) -> the class with the most votes, or -1 where none or a tie.

    Used for FER+: a row whose votes all went elsewhere (contempt, unknown, not a face) has no label,
    and a tie has no single majority, so both are left out of majority-vote accuracy.
    """
    votes = np.asarray(votes, dtype=np.float64)
    top = votes.max(1, keepdims=True)
    unique = (votes == top).sum(1) == 1
    return np.where(unique & (top[:, 0] > 0), votes.argmax(1), -1)


def classification_report(y_true: Sequence[int], y_pred: Sequence[int], class_names: Sequence[str]) -> dict:
    """Accuracy, balanced accuracy, macro-F1, per-class P/R/F1 and the confusion matrix, as plain
    JSON-able values."""
    cm = confusion_matrix(y_true, y_pred, len(class_names))
    scores = per_class_scores(cm)
    return {
        "accuracy": accuracy(y_true, y_pred),
        "balanced_accuracy": balanced_accuracy(cm),
        "macro_f1": macro_f1(cm),
        "per_class": {name: {k: (int(v[i]) if k == "support" else float(v[i])) for k, v in scores.items()}
                      for i, name in enumerate(class_names)},
        "confusion_matrix": cm.tolist(),
        "n": int(len(np.asarray(y_true))),
    }


def mae(y_true: Sequence[float], y_pred: Sequence[float]) -> float:
    y_true, y_pred = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    return float(np.abs(y_true - y_pred).mean()) if y_true.size else float("nan")


def cumulative_score(y_true: Sequence[float], y_pred: Sequence[float], k: float = 5.0) -> float:
    """CS@k: the share of predictions within k years of the truth (|error| <= k)."""
    err = np.abs(np.asarray(y_true, dtype=np.float64) - np.asarray(y_pred, dtype=np.float64))
    return float((err <= k).mean()) if err.size else float("nan")


def age_band(ages: Sequence[float]) -> np.ndarray:
    """Age in years -> band name from ``AGE_BANDS``."""
    ages = np.asarray(ages)
    out = np.empty(ages.shape, dtype=object)
    for name, lo, hi in AGE_BANDS:
        out[(ages >= lo) & (ages <= hi)] = name
    return out


def grouped(metric: Callable[[np.ndarray, np.ndarray], float], y_true: Sequence, y_pred: Sequence,
            groups: Sequence, order: Sequence | None = None) -> dict:
    """``metric`` per group -> {group: {"value": ..., "n": ...}}, in ``order`` (default: sorted groups).

    Groups listed in ``order`` but absent from the data are reported with n = 0 and value NaN, so
    tables keep all their rows.
    """
    y_true, y_pred, groups = np.asarray(y_true), np.asarray(y_pred), np.asarray(groups)
    keys = list(order) if order is not None else sorted(set(groups.tolist()))
    out = {}
    for g in keys:
        mask = groups == g
        n = int(mask.sum())
        out[g] = {"value": metric(y_true[mask], y_pred[mask]) if n else float("nan"), "n": n}
    return out


def rounded(metrics: dict, digits: int) -> dict:
    """Metrics for logs and records: floats rounded, nested groups (e.g. "adults") rounded inside."""
    return {k: rounded(v, digits) if isinstance(v, dict) else (round(v, digits) if isinstance(v, float) else v)
            for k, v in metrics.items()}
