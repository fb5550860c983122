"""Video mode throughput: frames/s of a whole job (decode, detect, heads, tracking, drawing, H.264
encode, JSONL/CSV), on a generated clip, for a few chunk sizes and strides.

    python -m bench.video_throughput [--frames 96] [--size 640x480] [--out bench/results/video.json]
    python -m bench.video_throughput --media ../shared/media [--out bench/results/video_media.json]

The clip is skimage's astronaut moving across a plain background (one face), written with libx264.
Chunk 1 detects one frame per MTCNN call; larger chunks batch same-size frames (``detect_many``) and
the faces of all their frames through the heads (16, the default since the chunks are pipelined:
``app/video/processing.py``); ``search_every`` 1 searches every frame, 5 follows
faces with O-net between searches (``app/inference/keyframes.py``).
With ``--media``, the real clips ``one_face_talking.mp4`` and ``street_many_faces_1080p.mp4`` are run
through the service path (a whole job, outputs included; default options, so a full face search every
5th frame and faces followed by O-net in between), through the service path with a full search on
every frame (``search_every=1``), and through a naive loop written here (per frame: detect, then each
face through each model one at a time; no tracking, drawing, encoding or files, so the comparison
favours the naive loop), all in the same process. Faces the naive loop finds are matched (IoU >= 0.5)
to the job's faces of the same frame: "recall" is the share of them the job also reports, "precision"
the share of the job's faces that the naive loop found too. ``--long N`` then runs a clip of N copies
of one_face_talking.mp4 back to back with the process's resident memory sampled after every chunk,
to show that memory does not grow with the video's length.
The machine is printed with the numbers; compare ratios, not absolute values, across machines.
"""
from __future__ import annotations

import argparse
import json
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


def run_job(service, clip: Path, folder: Path, stride: int, chunk: int, search_every: int) -> dict:
    from app.video.jobs import VideoJob, VideoOptions
    from app.video.processing import process_video

    folder.mkdir(parents=True)
    job = VideoJob(id=folder.name, folder=str(folder), input_name="input.mp4",
                   options=VideoOptions(stride=stride, search_every=search_every))
    (folder / "input.mp4").symlink_to(clip)
    t0 = time.perf_counter()
    process_video(job, service, lambda: False, lambda _job: None, chunk_frames=chunk)
    seconds = time.perf_counter() - t0
    return {"stride": stride, "chunk": chunk, "search_every": search_every, "frames": job.frames_total,
            "seconds": seconds,
            "fps": job.frames_total / seconds}


def rss_mb() -> float:
    """Resident set size of this process now, in MB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_media_job(service, clip: Path, folder: Path, search_every: int = 5) -> dict:
    """The service path on a real clip, with resident memory sampled after every chunk."""
    from app.video.jobs import VideoJob, VideoOptions
    from app.video.processing import process_video

    folder.mkdir(parents=True)
    job = VideoJob(id=folder.name, folder=str(folder), input_name=clip.name,
                   options=VideoOptions(search_every=search_every))
    (folder / clip.name).symlink_to(clip.resolve())
    samples: list[tuple[int, float]] = []
    t0 = time.perf_counter()
    process_video(job, service, lambda: False, lambda j: samples.append((j.frames_done, rss_mb())))
    seconds = time.perf_counter() - t0
    quarter = next((mb for done, mb in samples if done >= job.frames_total / 4), samples[0][1])
    with open(folder / "frames.jsonl") as f:
        boxes = [[face["box"] for face in json.loads(line)["faces"]] for line in f]
    return {"search_every": search_every, "frames": job.frames_total, "seconds": seconds,
            "fps": job.frames_total / seconds, "faces": sum(map(len, boxes)), "boxes": boxes,
            "rss_mb_at_25pct": quarter, "rss_mb_at_end": samples[-1][1], "rss_mb_max": max(mb for _, mb in samples)}


def run_naive(service, clip: Path) -> dict:
    """Per frame: detect, then every face through each model alone (batch of one)."""
    import av
    import torch

    from models.preprocess import align_face, to_tensor

    heads = [service.emotion, service.age_gender]
    boxes: list[list] = []
    t0 = time.perf_counter()
    with av.open(str(clip)) as source, torch.inference_mode():
        for frame in source.decode(video=0):
            image = frame.to_ndarray(format="rgb24")
            found = service.detector.detect(image)
            for det in found:
                for head in heads:
                    crop = align_face(image, det.landmarks, head.card.preprocess)
                    x = to_tensor([crop], head.card.preprocess).contiguous(memory_format=torch.channels_last)
                    head.model(x)
            boxes.append([d.box.tolist() for d in found])
    seconds = time.perf_counter() - t0
    return {"frames": len(boxes), "faces": sum(map(len, boxes)), "seconds": seconds, "fps": len(boxes) / seconds,
            "boxes": boxes}


def agreement(reference: list[list], candidate: list[list], min_iou: float = 0.5) -> dict:
    """Recall and precision of ``candidate``'s boxes against ``reference``'s, frame by frame."""
    from app.tracking import greedy_match

    matched = sum(len(greedy_match(ref, cand, min_iou)) for ref, cand in zip(reference, candidate))
    n_ref, n_cand = sum(map(len, reference)), sum(map(len, candidate))
    return {"recall": matched / n_ref if n_ref else 1.0, "precision": matched / n_cand if n_cand else 1.0}


def media_benchmark(service, media: Path, tmp: Path) -> list[dict]:
    rows = []
    for name in ("one_face_talking.mp4", "street_many_faces_1080p.mp4"):
        clip = media / name
        naive_row = run_naive(service, clip)
        service_row = run_media_job(service, clip, tmp / f"media-{len(rows)}")
        search_all_row = run_media_job(service, clip, tmp / f"media-{len(rows)}-all", search_every=1)
        row = {"clip": name, "naive": naive_row, "service": service_row, "service_search_every_frame": search_all_row,
               "speedup": service_row["fps"] / naive_row["fps"],
               "speedup_search_every_frame": search_all_row["fps"] / naive_row["fps"],
               "agreement": agreement(naive_row["boxes"], service_row["boxes"]),
               "agreement_search_every_frame": agreement(naive_row["boxes"], search_all_row["boxes"])}
        for part in (naive_row, service_row, search_all_row):
            del part["boxes"]
        rows.append(row)
        a, b = row["agreement"], row["agreement_search_every_frame"]
        print(f"{name}: service {service_row['fps']:.2f} frames/s vs naive {naive_row['fps']:.2f} "
              f"({row['speedup']:.2f}x; search every frame: {search_all_row['fps']:.2f}, "
              f"{row['speedup_search_every_frame']:.2f}x); faces naive {naive_row['faces']}, service "
              f"{service_row['faces']} (recall {a['recall']:.3f}, precision {a['precision']:.3f}), search every "
              f"frame {search_all_row['faces']} (recall {b['recall']:.3f}, precision {b['precision']:.3f}); "
              f"RSS {service_row['rss_mb_at_25pct']:.0f} MB at 25% -> {service_row['rss_mb_at_end']:.0f} MB "
              f"at the end, max {service_row['rss_mb_max']:.0f} MB")
    return rows


def concatenate(clip: Path, copies: int, out: Path) -> Path:
    """``copies`` of ``clip``'s frames back to back, re-encoded (a long video with real faces)."""
    import av

    with av.open(str(clip)) as source:
        stream = source.streams.video[0]
        rate = stream.average_rate
        frames = [f.to_ndarray(format="rgb24") for f in source.decode(stream)]
    with av.open(str(out), mode="w") as sink:
        stream = sink.add_stream("libx264", rate=rate)
        stream.height, stream.width = frames[0].shape[0] // 2 * 2, frames[0].shape[1] // 2 * 2
        stream.pix_fmt, stream.options = "yuv420p", {"preset": "ultrafast"}
        for _ in range(copies):
            for image in frames:
                frame = av.VideoFrame.from_ndarray(image[:stream.height, :stream.width], format="rgb24")
                for packet in stream.encode(frame):
                    sink.mux(packet)
        for packet in stream.encode(None):
            sink.mux(packet)
    return out


def long_clip_memory(service, media: Path, tmp: Path, copies: int) -> dict:
    clip = concatenate(media / "one_face_talking.mp4", copies, tmp / "long.mp4")
    row = run_media_job(service, clip, tmp / "long-job")
    del row["boxes"]
    row["copies"] = copies
    print(f"long clip ({copies} x one_face_talking.mp4, {row['frames']} frames): {row['fps']:.2f} frames/s; "
          f"RSS {row['rss_mb_at_25pct']:.0f} MB at 25% -> {row['rss_mb_at_end']:.0f} MB at the end, "
          f"max {row['rss_mb_max']:.0f} MB")
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--media", type=Path, help="folder with the real clips (../shared/media)")
    parser.add_argument("--long", type=int, default=0, metavar="N",
                        help="with --media: also a clip of N copies of one_face_talking.mp4, for memory")
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
            if args.long:
                results["long"] = long_clip_memory(service, args.media, Path(tmp), args.long)
            results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"peak RSS of the process: {results['peak_rss_mb']:.0f} MB")
            return finish(service, results, args.out)
        clip = make_clip(Path(tmp) / "clip.mp4", args.frames, width, height)
        for i, (stride, chunk, search_every) in enumerate([(1, 1, 1), (1, 8, 1), (1, 1, 5), (1, 8, 5), (1, 16, 5), (2, 16, 5)]):
            row = run_job(service, clip, Path(tmp) / f"job{i}", stride, chunk, search_every)
            results["runs"].append(row)
            print(f"stride {stride}, chunk {chunk}, search every {search_every}: {row['frames']} frames in "
                  f"{row['seconds']:.1f} s = {row['fps']:.1f} frames/s")
    return finish(service, results, args.out)


def finish(service, results: dict, out: Path | None) -> dict:
    service.close()
    print(f"machine: {results['machine']} | device: {results['device']}")
    write_results(results, out)
    return results


if __name__ == "__main__":
    main()
