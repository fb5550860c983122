"""models.export: ONNX and TorchScript exports of the heads and MTCNN's networks, and the onnxruntime
backend. Parity is checked on real faces (astronaut, Grace Hopper) against the PyTorch networks; the
figures compared are whatever the shipped weights give, so new weights need no change here."""
from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from app.inference.service import InferenceService, ServiceSettings, resolve_backend
from helpers import TestConfig
from models.checkpoint import load_checkpoint
from models.detector import FaceDetector
from models.export import CARD_KEY, HEADS, MTCNN_NETS, main, sha256
from models.onnx_backend import OrtModule, fingerprint, make_session
from models.preprocess import align_face, to_tensor

PROB_TOL = 1e-3
AGE_TOL = 0.1  # years


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    """The command line's ONNX export, in the folder the onnxruntime backend would look in."""
    cache = tmp_path_factory.mktemp("onnx")
    out = cache / fingerprint(TestConfig.EMOTION_WEIGHTS, TestConfig.AGE_GENDER_WEIGHTS)
    assert main(["--format", "onnx", "--out", str(out)]) == 0
    return cache, out


@pytest.fixture(scope="module")
def onnx_dir(onnx_cache):
    return onnx_cache[1]


@pytest.fixture(scope="module")
def torchscript_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("torchscript")
    assert main(["--format", "torchscript", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def heads():
    return {task: load_checkpoint(getattr(TestConfig, f"{task.upper()}_WEIGHTS"), task=task) for task in HEADS}


@pytest.fixture(scope="module")
def torch_detector():
    return FaceDetector(device="cpu")


@pytest.fixture(scope="module")
def crops(heads, torch_detector, astronaut, grace_hopper):
    """Each head's aligned crops of the two real faces and their mirror images: a batch of 4."""
    out = {task: [] for task in HEADS}
    for image in (astronaut, grace_hopper):
        (face,) = torch_detector.detect(image)
        for task in HEADS:
            crop = align_face(image, face.landmarks, heads[task].card.preprocess)
            out[task] += [crop, np.ascontiguousarray(crop[:, ::-1])]
    return {task: to_tensor(c, heads[task].card.preprocess) for task, c in out.items()}


def session(path):
    return make_session(path, torch.device("cpu"))


def reference(heads, crops):
    with torch.inference_mode():
        logits = heads["emotion"].model(crops["emotion"])
        ag = heads["age_gender"].model(crops["age_gender"])
    from models.age_gender import decode_age_gender

    decoded = decode_age_gender(ag)
    return torch.softmax(logits, 1).numpy(), decoded.age_mean.numpy(), decoded.p_female.numpy()


def assert_head_parity(heads, crops, emotion_out, age_out):
    probs, age, p_female = reference(heads, crops)
    assert np.abs(emotion_out["probabilities"] - probs).max() <= PROB_TOL
    assert (emotion_out["probabilities"].argmax(1) == probs.argmax(1)).all()
    assert np.abs(age_out["age_mean"] - age).max() <= AGE_TOL
    assert np.abs(age_out["p_female"] - p_female).max() <= PROB_TOL
    assert ((age_out["p_female"] > 0.5) == (p_female > 0.5)).all()


def run_onnx(path, x: torch.Tensor) -> dict[str, np.ndarray]:
    s = session(path)
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(names, {"input": x.numpy()})))


def test_onnx_heads_match_pytorch_on_real_faces_at_any_batch_size(onnx_dir, heads, crops):
    emotion = run_onnx(onnx_dir / "emotion.onnx", crops["emotion"])
    age = run_onnx(onnx_dir / "age_gender.onnx", crops["age_gender"])
    assert emotion["probabilities"].shape == (4, 7) and age["age_mean"].shape == (4,)
    assert_head_parity(heads, crops, emotion, age)
    # the batch is dynamic: one face alone gives what it gave in the batch
    single = run_onnx(onnx_dir / "emotion.onnx", crops["emotion"][2:3])
    assert np.abs(single["probabilities"][0] - emotion["probabilities"][2]).max() <= 1e-5


def test_onnx_metadata_carries_preprocessing_and_labels(onnx_dir, heads):
    manifest = json.loads((onnx_dir / "manifest.json").read_text())
    assert set(manifest["files"]) == set(HEADS + MTCNN_NETS)
    assert {"torch", "onnx", "facenet-pytorch"} <= set(manifest["versions"])
    for name, entry in manifest["files"].items():
        path = onnx_dir / entry["file"]
        assert sha256(path) == entry["sha256"]
        model = onnx.load(str(path))
        card = json.loads({p.key: p.value for p in model.metadata_props}[CARD_KEY])
        assert card == {k: v for k, v in json.loads((onnx_dir / entry["card"]).read_text()).items() if k in card}
        # nothing about where it was exported (stack traces, paths): the checksum depends on weights and versions
        assert not any(n.metadata_props or n.doc_string for n in model.graph.node) and not model.graph.metadata_props
        assert b"/models/" not in path.read_bytes()
        dims = model.graph.input[0].type.tensor_type.shape.dim
        assert dims[0].dim_param and not dims[0].dim_value  # dynamic batch
        if name == "mtcnn_pnet":
            assert dims[2].dim_param and dims[3].dim_param  # P-net slides over any size
        if name in heads:
            assert card["labels"] == heads[name].card.labels
            assert card["preprocess"]["template"] == heads[name].card.preprocess.to_dict()["template"]
            assert card["preprocess"]["mean"] == list(heads[name].card.preprocess.mean)
            assert card["source"]["sha256"] == sha256(heads[name].path)


def test_onnx_mtcnn_finds_the_same_faces(onnx_dir, torch_detector, astronaut, grace_hopper, side_by_side):
    onnx_detector = FaceDetector(device="cpu")
    onnx_detector.use_networks(*(OrtModule(session(onnx_dir / f"{n}.onnx")) for n in MTCNN_NETS))
    for image in (astronaut, grace_hopper, side_by_side):
        expected, got = torch_detector.detect(image), onnx_detector.detect(image)
        assert len(got) == len(expected) >= 1
        for e, g in zip(expected, got):
            assert np.abs(e.box - g.box).max() < 0.5
            assert np.abs(e.landmarks - g.landmarks).max() < 0.5
            assert abs(e.score - g.score) <= PROB_TOL
    # following a face (O-net alone) too
    (e,) = torch_detector.refine_many([astronaut], [torch_detector.detect(astronaut)[0].box[None]])[0]
    (g,) = onnx_detector.refine_many([astronaut], [torch_detector.detect(astronaut)[0].box[None]])[0]
    assert np.abs(e.box - g.box).max() < 0.5 and abs(e.score - g.score) <= PROB_TOL


def test_onnx_pnet_takes_any_picture_size(onnx_dir, astronaut):
    from facenet_pytorch.models.mtcnn import PNet

    pnet = PNet().eval()
    s = session(onnx_dir / "mtcnn_pnet.onnx")
    for h, w in ((512, 512), (157, 233)):
        x = torch.nn.functional.interpolate(torch.from_numpy(astronaut).permute(2, 0, 1)[None].float(), (h, w))
        x = (x - 127.5) * 0.0078125
        with torch.inference_mode():
            reg, prob = pnet(x)
        got_reg, got_prob = s.run(None, {"input": x.numpy()})
        assert got_prob.shape == prob.shape
        assert np.abs(got_prob - prob.numpy()).max() <= PROB_TOL
        assert np.abs(got_reg - reg.numpy()).max() <= PROB_TOL


def test_torchscript_heads_match_and_carry_their_card(torchscript_dir, heads, crops):
    extra = {"card.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; the format is for libtorch users
        emotion = torch.jit.load(str(torchscript_dir / "emotion.torchscript.pt"), _extra_files=extra)
        age_gender = torch.jit.load(str(torchscript_dir / "age_gender.torchscript.pt"))
    assert json.loads(extra["card.json"])["labels"] == heads["emotion"].card.labels
    with torch.inference_mode():
        _, probs = emotion(crops["emotion"])
        _, age_mean, _, p_female = age_gender(crops["age_gender"])
    assert_head_parity(heads, crops, {"probabilities": probs.numpy()},
                       {"age_mean": age_mean.numpy(), "p_female": p_female.numpy()})
    for name in MTCNN_NETS:
        assert (torchscript_dir / f"{name}.torchscript.pt").is_file()
        assert json.loads((torchscript_dir / f"{name}.json").read_text())["format"] == "torchscript"


def test_onnxruntime_backend_serves_the_same_answers(onnx_cache, service, astronaut, grace_hopper):
    cache, _ = onnx_cache
    base = ServiceSettings.from_config(TestConfig)
    services = {b: InferenceService(ServiceSettings(**{**base.__dict__, "backend": b, "onnx_dir": str(cache)}))
                for b in ("torch", "onnxruntime")}
    try:
        assert "onnxruntime" in services["onnxruntime"].device_description
        assert len(list(cache.iterdir())) == 1  # the export made above was reused, not repeated
        for image in (astronaut, grace_hopper):
            (expected,), (got,) = (services[b].analyze(image).faces for b in ("torch", "onnxruntime"))
            assert np.abs(np.subtract(expected.box, got.box)).max() < 0.5
            assert got.emotion.label == expected.emotion.label
            assert max(abs(got.emotion.probabilities[k] - v)
                       for k, v in expected.emotion.probabilities.items()) <= PROB_TOL
            assert abs(got.age.years - expected.age.years) <= AGE_TOL
            assert got.gender.label == expected.gender.label
    finally:
        for s in services.values():
            s.close()
        torch.set_num_threads(service.torch_threads)  # torch's threads are per process


def test_auto_backend_is_onnxruntime_on_the_cpu(service):
    assert TestConfig.INFERENCE_BACKEND == "auto" and service.backend == "onnxruntime"
    assert resolve_backend("auto", torch.device("cuda:0")) == "torch"
    assert resolve_backend("torch", torch.device("cpu")) == "torch"


def test_unknown_backend_is_refused():
    base = ServiceSettings.from_config(TestConfig)
    with pytest.raises(ValueError, match="INFERENCE_BACKEND"):
        InferenceService(ServiceSettings(**{**base.__dict__, "backend": "tensorflow"}))


def test_onnxruntime_is_installed_with_its_cpu_provider():
    assert "CPUExecutionProvider" in ort.get_available_providers()


def test_a_damaged_export_is_made_again(onnx_cache):
    """The backend's cache checks each file against its manifest: a truncated file is exported anew."""
    from models.onnx_backend import exported_models

    cache, folder = onnx_cache
    manifest = json.loads((folder / "manifest.json").read_text())
    damaged = folder / "mtcnn_rnet.onnx"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    paths = exported_models(cache, TestConfig.EMOTION_WEIGHTS, TestConfig.AGE_GENDER_WEIGHTS)
    assert paths["mtcnn_rnet"] == damaged and sha256(damaged) == manifest["files"]["mtcnn_rnet"]["sha256"]


def test_providers_cpu_and_cuda_when_the_build_has_it(caplog):
    from models.onnx_backend import providers_for

    assert providers_for(torch.device("cpu")) == ["CPUExecutionProvider"]
    cuda = providers_for(torch.device("cuda:0"))
    if "CUDAExecutionProvider" in ort.get_available_providers():  # onnxruntime-gpu
        assert cuda[0][0] == "CUDAExecutionProvider"
    else:  # the CPU build from requirements.txt: says so and runs on the CPU
        assert cuda == ["CPUExecutionProvider"] and "onnxruntime-gpu" in caplog.text
