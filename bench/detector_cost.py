"""What each choice of the photo path costs: MTCNN variants and the heads, CPU time and wall time.

    python -m bench.detector_cost [--runs 15] [--out bench/results/detector_cost.json]

On the 640x480 one-face picture of bench/photo_latency.py, in one process, the variants take turns
(so the host's load hits them alike; those with torch at 1 thread after those at 2); for each, the
median wall time and the median CPU time of this process (all threads) per detection:

models/mtcnn_pipeline.py with ONNX Runtime's networks, torch (which does the glue: stacking, NMS) at
2 threads and at 1, and with the photo's 24-pixel smallest face. (PyTorch's own networks are compared
through the real service by bench/backends.py: called from this main thread, torch at 2 threads was
erratic on a loaded host, 0.6-1 s per detection against ~0.1 s on the service's worker thread.)

Then the heads (emotion + age/gender) per backend: CPU time per face at batch 1 and 32, what decides
whether a face should wait for batch companions (FACEAPP_MAX_WAIT_MS).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import machine, write_results
from bench.photo_latency import one_face_640x480


def timed(fn, runs: int, threads: int) -> tuple[list[float], list[float]]:
    walls, cpus = [], []
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
        fn()  # unmeasured: the first calls after a change of torch's thread count are far slower
    for _ in range(runs):
        t, c = time.perf_counter(), time.process_time()
        fn()
        walls.append((time.perf_counter() - t) * 1000)
        cpus.append((time.process_time() - c) * 1000)
    return walls, cpus


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15, help="detections per variant (in 5 rounds)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    import io
    import os

    from PIL import Image

    from app.config import Config
    from models.detector import FaceDetector
    from models.onnx_backend import OrtModule, exported_models, make_session

    cores = os.cpu_count() or 1
    image = np.asarray(Image.open(io.BytesIO(one_face_640x480())).convert("RGB"))
    paths = exported_models(Config.ONNX_DIR, Config.EMOTION_WEIGHTS, Config.AGE_GENDER_WEIGHTS)

    def onnx_detector() -> FaceDetector:
        detector = FaceDetector(device="cpu")
        detector.use_networks(*(OrtModule(make_session(paths[n], torch.device("cpu"), cores))
                                for n in ("mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet")))
        return detector

    ort_detector = onnx_detector()
    variants = {  # name: (call, torch threads)
        f"mtcnn_pipeline, onnxruntime, torch {cores} threads": (lambda: ort_detector.detect(image), cores),
        "mtcnn_pipeline, onnxruntime, torch 1 thread": (lambda: ort_detector.detect(image), 1),
        "same, smallest face 24 px (photos)": (lambda: ort_detector.detect(image, min_face=24), 1),
    }
    samples = {name: ([], []) for name in variants}
    rounds = 5
    # Variants with the same torch thread count take turns in rounds; the groups run one after the other,
    # since switching torch's thread count back and forth made its OpenMP runs several times slower.
    for threads in sorted({t for _, t in variants.values()}, reverse=True):
        group = {name: fn for name, (fn, t) in variants.items() if t == threads}
        for fn in group.values():
            timed(fn, 1, threads)  # first call per variant: allocations
        for _ in range(rounds):
            for name, fn in group.items():
                walls, cpus = timed(fn, max(1, args.runs // rounds), threads)
                samples[name][0].extend(walls)
                samples[name][1].extend(cpus)
    results: dict = {"machine": machine(), "picture": "640x480, one face", "detection": [
        {"variant": name, "wall_ms_p50": statistics.median(w), "cpu_ms_p50": statistics.median(c), "runs": len(w)}
        for name, (w, c) in samples.items()]}

    from app.inference.service import InferenceService, ServiceSettings

    base = ServiceSettings.from_config(Config)
    results["heads"] = []
    for backend in ("torch", "onnxruntime"):
        service = InferenceService(ServiceSettings(**{**base.__dict__, "backend": backend, "device": "cpu"}))
        job = service._job_from_crop(image[40:200, 230:350])
        for batch in (1, 32):
            jobs = [job] * batch
            service._predict_batch(jobs)
            walls, cpus = timed(lambda: service._predict_batch(jobs), 15, service.torch_threads)
            results["heads"].append({"backend": backend, "batch": batch,
                                     "cpu_ms_per_face": statistics.median(cpus) / batch,
                                     "wall_ms_per_face": statistics.median(walls) / batch})
        service.close()

    print(f"machine: {results['machine']} | {results['picture']}")
    for row in results["detection"]:
        print(f"{row['variant']:<58} wall p50 {row['wall_ms_p50']:6.1f} ms  CPU p50 {row['cpu_ms_p50']:6.1f} ms")
    for row in results["heads"]:
        print(f"heads, {row['backend']:>11}, batch {row['batch']:>2}: CPU {row['cpu_ms_per_face']:.2f} ms/face, "
              f"wall {row['wall_ms_per_face']:.2f} ms/face")
    write_results(results, args.out)
    return results


if __name__ == "__main__":
    main()
