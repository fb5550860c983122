"""Building blocks shared by the face networks."""
from __future__ import annotations

import torch.nn as nn


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class PlainCNN(nn.Module):
    """VGG-style backbone: stage i has ``depths[i]`` 3x3 conv-BN-ReLU blocks then a 2x2 max-pool;
    global average pooling at the end. Small, dense and fast on CPUs (no depthwise convolutions),
    which is what live mode needs on a 2-core machine. Early stages run at full resolution and cost
    the most, so they get one conv each."""

    def __init__(self, in_channels: int, widths: tuple[int, ...], depths: tuple[int, ...]):
        super().__init__()
        if len(widths) != len(depths):
            raise ValueError("widths and depths need one entry per stage")
        layers: list[nn.Module] = []
        c = in_channels
        for w, depth in zip(widths, depths):
            for _ in range(depth):
                layers.append(conv_bn_relu(c, w))
                c = w
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_features = c

    def forward(self, x):
        return self.pool(self.features(x)).flatten(1)


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm that directly follows a convolution in an ``nn.Sequential`` into that
    convolution (inference only: the model must be in eval mode). Same outputs, one pass over the
    activations fewer per layer; it matters most for depthwise networks, whose convolutions are cheap."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if model.training:
        raise ValueError("fuse_conv_bn needs a model in eval mode (BatchNorm must use its running statistics)")
    for module in list(model.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            conv, bn = module[i], module[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module[i] = fuse_conv_bn_eval(conv, bn)
                module[i + 1] = nn.Identity()
    return model
