"""PyTorch against ONNX Runtime, side by side in one process (INFERENCE_BACKEND).

    python -m bench.backends [--media ../shared/media] [--runs 30] [--live] [--out bench/results/backends.json]

Both services are loaded first; then every measurement alternates between them in rounds, so a
change in the host's load (this shared machine's numbers move by +-30% in an afternoon) hits both alike:

1. Photo: POST /api/v1/images through the real app (Flask test client) for a 640x480 one-face picture
   and, with ``--media``, ``group_photo.jpg``; p50/p95 end to end and per stage, and the CPU time the
   process spent per request (all threads; on a quiet 2-core host the wall time is at least half of it).
2. Heads alone: faces/s at batch 1 and 32 (emotion + age/gender together).
3. Video: a whole job with default options on a generated 640x480 clip (96 frames, one moving face).
4. With ``--live``: live mode, one gunicorn server per backend, 1 and 8 streaming clients
   (bench/live_clients.py), one server after the other.
The faster backend on the one-face photo is what ``app/config.py`` should default to on the CPU.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.common import machine, percentile, write_results
from bench.photo_latency import heads_throughput, one_face_640x480, post
from bench.video_throughput import make_clip, run_job

BACKENDS = ("torch", "onnxruntime")


def use_threads(client) -> None:
    """torch's thread count is per process: give it the value this client's service runs with."""
    torch.set_num_threads(client.application.extensions["inference"].torch_threads)


def photo_rounds(clients: dict, data: bytes, name: str, runs: int, rounds: int = 5) -> dict:
    """``runs`` requests per backend, alternating backends every ``runs / rounds`` requests."""
    per_round = max(1, runs // rounds)
    totals = {b: [] for b in clients}
    cpu = {b: [] for b in clients}  # this process's CPU time per request: what the host's load does not inflate
    stages = {b: {} for b in clients}
    faces = {}
    for client in clients.values():
        post(client, data, name)  # first call for this size
    for _ in range(rounds):
        for backend, client in clients.items():
            use_threads(client)
            for _ in range(per_round):
                t0, c0 = time.perf_counter(), time.process_time()
                body = post(client, data, name)
                totals[backend].append((time.perf_counter() - t0) * 1000)
                cpu[backend].append((time.process_time() - c0) * 1000)
                image = body["images"][0]
                faces[backend] = len(image["faces"])
                for k, v in image["timings_ms"].items():
                    stages[backend].setdefault(k, []).append(v)
    return {backend: {"image": name, "faces": faces[backend], "runs": len(totals[backend]),
                      "end_to_end_ms": {"p50": percentile(totals[backend], 50), "p95": percentile(totals[backend], 95)},
                      "cpu_ms_p50": percentile(cpu[backend], 50),
                      "stages_ms_p50": {k: percentile(v, 50) for k, v in stages[backend].items()}}
            for backend in clients}


def video_rounds(services: dict, tmp: Path, rounds: int = 2) -> dict:
    clip = make_clip(tmp / "clip.mp4", 96, 640, 480)
    fps = {b: [] for b in services}
    for r in range(rounds):
        for backend, service in services.items():
            torch.set_num_threads(service.torch_threads)
            row = run_job(service, clip, tmp / f"{backend}{r}", stride=1, chunk=8, search_every=5)
            fps[backend].append(row["fps"])
    return {b: {"clip": "640x480, 96 frames, one face", "fps_median": statistics.median(v), "fps_runs": v}
            for b, v in fps.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--media", type=Path, help="folder with group_photo.jpg (../shared/media)")
    parser.add_argument("--runs", type=int, default=30, help="photo requests per backend and picture")
    parser.add_argument("--no-video", action="store_true")
    parser.add_argument("--live", action="store_true",
                        help="also live mode: a gunicorn server per backend, 1 and 8 streaming clients "
                             "(bench.live_clients, 2 x 8 s each)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)

    os.environ.setdefault("FACEAPP_DEVICE", "cpu")
    from app import create_app
    from app.config import Config
    from app.inference.service import InferenceService, ServiceSettings

    base = ServiceSettings.from_config(Config)
    services = {b: InferenceService(ServiceSettings(**{**base.__dict__, "backend": b})) for b in BACKENDS}
    clients = {b: create_app(Config, service=s).test_client() for b, s in services.items()}
    torch.set_num_threads(services["torch"].torch_threads)
    results: dict = {"machine": machine(), "devices": {b: s.device_description for b, s in services.items()},
                     "max_wait_ms": {b: s.max_wait_ms for b, s in services.items()},
                     "detector": {"max_side": base.detector_max_side, "min_face": base.detector_min_face},
                     "photo": [photo_rounds(clients, one_face_640x480(), "one_face_640x480.jpg", args.runs)]}
    if args.media:
        group = (args.media / "group_photo.jpg").read_bytes()
        results["photo"].append(photo_rounds(clients, group, "group_photo.jpg", max(10, args.runs // 2)))
    results["heads"] = {}
    for b, s in services.items():
        torch.set_num_threads(s.torch_threads)
        results["heads"][b] = heads_throughput(s)
    if not args.no_video:
        with tempfile.TemporaryDirectory(prefix="backend-bench-") as tmp:
            results["video"] = video_rounds(services, Path(tmp))
    for s in services.values():
        s.close()
    if args.live:  # servers of their own: after the in-process services are closed
        from bench.live_clients import measure

        live_args = argparse.Namespace(seconds=8.0, repeats=2, warm_up_seconds=3.0, clients=[1, 8],
                                       smoothing_frames=0, detector_max_side=None)
        results["live"] = {b: measure(live_args, None, backend=b)["streaming"] for b in BACKENDS}

    print(f"machine: {results['machine']}")
    for rows in results["photo"]:
        for backend, row in rows.items():
            e2e = row["end_to_end_ms"]
            stages = ", ".join(f"{k} {v:.1f}" for k, v in row["stages_ms_p50"].items())
            print(f"{backend:>11} {row['image']}: {row['faces']} face(s), end to end p50 {e2e['p50']:.1f} ms, "
                  f"p95 {e2e['p95']:.1f} ms, CPU p50 {row['cpu_ms_p50']:.1f} ms | stage p50 ms: {stages}")
    for backend, h in results["heads"].items():
        print(f"{backend:>11} heads: {h['faces_per_s_batch1']:.0f} faces/s at batch 1, "
              f"{h['faces_per_s_batch32']:.0f} at batch 32")
    for backend, v in results.get("video", {}).items():
        print(f"{backend:>11} video job ({v['clip']}): {v['fps_median']:.1f} frames/s")
    for backend, rows in results.get("live", {}).items():
        print(f"{backend:>11} live: " + "; ".join(
            f"{r['clients']} client(s) {r['fps_aggregate']:.1f} fps (slowest {r['fps_min_client']:.1f}), "
            f"server p50 {r['server_ms_p50']:.1f} ms" for r in rows))
    one = results["photo"][0]
    faster = min(one, key=lambda b: one[b]["end_to_end_ms"]["p50"])
    results["faster_one_face_photo"] = faster
    print(f"faster on the one-face photo: {faster}")
    write_results(results, args.out)
    return results


if __name__ == "__main__":
    main()
