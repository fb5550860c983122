"""What giving memory back in a quiet spell saves, and what it costs the next photo.

    python -m bench.idle_release [--rounds 10] [--out bench/results/idle_release.json]

After work stops for FACEAPP_IDLE_RELEASE_S (2 s) the service calls ``release_memory()``
(app/heap.py: HeapTrimmer): ONNX Runtime's CPU arenas are shrunk and the C heap trimmed. The next picture
then pays for growing the arenas again. One process, one service (its own idle release turned off, so
this script decides when it happens). Each round: 8 photos of 1280x960 at once (a detector batch of 8:
what grows P-net's arena most), 1 s of quiet, then either ``release_memory()`` or nothing, alternating
round by round; then the RSS, and the latency of one photo, the first after the quiet spell. Medians of
each arm and the ratio of the released arm's first-photo latency to the kept arm's.
"""
from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from bench.common import machine, percentile, write_results
from bench.memory_uploads import rss_mb

PHOTO_SIZE = (1280, 960)
BURST = 8


def one_face_photo() -> np.ndarray:
    from skimage import data

    canvas = np.full((PHOTO_SIZE[1], PHOTO_SIZE[0], 3), 200, np.uint8)
    side = PHOTO_SIZE[1]
    canvas[:, (PHOTO_SIZE[0] - side) // 2:(PHOTO_SIZE[0] + side) // 2] = cv2.resize(data.astronaut(), (side, side))
    return canvas


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="rounds per arm")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    from app.config import Config
    from app.heap import release_free_memory
    from app.inference.service import InferenceService

    class Settings(Config):
        DEVICE = "cpu"
        IDLE_RELEASE_S = 0.0  # this script releases, or not

    service = InferenceService.from_config(Settings)
    photo = one_face_photo()
    service.analyze(photo)

    def burst():
        threads = [threading.Thread(target=service.analyze, args=(photo,)) for _ in range(BURST)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    arms = {"released": {"rss_mb": [], "release_ms": [], "first_photo_ms": []},
            "kept": {"rss_mb": [], "first_photo_ms": []}}
    burst()  # the arenas' high-water mark, before the first measured round
    for round_ in range(2 * args.rounds):
        arm = "released" if round_ % 2 == 0 else "kept"
        burst()
        time.sleep(1.0)
        if arm == "released":
            t0 = time.perf_counter()
            service.release_memory()
            arms[arm]["release_ms"].append((time.perf_counter() - t0) * 1000)
        else:
            release_free_memory()  # the C heap trimmed in both arms: the difference is the arenas
        arms[arm]["rss_mb"].append(rss_mb(os.getpid()))
        t0 = time.perf_counter()
        service.analyze(photo)
        arms[arm]["first_photo_ms"].append((time.perf_counter() - t0) * 1000)
    service.close()

    summary = {arm: {name: round(percentile(values, 50), 1) for name, values in series.items()}
               for arm, series in arms.items()}
    results = {
        "machine": machine(), "photo": f"{PHOTO_SIZE[0]}x{PHOTO_SIZE[1]}, one face", "burst": BURST,
        "rounds_per_arm": args.rounds, "median": summary,
        "first_photo_ratio_released_vs_kept": round(summary["released"]["first_photo_ms"]
                                                    / summary["kept"]["first_photo_ms"], 3),
        "rss_saved_mb": round(summary["kept"]["rss_mb"] - summary["released"]["rss_mb"], 1),
        "samples": {arm: {k: [round(v, 1) for v in vs] for k, vs in series.items()} for arm, series in arms.items()},
    }
    print(results["machine"])
    for arm, values in summary.items():
        print(f"  {arm}: {values}")
    print(f"  first photo after the quiet spell: {results['first_photo_ratio_released_vs_kept']:.2f}x "
          f"(released / kept); RSS {results['rss_saved_mb']:.0f} MB lower")
    write_results(results, args.out)
    return results


if __name__ == "__main__":
    main()
