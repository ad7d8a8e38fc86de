"""Remakes data/serve-screenshot.png, the README's picture of `cliptool serve`: the demo's own
sample clips indexed with the toy CLIP of data/toy-clip, served, searched for "a yellow star"
in headless Chromium (Debian's chromium + chromium-driver, through selenium), the best result
playing inside its scene and the grid of results below.

    python data/screenshot.py                       # writes data/serve-screenshot.png
    python data/screenshot.py -o /tmp/shot.png --width 390 --height 844 --work /tmp/shot-work
    python data/screenshot.py --said "window kitchen"  # writes docs/words-screenshot.png

With --said the clips are two of data/talking_videos.py's (Festival speech, a word drawn on
screen), indexed with `--words subtitles,speech,screen`, and the page shows a `--said` hit
playing with the video's transcript beside the player.

The clips and the index are made in --work (a temporary folder unless given; kept then, and
reused on the next run). The picture is written as a palette PNG when that is much smaller.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def prepare(work: Path) -> Path:
    """The demo's clips in work/samples, indexed with the toy CLIP into work/index."""
    samples, index_dir = work / "samples", work / "index"
    subprocess.run([sys.executable, str(HERE / "make_samples.py"), str(samples)], check=True, stdout=subprocess.DEVNULL)
    toy = HERE / "toy-clip"
    subprocess.run([sys.executable, "-m", "cliptool", "--index-dir", str(index_dir), "index", str(samples),
                    "--model", str(toy / "config.json"), "--pretrained", str(toy / "weights.safetensors")],
                   check=True, stdout=subprocess.DEVNULL)
    return index_dir


def prepare_talking(work: Path) -> Path:
    """Two talking clips (data/talking_videos.py: sentences said by Festival, a word drawn on
    screen) in work/talking, indexed with the toy CLIP and every words source into work/index."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("talking_videos", HERE / "talking_videos.py")
    tv = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["talking_videos"] = tv  # its dataclasses look their module up
    spec.loader.exec_module(tv)  # type: ignore[union-attr]
    if not tv.festival_available():
        raise SystemExit("--said needs Festival with the us-slt-hts voice (make install-tools)")
    folder, cache, index_dir = work / "talking", work / "speech-cache", work / "index"
    plans = {"kitchen.mp4": ([(tv.SENTENCES[1], 1.0), (tv.SENTENCES[7], 5.0), (tv.SENTENCES[12], 9.0)],
                             ("KITCHEN", 0.5, 4.0)),
             "station.mp4": ([(tv.SENTENCES[6], 1.0), (tv.SENTENCES[16], 5.0)], ("MUSEUM", 5.0, 8.0))}
    for seed, (name, (said, (word, start, end))) in enumerate(plans.items()):
        seconds = max(t for _, t in said) + 4.0
        audio, _ = tv.mix_speech(seconds, [(text, t, True) for text, t in said], tv.noise(seconds, seed=seed), cache)
        tv.write_clip(folder / name, seconds, audio, [(word, start, end, 40, 40, 40, seed)],
                      width=640, height=360, fps=25, seed=seed)
    toy = HERE / "toy-clip"
    subprocess.run([sys.executable, "-m", "cliptool", "--index-dir", str(index_dir), "index", str(folder),
                    "--words", "subtitles,speech,screen",
                    "--model", str(toy / "config.json"), "--pretrained", str(toy / "weights.safetensors")],
                   check=True, stdout=subprocess.DEVNULL)
    return index_dir


def start_server(index_dir: Path) -> tuple[str, object]:
    """`cliptool serve` on a free loopback port, in a thread: (its address, the server)."""
    import uvicorn

    from cliptool.serve import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(index_dir, host="127.0.0.1", port=port)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise SystemExit("the server did not start")
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server


def wait(driver, script: str, timeout: float = 30) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(script)
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for: {script}")
        time.sleep(0.05)


def shoot(url: str, query: str, out: Path, width: int, height: int, said: str | None = None) -> None:
    from urllib.parse import urlencode

    from cliptool.bench.serve import chromium_driver

    driver = chromium_driver(width, height)
    if driver is None:
        raise SystemExit("no chromium and chromedriver found (apt-get install chromium chromium-driver)")
    try:
        params = {"said": said, "top": 12} if said else {"q": query, "top": 12}
        driver.get(f"{url}/?{urlencode(params)}")
        wait(driver, "const i = [...document.querySelectorAll('#results .card img')];"
                     "return i.length && i.every(x => x.complete && x.naturalWidth > 0)")
        driver.execute_script("document.querySelector('#results .card').click()")
        # the best result plays from its best moment (or, a format this browser cannot play,
        # its frames are shown); stopped a moment later, so the picture is the same every time
        wait(driver, "const v = document.getElementById('video'), f = document.getElementById('frames-img');"
                     "if (!document.getElementById('frames-view').hidden) return f.complete && f.naturalWidth > 0;"
                     "return v.readyState >= 2 && v.currentTime > 0")
        if said:
            wait(driver, "return document.querySelectorAll('#transcript li').length > 0")
        driver.execute_script("const v = document.getElementById('video'); if (!v.hidden) v.pause();"
                              "document.getElementById('filters').open = false;"  # folded: more room for the grid
                              "document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0)")
        time.sleep(0.5)
        driver.save_screenshot(str(out))
    finally:
        driver.quit()


def shrink(path: Path) -> None:
    """Writes the picture as a 256-colour PNG when that is under 70% of the size."""
    from PIL import Image

    before = path.stat().st_size
    small = path.with_suffix(".small.png")
    with Image.open(path) as img:
        img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE) \
            .save(small, optimize=True)
    if small.stat().st_size < 0.7 * before:
        small.replace(path)
    else:
        small.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=Path, help="the picture [data/serve-screenshot.png; with --said "
                        "docs/words-screenshot.png]")
    parser.add_argument("--work", type=Path, help="where the clips and the index go (default: a temporary folder)")
    parser.add_argument("--query", default="a yellow star")
    parser.add_argument("--said", help="words said: a transcript hit on talking clips instead of the demo")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1280)
    args = parser.parse_args()
    if args.out is None:
        args.out = HERE.parent / "docs" / "words-screenshot.png" if args.said else HERE / "serve-screenshot.png"
    with tempfile.TemporaryDirectory(prefix="cliptool-screenshot-") as tmp:
        work = args.work or Path(tmp)
        index_dir = prepare_talking(work) if args.said else prepare(work)
        url, server = start_server(index_dir)
        try:
            shoot(url, args.query, args.out, args.width, args.height, args.said)
        finally:
            server.should_exit = True  # type: ignore[attr-defined]
    shrink(args.out)
    print(f"{args.out}: {args.out.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
