"""Every registered architecture builds, and every shipped weight file describes itself correctly."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.checkpoint import TASKS, load_checkpoint
from models.emotion import EMOTION_CLASSES
from models.registry import create_model, list_models

WEIGHTS = sorted((Path(__file__).resolve().parent.parent / "models" / "weights").glob("*.pt"))


@pytest.mark.parametrize("name", list_models())
def test_registered_model_builds_and_runs(name):
    model = create_model(name).eval()
    with torch.inference_mode():
        out = model(torch.zeros(2, 3 if "age" in name else 1, 64, 64))
    assert out.shape[0] == 2 and torch.isfinite(out).all()


def test_unknown_model_name_fails_clearly():
    with pytest.raises(KeyError, match="unknown model 'nope'.*emotion_cnn"):
        create_model("nope")


def test_shipped_weights_exist():
    assert {p.name for p in WEIGHTS} >= {"emotion.pt", "age_gender.pt"}


@pytest.mark.parametrize("path", WEIGHTS, ids=lambda p: p.name)
def test_shipped_checkpoint_is_self_describing(path):
    assert path.stat().st_size < 20 * 1024 * 1024, "shipped weights must stay under 20 MB"
    loaded = load_checkpoint(path)
    card = loaded.card
    assert card.task in TASKS and card.arch in list_models()
    assert all(v.dtype == torch.float16 for k, v in torch.load(path, weights_only=True)["state_dict"].items()
               if v.is_floating_point()), "weights ship in fp16"
    cfg = card.preprocess
    x = torch.zeros(3, cfg.num_channels, cfg.input_size, cfg.input_size)
    with torch.inference_mode():
        out = loaded.model(x)
    if card.task == "emotion":
        assert card.labels["emotion"] == list(EMOTION_CLASSES) and out.shape == (3, len(EMOTION_CLASSES))
    else:
        assert card.labels["gender"] == ["male", "female"] and out.shape == (3, card.labels["max_age"] + 2)
    assert card.metrics, "a shipped checkpoint carries its evaluation metrics"
    assert card.training.get("epochs"), "a shipped checkpoint carries its training config"


@pytest.mark.parametrize("name", list_models())
def test_folding_batchnorm_keeps_outputs(name):
    from models.layers import fuse_conv_bn

    torch.manual_seed(0)
    model = create_model(name)
    for m in model.modules():  # non-trivial statistics, so a wrong fold would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    with pytest.raises(ValueError, match="eval mode"):
        fuse_conv_bn(model)
    model.eval()
    x = torch.randn(3, 3 if "age" in name else 1, 64, 64)
    with torch.inference_mode():
        before = model(x)
        fused = fuse_conv_bn(model)
        after = fused(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert before.abs().max() > 1e-2  # the comparison below is not between two near-zero outputs
    torch.testing.assert_close(after, before, rtol=1e-3, atol=1e-4)
