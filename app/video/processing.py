"""One video job, start to end: decode (PyAV) -> detect in chunks -> heads -> tracking + smoothing ->
annotated H.264 + frames.jsonl + frames.csv + summary.json + one thumbnail per track.

The chunks go through a pipeline: while chunk k is decoded, the searches of chunk k-1 run in the
detector's worker and the faces of chunk k-2 in the heads'. The job's own thread follows faces, draws and
encodes in between, so its waits on the service overlap instead of adding up: under 16 live clients a
video job spent half its time waiting for its searches (README, Benchmarks, Soak). Results are the same
as one chunk at a time: following and tracking still see the frames in order.
"""
from __future__ import annotations

import csv
import json
import time
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable

import av
import cv2
import numpy as np

from app.formatting import label_parts
from app.inference import VIDEO
from app.inference.keyframes import KeyframeDetector, PendingFrames
from app.inference.service import PendingFaces
from app.inference.results import Face
from app.tracking import FaceTracker, TrackedFace
from app.video.jobs import JobCancelled, VideoJob

# Most analysed frames per chunk: the chunk's searched frames share one MTCNN batch and all its faces are
# submitted to the heads together, so they share batches too (bench/video_throughput.py). 16 rather than 8:
# under load, each chunk's search waits for the detector's batch in flight, once (bench/soak.py, README).
CHUNK_FRAMES = 16
# Most decoded pixels the pipeline holds (three chunks: one being decoded, one being searched, one with the
# heads and then drawn), ~240 MB of RGB frames, what one chunk of eight 4K frames held before the pipeline:
# up to 720p a chunk has 16 analysed frames, 1080p 12, 4K 3 (chunk_size).
HELD_PIXELS = 80_000_000
TIMELINE_POINTS = 200  # most points of a track's emotion timeline in summary.json
# The pages' palette (static/js/faces.js): face #n has the same colour in the video as on its card.
TRACK_COLORS = [tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in (
    "#facc15", "#34d399", "#38bdf8", "#fb923c", "#c084fc", "#f472b6", "#a3e635", "#fda4af", "#5eead4", "#93c5fd")]
LABEL_FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass
class TrackStats:
    """What summary.json says about one track, accumulated over the frames that were analysed.

    Memory stays constant however long the video: running sums for the means, and a timeline thinned
    as it grows (every ``timeline_stride``-th analysed frame, the stride doubling whenever the kept
    points reach twice ``TIMELINE_POINTS``), so a track holds at most 2 * TIMELINE_POINTS points.
    """

    track_id: int
    first_frame: int
    last_frame: int = 0
    best_score: float = -1.0
    thumbnail: np.ndarray | None = None
    frames: int = 0
    prob_sums: dict[str, float] = field(default_factory=dict)
    raw_age_sum: float = 0.0
    raw_age_sq_sum: float = 0.0  # with raw_age_sum: how much the frames' own ages spread
    female_frames: int = 0  # frames whose own gender was female
    latest: Face | None = None  # the track's combined age and gender after its last frame
    timeline: list[dict] = field(default_factory=list)
    timeline_stride: int = 1
    last_point: dict | None = None  # the newest frame's point: the timeline always ends at the track's end

    def add(self, frame_index: int, time_s: float, image: np.ndarray, tracked: TrackedFace) -> None:
        face, raw = tracked.smoothed, tracked.raw
        self.last_frame = frame_index
        for name, p in face.emotion.probabilities.items():
            self.prob_sums[name] = self.prob_sums.get(name, 0.0) + p
        self.raw_age_sum += raw.age.years
        self.raw_age_sq_sum += raw.age.years ** 2
        self.female_frames += raw.gender.p_female >= 0.5
        self.latest = face
        point = {"frame": frame_index, "time_s": round(time_s, 3),
                 "probabilities": {k: round(v, 4) for k, v in face.emotion.probabilities.items()}}
        if self.frames % self.timeline_stride == 0:
            self.timeline.append(point)
            if len(self.timeline) >= 2 * TIMELINE_POINTS:
                self.timeline = self.timeline[::2]
                self.timeline_stride *= 2
        self.last_point = point
        self.frames += 1
        if tracked.raw.score > self.best_score:
            self.best_score = tracked.raw.score
            self.thumbnail = crop(image, face.box)

    def to_dict(self) -> dict:
        n = self.frames
        means = {k: v / max(1, n) for k, v in self.prob_sums.items()}
        raw_mean = self.raw_age_sum / n if n else 0.0
        spread = float(np.sqrt(max(0.0, self.raw_age_sq_sum / n - raw_mean ** 2))) if n else None
        age, gender = (self.latest.age, self.latest.gender) if self.latest is not None else (None, None)
        points = self.timeline
        if self.last_point is not None and points[-1]["frame"] != self.last_point["frame"]:
            points = [*points, self.last_point]
        keep = np.unique(np.linspace(0, len(points) - 1, min(TIMELINE_POINTS, len(points)))
                         .round().astype(int)) if points else []
        return {
            "track_id": self.track_id,
            "first_frame": self.first_frame,
            "last_frame": self.last_frame,
            "frames_analysed": n,
            "thumbnail": f"tracks/{self.track_id}.jpg",
            "emotion": {"dominant": max(means, key=means.get) if means else None,
                        "mean_probabilities": {k: round(v, 4) for k, v in means.items()}},
            # The track's combined estimate (app/tracking.py: TraitEstimate) and its uncertainty; "spread":
            # how much the frames' own estimates scattered around it.
            "age": {"mean": round(age.years, 1) if age else None, "std": round(age.std, 1) if age else None,
                    "group": age.group if age else None, "spread": round(spread, 1) if n else None},
            "gender": {"label": gender.label if gender else None,
                       "probability": round(gender.probability, 4) if gender else None,
                       "female_frames": self.female_frames, "male_frames": n - self.female_frames},
            "timeline": [points[i] for i in keep],
        }


def crop(image: np.ndarray, box, margin: float = 0.2) -> np.ndarray:
    """The face box grown by ``margin`` on each side, clipped to the picture."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = box
    mx, my = (x2 - x1) * margin, (y2 - y1) * margin
    x1, y1 = max(0, int(x1 - mx)), max(0, int(y1 - my))
    x2, y2 = min(w, int(x2 + mx) + 1), min(h, int(y2 + my) + 1)
    return image[y1:y2, x1:x2].copy()


def label_text_height(width: int, height: int) -> int:
    """Pixel height of burned-in label text: 2.8% of the frame's longer side, 12-48 px (17 px in a
    596x336 clip), so that the label keeps its size relative to the picture wherever it is played."""
    return int(min(48, max(12, round(0.028 * max(width, height)))))


def draw_label(image: np.ndarray, parts: tuple[str, ...], box: tuple[int, int, int, int], text_height: int,
               color: tuple[int, int, int]) -> None:
    """The parts of a face's label on a tag just above its box (below it at the top edge), separated by
    dots as on the pages ("#1 happy · 34 · F"; Hershey fonts have no "·", so the dots are drawn)."""
    h, w = image.shape[:2]
    thickness = max(1, round(text_height / 12))
    scale = cv2.getFontScaleFromHeight(LABEL_FONT, text_height, thickness)
    sizes = [cv2.getTextSize(part, LABEL_FONT, scale, thickness) for part in parts]
    cap = max(size[0][1] for size in sizes)
    descent = max(size[1] for size in sizes)
    pad = max(2, text_height // 5)
    gap = max(6, round(text_height * 0.8))  # room for " · "
    tag_w = sum(size[0][0] for size in sizes) + gap * (len(parts) - 1) + 2 * pad
    tag_h = cap + descent + 2 * pad
    x1, y1, _, y2 = box
    top = y1 - tag_h if y1 - tag_h >= 0 else min(y2 + 1, h - tag_h)
    left = max(0, min(x1, w - tag_w))
    cv2.rectangle(image, (left, top), (left + tag_w - 1, top + tag_h - 1), color, -1)
    x, baseline = left + pad, top + pad + cap
    for index, (part, ((part_w, _), _)) in enumerate(zip(parts, sizes)):
        cv2.putText(image, part, (x, baseline), LABEL_FONT, scale, (0, 0, 0), thickness, cv2.LINE_AA)
        x += part_w
        if index < len(parts) - 1:
            cv2.circle(image, (x + gap // 2, baseline - cap // 2), max(1, round(text_height / 10)), (0, 0, 0), -1,
                       cv2.LINE_AA)
            x += gap


def draw(image: np.ndarray, faces: list[TrackedFace]) -> np.ndarray:
    """Boxes and one label per face, drawn on ``image`` in place (RGB), sized to the frame."""
    text_height = label_text_height(image.shape[1], image.shape[0])
    line = max(2, round(text_height / 8))
    for t in faces:
        f = t.smoothed
        x1, y1, x2, y2 = (int(round(v)) for v in f.box)
        color = TRACK_COLORS[(t.track_id - 1) % len(TRACK_COLORS)]
        cv2.rectangle(image, (x1, y1), (x2, y2), color, line)
        parts = label_parts(t.track_id, f.emotion.label, f.age.years, f.gender.label)
        draw_label(image, parts, (x1, y1, x2, y2), text_height, color)
    return image


def face_record(t: TrackedFace) -> dict:
    """One face of frames.jsonl: the smoothed values, with the frame's own beside them under "raw"."""
    d = t.smoothed.to_dict()
    raw = t.raw.to_dict()
    d["raw"] = {"emotion": raw["emotion"], "age": raw["age"], "gender": raw["gender"]}
    return d


CSV_HEADER = ["frame", "time_s", "analysed", "track_id", "x1", "y1", "x2", "y2", "score",
              "emotion", "emotion_probability", "age", "age_std", "gender", "gender_probability",
              "raw_emotion", "raw_age", "raw_gender", "raw_gender_probability"]


def csv_rows(frame_index: int, time_s: float, analysed: bool, faces: list[TrackedFace]):
    for t in faces:
        s, r = t.smoothed, t.raw
        yield [frame_index, round(time_s, 3), int(analysed), t.track_id, *(round(v, 1) for v in s.box),
               round(s.score, 4), s.emotion.label, round(s.emotion.probabilities[s.emotion.label], 4),
               round(s.age.years, 1), round(s.age.std, 1), s.gender.label, round(s.gender.probability, 4),
               r.emotion.label, round(r.age.years, 1), r.gender.label, round(r.gender.probability, 4)]


def even_size(width: int, height: int) -> tuple[int, int]:
    """libx264 with yuv420p needs even sides: odd ones grow by one pixel."""
    return width + width % 2, height + height % 2


def chunk_size(width: int, height: int, stride: int, most: int = CHUNK_FRAMES) -> int:
    """Analysed frames per chunk: ``most``, fewer where three chunks of such frames (with the
    ``stride - 1`` frames after each, which are only drawn) would hold more than ``HELD_PIXELS``."""
    return max(1, min(most, HELD_PIXELS // (3 * max(1, width * height) * max(1, stride))))


def process_video(job: VideoJob, service, is_cancelled: Callable[[], bool],
                  report: Callable[[VideoJob], None], chunk_frames: int = CHUNK_FRAMES) -> None:
    """Runs ``job`` to its outputs; raises ``JobCancelled`` or an exception whose text is the reason."""
    stride = max(1, int(job.options.stride))
    tracker = FaceTracker(alpha=job.options.alpha)
    detector = KeyframeDetector(service, search_every=job.options.search_every, source=VIDEO)
    tracks: dict[int, TrackStats] = {}
    t_start = time.monotonic()

    with av.open(str(job.input_path), mode="r") as source:
        stream = source.streams.video[0]
        stream.thread_type = "AUTO"  # frame threads: decoding overlaps the models on other cores
        fps = Fraction(stream.average_rate or stream.guessed_rate or 25)
        width, height = stream.codec_context.width, stream.codec_context.height
        out_w, out_h = even_size(width, height)
        if (out_w, out_h) != (width, height):
            job.notes.append(f"padded from {width}x{height} to {out_w}x{out_h} (H.264 needs even sides)")
        job.frames_total = job.frames_total or stream.frames or 0

        with av.open(str(job.output("annotated.mp4")), mode="w", options={"movflags": "faststart"}) as sink, \
                open(job.output("frames.jsonl"), "w") as jsonl, \
                open(job.output("frames.csv"), "w", newline="") as csv_file:
            out = sink.add_stream("libx264", rate=fps)
            out.width, out.height, out.pix_fmt = out_w, out_h, "yuv420p"
            out.options = {"preset": "veryfast", "crf": "23"}
            writer = csv.writer(csv_file)
            writer.writerow(CSV_HEADER)

            last: list[TrackedFace] = []
            index = 0
            chunk: list[tuple[int, float, np.ndarray]] = []
            per_chunk = chunk_size(width, height, stride, chunk_frames)
            # The pipeline (module docstring): chunks whose searches are queued, then chunks whose faces
            # are with the heads; each list holds at most two, and a third chunk is being decoded.
            searching: deque[tuple[list, list[int], PendingFrames]] = deque()
            with_heads: deque[tuple[list, list[int], PendingFaces]] = deque()

            def start() -> None:
                analysed = [i for i, _, _ in chunk if i % stride == 0]
                images = [img for i, _, img in chunk if i % stride == 0]
                searching.append((list(chunk), analysed, detector.start(images)))
                chunk.clear()

            def to_heads() -> None:
                frames, analysed, pending = searching.popleft()
                detections = detector.finish(pending)
                with_heads.append((frames, analysed, service.submit_faces(pending.frames, detections, source=VIDEO)))

            def write() -> None:
                nonlocal last
                frames, analysed, pending = with_heads.popleft()
                found = dict(zip(analysed, pending.result()))
                for i, time_s, img in frames:
                    is_analysed = i in found
                    if is_analysed:
                        last = tracker.update(found[i])
                        for t in last:
                            tracks.setdefault(t.track_id, TrackStats(t.track_id, first_frame=i)).add(
                                i, time_s, img, t)
                    jsonl.write(json.dumps({"frame": i, "time_s": round(time_s, 3), "analysed": is_analysed,
                                            "faces": [face_record(t) for t in last]}) + "\n")
                    writer.writerows(csv_rows(i, time_s, is_analysed, last))
                    canvas = draw(img.copy(), last)
                    if (out_w, out_h) != (width, height):
                        canvas = np.pad(canvas, ((0, out_h - height), (0, out_w - width), (0, 0)), mode="edge")
                    for packet in out.encode(av.VideoFrame.from_ndarray(canvas, format="rgb24")):
                        sink.mux(packet)
                _progress(job, frames[-1][0] + 1, t_start)
                report(job)
                if is_cancelled():
                    raise JobCancelled()

            def advance(final: bool = False) -> None:
                """Moves the pipeline on: every stage that has a chunk waiting behind its current one
                (all of them, at the end) passes its oldest chunk on."""
                while len(searching) > (0 if final else 1):
                    to_heads()
                    while len(with_heads) > (0 if final else 1):
                        write()
                while final and with_heads:
                    write()

            try:
                try:
                    for frame in source.decode(stream):
                        time_s = float(frame.time) if frame.time is not None else index / float(fps)
                        chunk.append((index, time_s, frame.to_ndarray(format="rgb24")))
                        index += 1
                        if len(chunk) >= per_chunk * stride:
                            start()
                            advance()
                except av.error.FFmpegError as exc:
                    raise ValueError(f"the video could not be decoded after frame {index} "
                                     f"(truncated or corrupt?): {getattr(exc, 'strerror', None) or exc}") from None
                if chunk:
                    start()
                advance(final=True)
            finally:  # on a failure or a cancel, work still queued for this job is dropped
                for _, _, pending in searching:
                    for future in pending.searches.values():
                        future.cancel()
                for _, _, pending in with_heads:
                    for future in pending.futures:
                        future.cancel()
            if index == 0:
                raise ValueError("the video has no decodable frames")
            # Threaded decoding hides the error of a file cut mid-way: the frames just stop. The
            # container's own count (exact for MP4) tells; a few frames of slack for edit lists.
            expected = stream.frames or 0
            if expected and expected - index > max(2, expected // 50):
                raise ValueError(f"the video could not be decoded after frame {index} of {expected} "
                                 "(truncated or corrupt?)")
            for packet in out.encode(None):  # flush the encoder's delayed frames
                sink.mux(packet)

    job.frames_total = index
    summary = {"id": job.id, "frames": index, "fps": float(fps), "width": width, "height": height,
               "output_width": out_w, "output_height": out_h, "stride": stride, "alpha": job.options.alpha,
               "search_every": job.options.search_every, "searched_frames": detector.searches,
               "notes": job.notes, "tracks": []}
    (job.path / "tracks").mkdir(exist_ok=True)
    for stats in sorted(tracks.values(), key=lambda s: s.track_id):
        if stats.thumbnail is not None and stats.thumbnail.size:
            cv2.imwrite(str(job.path / "tracks" / f"{stats.track_id}.jpg"),
                        cv2.cvtColor(stats.thumbnail, cv2.COLOR_RGB2BGR))
        summary["tracks"].append(stats.to_dict())
    tmp = job.output("summary.json.tmp")
    tmp.write_text(json.dumps(summary))
    tmp.replace(job.output("summary.json"))


def _progress(job: VideoJob, frames_done: int, t_start: float) -> None:
    job.frames_done = frames_done
    total = max(job.frames_total, frames_done)
    job.progress = min(0.99, frames_done / total) if total else 0.0  # 1.0 only once the files are written
    elapsed = time.monotonic() - t_start
    rate = frames_done / elapsed if elapsed > 0 else 0.0
    job.eta_s = (total - frames_done) / rate if rate > 0 else None
