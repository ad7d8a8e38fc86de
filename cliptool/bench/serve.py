"""Benchmarks of `cliptool serve`, for `make bench` (cliptool.bench calls `bench_serve`).

- query_ms: GET /api/search (text, top 24) answered, median over `queries` different queries;
- page_ms: in headless Chromium (when one is installed), from submitting the search box to a
  rendered result page (every card in the grid and every thumbnail loaded or failed);
- rss_mb / peak_rss_mb: the server process's memory after all the queries (and its peak).

`thumbnail_cost` measures what making thumbnails adds to an index run: the JPEG encoding of
every sample frame (the frames are decoded anyway) against the run's time.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

WORDS = ["dog", "cat", "beach", "car", "night", "kitchen", "snow", "mountain", "city", "fireworks", "child",
         "birthday", "cake", "river", "forest", "bicycle", "rain", "sunset", "crowd", "guitar"]


def _queries(n: int) -> list[str]:
    return [f"a {WORDS[i % len(WORDS)]} and a {WORDS[(i * 7 + 3) % len(WORDS)]} {i}" for i in range(n)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory(pid: int) -> tuple[float, float]:
    rss = hwm = 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    except OSError:
        pass
    return rss, hwm


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else float("nan")


def bench_serve(index_dir: Path, queries: int = 1000, browser: bool = True, top: int = 24,
                page_queries: int = 20) -> dict[str, Any]:
    """Starts `cliptool serve` on the index in a child process and measures it (see module doc)."""
    import httpx

    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cliptool", "--index-dir", str(index_dir), "serve", "--port",
                             str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.perf_counter()
        with httpx.Client(base_url=url, timeout=120) as client:
            while True:
                try:
                    client.get("/api/status")
                    break
                except httpx.TransportError:
                    if proc.poll() is not None or time.perf_counter() - t0 > 120:
                        raise RuntimeError(f"cliptool serve did not start: {proc.stderr.read() if proc.stderr else ''}")
                    time.sleep(0.1)
            first = time.perf_counter()
            client.get("/api/search", params={"q": "warm up", "top": top}).raise_for_status()
            first_ms = (time.perf_counter() - first) * 1e3
            rss_warm, _ = _memory(proc.pid)
            times = []
            for q in _queries(queries):
                t = time.perf_counter()
                client.get("/api/search", params={"q": q, "top": top}).raise_for_status()
                times.append((time.perf_counter() - t) * 1e3)
            rss, hwm = _memory(proc.pid)
        result: dict[str, Any] = {"queries": queries, "top": top, "first_query_ms": first_ms,
                                  "query_ms": _median(times), "query_p95_ms": sorted(times)[int(0.95 * (len(times) - 1))],
                                  "rss_warm_mb": rss_warm, "rss_mb": rss, "peak_rss_mb": hwm}
        if browser:
            result.update(_page_times(url, page_queries))
        return result
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


_SUBMIT_AND_WAIT = """
const done = arguments[arguments.length - 1];
const t0 = performance.now();
document.getElementById('q').value = arguments[0];
document.getElementById('search-form').requestSubmit();
const check = () => {
  const s = document.getElementById('summary').textContent;
  const cards = document.querySelectorAll('#results .card');
  if (s.startsWith('searching') || !cards.length) { setTimeout(check, 2); return; }
  const imgs = [...document.querySelectorAll('#results img')];
  if (imgs.every((i) => i.complete)) done(performance.now() - t0); else setTimeout(check, 2);
};
check();
"""


def _page_times(url: str, n: int) -> dict[str, Any]:
    driver = chromium_driver()
    if driver is None:
        return {"page_ms": None, "page_note": "no chromium/chromedriver found"}
    try:
        driver.set_script_timeout(60)
        driver.get(url + "/")
        times = [float(driver.execute_async_script(_SUBMIT_AND_WAIT, q)) for q in _queries(n + 1)[1:]]
        return {"page_ms": _median(times), "page_runs": n}
    finally:
        driver.quit()


def chromium_driver(width: int = 1280, height: int = 900) -> Any:
    """Headless Chromium through selenium (Debian's chromium and chromium-driver), or None."""
    import shutil

    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    driver_exe = next((shutil.which(n) for n in ("chromedriver", "chromium-driver") if shutil.which(n)), None)
    if browser is None or driver_exe is None:
        return None
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--mute-audio",
                f"--window-size={width},{height}", "--autoplay-policy=no-user-gesture-required",
                "--no-first-run", "--disable-extensions", "--disable-background-networking"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver_exe), options=opts)


def thumbnail_cost(video: Path, index_seconds: float, samples_per_scene: int = 3, scenes: int | None = None) -> dict[str, Any]:
    """What writing thumbnails adds to an index run of `video` that took `index_seconds`: the
    JPEG encoding (scale to 320 px + encode) of every sample frame, measured on real frames of
    the video at its own resolution, plus writing the files."""
    import tempfile

    from cliptool.analysis import thumbnails
    from cliptool.media.decode import VideoReader, to_rgb

    frames = []
    with VideoReader(Path(video)) as reader:
        info = reader.info
        for i, frame in enumerate(reader.frames()):
            if i % 10 == 0:
                frames.append(to_rgb(frame.av_frame))
            if len(frames) >= 12:
                break
    t = time.perf_counter()
    blobs = [thumbnails.encode(f) for f in frames]
    per_frame = (time.perf_counter() - t) / len(frames)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        for i, b in enumerate(blobs):
            thumbnails.write_atomic(Path(tmp) / "v" / f"{i:05d}-0.jpg", b)
        per_write = (time.perf_counter() - t) / len(blobs)
    n = (scenes or max(1, round(info.duration / 10))) * samples_per_scene
    cost = n * (per_frame + per_write)
    return {"video": str(video), "size": f"{info.width}x{info.height}", "sample_frames": n,
            "encode_ms_per_frame": per_frame * 1e3, "write_ms_per_frame": per_write * 1e3,
            "bytes_per_thumbnail": sum(map(len, blobs)) / len(blobs), "thumbnail_s": cost,
            "index_s": index_seconds, "share_of_index_run": cost / index_seconds if index_seconds else None}
