"""What a short-lived thread leaves behind in the C heap after calling OpenCV, with OpenCV's own thread
pool on (its default) and off (what the inference service sets).

    python -m bench.thread_memory [--threads 5000] [--out bench/results/thread_memory.json]

Socket.IO (threading mode) handles every event on a new thread, so whatever a thread keeps after it ends
grows with the number of live frames served. Each setting runs in a fresh interpreter: ``--threads``
threads one after the other, each resizing a 640x480 frame (INTER_AREA, as the detector downscales) and
ending; glibc's bytes in use (``mallinfo2``) before and after.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench.common import machine, write_results

_CHILD = """
import json, sys, threading
import cv2, numpy as np
from app.heap import heap_stats
pool, threads = sys.argv[1] == "on", int(sys.argv[2])
if not pool:
    cv2.setNumThreads(1)
frame = np.zeros((480, 640, 3), np.uint8)
def one():
    t = threading.Thread(target=cv2.resize, args=(frame, (320, 240)), kwargs={"interpolation": cv2.INTER_AREA})
    t.start()
    t.join()
one()
before = heap_stats().in_use_bytes
for _ in range(threads):
    one()
print(json.dumps({"opencv_threads": cv2.getNumThreads(), "grew_bytes": heap_stats().in_use_bytes - before}))
"""


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.thread_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=5000)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    results = {"machine": machine(), "threads": a.threads}
    for pool in ("on", "off"):
        out = subprocess.run([sys.executable, "-c", _CHILD, pool, str(a.threads)], capture_output=True, text=True,
                             check=True, cwd=Path(__file__).resolve().parents[1])
        r = json.loads(out.stdout)
        r["bytes_per_thread"] = round(r["grew_bytes"] / a.threads, 1)
        results[f"pool_{pool}"] = r
        print(f"OpenCV's pool {pool} ({r['opencv_threads']} threads): the C heap grew {r['grew_bytes']:,} bytes "
              f"over {a.threads:,} threads, {r['bytes_per_thread']} bytes a thread")
    write_results(results, a.out)
    return results


if __name__ == "__main__":
    main()
