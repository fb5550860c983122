"""The loops shared by training and evaluation: batching uint8 crops, inference, devices, AMP."""
from __future__ import annotations

import contextlib
import platform
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from models.preprocess import PreprocessConfig, normalize, resize_face
from training.augment import AugmentConfig, augment_batch


def cpu_name() -> str:
    """The processor's model name (Linux /proc/cpuinfo), for training records and benchmark reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but torch.cuda.is_available() is False")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast_for(device: torch.device):
    """float16 autocast on CUDA; a no-op elsewhere (CPU trains in float32)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def memory_format_for(device: torch.device) -> torch.memory_format:
    # channels_last makes oneDNN's convolutions ~1.6x faster on this 2-core CPU; on CUDA it only pays
    # with tensor-core shapes, so keep the default there.
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def make_batch(images: np.ndarray | torch.Tensor, cfg: PreprocessConfig, device: torch.device,
               augment: AugmentConfig | None = None, generator: torch.Generator | None = None,
               flip: bool = False) -> torch.Tensor:
    """uint8 (N, S, S, C) crops -> normalised float (N, C, S, S) on ``device``, optionally augmented.

    This is ``models.preprocess.to_tensor`` with augmentation slotted in between scaling and normalising.
    """
    batch = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
    batch = batch.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    if augment is not None:
        batch = augment_batch(batch, augment, generator)
    if flip:
        batch = batch.flip(3)
    return normalize(batch, cfg).contiguous(memory_format=memory_format_for(device))


def fit_to(images: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Data-set crops -> the model's input size and channels with the serving path's ``resize_face``
    (a no-op when they already match)."""
    if images.shape[1:] == (cfg.input_size, cfg.input_size, cfg.num_channels):
        return images
    return np.stack([resize_face(im, cfg) for im in images])


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, cfg: PreprocessConfig, device: torch.device,
            batch_size: int = 256, tta: bool = False) -> torch.Tensor:
    """Model outputs (float32, CPU) for uint8 crops; ``tta`` averages with the horizontally flipped input.

    Averaging happens on outputs (logits), which for emotion and the age-bin head amounts to a geometric
    mean of the two distributions.
    """
    model.eval()
    outs = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        with autocast_for(device):
            out = model(make_batch(chunk, cfg, device)).float()
            if tta:
                out = (out + model(make_batch(chunk, cfg, device, flip=True)).float()) / 2
        outs.append(out.cpu())
    if not outs:
        return torch.empty(0)
    return torch.cat(outs)
