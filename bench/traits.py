"""Does a person's age settle, and do the three modes agree on it? One real clip through video, live and photo.

    python -m bench.traits --media ../shared/media [--clip one_face_talking.mp4] [--out bench/results/traits.json]

The same clip goes through the three modes of one process, with their default options:
- video: a whole job (``process_video``: a search every 5th frame, faces followed between, tracking);
- live: every frame, downscaled to 640 px and JPEG-encoded as the page sends it, through the ``/live``
  Socket.IO handler (Flask-SocketIO's test client: the real handler, per-client tracker and detector);
- photo: the clip's middle frame through ``POST /api/v1/images``, and, for the spread a single photo has,
  ten frames evenly spaced through the clip.
For the clip's main track (the one seen in most frames) it reports the displayed (combined) age over the
frames, how far it moves over the last 80% of them (target <= 3 years), its final value and uncertainty,
and how far the modes are apart (target <= 5 years); the frames' own raw ages show what combining buys.
"""
from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from bench.common import machine, write_results

SETTLE_AFTER = 0.2  # the target looks at the last 80% of a track's frames


def read_frames(clip: Path) -> tuple[list[np.ndarray], float]:
    import av

    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 25)
        return [f.to_ndarray(format="rgb24") for f in container.decode(stream)], fps


def track_series(per_frame: list[list[dict]]) -> dict:
    """per_frame: each frame's faces (API dicts with track_id and raw) -> the main track's series."""
    counts = Counter(f["track_id"] for faces in per_frame for f in faces)
    if not counts:
        return {"frames": 0}
    main = counts.most_common(1)[0][0]
    shown, raw, raw_std, std, gender, by_emotion = [], [], [], [], [], {}
    for faces in per_frame:
        for f in faces:
            if f["track_id"] == main:
                shown.append(f["age"]["years"])
                std.append(f["age"]["std"])
                gender.append(f["gender"]["label"])
                if "raw" in f:  # frames.jsonl keeps each frame's own values; live answers do not
                    raw.append(f["raw"]["age"]["years"])
                    raw_std.append(f["raw"]["age"]["std"])
                    by_emotion.setdefault(f["raw"]["emotion"]["label"], []).append(f["raw"]["age"]["years"])
    out = summarise(main, shown, raw, std, gender, len(counts))
    if len(raw) >= 10:
        # Is the head surer of some ages than of others on this face? A frame's log-spread against its
        # log-age (app/tracking.py: why frames are weighted by quality, not by precision).
        log_age = np.log1p(np.maximum(raw, 0.0))
        out["raw_log_spread_vs_log_age_corr"] = round(float(np.corrcoef(np.asarray(raw_std) / (1.0 + np.asarray(raw)),
                                                                        log_age)[0, 1]), 2)
    # A person's age does not change when they smile: how far apart are the frames' own ages by the
    # expression the emotion head saw in the same frame (training/expression_faces.py)?
    out["raw_median_by_emotion"] = {k: {"frames": len(v), "median": round(float(np.median(v)), 1)}
                                    for k, v in sorted(by_emotion.items()) if len(v) >= 10}
    return out


def summarise(track_id: int, shown: list[float], raw: list[float], std: list[float], gender: list[str],
              tracks: int) -> dict:
    start = int(len(shown) * SETTLE_AFTER)
    late = np.asarray(shown[start:])
    raw_figures = ({"raw_median": round(float(np.median(raw)), 1), "raw_min": round(float(np.min(raw)), 1),
                    "raw_max": round(float(np.max(raw)), 1), "raw_std": round(float(np.std(raw)), 1)} if raw else
                   dict.fromkeys(("raw_median", "raw_min", "raw_max", "raw_std")))
    return {"track_id": track_id, "tracks": tracks, "frames": len(shown),
            "final_age": round(shown[-1], 1), "final_std": round(std[-1], 1), "final_gender": gender[-1],
            "displayed_range_last_80pct": round(float(late.max() - late.min()), 2),
            "displayed_range_all": round(float(np.ptp(shown)), 2),
            **raw_figures,
            "gender_changes": int(sum(a != b for a, b in zip(gender, gender[1:]))),
            "displayed": [round(v, 1) for v in shown[:: max(1, len(shown) // 50)]]}


def run_video(service, clip: Path, workdir: Path) -> dict:
    from app.video.jobs import VideoJob, VideoOptions
    from app.video.processing import process_video

    folder = workdir / "video"
    folder.mkdir()
    (folder / "input.mp4").symlink_to(clip.resolve())
    job = VideoJob(id="bench", folder=str(folder), input_name="input.mp4", options=VideoOptions())
    t0 = time.perf_counter()
    process_video(job, service, lambda: False, lambda _job: None)
    seconds = time.perf_counter() - t0
    lines = [json.loads(line) for line in (folder / "frames.jsonl").read_text().splitlines()]
    out = track_series([rec["faces"] for rec in lines if rec["analysed"]])
    summary = json.loads((folder / "summary.json").read_text())
    track = next(t for t in summary["tracks"] if t["track_id"] == out.get("track_id"))
    out.update(seconds=round(seconds, 1), summary_age=track["age"], summary_gender=track["gender"])
    return out


def run_live(app, frames: list[np.ndarray]) -> dict:
    from PIL import Image

    from app import socketio

    client = socketio.test_client(app, namespace="/live")
    per_frame, t0 = [], time.perf_counter()
    for seq, frame in enumerate(frames):
        image = Image.fromarray(frame)
        image.thumbnail((640, 640))  # what the page sends: at most 640 px, JPEG
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=85)
        ack = client.emit("frame", {"seq": seq, "image": buf.getvalue()}, callback=True, namespace="/live")
        if "error" in ack:
            raise RuntimeError(f"live frame {seq}: {ack['error']}")
        per_frame.append(ack["faces"])
    client.disconnect(namespace="/live")
    out = track_series(per_frame)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def run_photos(app, frames: list[np.ndarray]) -> dict:
    from PIL import Image

    client = app.test_client()

    def age_of(frame: np.ndarray) -> float | None:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, "JPEG", quality=92)
        body = client.post("/api/v1/images", data={"image": (io.BytesIO(buf.getvalue()), "frame.jpg")}).get_json()
        faces = body["images"][0]["faces"]
        return max(faces, key=lambda f: (f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]))["age"]["years"] \
            if faces else None

    middle = age_of(frames[len(frames) // 2])
    ten = [a for a in (age_of(frames[i]) for i in np.linspace(0, len(frames) - 1, 10).round().astype(int))
           if a is not None]
    return {"middle_frame_age": middle, "ten_frames": [round(a, 1) for a in ten],
            "ten_frames_min": round(min(ten), 1), "ten_frames_max": round(max(ten), 1)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.traits", description=__doc__.split("\n\n")[0])
    p.add_argument("--media", type=Path, required=True, help="folder with the clip (../shared/media)")
    p.add_argument("--clip", default="one_face_talking.mp4")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)

    from app import create_app
    from app.config import Config
    from app.inference.service import InferenceService

    clip = a.media / a.clip
    frames, fps = read_frames(clip)

    class BenchConfig(Config):
        DEVICE = "cpu"
        UPLOAD_FOLDER = tempfile.mkdtemp(prefix="faceapp-bench-traits-")

    service = InferenceService.from_config(BenchConfig)
    app = create_app(BenchConfig, service=service)
    with tempfile.TemporaryDirectory() as tmp:
        video = run_video(service, clip, Path(tmp))
    live = run_live(app, frames)
    photo = run_photos(app, frames)
    service.close()

    ages = {"video": video["final_age"], "live": live["final_age"], "photo": photo["middle_frame_age"]}
    known = [v for v in ages.values() if v is not None]
    results = {
        "machine": machine(), "clip": a.clip, "frames": len(frames), "fps": fps,
        "weights": {"emotion": BenchConfig.EMOTION_WEIGHTS, "age_gender": BenchConfig.AGE_GENDER_WEIGHTS},
        "video": video, "live": live, "photo": photo, "final_ages": ages,
        "modes_apart_years": round(max(known) - min(known), 2) if known else None,
        "targets": {"displayed_range_last_80pct <=": 3.0, "modes_apart_years <=": 5.0},
    }
    results["met"] = {"video_settles": video["displayed_range_last_80pct"] <= 3.0,
                      "live_settles": live["displayed_range_last_80pct"] <= 3.0,
                      "modes_agree": results["modes_apart_years"] is not None and results["modes_apart_years"] <= 5.0}
    write_results(results, a.out)
    print(f"{a.clip}: {len(frames)} frames; {machine()}")
    print("| mode | frames of the track | final age ± uncertainty | moves over the last 80% | raw per-frame ages |")
    print("|---|---:|---|---:|---|")
    for name, r in (("video", video), ("live", live)):
        raw = (f"median {r['raw_median']}, {r['raw_min']}–{r['raw_max']}, std {r['raw_std']}"
               if r["raw_median"] is not None else "not in live answers")
        print(f"| {name} | {r['frames']} | {r['final_age']} ± {r['final_std']} ({r['final_gender']}) | "
              f"{r['displayed_range_last_80pct']} years | {raw} |")
    if "raw_log_spread_vs_log_age_corr" in video:
        print(f"video frames: correlation of a frame's log-spread with its log-age {video['raw_log_spread_vs_log_age_corr']}")
    if video.get("raw_median_by_emotion"):
        print("video frames' own ages by the frame's expression: " + ", ".join(
            f"{k} {v['median']} ({v['frames']} frames)" for k, v in video["raw_median_by_emotion"].items()))
    print(f"| photo (middle frame) | 1 | {photo['middle_frame_age']} | | ten frames: {photo['ten_frames_min']}–"
          f"{photo['ten_frames_max']} |")
    print(f"modes apart: {results['modes_apart_years']} years; met: {results['met']}")
    return results


if __name__ == "__main__":
    main()
