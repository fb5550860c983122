"""Post-hoc logit adjustment: rare classes said when they are there, folded into the classifier's bias.

    python -m training.calibrate --data ../shared/data/fer2013 --weights runs/x/emotion.pt --out models/weights/emotion.pt

A classifier trained on FER2013 learns its class frequencies (happy 25%, disgust 1.5%) and says a rare
class only when it is very sure. Logit adjustment (Menon et al., 2021) subtracts ``tau * log(prior)`` from
the logits: ``tau = 0`` leaves the model as it is, ``tau = 1`` scores as if every class were equally common.
``tau`` is chosen on the selection split (PublicTest), single crop as served: the highest balanced accuracy
among the values that keep accuracy within :data:`MAX_ACCURACY_COST` of the unadjusted model's (rare classes
said more often, at almost no cost to the common ones); the test split is reported once for it. The adjustment is
added to the last layer's bias, so the checkpoint, the service and any export need no change, and the
card records the prior, ``tau``, the bias and the figures before and after.
"""
from __future__ import annotations

import argparse
import json
import logging

import numpy as np
import torch

from models.checkpoint import load_checkpoint, save_checkpoint
from models.emotion import EMOTION_CLASSES
from training.engine import fit_to, predict, resolve_device
from training.tasks import load_task_data, split_metrics

log = logging.getLogger("training.calibrate")

TAUS = tuple(round(0.05 * i, 2) for i in range(31))  # 0 .. 1.5
MAX_ACCURACY_COST = 0.005  # half a point of selection-split accuracy


def class_prior(labels: np.ndarray, k: int) -> np.ndarray:
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    return (counts + 1) / (counts.sum() + k)  # +1: a class absent from the training rows keeps a finite log


def adjustment(prior: np.ndarray, tau: float) -> np.ndarray:
    """The bias to add: ``-tau * log(prior)``, centred (a constant shift changes no probability)."""
    b = -tau * np.log(prior)
    return b - b.mean()


def choose_tau(sweep: dict[float, dict]) -> float:
    """Highest balanced accuracy with accuracy >= unadjusted - MAX_ACCURACY_COST; ties: the smaller tau."""
    floor = sweep[0.0]["accuracy"] - MAX_ACCURACY_COST
    allowed = [t for t in sweep if sweep[t]["accuracy"] >= floor]
    return max(allowed, key=lambda t: (round(sweep[t]["balanced_accuracy"], 6), -t))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m training.calibrate", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="FER2013 CSV or its folder")
    p.add_argument("--weights", required=True, help="emotion checkpoint to adjust")
    p.add_argument("--out", required=True, help="where the adjusted checkpoint goes")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--cache-dir", default=None)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device("cpu")
    loaded = load_checkpoint(a.weights, "emotion")
    card, model = loaded.card, loaded.model
    if card.training.get("logit_adjustment"):
        raise SystemExit(f"{a.weights} is already adjusted (tau {card.training['logit_adjustment']['tau']}); "
                         "start from the unadjusted checkpoint")
    data = load_task_data("emotion", a.data, cache_dir=a.cache_dir)
    labels = data.targets[:, -1].astype(np.int64)
    k = len(EMOTION_CLASSES)
    prior = class_prior(labels[data.splits["Training"]], k)
    logits = {s: predict(model, fit_to(data.images[data.splits[s]], card.preprocess), card.preprocess, device)
              for s in (data.select_split, data.test_split) if len(data.splits[s])}

    def score(split: str, tau: float) -> dict:
        return split_metrics(data, logits[split] + torch.from_numpy(adjustment(prior, tau)).float(), split)

    sweep = {tau: score(data.select_split, tau) for tau in TAUS}
    tau = choose_tau(sweep)
    for t in TAUS:
        m = sweep[t]
        log.info("tau %.2f: %s accuracy %.4f balanced %.4f macro-F1 %.4f%s", t, data.select_split, m["accuracy"],
                 m["balanced_accuracy"], m["macro_f1"], "  <- chosen" if t == tau else "")
    bias = adjustment(prior, tau)
    report = {"method": "post-hoc logit adjustment, -tau * log(training class prior), folded into the last "
                        "layer's bias", "tau": tau, "chosen_on": data.select_split,
              "rule": f"max balanced accuracy with accuracy >= unadjusted - {MAX_ACCURACY_COST}, single crop",
              "prior": dict(zip(EMOTION_CLASSES, np.round(prior, 5).tolist())),
              "bias": dict(zip(EMOTION_CLASSES, np.round(bias, 5).tolist())),
              "before": {s: score(s, 0.0) for s in logits}, "after": {s: score(s, tau) for s in logits}}
    head = model.head[-1]
    with torch.no_grad():
        head.bias += torch.from_numpy(bias).to(head.bias.dtype)
    card.training = {**card.training, "logit_adjustment": report}
    card.metrics = {**card.metrics, **{s: {**card.metrics.get(s, {}), **report["after"][s]} for s in logits}}
    save_checkpoint(a.out, model, card)
    print(json.dumps({k: report[k] for k in ("tau", "before", "after")}, indent=2))
    return report


if __name__ == "__main__":
    main()
