"""Evaluate a shipped checkpoint on a data-set split.

    python -m training.evaluate emotion --data ../shared/data/fer2013 --split PrivateTest [--tta]
    python -m training.evaluate age_gender --data ../shared/data/utkface/UTKFace --split test

Emotion: accuracy, balanced accuracy (mean recall), macro-F1, per-class precision / recall / F1, a
confusion-matrix PNG and, when ``fer2013new.csv`` lies beside the CSV, accuracy against the FER+
annotators' majority vote; ``--tta`` adds the horizontal-flip-averaged figures, reported separately.
Age/gender: MAE, CS@5, gender accuracy, and each per age band, per gender and per race, with adults
(18-70) as a line of their own, as a markdown fairness table. ``--robustness`` adds a table of the same
faces degraded (JPEG, down-up scaling, rotation, shift, grey; ``training/robustness.py``). Results are
printed and written to ``--out`` (JSON, PNG, markdown).

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
from models.age_gender import MAX_AGE
from models.emotion import EMOTION_CLASSES
from training import metrics as M
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
    p.add_argument("--robustness", action="store_true",
                   help="also score the split's faces after each corruption of training/robustness.py")
    p.add_argument("--record", action="store_true",
                   help="write a summary of these figures into the checkpoint's card (metrics.evaluation.<split>), "
                        "which GET /api/v1/models reports")
    p.add_argument("--served", action="store_true",
                   help="also score the faces as the app frames them: each image set in a grey border, MTCNN, "
                        "then align_face with the checkpoint's landmark template")
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
    """Markdown: age MAE, CS@5 and gender accuracy per gender, per race and per age band; adults apart."""
    rows = ["| group | n | age MAE (years) | CS@5 | gender accuracy |", "|---|---:|---:|---:|---:|",
            f"| all | {m['n']} | {m['mae']:.2f} | {100 * m['cs5']:.1f}% | {100 * m['gender_accuracy']:.1f}% |"]
    if "adults" in m:
        ad = m["adults"]
        rows.append(f"| adults {ad['ages'][0]}-{ad['ages'][1]} | {ad['n']} | {ad['mae']:.2f} | | "
                    f"{100 * ad['gender_accuracy']:.1f}% |")
    for kind, suffix in (("gender", "gender"), ("race", "race"), ("age", "age_band")):
        for group, g in m.get(f"mae_by_{suffix}", {}).items():
            cs5, acc = m[f"cs5_by_{suffix}"][group], m[f"gender_accuracy_by_{suffix}"][group]
            rows.append(f"| {kind}: {group} | {g['n']} | {_fmt(g, '.2f')} | {_pct(cs5)} | {_pct(acc)} |")
    return "\n".join(rows)


def ferplus_majority(data_path: str, task_data, split: str, cache_dir: str | None = None) -> np.ndarray | None:
    """FER+ majority-vote class per row of ``split`` (-1: no single majority), or None without FER+ votes."""
    from training.data.fer2013 import FERPLUS_NAME, find_csv, load_fer2013
    from training.pack import is_pack

    if is_pack(data_path) or not (find_csv(data_path).parent / FERPLUS_NAME).is_file():
        return None
    fer = load_fer2013(data_path, ferplus=True, **({} if cache_dir is None else {"cache_dir": cache_dir}))
    if len(fer) != len(task_data.targets):
        raise SystemExit(f"FER+ votes hold {len(fer)} rows, the data {len(task_data.targets)}")
    return M.majority_labels(fer.votes[task_data.splits[split]])


def spread_calibration(outputs: torch.Tensor, ages: np.ndarray, groups: int = 5) -> list[dict]:
    """Is the age head's predicted spread honest? Per quintile of predicted log-spread (std / (1 + age)),
    the root-mean-square error in log space; a track weighs its frames by that spread (app/tracking.py)."""
    from models.age_gender import decode_age_gender

    dec = decode_age_gender(outputs)
    mean, std = dec.age_mean.numpy().astype(np.float64), dec.age_std.numpy().astype(np.float64)
    spread = std / (1 + mean)
    err = np.log1p(np.minimum(ages, MAX_AGE)) - np.log1p(mean)
    edges = np.quantile(spread, np.linspace(0, 1, groups + 1))
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (spread >= lo) & (spread <= hi)
        if not m.any():
            continue
        rows.append({"predicted_log_spread": [round(float(lo), 3), round(float(hi), 3)], "n": int(m.sum()),
                     "rms_log_error": round(float(np.sqrt((err[m] ** 2).mean())), 3),
                     "mean_predicted_age": round(float(mean[m].mean()), 1)})
    return rows


def robustness_table(rows: list[dict], task: str) -> str:
    if task == "emotion":
        lines = ["| faces | accuracy | change (points) | balanced accuracy | within 5 points |",
                 "|---|---:|---:|---:|---|"]
        for r in rows:
            lines.append(f"| {r['corruption']} | {100 * r['accuracy']:.2f}% | {r['delta_points']:+.2f} | "
                         f"{100 * r['balanced_accuracy']:.2f}% | {r['verdict']} |")
    else:
        lines = ["| faces | age MAE (years) | change | gender accuracy | change (points) | gender within 5 points |",
                 "|---|---:|---:|---:|---:|---|"]
        for r in rows:
            lines.append(f"| {r['corruption']} | {r['mae']:.2f} | {r['delta_mae']:+.2f} | "
                         f"{100 * r['gender_accuracy']:.2f}% | {r['delta_points']:+.2f} | {r['verdict']} |")
    return "\n".join(lines)


def run_robustness(model, card, data, split: str, device, clean: dict) -> list[dict]:
    """Each corruption of ``training.robustness.CORRUPTIONS`` applied to the split's crops, scored plain."""
    from training.robustness import CORRUPTIONS, TOLERANCE_POINTS, applicable

    raw = data.images[data.splits[split]]
    key = "accuracy" if data.task == "emotion" else "gender_accuracy"
    rows = [{"corruption": "clean", **{k: clean[k] for k in clean if not isinstance(clean[k], (dict, list))},
             "delta_points": 0.0, "delta_mae": 0.0, "verdict": "-"}]
    for name, corrupt in CORRUPTIONS.items():
        if not applicable(name, raw.shape[3]):
            continue
        outputs = predict(model, fit_to(corrupt(raw), card.preprocess), card.preprocess, device)
        m = split_metrics(data, outputs, split)
        delta = 100 * (m[key] - clean[key])
        row = {"corruption": name, **m, "delta_points": delta, "verdict": "yes" if delta >= -TOLERANCE_POINTS else "**no**"}
        if data.task == "age_gender":
            row["delta_mae"] = m["mae"] - clean["mae"]
        rows.append(row)
        log.info("robustness %s: %s", name, M.rounded(m, 4))
    return rows


def run_served(model, card, data, split: str, device) -> dict:
    """The split's faces through the serving path instead of the data set's crops: each original image in a
    grey border (as a face inside a larger photo), MTCNN, then ``models.preprocess.align_face`` with the
    checkpoint's template. Scores the faces MTCNN found; a wrong template shows here, not on the crops."""
    from dataclasses import replace

    from models.detector import FaceDetector
    from models.preprocess import align_face
    from training.template import faces_in_border

    split_rows = data.splits[split]
    faces = list(faces_in_border(data.load_for_template, split_rows, FaceDetector(device="cpu"), data.template_upscale))
    rows = [f.row for f in faces]
    crops = [align_face(f.image, f.detection.landmarks, card.preprocess) for f in faces]
    if not rows:
        return {"found": 0, "of": int(len(split_rows))}
    found = replace(data, splits={**data.splits, split: np.asarray(rows, dtype=np.int64)})
    outputs = predict(model, np.stack(crops), card.preprocess, device)
    metrics = split_metrics(found, outputs, split, full=False)
    return {**metrics, "found": len(rows), "of": int(len(split_rows))}


def evaluation_summary(results: dict) -> dict:
    """The figures a user of the API cares about, from one evaluation run (see ``--record``)."""
    keep = ("accuracy", "balanced_accuracy", "macro_f1", "mae", "cs5", "gender_accuracy", "n")
    out = {"command": "python -m training.evaluate", "split": results["split"]}
    for name in ("plain", "tta"):
        if name in results:
            r = results[name]
            out[name] = {k: r[k] for k in keep if k in r}
            if "per_class" in r:
                out[name]["recall"] = {c: round(v["recall"], 4) for c, v in r["per_class"].items()}
            for extra in ("ferplus_majority", "adults"):
                if extra in r:
                    out[name][extra] = r[extra]
    if "robustness" in results:
        key = "accuracy" if "accuracy" in results["plain"] else "gender_accuracy"
        out["robustness"] = {r["corruption"]: {key: r[key], "delta_points": round(r["delta_points"], 2),
                                               **({"mae": r["mae"]} if "mae" in r else {})}
                             for r in results["robustness"]}
    if "served" in results:
        out["served"] = {k: v for k, v in results["served"].items() if k != "adults"}
    return plain(M.rounded(out, 4))


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
    majority = ferplus_majority(a.data, data, a.split, a.cache_dir) if a.task == "emotion" else None
    for name, tta in variants:
        outputs = predict(model, images, card.preprocess, device, tta=tta)
        results[name] = split_metrics(data, outputs, a.split, full=True)
        if majority is not None:
            known = majority >= 0
            pred = outputs.argmax(1).numpy()
            results[name]["ferplus_majority"] = {"accuracy": M.accuracy(majority[known], pred[known]),
                                                 "n": int(known.sum())}
        if a.task == "age_gender":
            results[name]["spread_calibration"] = spread_calibration(outputs, data.extra["ages"][data.splits[a.split]])
    if a.robustness:
        results["robustness"] = run_robustness(model, card, data, a.split, device, results["plain"])
    if a.served:
        results["served"] = run_served(model, card, data, a.split, device)
        log.info("served path: %s", M.rounded(results["served"], 4))

    if a.task == "emotion":
        for name, _ in variants:
            r = results[name]
            label = "with horizontal-flip TTA" if name == "tta" else "single crop"
            png = a.out / f"confusion_{a.split}{'_tta' if name == 'tta' else ''}.png"
            save_confusion_png(np.asarray(r["confusion_matrix"]), EMOTION_CLASSES, png,
                               f"{Path(a.weights).name} on FER2013 {a.split} ({label})\n"
                               f"accuracy {r['accuracy']:.4f}, macro-F1 {r['macro_f1']:.4f}")
            print(f"\n{a.split} {label}: accuracy {r['accuracy']:.4f}  balanced accuracy "
                  f"{r['balanced_accuracy']:.4f}  macro-F1 {r['macro_f1']:.4f}  (n={r['n']})")
            if "ferplus_majority" in r:
                fm = r["ferplus_majority"]
                print(f"FER+ majority vote accuracy {fm['accuracy']:.4f} (n={fm['n']}: rows with one majority class)")
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
                  f"gender accuracy {r['gender_accuracy']:.4f}  (n={r['n']}); adults {r['adults']['ages'][0]}-"
                  f"{r['adults']['ages'][1]}: MAE {r['adults']['mae']:.2f}  gender accuracy "
                  f"{r['adults']['gender_accuracy']:.4f}  (n={r['adults']['n']})")
            print(table)
            print(f"fairness table: {md}")
            print("predicted log-spread -> RMS log error: " + "; ".join(
                f"{c['predicted_log_spread'][0]}-{c['predicted_log_spread'][1]}: {c['rms_log_error']} "
                f"(age ~{c['mean_predicted_age']})" for c in r["spread_calibration"]))
    if a.served and results["served"]["found"]:
        sv = results["served"]
        figures = (f"accuracy {sv['accuracy']:.4f}, balanced accuracy {sv['balanced_accuracy']:.4f}"
                   if a.task == "emotion" else f"MAE {sv['mae']:.2f}, gender accuracy {sv['gender_accuracy']:.4f}")
        print(f"\nserved path (grey border, MTCNN, align_face with the checkpoint's template): {figures} "
              f"on the {sv['found']} of {sv['of']} faces MTCNN found")
    if a.robustness:
        table = robustness_table(results["robustness"], a.task)
        md = a.out / f"robustness_{a.split}.md"
        md.write_text(f"{a.split}, {Path(a.weights).name}, single crop\n\n{table}\n")
        print(f"\nrobustness ({a.split}, single crop):\n{table}\nrobustness table: {md}")
    results = plain(results)
    if a.record:
        from models.checkpoint import save_checkpoint

        fresh = load_checkpoint(a.weights, a.task)  # unfused, on the CPU, as it is stored
        evaluation = {**fresh.card.metrics.get("evaluation", {}), a.split: evaluation_summary(results)}
        fresh.card.metrics = {**fresh.card.metrics, "evaluation": evaluation}
        save_checkpoint(a.weights, fresh.model, fresh.card)
        print(f"recorded in {a.weights}: metrics.evaluation.{a.split}")
    (a.out / f"results_{a.split}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {a.out / f'results_{a.split}.json'}")
    return results


if __name__ == "__main__":
    main()
