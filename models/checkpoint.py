"""Self-describing checkpoints.

A shipped checkpoint is one ``torch.save`` dict holding only plain Python values and tensors, so it
loads with ``weights_only=True``:

    format, version          "faceapp-checkpoint", 1
    task                     "emotion" | "age_gender"
    arch, arch_args          registry name and constructor arguments
    preprocess               PreprocessConfig.to_dict()
    labels                   e.g. {"emotion": [...]} or {"gender": [...], "max_age": 100}
    metrics                  evaluation figures, e.g. {"PublicTest": {"accuracy": ...}}
    training                 the resolved training config, data description, epochs, wall time
    state_dict               weights (fp16 on disk)
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from models.preprocess import PreprocessConfig
from models.registry import create_model

FORMAT = "faceapp-checkpoint"
VERSION = 1
TASKS = ("emotion", "age_gender")
_REQUIRED = ("format", "version", "task", "arch", "arch_args", "preprocess", "labels", "state_dict")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or inconsistent; the message names the file and the fix."""


@dataclass
class ModelCard:
    """Everything a checkpoint says about itself, minus the weights."""

    task: str
    arch: str
    arch_args: dict
    preprocess: PreprocessConfig
    labels: dict
    metrics: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """What the API reports under "models"."""
        return {
            "task": self.task,
            "arch": self.arch,
            "input_size": self.preprocess.input_size,
            "channels": self.preprocess.channels,
            "labels": self.labels,
            "metrics": self.metrics,
        }


@dataclass
class LoadedModel:
    card: ModelCard
    model: nn.Module
    path: Path


def clean_state_dict(state_dict: dict) -> dict:
    """Strip wrapper prefixes: ``module.`` (DataParallel / DDP) and ``_orig_mod.`` (torch.compile)."""
    out = {}
    for k, v in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def save_checkpoint(path: str | os.PathLike, model: nn.Module, card: ModelCard, half: bool = True) -> Path:
    """Write a shipped checkpoint atomically (temporary file, then ``os.replace``)."""
    if card.task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}")
    state = clean_state_dict(model.state_dict())
    if half:
        state = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "task": card.task,
        "arch": card.arch,
        "arch_args": dict(card.arch_args),
        "preprocess": card.preprocess.to_dict(),
        "labels": card.labels,
        "metrics": card.metrics,
        "training": card.training,
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in state.items()},
    }
    return atomic_torch_save(payload, path)


def atomic_torch_save(obj, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; weights are meant to be readable
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _remedy(task: str | None) -> str:
    cmd = {
        "emotion": "python -m training.train emotion --data ../shared/data/fer2013 --out models/weights/emotion.pt",
        "age_gender": "python -m training.train age_gender --data ../shared/data/utkface/UTKFace "
        "--out models/weights/age_gender.pt",
    }
    if task in cmd:
        return f"restore it with `git checkout -- models/weights` or rebuild it with `{cmd[task]}`"
    return "restore it with `git checkout -- models/weights` or rebuild it with `python -m training.train ...`"


def read_card(payload: dict, path: Path) -> ModelCard:
    missing = [k for k in _REQUIRED if k not in payload]
    if missing or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a faceapp checkpoint (missing {missing or 'format tag'})")
    if payload["version"] > VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {payload['version']} is newer than this code "
                              f"({VERSION}); update the application")
    return ModelCard(
        task=payload["task"],
        arch=payload["arch"],
        arch_args=dict(payload["arch_args"]),
        preprocess=PreprocessConfig.from_dict(payload["preprocess"]),
        labels=payload["labels"],
        metrics=payload.get("metrics", {}),
        training=payload.get("training", {}),
    )


def load_checkpoint(path: str | os.PathLike, task: str | None = None,
                    map_location: str | torch.device = "cpu") -> LoadedModel:
    """Load a shipped checkpoint, weights only; never falls back to random or unsafe loading.

    Raises:
        CheckpointError: naming the file, what is wrong and the command that produces a good one.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file {path} is missing: {_remedy(task)}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated / foreign files
        raise CheckpointError(f"model file {path} is corrupt or not a weights-only checkpoint "
                              f"({type(exc).__name__}: {str(exc)[:200]}); {_remedy(task)}") from exc
    if not isinstance(payload, dict):
        raise CheckpointError(f"model file {path} holds a {type(payload).__name__}, not a checkpoint; {_remedy(task)}")
    card = read_card(payload, path)
    if task is not None and card.task != task:
        raise CheckpointError(f"model file {path} is a {card.task!r} model, expected {task!r}; {_remedy(task)}")
    try:
        model = create_model(card.arch, **card.arch_args)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in clean_state_dict(payload["state_dict"]).items()})
    except (KeyError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"model file {path} does not match architecture {card.arch!r} ({exc}); "
                              f"{_remedy(task)}") from exc
    model.eval()
    model.pretrained_card = card  # like timm's pretrained_cfg: the model carries its own description
    return LoadedModel(card=card, model=model, path=path)
