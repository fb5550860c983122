"""Photo latency and batching throughput, measured through the real app in one process.

    python -m bench.photo_latency [--media ../shared/media] [--runs 30] [--out bench/results/photo.json]

1. Latency: POST /api/v1/images (Flask test client: multipart parsing, decode, detect, align, heads,
   JSON) for a 640x480 one-face picture (skimage's astronaut on a 640x480 canvas) and, when
   ``--media`` is given, for ``group_photo.jpg``; p50/p95 end to end and per stage.
2. Throughput: the same one-face picture requested by ``--clients`` threads at once through the
   batched service, against a baseline of one request at a time, in the same process; plus the
   heads alone: faces/s at batch 32 against one face at a time.
The machine is printed with the numbers; compare ratios, not absolute values, across machines.
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import machine, percentile, write_results


def one_face_640x480() -> bytes:
    import skimage.data

    canvas = np.full((480, 640, 3), 200, np.uint8)
    canvas[:, 64:576] = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((512, 480)))
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def post(client, data: bytes, name: str) -> dict:
    r = client.post("/api/v1/images", data={"image": (io.BytesIO(data), name)}, content_type="multipart/form-data")
    if r.status_code != 200:
        raise RuntimeError(f"{name}: HTTP {r.status_code} {r.get_data(as_text=True)[:200]}")
    return r.json


def latency(client, data: bytes, name: str, runs: int) -> dict:
    post(client, data, name)  # warm caches for this size
    totals, stages = [], {}
    faces = 0
    for _ in range(runs):
        t0 = time.perf_counter()
        body = post(client, data, name)
        totals.append((time.perf_counter() - t0) * 1000)
        image = body["images"][0]
        faces = len(image["faces"])
        for k, v in image["timings_ms"].items():
            stages.setdefault(k, []).append(v)
    return {
        "image": name, "faces": faces, "runs": runs,
        "end_to_end_ms": {"p50": percentile(totals, 50), "p95": percentile(totals, 95)},
        "stages_ms_p50": {k: percentile(v, 50) for k, v in stages.items()},
    }


def throughput(client, data: bytes, clients: int, seconds: float) -> dict:
    """Requests/s with ``clients`` threads at once vs strictly one at a time."""
    def run(concurrency: int) -> float:
        done = 0
        lock = threading.Lock()
        stop = time.perf_counter() + seconds

        def worker():
            nonlocal done
            while time.perf_counter() < stop:
                post(client, data, "t.jpg")
                with lock:
                    done += 1

        t0 = time.perf_counter()
        threads = [threading.Thread(target=worker) for _ in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return done / (time.perf_counter() - t0)

    sequential = run(1)
    concurrent = run(clients)
    return {"clients": clients, "sequential_rps": sequential, "concurrent_rps": concurrent,
            "ratio": concurrent / sequential}


def heads_throughput(service, repeats: int = 20) -> dict:
    """Faces/s through both heads: batches of 32 vs one face at a time (the batcher's gain)."""
    import skimage.data

    job = service._job_from_crop(skimage.data.astronaut()[50:190, 165:285])
    def rate(batch: int) -> float:
        jobs = [job] * batch
        service._predict_batch(jobs)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            service._predict_batch(jobs)
            times.append(time.perf_counter() - t0)
        return batch / statistics.median(times)

    single, batched = rate(1), rate(32)
    return {"faces_per_s_batch1": single, "faces_per_s_batch32": batched, "ratio": batched / single}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--media", type=Path, help="folder with group_photo.jpg (../shared/media)")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)

    os.environ.setdefault("FACEAPP_DEVICE", "cpu")
    os.environ.setdefault("RATELIMIT_ENABLED", "false")  # measure the server, not the per-address limit
    from app import create_app
    from app.config import Config

    app = create_app(Config)
    service = app.extensions["inference"]
    client = app.test_client()
    one_face = one_face_640x480()
    results: dict = {"machine": machine(), "device": service.device_description,
                     "batching": {"max_batch_size": service.settings.max_batch_size,
                                  "max_wait_ms": service.max_wait_ms}}
    results["latency"] = [latency(client, one_face, "one_face_640x480.jpg", args.runs)]
    if args.media:
        group = (args.media / "group_photo.jpg").read_bytes()
        results["latency"].append(latency(client, group, "group_photo.jpg", max(5, args.runs // 3)))
    results["heads"] = heads_throughput(service)
    results["throughput"] = throughput(client, one_face, args.clients, args.seconds)
    service.close()

    print(f"machine: {results['machine']} | device: {results['device']}")
    for row in results["latency"]:
        e2e = row["end_to_end_ms"]
        stages = ", ".join(f"{k} {v:.1f}" for k, v in row["stages_ms_p50"].items())
        print(f"{row['image']}: {row['faces']} face(s), end to end p50 {e2e['p50']:.1f} ms, p95 {e2e['p95']:.1f} ms"
              f" | stage p50 ms: {stages}")
    h = results["heads"]
    print(f"heads: {h['faces_per_s_batch32']:.0f} faces/s at batch 32 vs {h['faces_per_s_batch1']:.0f} one at a time "
          f"({h['ratio']:.1f}x)")
    t = results["throughput"]
    print(f"throughput one-face 640x480: {t['concurrent_rps']:.2f} req/s with {t['clients']} clients vs "
          f"{t['sequential_rps']:.2f} req/s one at a time ({t['ratio']:.2f}x)")
    write_results(results, args.out)
    return results


if __name__ == "__main__":
    main()
