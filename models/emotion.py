"""Facial-expression networks: 7 FER2013 classes."""
from __future__ import annotations

import torch
import torch.nn as nn

from models.efficientnet_lite import EfficientNetLite0
from models.layers import PlainCNN
from models.registry import register_model

# FER2013's label order (its `emotion` column: 0 angry ... 6 neutral).
EMOTION_CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


class EmotionNet(nn.Module):
    """A backbone giving pooled features, then dropout and a linear classifier."""

    def __init__(self, backbone: nn.Module, num_classes: int = len(EMOTION_CLASSES), dropout: float = 0.3):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(backbone.out_features, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, S, S) -> class logits (N, num_classes)."""
        return self.head(self.backbone(x))


@register_model
def emotion_cnn(in_channels: int = 1, widths: tuple[int, ...] = (32, 64, 128, 256),
                depths: tuple[int, ...] = (1, 1, 2, 2), num_classes: int = len(EMOTION_CLASSES),
                dropout: float = 0.3) -> EmotionNet:
    """Small VGG-style network trained from scratch at 48 px."""
    return EmotionNet(PlainCNN(in_channels, tuple(widths), tuple(depths)), num_classes, dropout)


@register_model
def emotion_efficientnet_lite0(in_channels: int = 1, num_classes: int = len(EMOTION_CLASSES),
                               dropout: float = 0.3) -> EmotionNet:
    """EfficientNet-Lite0 backbone (ImageNet-initialised in training)."""
    return EmotionNet(EfficientNetLite0(in_channels), num_classes, dropout)


def decode_emotion(logits: torch.Tensor) -> torch.Tensor:
    """Logits (N, K) -> probabilities (N, K), float32."""
    return torch.softmax(logits.float(), dim=1)
