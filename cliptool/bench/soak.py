"""`make soak`: `cliptool serve` under steady load while index runs add and remove videos.

    python -m cliptool.bench.soak [--minutes 10] [--workers 6] [--churn-seconds 20] [--out bench-out/soak]

A real `cliptool serve` (a child process, the toy CLIP of data/toy-clip) over an index of short
generated clips. `--workers` threads, each with its own HTTP client, send requests back to back
(so at most that many at a time): text searches, picture searches (an uploaded PNG), byte
ranges of the videos, thumbnails, frames, the status and the library. Beside them, every
`--churn-seconds` a new clip is written into the indexed folder, the oldest is deleted once
the folder holds `--library` clips, and `cliptool index` runs on the folder (it adds the one,
prunes the other). A request for a video deleted by then may get 404: that is expected, and
counted apart. Every minute the server's RSS and open file descriptors are read from /proc and
the latencies of the requests answered in that minute summarised (p50, p99); at the end the
table and the count of each kind of error are printed.

It fails (exit 1) when a request fails other than by that expected 404 (another status, a
reset, a timeout), when an index run fails, or when RSS or the open descriptors grow without
bound: rising in every minute after the first (the warm-up: the model, the caches, the first
commits) and, over those minutes, by more than `RSS_SLACK_MB` (or `RSS_SLACK_SHARE` of the warm
RSS, whichever is more) or `FD_SLACK` descriptors. A process whose memory only settles (allocator
arenas, the search cache growing with each commit until a merge) has minutes without a rise; a
leak of a few MB per minute, which would take an always-on server to gigabytes in days, rises in
every one. Descriptors are bounded by the clients' connections (at most two per worker) plus
the stores' files, so a steady rise by more than `FD_SLACK` is a leak. It asserts nothing about
time.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cliptool.bench.corpus import REPO
from cliptool.bench.tables import cell, print_aligned

TOY_CONFIG = REPO / "data" / "toy-clip" / "config.json"
TOY_WEIGHTS = REPO / "data" / "toy-clip" / "weights.safetensors"
RSS_SLACK_MB = 32.0
RSS_SLACK_SHARE = 0.10
FD_SLACK = 16
EXPECTED_404 = "404 for a deleted video (expected)"
QUERIES = ["a red circle", "a blue square", "a green star", "a yellow triangle", "a red square on white",
           "stripes", "a circle", "a star on black", "a blue triangle", "a big yellow circle"]
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40),
           "white": (245, 245, 245), "black": (10, 10, 10), "grey": (128, 128, 128)}


@dataclass
class Tally:
    """What the workers and the index runs saw; shared between threads under `lock`."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    answered: list[tuple[float, float, str, str | None]] = field(default_factory=list)  # (end, ms, kind, error)
    errors: Counter[str] = field(default_factory=Counter)
    index_runs: list[tuple[float, float, int]] = field(default_factory=list)  # (end, seconds, exit code)
    deleted: set[str] = field(default_factory=set)  # ids of videos whose files were deleted
    videos: list[tuple[str, list[str], float]] = field(default_factory=list)  # (video id, thumbnails, duration)

    def note(self, kind: str, ms: float, error: str | None) -> None:
        with self.lock:
            self.answered.append((time.monotonic(), ms, kind, error))
            if error is not None:
                self.errors[error] += 1


def grows(samples: list[float], slack: float) -> bool:
    """Whether a measure grows without bound: after the first sample (the warm-up) it rose in
    every interval, and by more than `slack` in all."""
    after = samples[1:]
    if len(after) < 3:
        return False
    return all(b > a for a, b in zip(after, after[1:])) and after[-1] - after[0] > slack


def percentile(xs: list[float], q: float) -> float:
    """The q-quantile (0..1) of xs by nearest rank; NaN for none."""
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


def process_memory(pid: int) -> tuple[float, int]:
    """(RSS in MB, open file descriptors) of a process, from /proc."""
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def write_clip(path: Path, seed: int, seconds: float = 3.0, fps: int = 25, size: tuple[int, int] = (192, 144)) -> None:
    """A short H.264 clip of two shots, each a coloured shape on a coloured ground, drifting."""
    import av
    import cv2
    import numpy as np

    rng = random.Random(seed)
    names = list(COLOURS)
    w, h = size
    tmp = path.with_name(f".{path.name}.part.mp4")
    with av.open(str(tmp), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"preset": "veryfast", "crf": "23"}
        frames = int(seconds * fps)
        shots = [(rng.choice(names), rng.choice(names), rng.choice(["circle", "square"])) for _ in range(2)]
        for i in range(frames):
            ground, colour, shape = shots[0] if i < frames // 2 else shots[1]
            img = np.full((h, w, 3), COLOURS[ground], np.uint8)
            x, y, r = w // 3 + i % (w // 3), h // 2, h // 4
            if shape == "circle":
                cv2.circle(img, (x, y), r, COLOURS[colour], -1)
            else:
                cv2.rectangle(img, (x - r, y - r), (x + r, y + r), COLOURS[colour], -1)
            for packet in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in vs.encode(None):
            out.mux(packet)
    tmp.replace(path)


def picture_png(seed: int) -> bytes:
    """A small PNG of a coloured shape, to upload as a picture query."""
    import cv2
    import numpy as np

    rng = random.Random(seed)
    img = np.full((128, 128, 3), COLOURS[rng.choice(list(COLOURS))], np.uint8)
    cv2.circle(img, (64, 64), 30, COLOURS[rng.choice(list(COLOURS))], -1)
    return cv2.imencode(".png", img)[1].tobytes()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Soak:
    """One soak run: the folder, the index, the server, the workers and the churn."""

    def __init__(self, out: Path, minutes: float, workers: int, churn_seconds: float, library: int,
                 sample_seconds: float = 60.0) -> None:
        self.out = out
        self.minutes = minutes
        self.workers = workers
        self.churn_seconds = churn_seconds
        self.library = library
        self.sample_seconds = sample_seconds
        self.folder = out / "videos"
        self.index_dir = out / "index"
        self.env = {**os.environ, "CLIPTOOL_INDEX_DIR": str(self.index_dir), "HF_HUB_OFFLINE": "1"}
        self.tally = Tally()
        self.stop = threading.Event()
        self.clips: list[Path] = []
        self.serial = 0
        self.url = ""

    # -- the index and its churn ---------------------------------------------------------------
    def add_clip(self) -> None:
        self.serial += 1
        path = self.folder / f"clip-{self.serial:04d}.mp4"
        write_clip(path, seed=self.serial)
        self.clips.append(path)

    def index(self) -> int:
        """One `cliptool index` run on the folder; its exit code (its errors are counted)."""
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "cliptool", "index", str(self.folder), "--model", str(TOY_CONFIG),
                               "--pretrained", str(TOY_WEIGHTS)], env=self.env, capture_output=True, text=True)
        with self.tally.lock:
            self.tally.index_runs.append((time.monotonic(), time.monotonic() - t0, proc.returncode))
            if proc.returncode != 0:
                self.tally.errors[f"index run exit {proc.returncode}: {proc.stderr.strip()[-200:]}"] += 1
        return proc.returncode

    def churn(self) -> None:
        from cliptool.store import video_id_for

        while not self.stop.wait(self.churn_seconds):
            self.add_clip()
            if len(self.clips) > self.library:
                gone = self.clips.pop(0)
                with self.tally.lock:
                    self.tally.deleted.add(video_id_for(gone))
                gone.unlink()
            self.index()

    # -- the load ------------------------------------------------------------------------------
    def request(self, client: Any, rng: random.Random) -> None:
        import httpx

        with self.tally.lock:
            videos = list(self.tally.videos)
        roll = rng.random()
        video = rng.choice(videos) if videos else None
        files = None
        if roll < 0.40 or video is None:
            kind, method, url = "search", "GET", f"/api/search?q={rng.choice(QUERIES)}&top=12"
        elif roll < 0.50:
            kind, method, url = "picture", "POST", "/api/search?top=12"
            files = {"image": ("query.png", picture_png(rng.randrange(1000)), "image/png")}
        elif roll < 0.70:
            kind, method, url = "media", "GET", f"/media/{video[0]}"
        elif roll < 0.85:
            kind, method, url = "thumbnail", "GET", rng.choice(video[1]) if video[1] else f"/api/videos/{video[0]}"
        elif roll < 0.90:
            kind, method, url = "frame", "GET", f"/frame/{video[0]}?t={rng.uniform(0, max(0.0, video[2] - 0.1)):.2f}"
        elif roll < 0.95:
            kind, method, url = "status", "GET", "/api/status"
        else:
            kind, method, url = "library", "GET", "/api/library?limit=20&scenes=4"
        headers = {"Range": f"bytes={rng.randrange(4096)}-{rng.randrange(4096, 65536)}"} if kind == "media" else None
        t0 = time.perf_counter()
        error = None
        try:
            r = client.request(method, url, headers=headers, files=files)
            r.read()
            if r.status_code == 404 and video is not None and kind in ("media", "thumbnail", "frame"):
                with self.tally.lock:
                    error = EXPECTED_404 if video[0] in self.tally.deleted else f"404 on {kind}"
                    self.tally.videos = [v for v in self.tally.videos if v[0] != video[0]]  # learnt: gone
            elif r.status_code not in (200, 206):
                error = f"{r.status_code} on {kind}: {r.text[:120]}"
            elif kind in ("search", "picture"):
                self.learn(r.json()["results"])
        except httpx.TimeoutException:
            error = f"timeout on {kind}"
        except httpx.TransportError as exc:
            error = f"{type(exc).__name__} on {kind}"
        self.tally.note(kind, (time.perf_counter() - t0) * 1e3, error)

    def learn(self, results: list[dict[str, Any]]) -> None:
        """Keeps the videos that searches return (id, thumbnails, duration), the latest 40."""
        with self.tally.lock:
            known = {v[0]: v for v in self.tally.videos}
            for hit in results:
                known[hit["video_id"]] = (hit["video_id"], [u for u in hit.get("frames") or [] if u],
                                          float(hit.get("duration") or hit["end"]))
            self.tally.videos = list(known.values())[-40:]

    def worker(self, k: int) -> None:
        import httpx

        rng = random.Random(k)
        with httpx.Client(base_url=self.url, timeout=120) as client:
            while not self.stop.is_set():
                self.request(client, rng)

    # -- the run -------------------------------------------------------------------------------
    def start_server(self) -> subprocess.Popen:
        import httpx

        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen([sys.executable, "-m", "cliptool", "serve", "--port", str(port)], env=self.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"{self.url}/api/status", timeout=10).raise_for_status()
                return proc
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"cliptool serve did not start: {proc.stderr.read() if proc.stderr else ''}")
                time.sleep(0.2)

    def run(self) -> int:
        shutil.rmtree(self.out, ignore_errors=True)
        self.folder.mkdir(parents=True)
        for _ in range(self.library):
            self.add_clip()
        print(f"soak: indexing {self.library} clips into {self.index_dir}", file=sys.stderr, flush=True)
        if self.index() != 0:
            print(f"soak: the first index run failed: {self.tally.errors}", file=sys.stderr)
            return 1
        server = self.start_server()
        threads = [threading.Thread(target=self.worker, args=(k,), daemon=True) for k in range(self.workers)]
        threads.append(threading.Thread(target=self.churn, daemon=True))
        print(f"soak: {self.url}, {self.workers} workers, {self.minutes:g} minutes", file=sys.stderr, flush=True)
        rows: list[dict[str, Any]] = []
        try:
            for t in threads:
                t.start()
            started = time.monotonic()
            minutes = max(1, int(round(self.minutes * 60 / self.sample_seconds)))
            for m in range(1, minutes + 1):
                time.sleep(max(0.0, started + m * self.sample_seconds - time.monotonic()))
                if server.poll() is not None:
                    self.tally.errors[f"server exited with {server.returncode}"] += 1
                    break
                rows.append(self.sample(m, started, server.pid))
                print(f"soak: minute {m}: {rows[-1]}", file=sys.stderr, flush=True)
        finally:
            self.stop.set()
            for t in threads:
                t.join(timeout=180)
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        return self.report(rows)

    def sample(self, minute: int, started: float, pid: int) -> dict[str, Any]:
        rss, fds = process_memory(pid)
        since = started + (minute - 1) * self.sample_seconds
        with self.tally.lock:
            window = [(ms, kind, error) for end, ms, kind, error in self.tally.answered if end >= since]
            runs = sum(1 for end, _, _ in self.tally.index_runs if end >= since)
        every = [ms for ms, _, _ in window]
        search = [ms for ms, kind, _ in window if kind in ("search", "picture")]
        return {"minute": round(minute * self.sample_seconds / 60, 2), "requests": len(window),
                "p50_ms": percentile(every, 0.5), "p99_ms": percentile(every, 0.99),
                "search_p50_ms": percentile(search, 0.5), "search_p99_ms": percentile(search, 0.99),
                "rss_mb": round(rss, 1), "fds": fds, "index_runs": runs,
                "errors": sum(1 for _, _, e in window if e is not None and e != EXPECTED_404),
                "expected_404": sum(1 for _, _, e in window if e == EXPECTED_404)}

    def report(self, rows: list[dict[str, Any]]) -> int:
        table = [["minute", "requests", "p50 ms", "p99 ms", "search p50", "search p99", "RSS MB", "fds", "index runs",
                  "errors", "404 deleted"]]
        for r in rows:
            table.append([cell(r["minute"], "{:g}"), r["requests"], cell(r["p50_ms"], "{:.0f}"),
                          cell(r["p99_ms"], "{:.0f}"), cell(r["search_p50_ms"], "{:.0f}"),
                          cell(r["search_p99_ms"], "{:.0f}"), cell(r["rss_mb"], "{:.0f}"), r["fds"], r["index_runs"],
                          r["errors"], r["expected_404"]])
        print_aligned(table)
        with self.tally.lock:
            errors = Counter(self.tally.errors)
            kinds = Counter(kind for _, _, kind, _ in self.tally.answered)
        print("requests by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
        print("errors by kind: " + (", ".join(f"{k}: {n}" for k, n in errors.most_common()) or "none"))
        failures = [k for k in errors if k != EXPECTED_404]
        rss = [r["rss_mb"] for r in rows]
        fds = [float(r["fds"]) for r in rows]
        if rss and grows(rss, max(RSS_SLACK_MB, RSS_SLACK_SHARE * rss[min(1, len(rss) - 1)])):
            failures.append("RSS rose every minute after the first")
        if fds and grows(fds, FD_SLACK):
            failures.append("open file descriptors rose every minute after the first")
        if not rows:
            failures.append("no minute was measured")
        print("soak: " + ("FAILED: " + "; ".join(failures) if failures else "passed"))
        return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cliptool.bench.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", 10)))
    parser.add_argument("--workers", type=int, default=6, help="requests at a time")
    parser.add_argument("--churn-seconds", type=float, default=20.0, help="seconds between index runs")
    parser.add_argument("--library", type=int, default=6, help="clips kept in the indexed folder")
    parser.add_argument("--sample-seconds", type=float, default=60.0, help="seconds between samples")
    parser.add_argument("--out", type=Path, default=REPO / "bench-out" / "soak")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.workers < 1 or args.library < 2 or args.churn_seconds <= 0 or args.sample_seconds <= 0:
        parser.error("--minutes, --churn-seconds and --sample-seconds must be positive, --workers >= 1, --library >= 2")
    return Soak(args.out, args.minutes, args.workers, args.churn_seconds, args.library, args.sample_seconds).run()


if __name__ == "__main__":
    raise SystemExit(main())
