"""Idle and slow clients against the real server: does it still answer /healthz and live clients?

    python -m bench.connection_flood [--websockets 200] [--stalled 50] [--addresses 8] [--seconds 30] [--out ...]

Starts the server as ``make run`` does (``faceapp serve``: gunicorn, one worker, its default threads) on a
free loopback port. A live client (python-socketio, from 127.0.0.1) first streams a 640x480 one-face JPEG
on ``/live`` for ``--seconds`` with nothing else going on: its acknowledgement latency alone. Then the flood,
from ``--addresses`` other loopback addresses (127.0.1.1, 127.0.1.2, ...; one client address holds at most
MAX_SOCKETS_PER_ADDRESS sockets and MAX_UPLOADS_PER_ADDRESS uploads): ``--websockets`` engine.io websockets
that join no namespace and send nothing, and ``--stalled`` uploads that announce 1,000 bytes of body and
send 10, each re-opened as soon as the server closes or refuses it. With the flood held open, for
``--seconds``: the same live client streams again (one frame in flight), ``GET /healthz`` every 0.5 s
(latency, or a failure at 5 s), and every 2 s a new live client connects, gets one frame answered and leaves.
The gunicorn worker's RSS and threads are sampled before the flood and every 2 s during it.

Reported: websockets and stalled uploads held open (median and least over the samples), the server's
answers to them, /healthz p50/max/failures, live acknowledgements p50/p95 alone and under the flood, new
live clients served / refused / failed, RSS and threads before and at most during the flood.
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

from bench.common import machine, percentile, write_results
from bench.live_clients import connect, send
from bench.memory_uploads import rss_mb, worker_pid
from bench.photo_latency import one_face_640x480
from bench.soak import thread_count
from tests.serving import gunicorn


class Flood:
    """The idle clients, each re-opened as soon as it ends; counts what is open and how each attempt ended."""

    def __init__(self, host: str, port: int, addresses: list[str]):
        self.host, self.port, self.addresses = host, port, addresses
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.open = {"websockets": 0, "uploads": 0}
        self.answers: dict[str, int] = {}
        self.threads: list[threading.Thread] = []

    def _count(self, key: str, delta: int = 1, kind: str | None = None) -> None:
        with self.lock:
            if kind:
                self.open[kind] += delta
            else:
                self.answers[key] = self.answers.get(key, 0) + 1

    def _connect(self, i: int) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=30,
                                        source_address=(self.addresses[i % len(self.addresses)], 0))

    def websocket(self, i: int) -> None:
        while not self.stop.is_set():
            try:
                ws = websocket.create_connection(f"ws://{self.host}:{self.port}/socket.io/?EIO=4&transport=websocket",
                                                 socket=self._connect(i), timeout=30)
            except websocket.WebSocketBadStatusException as exc:
                self._count(f"websocket {exc.status_code}")
                continue
            except (websocket.WebSocketException, OSError):
                self._count("websocket error")
                time.sleep(0.2)
                continue
            self._count("websocket opened")
            self._count("", 1, "websockets")
            ws.settimeout(1.0)
            try:
                while not self.stop.is_set():  # idle: reads the open packet and pings, answers nothing
                    try:
                        if not ws.recv():
                            break
                    except websocket.WebSocketTimeoutException:
                        continue
            except (websocket.WebSocketException, OSError):
                pass
            finally:
                self._count("", -1, "websockets")
                ws.shutdown()

    def upload(self, i: int) -> None:
        while not self.stop.is_set():
            try:
                sock = self._connect(i)
            except OSError:
                self._count("upload error")
                time.sleep(0.2)
                continue
            self._count("", 1, "uploads")
            try:
                sock.sendall(b"POST /api/v1/images HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                             b"boundary=b\r\nContent-Length: 1000\r\n\r\n--b\r\nabcde")
                sock.settimeout(1.0)
                head = b""
                while not self.stop.is_set() and not head:
                    try:
                        head = sock.recv(64) or b"closed"
                    except socket.timeout:
                        continue
                if head:
                    self._count(f"upload {head[9:12].decode(errors='replace') if head != b'closed' else 'closed'}")
            except OSError:
                self._count("upload error")
            finally:
                self._count("", -1, "uploads")
                sock.close()

    def start(self, websockets: int, uploads: int) -> None:
        self.threads = ([threading.Thread(target=self.websocket, args=(i,), daemon=True) for i in range(websockets)]
                        + [threading.Thread(target=self.upload, args=(i,), daemon=True) for i in range(uploads)])
        for t in self.threads:
            t.start()

    def end(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=10)


def stream_live(base_url: str, jpeg: bytes, seconds: float) -> dict:
    """One live client streaming for ``seconds``: its acknowledgement latencies and errors."""
    client = connect(base_url)
    latencies, errors, seq = [], 0, 0
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            t0 = time.perf_counter()
            answer = send(client, seq, jpeg)
            seq += 1
            if "error" in answer:
                errors += 1
            else:
                latencies.append((time.perf_counter() - t0) * 1000)
    finally:
        client.disconnect()
    return {"frames": len(latencies), "errors": errors, "ack_p50_ms": round(percentile(latencies, 50), 1),
            "ack_p95_ms": round(percentile(latencies, 95), 1)}


def new_live_client(base_url: str, jpeg: bytes) -> str:
    """Connects to /live, gets one frame answered, leaves: served, busy (refused) or failed."""
    sio = socketio.Client(reconnection=False)
    refused = []
    sio.on("busy", lambda data: refused.append(data), namespace="/live")
    try:
        sio.connect(base_url, namespaces=["/live"], transports=["websocket"], wait_timeout=5)
    except socketio.exceptions.ConnectionError as exc:
        return "busy" if refused or "busy" in str(exc) or "503" in str(exc) else "failed"
    try:
        answer = send(sio, 0, jpeg)
        return "failed" if "error" in answer else "served"
    except Exception:  # noqa: BLE001 - any failure of a connected client is what is counted
        return "failed"
    finally:
        sio.disconnect()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--websockets", type=int, default=200)
    parser.add_argument("--stalled", type=int, default=50)
    parser.add_argument("--addresses", type=int, default=8, help="loopback addresses the flood comes from")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    jpeg = one_face_640x480()
    addresses = [f"127.0.1.{i + 1}" for i in range(args.addresses)]
    results = {"machine": machine(), "websockets": args.websockets, "stalled_uploads": args.stalled,
               "flood_addresses": args.addresses}
    with gunicorn(env={"RATELIMIT_ENABLED": "false"}) as (base_url, _ready):
        url = urlsplit(base_url)
        pid = worker_pid(url.port)
        results["live_alone"] = stream_live(base_url, jpeg, args.seconds)
        results["before_flood"] = {"rss_mb": round(rss_mb(pid), 1), "threads": thread_count(pid)}
        flood = Flood(url.hostname, url.port, addresses)
        flood.start(args.websockets, args.stalled)
        time.sleep(5.0)  # let it build up

        live_result = {}
        streamer = threading.Thread(target=lambda: live_result.update(stream_live(base_url, jpeg, args.seconds)))
        streamer.start()
        latencies, failures = [], 0
        new_clients = {"served": 0, "busy": 0, "failed": 0}
        held, peak = [], {"rss_mb": 0.0, "threads": 0}
        next_sample = time.monotonic()
        while streamer.is_alive():
            t0 = time.perf_counter()
            try:
                requests.get(f"{base_url}/healthz", timeout=5).raise_for_status()
                latencies.append((time.perf_counter() - t0) * 1000)
            except requests.RequestException:
                failures += 1
            if time.monotonic() >= next_sample:
                with flood.lock:
                    held.append(dict(flood.open))
                peak = {"rss_mb": max(peak["rss_mb"], round(rss_mb(pid), 1)),
                        "threads": max(peak["threads"], thread_count(pid))}
                new_clients[new_live_client(base_url, jpeg)] += 1
                next_sample = time.monotonic() + 2.0
            time.sleep(0.5)
        streamer.join()
        flood.end()
    results.update({
        "held_open": {kind: {"median": statistics.median(h[kind] for h in held), "least": min(h[kind] for h in held)}
                      for kind in ("websockets", "uploads")},
        "flood_answers": dict(sorted(flood.answers.items())),
        "healthz_ok": len(latencies), "healthz_failed": failures,
        "healthz_p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "healthz_max_ms": round(max(latencies), 1) if latencies else None,
        "live_under_flood": live_result, "new_live_clients": new_clients, "during_flood_max": peak,
    })
    print(results)
    write_results(results, args.out)
    return results


if __name__ == "__main__":
    main()
