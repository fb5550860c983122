"""Video throughput of REDIS_URL mode (Celery workers) with 1 and 2 workers, and what the queue costs per
job against the embedded mode (threads in the web process), in one run on this machine.

    python -m bench.scale_out [--rounds 3] [--jobs 4] [--frames 96] [--size 640x480] [--small-jobs 5]
                              [--out bench/results/scale_out.json]

Three set-ups, all started at once on the CPU and left idle while another is measured: embedded (one
``faceapp serve``, VIDEO_WORKERS=1), and on a ``redis-server`` of the run's own (free port), one web process
with one ``faceapp worker``, and another with two (each set-up its own key prefix). They are measured in
turns, ``--rounds`` times, so that the host's changing load falls on all three alike; medians over rounds,
and the ratios are taken within each round. Per turn:
- throughput: ``--jobs`` clips submitted at once over HTTP, the wall time from the first upload to the
  last job done -> frames/s; and the CPU time the set-up's processes used meanwhile -> frames per
  CPU-second and cores used (on a host shared with other work, more processes win a larger share of a
  contended CPU: frames per CPU-second says whether they also did the work more cheaply);
- overhead per job: ``--small-jobs`` 4-frame clips, one at a time with every worker idle: the time from
  the job's creation to its start (upload saved and probed, queued, handed to a worker: what the queue
  costs) and from the upload to "done" seen by the client polling every 20 ms.
The clip is skimage's astronaut moving across a plain background (tests/video_clips.py).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from bench.common import machine, write_results  # noqa: E402
from bench.video_throughput import make_clip  # noqa: E402
from redis_parts import RedisServer  # noqa: E402
from serving import WebServer, WorkerProcess, stop_all  # noqa: E402


def submit(base_url: str, clip: Path) -> str:
    response = requests.post(f"{base_url}/api/v1/videos", files={"video": (clip.name, clip.read_bytes())}, timeout=60)
    response.raise_for_status()
    return response.json()["id"]


def wait_done(base_url: str, job_id: str, poll_s: float = 0.02, timeout_s: float = 1800) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = requests.get(f"{base_url}/api/v1/videos/{job_id}", timeout=10).json()
        if body["status"] in ("done", "failed", "cancelled"):
            if body["status"] != "done":
                raise RuntimeError(f"job {job_id} ended {body['status']}: {body['error']}")
            return body
        time.sleep(poll_s)
    raise TimeoutError(job_id)


def job_times(folder: Path, job_id: str, redis_url: str | None, prefix: str) -> tuple[float, float]:
    """(created, started) of a job, from where its mode keeps them."""
    if redis_url:
        import redis

        data = json.loads(redis.Redis.from_url(redis_url).get(f"{prefix}video:job:{job_id}"))
    else:
        data = json.loads((folder / job_id / "job.json").read_text())
    return data["created"], data["started"]


def cpu_seconds(roots: list[int]) -> float:
    """User + system CPU time of ``roots`` and all their descendants so far (Linux /proc)."""
    parents, times = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])
        times[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid, seconds in times.items():
        p = pid
        while p > 1 and p not in roots:
            p = parents.get(p, 0)
        if p in roots:
            total += seconds
    return total


@dataclass
class Setup:
    name: str
    web: WebServer
    workers: list[WorkerProcess]
    video_dir: Path
    redis_url: str | None
    prefix: str

    def processes(self):
        return [self.web, *self.workers]


def start_setup(name: str, workers: int, folder: Path, jobs: int, redis_url: str | None) -> Setup:
    prefix = f"faceapp-bench-{name}:"
    env = {"VIDEO_DIR": str(folder / name / "videos"), "UPLOAD_FOLDER": str(folder / name / "uploads"),
           "VIDEO_MAX_QUEUE": str(jobs + 2), "RATELIMIT_ENABLED": "false"}
    if workers:
        env |= {"REDIS_URL": redis_url, "REDIS_KEY_PREFIX": prefix}
    return Setup(name, WebServer(env, threads=8), [WorkerProcess(env) for _ in range(workers)],
                 folder / name / "videos", redis_url if workers else None, prefix)


def turn(setup: Setup, clip: Path, small: Path, jobs: int, small_jobs: int, frames: int) -> dict:
    base_url = setup.web.base_url
    end_to_end, queue_s = [], []
    for i in range(small_jobs + 1):  # the first one warms up, not counted
        t0 = time.perf_counter()
        job_id = submit(base_url, small)
        wait_done(base_url, job_id)
        seconds = time.perf_counter() - t0
        created, started = job_times(setup.video_dir, job_id, setup.redis_url, setup.prefix)
        if i:
            end_to_end.append(seconds)
            queue_s.append(started - created)
    pids = [process.process.pid for process in setup.processes()]
    cpu0, t0 = cpu_seconds(pids), time.perf_counter()
    ids = [submit(base_url, clip) for _ in range(jobs)]
    for job_id in ids:
        wait_done(base_url, job_id, poll_s=0.2)
    wall, cpu = time.perf_counter() - t0, cpu_seconds(pids) - cpu0
    row = {"frames_per_s": jobs * frames / wall, "wall_s": wall, "frames_per_cpu_s": jobs * frames / cpu,
           "cpu_cores_used": cpu / wall,
           "created_to_started_ms": statistics.median(queue_s) * 1000,
           "small_job_end_to_end_ms": statistics.median(end_to_end) * 1000, "load_average_1min": os.getloadavg()[0]}
    print(f"  {setup.name}: {jobs} x {frames} frames in {wall:.1f} s = {row['frames_per_s']:.1f} frames/s "
          f"({row['frames_per_cpu_s']:.1f} per CPU-second, {row['cpu_cores_used']:.2f} cores used); a 4-frame "
          f"job: created -> started {row['created_to_started_ms']:.0f} ms, upload -> done seen "
          f"{row['small_job_end_to_end_ms']:.0f} ms (medians of {small_jobs}); load {row['load_average_1min']:.1f}",
          flush=True)
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--small-jobs", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    os.environ.setdefault("FACEAPP_DEVICE", "cpu")
    print(f"machine: {machine()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-scale-out-") as tmp_name:
        tmp = Path(tmp_name)
        clip = make_clip(tmp / "clip.mp4", args.frames, width, height)
        small = make_clip(tmp / "small.mp4", 4, 320, 240)
        (tmp / "redis").mkdir()
        redis_server = RedisServer(tmp / "redis")
        setups = [start_setup(name, workers, tmp, args.jobs, redis_server.url)
                  for name, workers in (("embedded", 0), ("celery-1-worker", 1), ("celery-2-workers", 2))]
        rounds: list[dict[str, dict]] = []
        try:
            for setup in setups:
                for process in setup.processes():
                    process.wait_ready(timeout_s=600)
            for r in range(args.rounds):
                print(f"round {r + 1}:", flush=True)
                rounds.append({s.name: turn(s, clip, small, args.jobs, args.small_jobs, args.frames) for s in setups})
        finally:
            stop_all([process for setup in setups for process in setup.processes()])
            redis_server.stop()

    def median(name: str, key: str) -> float:
        return statistics.median(r[name][key] for r in rounds)

    def ratio(a: str, b: str) -> float:
        return statistics.median(r[a]["frames_per_s"] / r[b]["frames_per_s"] for r in rounds)

    summary = {name: {key: median(name, key) for key in ("frames_per_s", "frames_per_cpu_s", "cpu_cores_used",
                                                          "created_to_started_ms", "small_job_end_to_end_ms")}
               for name in rounds[0]}
    summary["ratios"] = {"2_workers_vs_1": ratio("celery-2-workers", "celery-1-worker"),
                         "1_worker_vs_embedded": ratio("celery-1-worker", "embedded"),
                         "queue_overhead_ms": statistics.median(
                             r["celery-1-worker"]["created_to_started_ms"] - r["embedded"]["created_to_started_ms"]
                             for r in rounds)}
    for name, row in summary.items():
        if name != "ratios":
            print(f"{name}: {row['frames_per_s']:.1f} frames/s, {row['frames_per_cpu_s']:.1f} per CPU-second, "
                  f"{row['cpu_cores_used']:.2f} cores used, created -> started {row['created_to_started_ms']:.0f} ms, "
                  f"small job upload -> done {row['small_job_end_to_end_ms']:.0f} ms (medians of {args.rounds} rounds)")
    ratios = summary["ratios"]
    print(f"2 workers vs 1: {ratios['2_workers_vs_1']:.2f}x; 1 worker vs embedded: {ratios['1_worker_vs_embedded']:.2f}x; "
          f"queue overhead per job (created -> started, Celery minus embedded): {ratios['queue_overhead_ms']:.0f} ms")
    results = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}, "rounds": rounds,
               "summary": summary}
    write_results(results, args.out)
    return results


if __name__ == "__main__":
    main()
