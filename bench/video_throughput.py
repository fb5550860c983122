"""Video mode throughput: frames/s of a whole job (decode, detect, heads, tracking, drawing, H.264
encode, JSONL/CSV), on a generated clip, for a few chunk sizes and strides.

    python -m bench.video_throughput [--frames 96] [--size 640x480] [--out bench/results/video.json]
    python -m bench.video_throughput --media ../shared/media [--out bench/results/video_media.json]

The clip is skimage's astronaut moving across a plain background (one face), written with libx264.
Chunk 1 detects one frame per MTCNN call; larger chunks batch same-size frames (``detect_many``).
With ``--media``, the real clips ``one_face_talking.mp4`` and ``street_many_faces_1080p.mp4`` are run
through the service path (a whole job, outputs included) and through a naive loop written here (per
frame: detect, then each face through each model one at a time; no tracking, drawing, encoding or
files, so the comparison favours the naive loop), in the same process; the process's resident memory
is sampled after every chunk of the job, to show it stays flat over the clip.
The machine is printed with the numbers; compare ratios, not absolute values, across machines.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from bench.common import write_results


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


def rss_mb() -> float:
    """Resident set size of this process now, in MB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_media_job(service, clip: Path, folder: Path) -> dict:
    """The service path on a real clip, with resident memory sampled after every chunk."""
    from app.video.jobs import VideoJob, VideoOptions
    from app.video.processing import process_video

    folder.mkdir(parents=True)
    job = VideoJob(id=folder.name, folder=str(folder), input_name=clip.name, options=VideoOptions())
    (folder / clip.name).symlink_to(clip.resolve())
    samples: list[tuple[int, float]] = []
    t0 = time.perf_counter()
    process_video(job, service, lambda: False, lambda j: samples.append((j.frames_done, rss_mb())))
    seconds = time.perf_counter() - t0
    quarter = next((mb for done, mb in samples if done >= job.frames_total / 4), samples[0][1])
    return {"frames": job.frames_total, "seconds": seconds, "fps": job.frames_total / seconds,
            "rss_mb_at_25pct": quarter, "rss_mb_at_end": samples[-1][1], "rss_mb_max": max(mb for _, mb in samples)}


def run_naive(service, clip: Path) -> dict:
    """Per frame: detect, then every face through each model alone (batch of one)."""
    import av
    import torch

    from models.preprocess import align_face, to_tensor

    heads = [service.emotion, service.age_gender]
    frames = faces = 0
    t0 = time.perf_counter()
    with av.open(str(clip)) as source, torch.inference_mode():
        for frame in source.decode(video=0):
            image = frame.to_ndarray(format="rgb24")
            for det in service.detector.detect(image):
                for head in heads:
                    crop = align_face(image, det.landmarks, head.card.preprocess)
                    x = to_tensor([crop], head.card.preprocess).contiguous(memory_format=torch.channels_last)
                    head.model(x)
                faces += 1
            frames += 1
    seconds = time.perf_counter() - t0
    return {"frames": frames, "faces": faces, "seconds": seconds, "fps": frames / seconds}


def media_benchmark(service, media: Path, tmp: Path) -> list[dict]:
    rows = []
    for name in ("one_face_talking.mp4", "street_many_faces_1080p.mp4"):
        clip = media / name
        service_row = run_media_job(service, clip, tmp / f"media-{len(rows)}")
        naive_row = run_naive(service, clip)
        row = {"clip": name, "service": service_row, "naive": naive_row,
               "speedup": service_row["fps"] / naive_row["fps"]}
        rows.append(row)
        print(f"{name}: service {service_row['fps']:.2f} frames/s vs naive {naive_row['fps']:.2f} "
              f"({row['speedup']:.2f}x); RSS {service_row['rss_mb_at_25pct']:.0f} MB at 25% -> "
              f"{service_row['rss_mb_at_end']:.0f} MB at the end, max {service_row['rss_mb_max']:.0f} MB")
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--media", type=Path, help="folder with the real clips (../shared/media)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))

    os.environ.setdefault("FACEAPP_DEVICE", "cpu")
    from app.config import Config
    from app.inference.service import InferenceService
    from bench.common import machine

    service = InferenceService.from_config(Config)
    results: dict = {"machine": machine(), "device": service.device_description, "clip": args.size,
                     "frames": args.frames, "runs": []}
    with tempfile.TemporaryDirectory(prefix="video-bench-") as tmp:
        if args.media:
            results["media"] = media_benchmark(service, args.media, Path(tmp))
            results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"peak RSS of the process: {results['peak_rss_mb']:.0f} MB")
            return finish(service, results, args.out)
        clip = make_clip(Path(tmp) / "clip.mp4", args.frames, width, height)
        for i, (stride, chunk) in enumerate([(1, 1), (1, 4), (1, 8), (2, 4), (5, 4)]):
            row = run_job(service, clip, Path(tmp) / f"job{i}", stride, chunk)
            results["runs"].append(row)
            print(f"stride {stride}, chunk {chunk}: {row['frames']} frames in {row['seconds']:.1f} s "
                  f"= {row['fps']:.1f} frames/s")
    return finish(service, results, args.out)


def finish(service, results: dict, out: Path | None) -> dict:
    service.close()
    print(f"machine: {results['machine']} | device: {results['device']}")
    write_results(results, out)
    return results


if __name__ == "__main__":
    main()
