"""Soak: every mode at once for a set time, watching the server's RSS, threads and open files.

    python -m bench.soak [--minutes 30] [--live 16] [--photo-loops 2] [--video-loops 2] [--out ...]

Starts the server as ``make run`` does (``faceapp serve``: gunicorn, one worker; rate limits off, the clients
are all on loopback) and first times a video job alone (a generated 10 s 320x240 clip with a moving face;
5 runs after one not counted, and 5 more after the load; the baseline is the median of the 10). Then,
for ``--minutes``: ``--live`` python-socketio clients stream a 640x480 one-face JPEG on ``/live`` (one
frame in flight each), ``--photo-loops`` clients post the same picture to ``/api/v1/images`` one after
the other, and ``--video-loops`` clients upload the clip, wait for its job to finish and delete it,
again and again. Every 10 s the gunicorn worker's RSS, thread count and open files are sampled.

Reported: errors by kind (any answer that is not the expected one), RSS first / last and its spread
over the last two thirds of the run (target: within +-5%) and a line fitted to it (MB a minute), the machine's load (other work on it), threads and open files (first, last, max),
live acknowledgement p50/p95, photo p50/p95, video jobs under load: count and median time, as a ratio to
the job alone (target: within 4x), both from the job's creation to done and while running, by the server's
clock (the status's created, started and updated; the server runs one job at a time, VIDEO_WORKERS=1,
so with two video loops each job also waits for the other's).
"""
from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
from skimage import data

from bench.common import machine, percentile, write_results
from bench.live_clients import connect, send
from bench.memory_uploads import rss_mb, worker_pid
from bench.photo_latency import one_face_640x480
from tests.serving import gunicorn
from tests.video_clips import moving_face_frames, write_clip

SAMPLE_EVERY_S = 10.0


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.errors: dict[str, int] = {}
        self.live_ms: list[float] = []
        self.photo_ms: list[float] = []
        self.video: list[VideoTiming] = []

    def error(self, kind: str) -> None:
        with self.lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1


@dataclass(frozen=True)
class VideoTiming:
    """By the server's own clock (the job's created, started and updated times): polling would measure a
    job of ~1.2 s alone in steps of POLL_S (0.2 s, a sixth of it)."""
    total_s: float  # created to done, waiting in the job queue included
    running_s: float  # started to done


POLL_S = 0.2
ALONE_RUNS = 5


def run_video_job(base_url: str, clip: bytes, timeout_s: float = 900) -> VideoTiming:
    response = requests.post(f"{base_url}/api/v1/videos", files={"video": ("clip.mp4", clip)}, timeout=120)
    response.raise_for_status()
    job = response.json()
    deadline = time.monotonic() + timeout_s
    while True:
        status = requests.get(f"{base_url}/api/v1/videos/{job['id']}", timeout=30).json()
        if status["status"] in ("done", "failed", "cancelled"):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"video job {job['id']} still {status['status']} after {timeout_s:.0f} s")
        time.sleep(POLL_S)
    requests.delete(f"{base_url}/api/v1/videos/{job['id']}", headers={"X-Delete-Token": job["delete_token"]},
                    timeout=30)
    if status["status"] != "done":
        raise RuntimeError(f"video job {status['status']}: {status['error']}")
    return VideoTiming(total_s=status["updated"] - status["created"], running_s=status["updated"] - status["started"])


def live_loop(base_url: str, jpeg: bytes, stop: threading.Event, tally: Tally) -> None:
    try:
        client = connect(base_url)
    except Exception:
        tally.error("live connect")
        return
    seq = 0
    try:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                answer = send(client, seq, jpeg)
            except Exception:
                tally.error("live call")
                break
            seq += 1
            if "error" in answer:
                tally.error(f"live {answer['error']['code']}")
            else:
                with tally.lock:
                    tally.live_ms.append((time.perf_counter() - t0) * 1000)
    finally:
        client.disconnect()


def photo_loop(base_url: str, jpeg: bytes, stop: threading.Event, tally: Tally) -> None:
    session = requests.Session()
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            r = session.post(f"{base_url}/api/v1/images", files={"image": ("face.jpg", jpeg)}, timeout=120)
            if r.status_code != 200:
                tally.error(f"photo {r.status_code}")
                continue
        except requests.RequestException:
            tally.error("photo request")
            continue
        with tally.lock:
            tally.photo_ms.append((time.perf_counter() - t0) * 1000)


def video_loop(base_url: str, clip: bytes, stop: threading.Event, tally: Tally) -> None:
    while not stop.is_set():
        try:
            timing = run_video_job(base_url, clip)
        except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
            tally.error(f"video {type(exc).__name__}")
            time.sleep(1)
            continue
        with tally.lock:
            tally.video.append(timing)


def slope_mb_per_min(samples: list[dict]) -> float | None:
    """A least-squares line through RSS over time: what a creep looks like, apart from the jobs' ups and downs."""
    if len(samples) < 2:
        return None
    minutes = np.array([s["t_s"] for s in samples]) / 60.0
    return round(float(np.polyfit(minutes, np.array([s["rss_mb"] for s in samples]), 1)[0]), 2)


def spread(values: list[float]) -> dict:
    mid = statistics.median(values)
    return {"min": min(values), "max": max(values), "median": mid,
            "spread_pct": round(100 * (max(values) - min(values)) / mid, 1)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--live", type=int, default=16)
    parser.add_argument("--photo-loops", type=int, default=2)
    parser.add_argument("--video-loops", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    jpeg = one_face_640x480()
    with tempfile.TemporaryDirectory() as tmp:
        clip = write_clip(Path(tmp) / "clip.mp4", moving_face_frames(data.astronaut(), frames=120), fps=12).read_bytes()
    results = {"machine": machine(), "minutes": args.minutes, "live_clients": args.live,
               "photo_loops": args.photo_loops, "video_loops": args.video_loops}
    with gunicorn(env={"RATELIMIT_ENABLED": "false"}) as (base_url, _ready):
        pid = worker_pid(int(base_url.rsplit(":", 1)[1]))
        # Alone: a job of ~1.2 s varies by ±10% from one run to the next on this machine, so ALONE_RUNS
        # before the load (after one not counted) and ALONE_RUNS after it; the baseline is their median.
        run_video_job(base_url, clip)
        alone_before = [run_video_job(base_url, clip) for _ in range(ALONE_RUNS)]
        print(f"{results['machine']}\nvideo job alone, before the load: {median_timing(alone_before)}", flush=True)

        tally, stop = Tally(), threading.Event()
        workers = ([threading.Thread(target=live_loop, args=(base_url, jpeg, stop, tally)) for _ in range(args.live)]
                   + [threading.Thread(target=photo_loop, args=(base_url, jpeg, stop, tally))
                      for _ in range(args.photo_loops)]
                   + [threading.Thread(target=video_loop, args=(base_url, clip, stop, tally))
                      for _ in range(args.video_loops)])
        for w in workers:
            w.start()
        samples = []
        t0 = time.monotonic()
        end = t0 + args.minutes * 60
        while time.monotonic() < end:
            time.sleep(SAMPLE_EVERY_S)
            sample = {"t_s": round(time.monotonic() - t0), "rss_mb": round(rss_mb(pid), 1),
                      "threads": thread_count(pid), "open_files": open_files(pid),
                      # the machine's 1-minute load: other work on it shows here
                      "load_1min": float(Path("/proc/loadavg").read_text().split()[0])}
            samples.append(sample)
            print(f"  {sample}  errors {tally.errors}", flush=True)
        stop.set()
        for w in workers:
            w.join(timeout=960)
        time.sleep(5)
        alone_after = [run_video_job(base_url, clip) for _ in range(ALONE_RUNS)]
    alone = median_timing(alone_before + alone_after)
    results["video_job_alone_s"] = {"total": round(alone.total_s, 2), "running": round(alone.running_s, 2),
                                    "running_before_load": round(median_timing(alone_before).running_s, 2),
                                    "running_after_load": round(median_timing(alone_after).running_s, 2),
                                    "running_runs": [round(t.running_s, 2) for t in alone_before + alone_after]}

    late = [s["rss_mb"] for s in samples[len(samples) // 3:]]
    results.update({
        "errors": tally.errors,
        "rss_mb": {"first": samples[0]["rss_mb"], "last": samples[-1]["rss_mb"], "last_two_thirds": spread(late),
                   "slope_last_two_thirds_mb_per_min": slope_mb_per_min(samples[len(samples) // 3:])},
        "threads": {"first": samples[0]["threads"], "last": samples[-1]["threads"],
                    "max": max(s["threads"] for s in samples)},
        "open_files": {"first": samples[0]["open_files"], "last": samples[-1]["open_files"],
                       "max": max(s["open_files"] for s in samples)},
        "load_1min": {"median": statistics.median(s["load_1min"] for s in samples),
                      "max": max(s["load_1min"] for s in samples)},
        "live_ack_ms": {**latency_percentiles(tally.live_ms), "frames": len(tally.live_ms)},
        "photo_ms": {**latency_percentiles(tally.photo_ms), "requests": len(tally.photo_ms)},
        "video_jobs_under_load": video_summary(tally.video, alone),
        "samples": samples,
    })
    print({k: v for k, v in results.items() if k != "samples"})
    write_results(results, args.out)
    return results


def latency_percentiles(values_ms: list[float]) -> dict:
    """p50 and p95, or None for a kind of client the run did not start (``--live 0``, ``--photo-loops 0``)."""
    if not values_ms:
        return {"p50": None, "p95": None}
    return {"p50": round(percentile(values_ms, 50), 1), "p95": round(percentile(values_ms, 95), 1)}


def median_timing(timings: list[VideoTiming]) -> VideoTiming:
    return VideoTiming(statistics.median(t.total_s for t in timings), statistics.median(t.running_s for t in timings))


def video_summary(timings: list[VideoTiming], alone: VideoTiming) -> dict:
    """Median times under load and as ratios to the job alone. With VIDEO_WORKERS=1 and two video loops,
    a job's total includes waiting for the other loop's job; its running time does not."""
    if not timings:
        return {"count": 0}
    median = median_timing(timings)
    total, running = median.total_s, median.running_s
    return {"count": len(timings), "median_total_s": round(total, 2), "median_running_s": round(running, 2),
            "total_vs_alone": round(total / alone.total_s, 2), "running_vs_alone": round(running / alone.running_s, 2),
            "running_p90_vs_alone": round(percentile([t.running_s for t in timings], 90) / alone.running_s, 2)}


def thread_count(pid: int) -> int:
    return int(re.search(r"^Threads:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M).group(1))


def open_files(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


if __name__ == "__main__":
    main()
