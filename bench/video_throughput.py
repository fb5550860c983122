"""Video mode throughput: frames/s of a whole job (decode, detect, heads, tracking, drawing, H.264
encode, JSONL/CSV), on a generated clip, for a few chunk sizes and strides.

    python -m bench.video_throughput [--frames 96] [--size 640x480] [--out bench/results/video.json]

The clip is skimage's astronaut moving across a plain background (one face), written with libx264.
Chunk 1 detects one frame per MTCNN call; larger chunks batch same-size frames (``detect_many``).
The machine is printed with the numbers; compare ratios, not absolute values, across machines.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def make_clip(path: Path, frames: int, width: int, height: int) -> Path:
    import skimage.data

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from video_clips import moving_face_frames, write_clip

    images = moving_face_frames(skimage.data.astronaut(), frames=frames, width=width, height=height,
                                face_width=max(60, width // 3))
    return write_clip(path, images, fps=25)


def run_job(service, clip: Path, folder: Path, stride: int, chunk: int) -> dict:
    from app.video.jobs import VideoJob, VideoOptions
    from app.video.processing import process_video

    folder.mkdir(parents=True)
    job = VideoJob(id=folder.name, folder=str(folder), input_name="input.mp4", options=VideoOptions(stride=stride))
    (folder / "input.mp4").symlink_to(clip)
    t0 = time.perf_counter()
    process_video(job, service, lambda: False, lambda _job: None, chunk_frames=chunk)
    seconds = time.perf_counter() - t0
    return {"stride": stride, "chunk": chunk, "frames": job.frames_total, "seconds": seconds,
            "fps": job.frames_total / seconds}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))

    os.environ.setdefault("FACEAPP_DEVICE", "cpu")
    from app.config import Config
    from app.inference.service import InferenceService
    from bench.photo_latency import machine

    service = InferenceService.from_config(Config)
    results: dict = {"machine": machine(), "device": service.device_description, "clip": args.size,
                     "frames": args.frames, "runs": []}
    with tempfile.TemporaryDirectory(prefix="video-bench-") as tmp:
        clip = make_clip(Path(tmp) / "clip.mp4", args.frames, width, height)
        for i, (stride, chunk) in enumerate([(1, 1), (1, 4), (1, 8), (2, 4), (5, 4)]):
            row = run_job(service, clip, Path(tmp) / f"job{i}", stride, chunk)
            results["runs"].append(row)
            print(f"stride {stride}, chunk {chunk}: {row['frames']} frames in {row['seconds']:.1f} s "
                  f"= {row['fps']:.1f} frames/s")
    service.close()
    print(f"machine: {results['machine']} | device: {results['device']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
