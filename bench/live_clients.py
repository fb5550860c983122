"""Live mode under load: the real server, simulated python-socketio clients on loopback.

    python -m bench.live_clients [--clients 1 8] [--seconds 10] [--repeats 3] [--smoothing-frames 60]
                                 [--detector-max-side N] [--search-every 1 3] [--out bench/results/live.json]

Starts ``faceapp serve`` (``gunicorn -w 1 --threads 32``, no control socket) on a free loopback port
(FACEAPP_DEVICE=cpu), then:

1. Streaming: for each client count, that many clients each stream a 640x480 JPEG with one face (the
   astronaut on a canvas, as in bench/photo_latency.py) over websockets, one frame in flight each (the
   next frame is sent when the previous one is answered), for ``--seconds``; after an unmeasured
   warm-up, the client counts take turns ``--repeats`` times. Reported: processed frames/s (aggregate
   and slowest client, medians over the repeats), server time p50 (the answers' ``timings_ms.total``,
   per stage too), round trip p50/p95, and aggregate(N)/aggregate(1).
2. Smoothing: one client streams a still face (the same frame re-encoded at JPEG quality 70-95 and
   shifted by 0-2 px, a fixed pseudo-random sequence) once with alpha=1 (raw) and once with the
   default alpha; reported: the mean frame-to-frame change of the age and of the emotion
   probabilities, smoothed/raw (target: at most 1/3).

With ``--search-every 1 3`` the whole measurement runs on one server per LIVE_SEARCH_EVERY value, one
after the other, and the following servers are reported as ratios to the searching-every-frame one. The
streamed frame is a still face, so following never loses it: a best case for following (a real camera's
moving face costs the same O-net pass, and one that enters the picture is found at the next search).

Every loop is bounded (by time or frame count). The machine is printed with the numbers.
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import socketio
from PIL import Image

from bench.common import machine, percentile, write_results
from bench.photo_latency import one_face_640x480
from tests.serving import gunicorn

NAMESPACE = "/live"


# ---------- Clients ----------

@dataclass
class ClientRun:
    """What one simulated client saw during the measured window."""

    round_trips_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)
    stages_ms: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)


def connect(base_url: str) -> socketio.Client:
    client = socketio.Client(reconnection=False)
    client.connect(base_url, namespaces=[NAMESPACE], transports=["websocket"], wait_timeout=30)
    return client


def send(client: socketio.Client, seq: int, jpeg: bytes, alpha: float | None = None) -> dict:
    payload = {"seq": seq, "image": jpeg}
    if alpha is not None:
        payload["alpha"] = alpha
    answer = client.call("frame", payload, namespace=NAMESPACE, timeout=60)
    if answer["seq"] != seq:
        raise RuntimeError(f"answer for frame {answer['seq']} arrived for frame {seq}")
    return answer


def stream(client: socketio.Client, jpeg: bytes, start: threading.Barrier, seconds: float) -> ClientRun:
    """Waits for the other clients, then streams for ``seconds``, one frame in flight."""
    run = ClientRun()
    seq = 0
    start.wait()
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        t0 = time.perf_counter()
        answer = send(client, seq, jpeg)
        run.round_trips_ms.append((time.perf_counter() - t0) * 1000)
        seq += 1
        if "error" in answer:
            code = answer["error"]["code"]
            run.errors[code] = run.errors.get(code, 0) + 1
            continue
        run.server_ms.append(answer["timings_ms"]["total"])
        for stage, ms in answer["timings_ms"].items():
            run.stages_ms.setdefault(stage, []).append(ms)
    return run


def streaming(base_url: str, jpeg: bytes, clients: int, seconds: float) -> list[ClientRun]:
    """``clients`` clients streaming at once for ``seconds``; what each one saw."""
    connections = [connect(base_url) for _ in range(clients)]
    start = threading.Barrier(clients)
    runs: list[ClientRun | None] = [None] * clients

    def work(i: int):
        runs[i] = stream(connections[i], jpeg, start, seconds)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 120)
    for c in connections:
        c.disconnect()
    if any(r is None for r in runs):
        raise RuntimeError("a client did not finish")
    return runs


def summarize(clients: int, seconds: float, repeats: list[list[ClientRun]]) -> dict:
    """Frames/s: medians over the repeats; latencies: percentiles over every frame of every repeat."""
    aggregate = [sum(len(r.server_ms) for r in runs) / seconds for runs in repeats]
    slowest = [min(len(r.server_ms) for r in runs) / seconds for runs in repeats]
    every = [r for runs in repeats for r in runs]
    round_trips = [ms for r in every for ms in r.round_trips_ms]
    stages: dict[str, list[float]] = {}
    errors: dict[str, int] = {}
    for r in every:
        for stage, values in r.stages_ms.items():
            stages.setdefault(stage, []).extend(values)
        for code, n in r.errors.items():
            errors[code] = errors.get(code, 0) + n
    return {
        "clients": clients, "seconds": seconds, "repeats": len(repeats),
        "fps_aggregate": statistics.median(aggregate), "fps_aggregate_runs": aggregate,
        "fps_min_client": statistics.median(slowest),
        "server_ms_p50": percentile(stages["total"], 50),
        "stages_ms_p50": {k: percentile(v, 50) for k, v in stages.items()},
        "round_trip_ms": {"p50": percentile(round_trips, 50), "p95": percentile(round_trips, 95)},
        "errors": errors,
    }


# ---------- Smoothing ----------

def jittered_still_face(frames: int, seed: int = 0) -> list[bytes]:
    """The one-face 640x480 frame, re-encoded at JPEG quality 70-95 and shifted by 0-2 px per frame."""
    rng = np.random.default_rng(seed)
    base = np.asarray(Image.open(io.BytesIO(one_face_640x480())).convert("RGB"))
    out = []
    for _ in range(frames):
        dx, dy = (int(v) for v in rng.integers(-2, 3, size=2))
        shifted = np.roll(base, (dy, dx), axis=(0, 1))
        buf = io.BytesIO()
        Image.fromarray(shifted).save(buf, "JPEG", quality=int(rng.integers(70, 96)))
        out.append(buf.getvalue())
    return out


def frame_to_frame_change(answers: list[dict]) -> dict:
    """Mean absolute change between consecutive answers with one face: age (years) and emotion probabilities."""
    ages, emotions = [], []
    for previous, current in zip(answers, answers[1:]):
        if len(previous.get("faces", [])) != 1 or len(current.get("faces", [])) != 1:
            continue
        a, b = previous["faces"][0], current["faces"][0]
        ages.append(abs(b["age"]["years"] - a["age"]["years"]))
        pa, pb = a["emotion"]["probabilities"], b["emotion"]["probabilities"]
        emotions.append(float(np.mean([abs(pb[k] - pa[k]) for k in pa])))
    if not ages:
        raise RuntimeError("no consecutive frames with exactly one face")
    return {"age_years": float(np.mean(ages)), "emotion_probability": float(np.mean(emotions)), "pairs": len(ages)}


def smoothing(base_url: str, frames: list[bytes], default_alpha: float) -> dict:
    changes = {}
    for name, alpha in (("raw", 1.0), ("smoothed", default_alpha)):
        client = connect(base_url)  # a fresh session: a fresh track
        try:
            answers = [send(client, seq, jpeg, alpha) for seq, jpeg in enumerate(frames)]
        finally:
            client.disconnect()
        changes[name] = {"alpha": alpha, **frame_to_frame_change(answers)}
    raw, smooth = changes["raw"], changes["smoothed"]
    return {**changes, "ratio": {
        "age_years": smooth["age_years"] / raw["age_years"] if raw["age_years"] else float("nan"),
        "emotion_probability": (smooth["emotion_probability"] / raw["emotion_probability"]
                                if raw["emotion_probability"] else float("nan")),
    }}


# ---------- Report ----------

def report(results: dict) -> None:
    print(f"machine: {results['machine']}")
    for run in results["runs"]:
        print(f"server: {run['server']}")
        for row in run["streaming"]:
            stages = ", ".join(f"{k} {v:.1f}" for k, v in row["stages_ms_p50"].items())
            print(f"{row['clients']} client(s), {row['repeats']} x {row['seconds']:.0f} s: "
                  f"{row['fps_aggregate']:.1f} fps aggregate, "
                  f"slowest client {row['fps_min_client']:.1f} fps | server p50 {row['server_ms_p50']:.1f} ms "
                  f"({stages}) | round trip p50 {row['round_trip_ms']['p50']:.1f} ms, "
                  f"p95 {row['round_trip_ms']['p95']:.1f} ms | errors {row['errors'] or 'none'}")
        if "scaling" in run:
            s = run["scaling"]
            print(f"aggregate fps, {s['clients']} clients / 1 client: {s['ratio']:.2f}x")
        if "smoothing" in run:
            sm = run["smoothing"]
            for name in ("raw", "smoothed"):
                r = sm[name]
                print(f"still face, {name} (alpha {r['alpha']:.2f}): mean change per frame: age "
                      f"{r['age_years']:.3f} y, emotion probability {r['emotion_probability']:.4f} "
                      f"({r['pairs']} frame pairs)")
            print(f"smoothed/raw: age {sm['ratio']['age_years']:.3f}, emotion "
                  f"{sm['ratio']['emotion_probability']:.3f} (target <= 0.333)")
    for row in results.get("search_every_ratios", []):
        print(f"search every {row['search_every']} frames / every frame, {row['clients']} client(s): "
              f"{row['fps_ratio']:.2f}x fps, server p50 {row['server_ms_p50_ratio']:.2f}x")


def measure(args, search_every: int | None, backend: str | None = None) -> dict:
    """One server (``search_every``: its LIVE_SEARCH_EVERY, None for the app's; ``backend``: its
    INFERENCE_BACKEND, None for the app's), every measurement on it."""
    from app.config import Config

    env = {"INFERENCE_BACKEND": backend} if backend else {}
    if args.detector_max_side:
        env["FACEAPP_LIVE_DETECTOR_MAX_SIDE"] = str(args.detector_max_side)
    if search_every is not None:
        env["LIVE_SEARCH_EVERY"] = str(search_every)
    run: dict = {}
    with gunicorn(env) as (base_url, ready):
        run["server"] = {
            "device": ready["device"],
            "live_detector_max_side": int(env.get("FACEAPP_LIVE_DETECTOR_MAX_SIDE", Config.LIVE_DETECTOR_MAX_SIDE)),
            "live_search_every": int(env.get("LIVE_SEARCH_EVERY", Config.LIVE_SEARCH_EVERY)),
            "weights": {"emotion": Config.EMOTION_WEIGHTS, "age_gender": Config.AGE_GENDER_WEIGHTS},
        }
        jpeg = one_face_640x480()
        for n in args.clients:  # unmeasured: first batches of each size pay for allocations and kernel choices
            streaming(base_url, jpeg, n, args.warm_up_seconds)
        repeats: dict[int, list[list[ClientRun]]] = {n: [] for n in args.clients}
        for _ in range(args.repeats):  # alternating, so that a slow spell of the machine hits every count
            for n in args.clients:
                repeats[n].append(streaming(base_url, jpeg, n, args.seconds))
        run["streaming"] = [summarize(n, args.seconds, repeats[n]) for n in args.clients]
        if 1 in args.clients and len(args.clients) > 1:
            single = next(r for r in run["streaming"] if r["clients"] == 1)
            most = max(run["streaming"], key=lambda r: r["clients"])
            run["scaling"] = {"clients": most["clients"], "ratio": most["fps_aggregate"] / single["fps_aggregate"]}
        if args.smoothing_frames:
            frames = jittered_still_face(args.smoothing_frames)
            run["smoothing"] = smoothing(base_url, frames, Config.LIVE_DEFAULT_ALPHA)
    return run


def search_every_ratios(runs: list[dict]) -> list[dict]:
    """Each following server against the searching-every-frame one, per client count."""
    base = next((r for r in runs if r["server"]["live_search_every"] == 1), None)
    if base is None:
        return []
    rows = []
    for run in runs:
        if run is base:
            continue
        for row, ref in zip(run["streaming"], base["streaming"]):
            rows.append({"search_every": run["server"]["live_search_every"], "clients": row["clients"],
                         "fps_ratio": row["fps_aggregate"] / ref["fps_aggregate"],
                         "server_ms_p50_ratio": row["server_ms_p50"] / ref["server_ms_p50"]})
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured streaming time of one run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per client count (medians reported)")
    parser.add_argument("--warm-up-seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--smoothing-frames", type=int, default=60, help="0 skips the smoothing check")
    parser.add_argument("--detector-max-side", type=int,
                        help="FACEAPP_LIVE_DETECTOR_MAX_SIDE for the server (default: the app's)")
    parser.add_argument("--search-every", type=int, nargs="+", default=[None],
                        help="LIVE_SEARCH_EVERY, one server each in turn (default: the app's); with 1 among "
                             "them, the others are reported as ratios to it")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)

    command = " ".join(["python -m bench.live_clients", *(sys.argv[1:] if argv is None else argv)])
    results: dict = {"machine": machine(), "command": command}
    results["runs"] = [measure(args, n) for n in args.search_every]
    results["search_every_ratios"] = search_every_ratios(results["runs"])
    report(results)
    write_results(results, args.out)
    return results


if __name__ == "__main__":
    main()
