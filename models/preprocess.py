"""The one preprocessing path shared by training and serving.

A model is trained on face crops framed the way its data set frames faces (FER2013: tight 48x48 grey
crops; UTKFace: aligned 200x200 colour crops). Each checkpoint stores a :class:`PreprocessConfig` whose
``template`` says where the five facial landmarks (left eye, right eye, nose, left and right mouth
corner) sit inside such a crop, in [0, 1] crop coordinates. The template is measured on the training
images themselves (``training/template.py``), so serving can warp any detected face into the same
frame with a similarity transform: what the model saw in training is what it sees in production.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
import torch

Channels = str  # "gray" or "rgb"

# Used only when a checkpoint carries no measured template: the widely used 5-point layout of
# aligned face crops (eyes at ~35-65% width, mouth at ~82% height), in [0, 1] coordinates.
DEFAULT_TEMPLATE: tuple[tuple[float, float], ...] = (
    (0.3419, 0.4616),
    (0.6565, 0.4598),
    (0.5002, 0.6405),
    (0.3709, 0.8247),
    (0.6315, 0.8232),
)


@dataclass(frozen=True)
class PreprocessConfig:
    """How a face becomes a model input; stored inside every checkpoint."""

    input_size: int
    channels: Channels = "gray"
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    template: tuple[tuple[float, float], ...] = field(default=DEFAULT_TEMPLATE)
    # The data set's own resolution when the network reads its faces enlarged (FER2013's 48 px faces into a
    # 64 px network): every face is first framed at this size, then scaled to ``input_size``, so a sharp
    # webcam face reaches the network as blurred as the training faces did. None: frame at ``input_size``.
    source_size: int | None = None

    def __post_init__(self) -> None:
        if self.channels not in ("gray", "rgb"):
            raise ValueError(f"channels must be 'gray' or 'rgb', not {self.channels!r}")
        n = self.num_channels
        if len(self.mean) != n or len(self.std) != n:
            raise ValueError(f"mean/std need {n} value(s) for {self.channels!r} input")
        if len(self.template) != 5:
            raise ValueError("template needs 5 landmark positions")

    @property
    def num_channels(self) -> int:
        return 1 if self.channels == "gray" else 3

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        d["template"] = [list(p) for p in self.template]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessConfig":
        return cls(
            input_size=int(d["input_size"]),
            channels=str(d["channels"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            template=tuple((float(x), float(y)) for x, y in d["template"]),
            source_size=int(d["source_size"]) if d.get("source_size") else None,
        )

    @property
    def frame_size(self) -> int:
        """The side faces are framed at before the final scaling to ``input_size``."""
        return self.source_size or self.input_size


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src points onto dst.

    Umeyama's method without reflection; returns a 2x3 matrix for ``cv2.warpAffine``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    var_src = (src_c**2).sum() / len(src)
    scale = (s * d).sum() / var_src if var_src > 0 else 1.0
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rot
    matrix[:, 2] = dst_mean - scale * rot @ src_mean
    return matrix


def convert_channels(image: np.ndarray, channels: Channels) -> np.ndarray:
    """RGB (H, W, 3) or grey (H, W) / (H, W, 1) uint8 -> (H, W, C) uint8 in the wanted channels."""
    if image.ndim == 2:
        image = image[:, :, None]
    have = image.shape[2]
    if channels == "gray":
        if have == 3:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[:, :, None]
        return image
    if have == 1:
        image = np.repeat(image, 3, axis=2)
    return image


def align_face(image: np.ndarray, landmarks: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Warp the face whose 5 landmarks are given into the checkpoint's training frame.

    Args:
        image: RGB uint8 array (H, W, 3), the whole picture.
        landmarks: (5, 2) pixel coordinates in ``image`` (MTCNN order).
        cfg: the model's preprocessing config.
    Returns:
        (S, S, C) uint8 crop, S = ``cfg.input_size``.
    """
    size = cfg.frame_size
    dst = np.asarray(cfg.template, dtype=np.float64) * size
    matrix = similarity_transform(landmarks, dst)
    crop = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return _resize(convert_channels(crop, cfg.channels), cfg.input_size)


def resize_face(image: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """An image that already is a face crop framed like the training data (a data-set image, or an
    upload with ``detect=false``) -> (S, S, C) uint8."""
    return _resize(_resize(convert_channels(image, cfg.channels), cfg.frame_size), cfg.input_size)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] != size or image.shape[1] != size:
        interp = cv2.INTER_AREA if min(image.shape[:2]) > size else cv2.INTER_LINEAR
        image = cv2.resize(image, (size, size), interpolation=interp)
        if image.ndim == 2:
            image = image[:, :, None]
    return image


def to_tensor(crops: np.ndarray | list[np.ndarray] | torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """Stack of (S, S, C) uint8 crops -> normalised float32 (N, C, S, S) tensor.

    Training calls this on uint8 batches (after augmenting in uint8 or float), serving on aligned crops.
    """
    if isinstance(crops, torch.Tensor):
        batch = crops
    else:
        batch = torch.from_numpy(np.ascontiguousarray(np.stack(crops) if isinstance(crops, list) else crops))
    if batch.ndim == 3:
        batch = batch.unsqueeze(-1)
    batch = batch.permute(0, 3, 1, 2).float().div_(255.0)
    return normalize(batch, cfg)


def normalize(batch: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """(N, C, S, S) float in [0, 1] -> normalised with the checkpoint's mean/std."""
    mean = torch.tensor(cfg.mean, dtype=batch.dtype, device=batch.device).view(1, -1, 1, 1)
    std = torch.tensor(cfg.std, dtype=batch.dtype, device=batch.device).view(1, -1, 1, 1)
    return (batch - mean) / std
