"""Load benchmark of the live stream: N simulated browsers streaming frames and audio over /ws/stream.

    python bench/bench_webapp.py --models saved_models --clients 20 --duration 60

Starts ``python -m webapp`` on a free port (or uses ``--url`` of a running server), connects the
clients (asyncio + websockets), each sending 320x240 JPEG frames at ``--fps`` and 16 kHz int16
audio windows every ``--chunk-ms``, exactly like the page. Reports messages/s, round-trip
percentiles (send -> reply carrying the same id), dropped frames, errors and the server's peak
memory (psutil RSS); writes ``bench/results/webapp.json`` and ``webapp.md``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from core.cli import add_verbose_flag, quiet_tensorflow  # noqa: E402
from core.io import atomic_write, write_json  # noqa: E402
from tests.synth_media import face_image, jpeg_bytes, voice  # noqa: E402
from webapp.stream import BINARY_HEADER  # noqa: E402

FRAME_SIZE = (320, 240)   # what the page sends
SAMPLE_RATE = 16_000
RESULTS_DIR = REPO_ROOT / "bench" / "results"


@dataclass
class ClientStats:
    sent_frames: int = 0
    sent_audio: int = 0
    results_frame: int = 0
    results_audio: int = 0
    errors: int = 0
    error_messages: list[str] = field(default_factory=list)
    rtt_frame: list[float] = field(default_factory=list)
    rtt_audio: list[float] = field(default_factory=list)
    rtt_voice_estimate: list[float] = field(default_factory=list)
    frames_dropped: int = 0
    connected: bool = False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_media(n_frames: int = 16) -> tuple[list[bytes], np.ndarray]:
    import cv2

    frames = [jpeg_bytes(cv2.resize(face_image(shift=int(40 * np.sin(2 * np.pi * i / n_frames))), FRAME_SIZE,
                                    interpolation=cv2.INTER_AREA), 70) for i in range(n_frames)]
    audio = np.concatenate([voice(2.0, f0=120 + 20 * i, seed=i) for i in range(5)])
    return frames, (np.clip(audio, -1, 1) * 32767).astype("<i2")


async def run_client(url: str, index: int, args, frames: list[bytes], pcm: np.ndarray, stop_at: float,
                     stats: ClientStats) -> None:
    import websockets

    sent: dict[int, tuple[str, float]] = {}
    next_id = index * 10_000_000
    chunk = int(SAMPLE_RATE * args.chunk_ms / 1000)
    try:
        async with websockets.connect(url, max_size=4 * 1024 * 1024, open_timeout=30, compression=None) as ws:
            hello = json.loads(await ws.recv())
            if hello.get("type") != "hello":
                raise RuntimeError(f"unexpected first message {hello}")
            stats.connected = True

            async def receiver() -> None:
                async for raw in ws:
                    msg = json.loads(raw)
                    now = time.perf_counter()
                    if msg["type"] == "result":
                        kind, at = sent.pop(msg["id"], (None, None))
                        if at is not None:
                            (stats.rtt_frame if kind == "frame" else stats.rtt_audio).append(1000 * (now - at))
                            if kind == "audio" and msg.get("predicted"):
                                stats.rtt_voice_estimate.append(1000 * (now - at))
                        if msg["kind"] == "frame":
                            stats.results_frame += 1
                        else:
                            stats.results_audio += 1
                        stats.frames_dropped = msg["stats"]["frames_dropped"]
                    elif msg["type"] == "error":
                        stats.errors += 1
                        if len(stats.error_messages) < 5:
                            stats.error_messages.append(f"{msg['code']}: {msg['detail']}")

            async def send(kind_code: int, kind: str, payload: bytes) -> None:
                nonlocal next_id
                next_id += 1
                sent[next_id] = (kind, time.perf_counter())
                await ws.send(BINARY_HEADER.pack(kind_code, next_id, 0.0) + payload)

            async def paced(period: float, step) -> None:
                due = time.perf_counter()
                while due < stop_at:  # a fixed schedule, like a camera: late sends do not slow the rate
                    await step()
                    due += period
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))

            frame_index = [index]
            audio_pos = [(index * 7919) % (pcm.size - chunk)]

            async def send_frame() -> None:
                await send(1, "frame", frames[frame_index[0] % len(frames)])
                stats.sent_frames += 1
                frame_index[0] += 1

            async def send_audio() -> None:
                if audio_pos[0] + chunk > pcm.size:
                    audio_pos[0] = 0
                await send(2, "audio", pcm[audio_pos[0]:audio_pos[0] + chunk].tobytes())
                stats.sent_audio += 1
                audio_pos[0] += chunk

            await asyncio.sleep(random.uniform(0, 1.0))  # browsers do not start in lockstep
            recv_task = asyncio.create_task(receiver())
            await asyncio.gather(paced(1.0 / args.fps, send_frame), paced(args.chunk_ms / 1000, send_audio))
            await asyncio.sleep(2.0)  # let answers in flight arrive
            recv_task.cancel()
    except Exception as exc:  # a refused or broken connection is an error of the run, not a crash of it
        stats.errors += 1
        if len(stats.error_messages) < 5:
            stats.error_messages.append(f"{type(exc).__name__}: {exc}")


class MemoryWatcher:
    """Peak RSS and mean CPU of the server process, sampled in a thread."""

    def __init__(self, pid: int | None, interval: float = 0.25) -> None:
        self.pid, self.interval, self.peak, self.cpu = pid, interval, 0, []
        self.cpu_seconds: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        proc = psutil.Process(self.pid)
        proc.cpu_percent()
        start = proc.cpu_times()
        while not self._stop.wait(self.interval):
            try:
                self.peak = max(self.peak, proc.memory_info().rss)
                self.cpu.append(proc.cpu_percent())
                now = proc.cpu_times()
                self.cpu_seconds = (now.user + now.system) - (start.user + start.system)
            except psutil.Error:
                return

    def __enter__(self) -> "MemoryWatcher":
        if self.pid:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()


def start_server(models: str, port: int, max_connections: int, log_path: Path) -> subprocess.Popen:
    import urllib.request

    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "webapp", "--host", "127.0.0.1", "--port", str(port),
                             "--models", models, "--max-connections", str(max_connections),
                             "--log-level", "warning"],
                            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 300  # model loading and warm-up
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not answer /api/health in 300 s")


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "mean": None}
    arr = np.asarray(values)
    return {"p50": round(float(np.percentile(arr, 50)), 1), "p95": round(float(np.percentile(arr, 95)), 1),
            "p99": round(float(np.percentile(arr, 99)), 1), "mean": round(float(arr.mean()), 1)}


async def run_clients(url: str, args) -> tuple[list[ClientStats], float]:
    frames, pcm = make_media()
    stats = [ClientStats() for _ in range(args.clients)]
    start = time.perf_counter()
    stop_at = start + args.duration
    await asyncio.gather(*(run_client(url, i, args, frames, pcm, stop_at, s) for i, s in enumerate(stats)))
    return stats, time.perf_counter() - start


def summarize(stats: list[ClientStats], elapsed: float, args, health: dict, peak_rss: int,
              cpu: list[float], cpu_seconds: float | None, load_before: tuple[float, ...],
              load_after: tuple[float, ...]) -> dict:
    sent = sum(s.sent_frames + s.sent_audio for s in stats)
    results = sum(s.results_frame + s.results_audio for s in stats)
    rtt_all = [r for s in stats for r in s.rtt_frame + s.rtt_audio]
    return {
        "clients": args.clients, "connected": sum(s.connected for s in stats), "duration_s": args.duration,
        "elapsed_s": round(elapsed, 1),
        "fps_per_client": args.fps, "audio_chunk_ms": args.chunk_ms,
        "messages_sent": sent, "messages_sent_per_s": round(sent / args.duration, 1),
        "results": results, "results_per_s": round(results / args.duration, 1),
        "frames_sent": sum(s.sent_frames for s in stats), "frame_results": sum(s.results_frame for s in stats),
        "frames_dropped": sum(s.frames_dropped for s in stats),
        "audio_sent": sum(s.sent_audio for s in stats), "audio_results": sum(s.results_audio for s in stats),
        "rtt_ms": percentiles(rtt_all), "rtt_frame_ms": percentiles([r for s in stats for r in s.rtt_frame]),
        "rtt_audio_ms": percentiles([r for s in stats for r in s.rtt_audio]),
        "rtt_voice_estimate_ms": percentiles([r for s in stats for r in s.rtt_voice_estimate]),
        "voice_estimates": sum(len(s.rtt_voice_estimate) for s in stats),
        "errors": sum(s.errors for s in stats),
        "error_examples": sorted({m for s in stats for m in s.error_messages})[:10],
        "server_peak_rss_mb": round(peak_rss / 2**20, 1) if peak_rss else None,
        "server_cpu_percent_mean": round(float(np.mean(cpu)), 1) if cpu else None,
        "server_cpu_seconds": round(cpu_seconds, 1) if cpu_seconds is not None else None,
        # CPU the server spent per model prediction: a figure the other jobs on a shared machine distort less.
        "server_cpu_ms_per_prediction": round(1000 * cpu_seconds / max(1, sum(s.results_frame for s in stats)
                                                                       + sum(len(s.rtt_voice_estimate) for s in stats)),
                                              1) if cpu_seconds else None,
        "models": {k: v["loaded"] for k, v in health.get("models", {}).items()},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in load_after]},
        "models_dir": None if args.url else args.models,
        "target": f"--url {args.url}" if args.url else f"--models {args.models}",
    }


def markdown(r: dict) -> str:
    def row(name: str, p: dict) -> str:
        return f"| {name} | {p['p50']} | {p['p95']} | {p['p99']} | {p['mean']} |"

    return "\n".join([
        "# Web app load benchmark",
        "",
        f"`python bench/bench_webapp.py {r['target']} --clients {r['clients']} "
        f"--duration {r['duration_s']:g}`: {r['clients']} simulated browsers, each streaming "
        f"{r['fps_per_client']} JPEG frames/s (320x240) and a 16 kHz int16 audio window every "
        f"{r['audio_chunk_ms']} ms over `/ws/stream`, on a {r['machine']['cpus']}-core machine "
        f"shared with other jobs (1/5/15-min load average before the run {r['machine']['load_average_before']}, "
        f"after {r['machine']['load_average_after']}; the benchmark itself adds about 3). "
        f"Models loaded: {', '.join(k for k, v in r['models'].items() if v) or 'none'}.",
        "",
        "| metric | value |", "|---|---|",
        f"| clients connected | {r['connected']} / {r['clients']} |",
        f"| messages sent / s | {r['messages_sent_per_s']} |",
        f"| results received / s | {r['results_per_s']} |",
        f"| frames sent / answered / dropped as stale | {r['frames_sent']} / {r['frame_results']} / "
        f"{r['frames_dropped']} |",
        f"| audio windows sent / answered | {r['audio_sent']} / {r['audio_results']} |",
        f"| errors | {r['errors']} |",
        f"| server peak memory (RSS) | {r['server_peak_rss_mb']} MB |",
        f"| server CPU (mean, 100 % = one core) | {r['server_cpu_percent_mean']} % |",
        f"| server CPU time per prediction (face frame or voice estimate) | "
        f"{r['server_cpu_ms_per_prediction']} ms |",
        "",
        "Round trip (ms), send to the reply carrying the same id:",
        "",
        "| messages | p50 | p95 | p99 | mean |", "|---|---|---|---|---|",
        row("all", r["rtt_ms"]), row("frames (faces predicted)", r["rtt_frame_ms"]),
        row("audio (all replies)", r["rtt_audio_ms"]),
        row(f"audio with a new voice estimate ({r['voice_estimates']})", r["rtt_voice_estimate_ms"]),
        "",
        "Frames the server has no time for are replaced by newer ones (dropped, not queued), so the",
        "answered frame rate adapts to the CPU available while round trips stay bounded. Every audio",
        "window is answered; at most one voice estimate per client per second is computed, the other",
        "windows are answered at once with the current estimate.",
        "",
    ] + ([f"Errors seen: {', '.join(r['error_examples'])}", ""] if r["error_examples"] else []))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python bench/bench_webapp.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="saved_models", help="models folder for the server it starts")
    parser.add_argument("--url", default=None, help="ws://host:port/ws/stream of a running server instead")
    parser.add_argument("--pid", type=int, default=None, help="pid of that server, for its memory")
    parser.add_argument("--clients", type=int, default=20, help="simulated browsers (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of streaming")
    parser.add_argument("--fps", type=float, default=5.0, help="frames per second per client")
    parser.add_argument("--chunk-ms", type=int, default=250, help="audio window length and period")
    parser.add_argument("--out", default=str(RESULTS_DIR / "webapp"), help="writes OUT.json and OUT.md")
    add_verbose_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    import urllib.request

    server = None
    load_before = os.getloadavg()
    if args.url:
        url, pid = args.url, args.pid
    else:
        port = free_port()
        log_path = Path(args.out).with_suffix(".server.log.tmp")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        server = start_server(args.models, port, max(64, args.clients + 4), log_path)
        url, pid = f"ws://127.0.0.1:{port}/ws/stream", server.pid
    http = url.replace("ws://", "http://").replace("wss://", "https://").rsplit("/ws/", 1)[0]
    try:
        with urllib.request.urlopen(f"{http}/api/health", timeout=10) as r:
            health = json.load(r)
        print(f"server at {http}: models {', '.join(k for k, v in health['models'].items() if v['loaded'])}")
        with MemoryWatcher(pid) as watcher:
            stats, elapsed = asyncio.run(run_clients(url, args))
        report = summarize(stats, elapsed, args, health, watcher.peak, watcher.cpu, watcher.cpu_seconds,
                           load_before, os.getloadavg())
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    out = Path(args.out)
    write_json(out.with_suffix(".json"), report)
    atomic_write(out.with_suffix(".md"), lambda tmp: Path(tmp).write_text(markdown(report)))
    print(markdown(report))
    return 0 if report["errors"] == 0 and report["connected"] == args.clients else 1


if __name__ == "__main__":
    quiet_tensorflow()
    sys.exit(main())
