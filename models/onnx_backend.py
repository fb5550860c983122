"""ONNX Runtime behind the same interfaces as the PyTorch networks.

:class:`OrtModule` is an ``nn.Module`` whose forward runs an ONNX Runtime session, so it drops in where
a network is called: the heads (``InferenceService``) and MTCNN's P-, R- and O-net inside
facenet-pytorch's own detection code (``FaceDetector``). Tensors go in and come out as torch tensors on
the caller's device; everything around the networks (pyramid, NMS, alignment, decoding) stays the same
code for both backends.

The ONNX files come from :func:`models.export.export_all`; :func:`exported_models` keeps them in a cache
folder keyed by the checkpoints' and libraries' fingerprints, so new weights or a new exporter give a
fresh export and an unchanged setup reuses the last one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from models.export import HEADS, MTCNN_NETS, export_all, library_versions, model_filename, sha256

log = logging.getLogger(__name__)


def providers_for(device: torch.device) -> list[str]:
    """CUDA execution provider on a GPU when this onnxruntime build has it, else the CPU's."""
    import onnxruntime as ort

    if device.type == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
        log.warning("onnxruntime has no CUDA provider (install onnxruntime-gpu); running ONNX models on the CPU")
    return ["CPUExecutionProvider"]


def make_session(path: str | os.PathLike, device: torch.device, threads: int = 0, cpu_arena: bool = True):
    """``cpu_arena``: ONNX Runtime's own CPU memory arena, which keeps its high-water mark for the
    session's life (off: every run's buffers come from and go back to the C heap)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = cpu_arena
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # No busy-waiting between calls: MTCNN calls its networks a dozen times per picture with other work
    # in between, which threads spinning on the same cores slow down.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: the provider notices are noise in server logs
    return ort.InferenceSession(str(path), sess_options=options, providers=providers_for(device))


class OrtModule(nn.Module):
    """Runs one ONNX model; returns its outputs (all, or those named) as float32 torch tensors.

    It has one empty parameter so code that asks a network for its dtype (facenet-pytorch's
    ``next(pnet.parameters()).dtype``) reads float32.
    """

    def __init__(self, session, outputs: list[str] | None = None, smallest_side: int | None = None):
        """``smallest_side``: the least height and width the network takes where its input leaves them
        open (P-net: its 12-pixel window); :meth:`release_arena` runs it on that."""
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_names = outputs or [o.name for o in session.get_outputs()]
        self.dtype_probe = nn.Parameter(torch.zeros(0), requires_grad=False)
        self.smallest_side = smallest_side

    def release_arena(self) -> bool:
        """Gives the free regions of the session's CPU memory arena back to the C heap. The arena keeps
        its high-water mark (e.g. P-net's after 8 large pictures in one batch, 0.4-0.5 GB) for the session's
        life; ONNX Runtime shrinks it only at the end of a run that asks for it, so this is one run on
        the smallest input. Safe beside other runs: regions in use are kept. False without an arena."""
        import onnxruntime as ort

        if not self.session.get_session_options().enable_cpu_mem_arena:
            return False  # shrinking an arena that is off is an error in ONNX Runtime
        shape = self.session.get_inputs()[0].shape
        if self.smallest_side is None and any(not isinstance(d, int) for d in shape[1:]):
            raise ValueError(f"{self.input_name} {shape}: the module needs the smallest side its network takes")
        smallest = [1] + [d if isinstance(d, int) else self.smallest_side for d in shape[1:]]
        options = ort.RunOptions()
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self.session.run(self.output_names, {self.input_name: np.zeros(smallest, np.float32)}, options)
        return True

    def forward(self, x: torch.Tensor):
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        results = self.session.run(self.output_names, {self.input_name: array})
        tensors = tuple(torch.from_numpy(r).to(x.device) for r in results)
        return tensors[0] if len(tensors) == 1 else tensors


def fingerprint(emotion_weights: str | os.PathLike, age_gender_weights: str | os.PathLike) -> str:
    """What an export depends on: the two checkpoints and the library versions that export them."""
    parts = {"emotion": sha256(emotion_weights), "age_gender": sha256(age_gender_weights),
             "versions": library_versions()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def exported_models(cache_dir: str | os.PathLike, emotion_weights: str | os.PathLike,
                    age_gender_weights: str | os.PathLike) -> dict[str, Path]:
    """Paths of the five ONNX models for these checkpoints, exporting them first if the cache lacks them."""
    folder = Path(cache_dir) / fingerprint(emotion_weights, age_gender_weights)
    paths = {name: folder / model_filename(name, "onnx") for name in HEADS + MTCNN_NETS}
    manifest = folder / "manifest.json"
    if not manifest.is_file() or not all(p.is_file() for p in paths.values()):
        log.info("exporting ONNX models to %s (once per set of weights)", folder)
        export_all(folder, "onnx", emotion_weights, age_gender_weights)
    else:
        files = json.loads(manifest.read_text())["files"]
        for name, path in paths.items():
            if sha256(path) != files[name]["sha256"]:  # a partial or damaged copy: export again
                export_all(folder, "onnx", emotion_weights, age_gender_weights)
                break
    return paths
