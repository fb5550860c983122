"""Export the served networks to ONNX or TorchScript, each with its preprocessing and labels.

    python -m models.export --format onnx|torchscript [--out DIR] [--emotion W.pt] [--age-gender W.pt]

Writes, for each of the emotion and age/gender heads and MTCNN's three networks (P-, R- and O-net, from
facenet-pytorch): ``NAME.onnx`` (or ``NAME.torchscript.pt``) and ``NAME.json`` beside it, plus a
``manifest.json`` with every file's SHA-256 and the library versions that produced it. An ONNX file
carries the same description in its metadata (key ``faceapp.card``), a TorchScript file as an extra file
(``card.json``), so a model is usable without this project. All inputs are NCHW float32 with a dynamic
batch; P-net's height and width are dynamic too (it slides over an image pyramid).

The heads' graphs end with their decoding, so a user needs no code of ours: emotion gives ``logits`` and
``probabilities``; age/gender gives ``outputs`` (age-bin logits then the female logit), ``age_mean``,
``age_std`` and ``p_female``. The serving backend (``models/onnx_backend.py``) reads the raw outputs and
decodes them with the same code as the PyTorch path.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import platform
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from models.age_gender import decode_age_gender
from models.checkpoint import LoadedModel, load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
FORMATS = ("onnx", "torchscript")
OPSET = 18
HEADS = ("emotion", "age_gender")
MTCNN_NETS = ("mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet")
CARD_KEY = "faceapp.card"

log = logging.getLogger(__name__)

# MTCNN's own input convention (facenet_pytorch.models.utils.detect_face): RGB pixels, (x - 127.5) / 128.
_MTCNN_PREPROCESS = {"channels": "rgb", "layout": "NCHW", "formula": "(pixel - 127.5) * 0.0078125",
                     "pixel_range": [0, 255]}
_MTCNN_CARDS = {
    "mtcnn_pnet": {
        "input_size": None,
        "outputs": {"reg": "(N, 4, H', W') box offsets per 12x12 window (stride 2)",
                    "prob": "(N, 2, H', W') softmax: [not face, face]"},
    },
    "mtcnn_rnet": {
        "input_size": 24,
        "outputs": {"reg": "(N, 4) box offsets", "prob": "(N, 2) softmax: [not face, face]"},
    },
    "mtcnn_onet": {
        "input_size": 48,
        "outputs": {"reg": "(N, 4) box offsets", "landmarks": "(N, 10) x1..x5 then y1..y5, in [0, 1] of the box",
                    "prob": "(N, 2) softmax: [not face, face]"},
    },
}


class EmotionExport(nn.Module):
    """The emotion network followed by its softmax."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        return logits, torch.softmax(logits, dim=1)


class AgeGenderExport(nn.Module):
    """The age/gender network followed by its decoding (models.age_gender.decode_age_gender)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        outputs = self.model(x)
        decoded = decode_age_gender(outputs)
        return outputs, decoded.age_mean, decoded.age_std, decoded.p_female


@dataclass(frozen=True)
class ExportSpec:
    """One network to export: the module, an example input, the tensor names and what to tell users."""

    name: str
    module: nn.Module
    example: torch.Tensor
    output_names: tuple[str, ...]
    dynamic_hw: bool
    card: dict


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def head_spec(task: str, loaded: LoadedModel) -> ExportSpec:
    card, pre = loaded.card, loaded.card.preprocess
    size, channels = pre.input_size, pre.num_channels
    if task == "emotion":
        module, outputs = EmotionExport(loaded.model), ("logits", "probabilities")
        described = {"logits": "(N, 7) class logits", "probabilities": "(N, 7) softmax, in labels.emotion order"}
    else:
        module, outputs = AgeGenderExport(loaded.model), ("outputs", "age_mean", "age_std", "p_female")
        described = {"outputs": f"(N, {card.labels.get('max_age', 100) + 2}) age-bin logits for 0..max_age "
                                "years, then the female logit",
                     "age_mean": "(N,) expected age in years", "age_std": "(N,) spread of the age distribution",
                     "p_female": "(N,) probability of female (UTKFace coding: labels.gender[1])"}
    return ExportSpec(
        name=task, module=module.eval(), example=torch.zeros(2, channels, size, size), output_names=outputs,
        dynamic_hw=False,
        card={
            "name": task, "task": task, "arch": card.arch, "arch_args": card.arch_args, "labels": card.labels,
            "metrics": card.metrics,
            "input": {"name": "input", "shape": ["N", channels, size, size], "dtype": "float32",
                      "layout": "NCHW", "formula": "(pixel / 255 - mean) / std",
                      "note": "crop the face with preprocess.template (5 landmarks in [0, 1] of a "
                              "frame_size crop), to grey when channels is 'gray', then resize to input_size"},
            "preprocess": {**pre.to_dict(), "frame_size": pre.frame_size},
            "outputs": described,
            "source": {"checkpoint": loaded.path.name, "sha256": sha256(loaded.path)},
        })


def mtcnn_specs() -> list[ExportSpec]:
    from importlib.metadata import version

    from facenet_pytorch.models.mtcnn import ONet, PNet, RNet

    specs = []
    for name, cls, outputs in (("mtcnn_pnet", PNet, ("reg", "prob")), ("mtcnn_rnet", RNet, ("reg", "prob")),
                               ("mtcnn_onet", ONet, ("reg", "landmarks", "prob"))):
        info = _MTCNN_CARDS[name]
        size = info["input_size"]
        example = torch.zeros(2, 3, size or 64, size or 80)
        specs.append(ExportSpec(
            name=name, module=cls(pretrained=True).eval(), example=example, output_names=outputs,
            dynamic_hw=size is None,
            card={"name": name, "task": "face_detection", "arch": f"mtcnn.{cls.__name__}",
                  "package": f"facenet-pytorch {version('facenet-pytorch')}",
                  "input": {"name": "input", "shape": ["N", 3, size or "H", size or "W"],
                            "dtype": "float32", **_MTCNN_PREPROCESS},
                  "outputs": info["outputs"]}))
    return specs


def _export_onnx(spec: ExportSpec, path: Path) -> None:
    import onnx
    from torch.export import Dim

    dims = {0: Dim("batch", min=1, max=65536)}
    if spec.dynamic_hw:
        dims.update({2: Dim("height", min=12, max=16384), 3: Dim("width", min=12, max=16384)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own chatter about its internals
        program = torch.onnx.export(spec.module, (spec.example,), input_names=["input"],
                                    output_names=list(spec.output_names), dynamic_shapes=({**dims},),
                                    dynamo=True, opset_version=OPSET, verbose=False, optimize=True)
    model = program.model_proto
    _strip_provenance(model)
    entry = model.metadata_props.add()
    entry.key, entry.value = CARD_KEY, json.dumps(spec.card, sort_keys=True)
    model.producer_name = "faceapp models.export"
    onnx.checker.check_model(model)
    _atomic_write(path, model.SerializeToString())


def _strip_provenance(model) -> None:
    """Drop what the exporter records about where it ran (stack traces with absolute paths and line
    numbers, module paths such as ``__main__``): the file then depends only on the weights and the
    library versions, so its checksum can be reproduced from another checkout."""
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        del graph.metadata_props[:]
        graph.doc_string = ""
        for items in (graph.input, graph.output, graph.value_info, graph.initializer):
            for item in items:
                del item.metadata_props[:]
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
            graphs += [a.g for a in node.attribute if a.HasField("g")] + [g for a in node.attribute for g in a.graphs]
    for function in model.functions:
        for node in function.node:
            del node.metadata_props[:]
            node.doc_string = ""


def _export_torchscript(spec: ExportSpec, path: Path) -> None:
    # torch.jit is deprecated in favour of torch.export, but TorchScript files still load in C++
    # (libtorch) and older PyTorch: exported for those users, with the deprecation notice silenced.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(spec.module, (spec.example,), check_trace=False)
        buf = io.BytesIO()  # not the final path: the archive's inner folder is named after the file
        torch.jit.save(traced, buf, _extra_files={"card.json": json.dumps(spec.card, sort_keys=True)})
    _atomic_write(path, buf.getvalue())


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; models are meant to be readable
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def model_filename(name: str, fmt: str) -> str:
    return f"{name}.onnx" if fmt == "onnx" else f"{name}.torchscript.pt"


def library_versions() -> dict:
    from importlib.metadata import version

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "facenet-pytorch": version("facenet-pytorch")}
    for package in ("onnx", "onnxscript", "onnxruntime"):
        try:
            versions[package] = version(package)
        except Exception:  # not installed: only needed for the ONNX format
            pass
    return versions


def export_all(out: str | os.PathLike, fmt: str = "onnx", emotion_weights: str | os.PathLike | None = None,
               age_gender_weights: str | os.PathLike | None = None,
               names: tuple[str, ...] = HEADS + MTCNN_NETS) -> dict:
    """Export the named networks into ``out``; returns the manifest (also written as manifest.json)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = {"emotion": emotion_weights or ROOT / "models" / "weights" / "emotion.pt",
               "age_gender": age_gender_weights or ROOT / "models" / "weights" / "age_gender.pt"}
    specs = [head_spec(task, load_checkpoint(weights[task], task=task)) for task in HEADS if task in names]
    specs += [s for s in mtcnn_specs() if s.name in names]
    files = {}
    for spec in specs:
        path = out / model_filename(spec.name, fmt)
        (_export_onnx if fmt == "onnx" else _export_torchscript)(spec, path)
        card = {**spec.card, "format": fmt, "file": path.name, "opset": OPSET if fmt == "onnx" else None,
                "input_names": ["input"], "output_names": list(spec.output_names)}
        _atomic_write(out / f"{spec.name}.json", (json.dumps(card, indent=2, sort_keys=True) + "\n").encode())
        files[spec.name] = {"file": path.name, "sha256": sha256(path), "bytes": path.stat().st_size,
                            "card": f"{spec.name}.json"}
        log.info("exported %s -> %s", spec.name, path)
    manifest = {"format": fmt, "versions": library_versions(), "files": files}
    _atomic_write(out / "manifest.json", (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument("--out", default=str(ROOT / "exported"), help="folder to write (default: exported/)")
    parser.add_argument("--emotion", default=None, help="emotion checkpoint (default: models/weights/emotion.pt)")
    parser.add_argument("--age-gender", default=None,
                        help="age/gender checkpoint (default: models/weights/age_gender.pt)")
    args = parser.parse_args(argv)
    manifest = export_all(args.out, args.format, args.emotion, args.age_gender)
    for name, entry in manifest["files"].items():
        print(f"{entry['sha256']}  {entry['bytes']:>9}  {Path(args.out) / entry['file']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in manifest["versions"].items()))
    return 0


if __name__ == "__main__":
    # Run the module's own copy, so the wrapper classes are models.export.* (not __main__.*) in the files.
    from models.export import main as export_main

    sys.exit(export_main())
