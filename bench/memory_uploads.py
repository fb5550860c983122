"""Memory under large concurrent uploads: peak and idle RSS of the real server.

    python -m bench.memory_uploads [--clients 16] [--kinds png1 jpeg] [--compare-unbounded]
                                   [--out bench/results/memory.json]

Starts ``gunicorn -w 1 --threads 32 wsgi:app`` (as ``make run``; FACEAPP_DEVICE=cpu) on a free loopback
port and finds its worker process. Warm-up: 4 ordinary photos and one upload of each kind, one at a time;
then, after 3 s idle, the post-warm-up RSS. Then, per kind of picture, ``--clients`` uploads of it at
once (one thread each), sampling the worker's RSS every 20 ms (and its kernel-kept peak, VmHWM, reset
before each burst); 5 s after the burst, the idle RSS again. Kinds:

- ``png1``: a 6300 x 6300 one-bit PNG (a few KB: the amplification case, 39.7 Mpx);
- ``jpeg``: a 7296 x 5472 photo-like JPEG (39.9 Mpx; the astronaut enlarged, quality 85).

``--compare-unbounded`` runs the same on a second server whose photos are decoded at full size with
no pixel budget (FACEAPP_DECODE_MAX_SIDE and FACEAPP_PIXEL_BUDGET set huge), the behaviour before
both existed. Answers are counted by status (503 is the budget refusing after its wait).
"""
from __future__ import annotations

import argparse
import io
import os
import re
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import requests
from PIL import Image

from bench.common import machine, write_results
from bench.photo_latency import one_face_640x480
from tests.serving import gunicorn

SAMPLE_S = 0.02


def one_bit_png(side: int = 6300) -> bytes:
    buf = io.BytesIO()
    Image.new("1", (side, side), 1).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def large_jpeg(width: int = 7296, height: int = 5472) -> bytes:
    from skimage import data

    big = cv2.resize(data.astronaut(), (width, height), interpolation=cv2.INTER_CUBIC)
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, "JPEG", quality=85)
    return buf.getvalue()


KINDS = {"png1": ("one-bit PNG 6300x6300", one_bit_png), "jpeg": ("JPEG 7296x5472", large_jpeg)}


# ---------- The server's worker process ----------

def worker_pid(port: int) -> int:
    """gunicorn's worker: the process serving ``port`` whose parent serves it too (the master)."""
    serving, parents = [], {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # gunicorn's own title when setproctitle is installed, else the command line of ``faceapp serve``
        if (f"127.0.0.1:{port}" in cmdline and "gunicorn" in cmdline) or (" serve " in cmdline
                                                                         and f"--port {port} " in cmdline):
            serving.append(int(entry.name))
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    workers = [pid for pid in serving if parents[pid] in serving]
    if len(workers) != 1:
        raise RuntimeError(f"expected one gunicorn worker on port {port}, found {workers}")
    return workers[0]


def status_kb(pid: int, field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(match.group(1))


def rss_mb(pid: int) -> float:
    return status_kb(pid, "VmRSS") / 1024


def reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


# ---------- Measuring ----------

def post(base_url: str, data: bytes, name: str) -> int:
    try:
        return requests.post(f"{base_url}/api/v1/images", files={"image": (name, data)}, timeout=300).status_code
    except requests.RequestException:
        return -1


def burst(base_url: str, pid: int, data: bytes, clients: int) -> dict:
    samples: list[float] = []
    done = threading.Event()

    def sample():
        while not done.is_set():
            samples.append(rss_mb(pid))
            time.sleep(SAMPLE_S)

    statuses: list[int] = []
    lock = threading.Lock()

    def client(i):
        code = post(base_url, data, f"large-{i}")
        with lock:
            statuses.append(code)

    hwm_reset = reset_peak(pid)
    before = rss_mb(pid)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    peak = max(samples + [rss_mb(pid)])
    if hwm_reset:
        peak = max(peak, status_kb(pid, "VmHWM") / 1024)
    time.sleep(5)
    return {"rss_before_mb": round(before, 1), "peak_rss_mb": round(peak, 1),
            "idle_rss_after_mb": round(rss_mb(pid), 1), "seconds": round(seconds, 1),
            "statuses": {str(c): statuses.count(c) for c in sorted(set(statuses))}}


def measure(env: dict[str, str], kinds: list[str], clients: int, pictures: dict[str, bytes]) -> dict:
    with gunicorn(env=env, threads=32) as (base_url, _ready):
        port = int(base_url.rsplit(":", 1)[1])
        pid = worker_pid(port)
        face = one_face_640x480()
        for _ in range(4):
            post(base_url, face, "face.jpg")
        for kind in kinds:  # each kind's sizes once: the detector's kernels for them are made and kept
            post(base_url, pictures[kind], "warm-up-large")
        time.sleep(3)
        warm = rss_mb(pid)
        result = {"post_warm_up_rss_mb": round(warm, 1), "bursts": {}}
        for kind in kinds:
            run = burst(base_url, pid, pictures[kind], clients)
            run["idle_vs_post_warm_up"] = round(run["idle_rss_after_mb"] / warm, 3)
            result["bursts"][kind] = run
            print(f"  {KINDS[kind][0]} x{clients}: peak {run['peak_rss_mb']:.0f} MB, idle after "
                  f"{run['idle_rss_after_mb']:.0f} MB ({run['idle_vs_post_warm_up']:.2f}x post-warm-up "
                  f"{warm:.0f} MB), {run['seconds']} s, statuses {run['statuses']}", flush=True)
        return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--kinds", nargs="+", choices=sorted(KINDS), default=["png1", "jpeg"])
    parser.add_argument("--compare-unbounded", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    pictures = {kind: KINDS[kind][1]() for kind in args.kinds}
    results = {"machine": machine(), "clients": args.clients,
               "pictures": {k: {"what": KINDS[k][0], "bytes": len(v)} for k, v in pictures.items()}}
    print(results["machine"])
    servers = {"bounded": {}}
    if args.compare_unbounded:
        servers["unbounded"] = {"FACEAPP_DECODE_MAX_SIDE": "1000000", "FACEAPP_PIXEL_BUDGET": str(10**12)}
    base_env = {"RATELIMIT_ENABLED": "false"}
    for name, env in servers.items():
        print(f"{name} server:", flush=True)
        results[name] = measure({**base_env, **env}, args.kinds, args.clients, pictures)
    write_results(results, args.out)
    return results


if __name__ == "__main__":
    main()
