"""A compact, portable copy of a task's prepared data: what a lent GPU machine trains from.

    python -m training.pack emotion --data ../shared/data/fer2013 --out .cache/device/emotion.pack.npz --drop-test
    python -m training.pack age_gender --data ../shared/data/utkface/UTKFace --out .cache/device/age_gender.pack.npz \
        --drop-test
    # then, on the other machine (the pack travels in a git-ignored folder):
    python -m training.train emotion --data .cache/device/emotion.pack.npz --out ... --device cuda

The GPU machine sees only the repository (64 MiB in all), not ``../shared``: a pack holds the crops as
JPEG, the targets, the splits exactly as the loaders built them, the label columns the metrics need, and the
landmark template measured here (MTCNN is not needed there). Quality matters: the stage-1 emotion model (Lite0, 2026-11-23) scores 66.49% on PrivateTest from the
original pixels, 66.55% from a quality-95 pack and 64.89% from a quality-90 one, so 95 is the default. Sizes
(2026-11-23): FER2013 57.8 MB at quality 95 (52.0 MB with ``--drop-test``; 45.8 MB at 90), UTKFace at 64 px
42.4 MB at 90 (95 not built).
The repository itself is ~11 MB, so a quality-95 pack needs ``--drop-test`` to fit in 64 MiB; the test split is scored here,
on the original files, by ``training.evaluate`` anyway (a training run on a pack without one reports only
the selection split).

Packs are derived from research-only data: they live in git-ignored folders and are never committed.
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from models.preprocess import DEFAULT_TEMPLATE
from training.tasks import TASKS, TaskData, load_task_data
from training.template import TemplateResult, measure_template

log = logging.getLogger("training.pack")

PACK_SUFFIX = ".pack.npz"
PACK_FORMAT = "faceapp-data-pack"


def is_pack(path: str | Path) -> bool:
    return str(path).endswith(PACK_SUFFIX)


def encode_images(images: np.ndarray, quality: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, S, S, C) uint8 -> (all JPEG bytes concatenated, N + 1 offsets)."""
    chunks, offsets = [], [0]
    for im in images:
        im = im[:, :, 0] if im.shape[2] == 1 else cv2.cvtColor(im, cv2.COLOR_RGB2BGR)
        ok, buf = cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise ValueError("JPEG encoding failed")
        chunks.append(buf.ravel())
        offsets.append(offsets[-1] + len(buf))
    return np.concatenate(chunks), np.asarray(offsets, dtype=np.int64)


def decode_images(blob: np.ndarray, offsets: np.ndarray, channels: int) -> np.ndarray:
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    out = []
    for a, b in zip(offsets[:-1], offsets[1:]):
        im = cv2.imdecode(blob[a:b], flag)
        out.append(im[:, :, None] if channels == 1 else cv2.cvtColor(im, cv2.COLOR_BGR2RGB))
    return np.stack(out)


def write_pack(data: TaskData, template: TemplateResult, path: str | Path, quality: int = 95,
               drop_test: bool = False) -> Path:
    """``drop_test``: leave the test split's images out (it is scored here, on the original files)."""
    path = Path(path)
    if not is_pack(path):
        raise ValueError(f"a pack's name ends in {PACK_SUFFIX}: {path}")
    if drop_test:
        keep = np.setdiff1d(np.arange(len(data.images)), data.splits[data.test_split])
        remap = np.full(len(data.images), -1, dtype=np.int64)
        remap[keep] = np.arange(len(keep))
        data = replace(data, images=data.images[keep], targets=data.targets[keep],
                       splits={k: (remap[v] if k != data.test_split else v[:0]) for k, v in data.splits.items()},
                       extra={k: np.asarray(v)[keep] for k, v in data.extra.items()})
    blob, offsets = encode_images(data.images, quality)
    meta = {"format": PACK_FORMAT, "version": 1, "task": data.task, "select_split": data.select_split,
            "test_split": data.test_split, "description": data.description, "template": template.to_dict(),
            "channels": int(data.images.shape[3]), "jpeg_quality": quality, "splits": list(data.splits),
            "extra": list(data.extra)}
    arrays = {"jpeg": blob, "offsets": offsets, "targets": data.targets,
              "meta": np.asarray(json.dumps(meta, default=lambda o: o.item() if hasattr(o, "item") else str(o)))}
    arrays.update({f"split_{k}": v for k, v in data.splits.items()})
    arrays.update({f"extra_{k}": np.asarray(v) for k, v in data.extra.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)  # JPEG bytes do not compress further
    tmp.replace(path)
    return path


def read_pack(path: str | Path, task: str) -> TaskData:
    path = Path(path)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    if meta.get("format") != PACK_FORMAT:
        raise ValueError(f"{path} is not a data pack (python -m training.pack writes them)")
    if meta["task"] != task:
        raise ValueError(f"{path} is a {meta['task']!r} pack, not {task!r}")
    images = decode_images(arrays["jpeg"], arrays["offsets"], meta["channels"])
    return TaskData(
        task=task, images=images, targets=arrays["targets"],
        splits={k: arrays[f"split_{k}"] for k in meta["splits"]},
        select_split=meta["select_split"], test_split=meta["test_split"],
        description={**meta["description"], "pack": {"file": path.name, "jpeg_quality": meta["jpeg_quality"]}},
        load_for_template=lambda i: images[i], template_upscale=1,
        extra={k: arrays[f"extra_{k}"] for k in meta["extra"]},
        template=TemplateResult.from_dict(meta["template"]),
    )


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(prog="python -m training.pack", description=__doc__.split("\n\n")[0])
    p.add_argument("task", choices=TASKS)
    p.add_argument("--data", required=True, help="FER2013 CSV or its folder / UTKFace image folder")
    p.add_argument("--out", required=True, help=f"pack file, named *{PACK_SUFFIX}, in a git-ignored folder")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    p.add_argument("--drop-test", action="store_true",
                   help="leave the test split out (it is scored on the original files); makes the pack ~10%% smaller")
    p.add_argument("--seed", type=int, default=0, help="UTKFace split seed (default 0, as training's)")
    p.add_argument("--template-samples", type=int, default=600)
    p.add_argument("--cache-dir", default=None)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data = load_task_data(a.task, a.data, seed=a.seed, cache_dir=a.cache_dir)
    train_split = next(s for s in data.splits if s not in (data.select_split, data.test_split))
    if a.template_samples > 0:
        template = measure_template(data.load_for_template, data.splits[train_split], n_samples=a.template_samples,
                                    seed=a.seed, upscale=data.template_upscale)
    else:
        template = TemplateResult(DEFAULT_TEMPLATE, 0, 0, measured=False)
    out = write_pack(data, template, a.out, a.quality, a.drop_test)
    n = len(data.images) - (len(data.splits[data.test_split]) if a.drop_test else 0)
    log.info("wrote %s (%.1f MB, %d images, template %s)", out, out.stat().st_size / 1e6, n,
             "measured" if template.measured else "default")
    return out


if __name__ == "__main__":
    main()
