"""Idle and slow clients against the real server: does it still answer?

    python -m bench.connection_flood [--websockets 200] [--stalled 50] [--seconds 20] [--out ...]

Starts ``gunicorn -w 1 --threads 32 wsgi:app`` (as ``make run``) on a free loopback port, then opens
``--websockets`` engine.io websockets that join no namespace and send nothing, and ``--stalled`` uploads
that announce 1,000 bytes of body and send 10 (each reopened when the server closes it, so that the
flood is sustained). For ``--seconds`` it then measures, every 0.5 s: ``GET /healthz`` (latency, or a
timeout at 5 s), and every 2 s: whether a new live client can connect to ``/live`` (python-socketio).
Reported: how many websockets the server accepted (the rest got 503), /healthz p50/max and failures,
live connections made / refused (busy) / failed.
"""
from __future__ import annotations

import argparse
import socket
import statistics
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import requests
import socketio
import websocket

from bench.common import machine, write_results
from tests.serving import gunicorn


def open_websocket(host: str, port: int):
    try:
        return websocket.create_connection(f"ws://{host}:{port}/socket.io/?EIO=4&transport=websocket", timeout=10)
    except (websocket.WebSocketException, OSError):
        return None


def stalled_uploads(host: str, port: int, count: int, stop: threading.Event) -> dict:
    """Keeps ``count`` stalled uploads open until ``stop``; counts the server's answers."""
    answers = {"opened": 0}

    def one():
        while not stop.is_set():
            try:
                sock = socket.create_connection((host, port), timeout=30)
                sock.sendall(b"POST /api/v1/images HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                             b"boundary=b\r\nContent-Length: 1000\r\n\r\n--b\r\nabcde")
                answers["opened"] += 1
                head = sock.recv(64)
                status = head[9:12].decode(errors="replace") or "closed"
                answers[status] = answers.get(status, 0) + 1
                sock.close()
            except OSError:
                answers["error"] = answers.get("error", 0) + 1
                time.sleep(0.2)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(count)]
    for t in threads:
        t.start()
    return answers


def live_connects(base_url: str) -> str:
    sio = socketio.Client(reconnection=False)
    refused = []
    sio.on("busy", lambda data: refused.append(data), namespace="/live")
    try:
        sio.connect(base_url, namespaces=["/live"], transports=["websocket"], wait_timeout=5)
        sio.disconnect()
        return "connected"
    except socketio.exceptions.ConnectionError as exc:
        return "busy" if refused or "busy" in str(exc) or "503" in str(exc) else "failed"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--websockets", type=int, default=200)
    parser.add_argument("--stalled", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    results = {"machine": machine(), "websockets": args.websockets, "stalled_uploads": args.stalled}
    with gunicorn(env={"RATELIMIT_ENABLED": "false"}, threads=32) as (base_url, _ready):
        url = urlsplit(base_url)
        sockets = [open_websocket(url.hostname, url.port) for _ in range(args.websockets)]
        results["websockets_accepted"] = sum(s is not None for s in sockets)
        stop = threading.Event()
        uploads = stalled_uploads(url.hostname, url.port, args.stalled, stop)
        time.sleep(1.0)
        latencies, failures, live = [], 0, {"connected": 0, "busy": 0, "failed": 0}
        t_end = time.monotonic() + args.seconds
        next_live = time.monotonic()
        while time.monotonic() < t_end:
            t0 = time.perf_counter()
            try:
                requests.get(f"{base_url}/healthz", timeout=5).raise_for_status()
                latencies.append((time.perf_counter() - t0) * 1000)
            except requests.RequestException:
                failures += 1
            if time.monotonic() >= next_live:
                live[live_connects(base_url)] += 1
                next_live = time.monotonic() + 2.0
            time.sleep(0.5)
        stop.set()
        for s in sockets:
            if s is not None:
                s.close()
    results.update({
        "healthz_ok": len(latencies), "healthz_failed": failures,
        "healthz_p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "healthz_max_ms": round(max(latencies), 1) if latencies else None,
        "live_clients": live, "stalled_upload_answers": dict(uploads),
    })
    print(results)
    write_results(results, args.out)
    return results


if __name__ == "__main__":
    main()
