"""Age and gender network: one backbone, two heads.

Age is predicted as a distribution over whole years 0..max_age (trained with a label-distribution
loss), so the expectation gives the estimate and the spread gives an uncertainty the UI can show.
Gender is one logit: P(female), following UTKFace's coding (0 male, 1 female).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from models.efficientnet_lite import EfficientNetLite0
from models.layers import PlainCNN
from models.registry import register_model

GENDER_CLASSES: tuple[str, ...] = ("male", "female")  # index = UTKFace's gender code
MAX_AGE = 100


class AgeGenderNet(nn.Module):
    """A backbone giving pooled features, then an age-distribution head and a gender head."""

    def __init__(self, backbone: nn.Module, max_age: int = MAX_AGE, dropout: float = 0.2):
        super().__init__()
        self.max_age = max_age
        self.backbone = backbone
        f = backbone.out_features
        self.age_head = nn.Sequential(nn.Dropout(dropout), nn.Linear(f, max_age + 1))
        self.gender_head = nn.Sequential(nn.Dropout(dropout), nn.Linear(f, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, S, S) -> (N, max_age + 2): age-bin logits, then the female logit."""
        h = self.backbone(x)
        return torch.cat([self.age_head(h), self.gender_head(h)], dim=1)


@register_model
def age_gender_cnn(in_channels: int = 3, widths: tuple[int, ...] = (32, 64, 128, 256),
                   depths: tuple[int, ...] = (1, 1, 2, 2), max_age: int = MAX_AGE,
                   dropout: float = 0.2) -> AgeGenderNet:
    """Small VGG-style network trained from scratch."""
    return AgeGenderNet(PlainCNN(in_channels, tuple(widths), tuple(depths)), max_age, dropout)


@register_model
def age_gender_efficientnet_lite0(in_channels: int = 3, max_age: int = MAX_AGE, dropout: float = 0.2) -> AgeGenderNet:
    """EfficientNet-Lite0 backbone (ImageNet-initialised in training)."""
    return AgeGenderNet(EfficientNetLite0(in_channels), max_age, dropout)


@dataclass(frozen=True)
class AgeGenderOutput:
    age_mean: torch.Tensor  # (N,) years
    age_std: torch.Tensor  # (N,) years
    p_female: torch.Tensor  # (N,)


def split_age_gender(outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Model output -> (age logits (N, A), female logit (N,))."""
    return outputs[:, :-1], outputs[:, -1]


def decode_age_gender(outputs: torch.Tensor) -> AgeGenderOutput:
    age_logits, gender_logit = split_age_gender(outputs.float())
    probs = torch.softmax(age_logits, dim=1)
    ages = torch.arange(probs.shape[1], dtype=probs.dtype, device=probs.device)
    mean = (probs * ages).sum(1)
    std = ((probs * (ages - mean[:, None]) ** 2).sum(1)).clamp_min(0).sqrt()
    return AgeGenderOutput(age_mean=mean, age_std=std, p_female=torch.sigmoid(gender_logit))
