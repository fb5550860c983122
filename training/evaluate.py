"""Evaluate a shipped checkpoint on a data-set split.

    python -m training.evaluate emotion --data ../shared/data/fer2013 --split PrivateTest [--tta]
    python -m training.evaluate age_gender --data ../shared/data/utkface/UTKFace --split test

Emotion: accuracy, macro-F1, per-class precision / recall / F1 and a confusion-matrix PNG; ``--tta`` adds
the horizontal-flip-averaged figures, reported separately. Age/gender: MAE, CS@5, MAE per age band,
gender accuracy, and both per gender and per race as a markdown fairness table. Results are printed and
written to ``--out`` (JSON, PNG, markdown).

The UTKFace split is rebuilt with the seed recorded in the checkpoint, so ``test`` is the same images the
training run held out.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import load_checkpoint
from models.emotion import EMOTION_CLASSES
from training.engine import fit_to, predict, resolve_device
from training.tasks import TASKS, load_task_data, split_metrics
from training.train import plain

log = logging.getLogger("training.evaluate")

DEFAULT_WEIGHTS = {"emotion": "models/weights/emotion.pt", "age_gender": "models/weights/age_gender.pt"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("task", choices=TASKS)
    p.add_argument("--data", required=True, help="FER2013 CSV or its folder / UTKFace image folder / "
                        "a data pack (*.pack.npz, python -m training.pack)")
    p.add_argument("--split", default=None, help="emotion: Training|PublicTest|PrivateTest (default PrivateTest); "
                                                 "age_gender: train|val|test (default test)")
    p.add_argument("--weights", default=None, help="checkpoint (default models/weights/<task>.pt)")
    p.add_argument("--tta", action="store_true", help="also report horizontal-flip test-time augmentation")
    p.add_argument("--seed", type=int, default=None, help="UTKFace split seed (default: the checkpoint's)")
    p.add_argument("--out", default=None, help="output folder (default runs/eval/<task>-<split>)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--cache-dir", default=None)
    a = p.parse_args(argv)
    a.split = a.split or ("PrivateTest" if a.task == "emotion" else "test")
    a.weights = a.weights or DEFAULT_WEIGHTS[a.task]
    a.out = Path(a.out or Path("runs") / "eval" / f"{a.task}-{a.split}")
    return a


def save_confusion_png(cm: np.ndarray, classes: tuple[str, ...], path: Path, title: str) -> None:
    """Row-normalised confusion matrix (recall per true class) with the raw counts in each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=120)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{norm[i, j]:.2f}\n{cm[i, j]}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of true class")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def emotion_table(report: dict) -> str:
    lines = ["| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    for name, s in report["per_class"].items():
        lines.append(f"| {name} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} | {s['support']} |")
    return "\n".join(lines)


def _fmt(g: dict, fmt: str) -> str:
    return "–" if not g["n"] else format(g["value"], fmt)


def _pct(g: dict) -> str:
    return "–" if not g["n"] else f"{100 * g['value']:.1f}%"


def fairness_table(m: dict) -> str:
    """Markdown: age MAE, CS@5 and gender accuracy per gender, per race and per age band."""
    rows = ["| group | n | age MAE (years) | CS@5 | gender accuracy |", "|---|---:|---:|---:|---:|",
            f"| all | {m['n']} | {m['mae']:.2f} | {100 * m['cs5']:.1f}% | {100 * m['gender_accuracy']:.1f}% |"]
    for kind, suffix in (("gender", "gender"), ("race", "race"), ("age", "age_band")):
        for group, g in m.get(f"mae_by_{suffix}", {}).items():
            cs5, acc = m[f"cs5_by_{suffix}"][group], m[f"gender_accuracy_by_{suffix}"][group]
            rows.append(f"| {kind}: {group} | {g['n']} | {_fmt(g, '.2f')} | {_pct(cs5)} | {_pct(acc)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    loaded = load_checkpoint(a.weights, a.task, map_location=device)
    card, model = loaded.card, loaded.model.to(device)
    seed = a.seed if a.seed is not None else int(card.training.get("data", {}).get("split_seed", 0))
    data = load_task_data(a.task, a.data, seed=seed, cache_dir=a.cache_dir)
    if a.split not in data.splits:
        raise SystemExit(f"unknown split {a.split!r} for {a.task}; choose from {list(data.splits)}")
    if not len(data.splits[a.split]):
        raise SystemExit(f"split {a.split!r} is empty in {a.data} (a pack made with --drop-test?)")
    trained_sizes = card.training.get("data", {}).get("split_sizes")
    if trained_sizes and trained_sizes != data.description["split_sizes"]:
        log.warning("split sizes %s differ from the training run's %s: not the same data?",
                    data.description["split_sizes"], trained_sizes)
    images = fit_to(data.images[data.splits[a.split]], card.preprocess)
    a.out.mkdir(parents=True, exist_ok=True)

    results: dict = {"task": a.task, "split": a.split, "weights": str(a.weights), "n": int(len(images))}
    variants = [("plain", False)] + ([("tta", True)] if a.tta else [])
    for name, tta in variants:
        outputs = predict(model, images, card.preprocess, device, tta=tta)
        results[name] = split_metrics(data, outputs, a.split, full=True)

    if a.task == "emotion":
        for name, _ in variants:
            r = results[name]
            label = "with horizontal-flip TTA" if name == "tta" else "single crop"
            png = a.out / f"confusion_{a.split}{'_tta' if name == 'tta' else ''}.png"
            save_confusion_png(np.asarray(r["confusion_matrix"]), EMOTION_CLASSES, png,
                               f"{Path(a.weights).name} on FER2013 {a.split} ({label})\n"
                               f"accuracy {r['accuracy']:.4f}, macro-F1 {r['macro_f1']:.4f}")
            print(f"\n{a.split} {label}: accuracy {r['accuracy']:.4f}  macro-F1 {r['macro_f1']:.4f}  (n={r['n']})")
            print(emotion_table(r))
            print(f"confusion matrix: {png}")
    else:
        for name, _ in variants:
            r = results[name]
            label = "with horizontal-flip TTA" if name == "tta" else "single crop"
            table = fairness_table(r)
            md = a.out / f"fairness_{a.split}{'_tta' if name == 'tta' else ''}.md"
            md.write_text(f"UTKFace {a.split} ({label}), {Path(a.weights).name}\n\n{table}\n")
            print(f"\n{a.split} {label}: MAE {r['mae']:.2f}  CS@5 {r['cs5']:.3f}  "
                  f"gender accuracy {r['gender_accuracy']:.4f}  (n={r['n']})")
            print(table)
            print(f"fairness table: {md}")
    results = plain(results)
    (a.out / f"results_{a.split}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {a.out / f'results_{a.split}.json'}")
    return results


if __name__ == "__main__":
    main()
