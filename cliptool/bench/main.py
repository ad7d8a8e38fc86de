"""`make bench`: indexing and search speed on a fixed corpus built from ../shared/testdata.

    python -m cliptool.bench [--quick] [--out bench-out] [--repeat N]

Builds (once, cached under bench-out/corpus/) 720p and 1080p H.264 files by looping and scaling
real clips, then measures in this one run, on this machine:

* bare decode time of each file (PyAV, 2 threads, no conversion; and `ffmpeg -threads 2` when
  on PATH) and `cliptool index` wall time on it (a fresh process, default settings, a new index
  each run) -> real-time factor and ratio to bare decode; the same for the whole corpus in one
  run; and the very first run, which exports the int8 image tower and the text encoder into
  the (emptied) cache;
* the seeds' approaches as small faithful baselines: a per-frame scan (every frame through the
  model one at a time with open_clip's PIL preprocessing; run on a prefix and extrapolated per
  frame) and detect-then-seek (a full PySceneDetect pass, then a seek to each of 3 frames per
  scene, each embedded alone);
* moment recall (`bench_recall`): generated 30 s single-shot toy videos (data/toy_videos.py) in
  which a shape appears once for D = 0.5, 1, 2, 4 s, and videos with two shapes, indexed with
  the toy CLIP (data/toy-clip) with today's fixed samples and with samples that follow the
  content; found = rank 1 is the video and its best time lies inside the appearance; samples
  embedded per minute; image search by frames of the shared videos (rank 1 a scene holding
  the frame's time); and the corpus's index time with each sampling, alternately in one run
  (`--recall-only` runs only these);
* `cliptool index --ray` on a two-node Ray cluster on this machine against a local run, per
  corpus file and for the corpus plus a few short clips in one run (`--ray-only`);
* cold `cliptool search` (new process) and warm query latency on a synthetic 100k-scene index
  built through the store API; the same for a CLIP text tower (ViT-B-32) and a Hugging Face one
  (XLM-RoBERTa base, random weights, local folder) with this cliptool's ONNX text path and with
  the cliptool of an earlier commit (`--text-baseline`, the numpy encoder), alternately in this
  run (`--text-only` runs only these); `cliptool --help` latency; peak RSS of indexing and of a cache
  rebuild; the cosine of int8 and bf16 to fp32 embeddings on real frames and top-10 overlap;
* serving from Milvus (`bench_milvus`): Milvus Lite's build time and query latency against the
  FAISS cache on the synthetic indexes of `--milvus-sizes` scenes, and whether their top 10
  agree (`--milvus-only` runs only these).

Prints one table and writes the figures to bench-out/bench.json. It asserts nothing about time.
Timings are medians over repeated runs (machines are shared and noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "testdata"
SOURCES = [  # looped in this order; each clip is played in full, so its own cuts are kept
    "scenes/testvideo.mp4",
    "content/cockatoo.mp4",
    "scenes/goldeneye-vfr-drop3.mp4",
    "content/movie-hello.mp4",
]
FPS = 30


# -- corpus -------------------------------------------------------------------------------------
def _source_frames(width: int, height: int):
    """Frames of the source clips, scaled to width x height yuv420p, looping forever."""
    import av

    paths = [SHARED / s for s in SOURCES if (SHARED / s).is_file()]
    if not paths:
        raise SystemExit(f"bench: no source clips under {SHARED}")
    while True:
        for p in paths:
            with av.open(str(p)) as c:
                for frame in c.decode(video=0):
                    yield frame.reformat(width=width, height=height, format="yuv420p")


def build_clip(path: Path, width: int, height: int, seconds: float, crf: int = 23) -> Path:
    """A looped, scaled H.264 file (cached: built only when missing)."""
    import av

    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    n = int(round(seconds * FPS))
    with av.open(str(tmp), mode="w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        stream.codec_context.time_base = Fraction(1, FPS)
        for i, frame in zip(range(n), _source_frames(width, height)):
            frame.pts = i
            frame.time_base = Fraction(1, FPS)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    tmp.replace(path)
    return path


def build_corpus(out: Path, quick: bool) -> dict[str, Path]:
    seconds = 40 if quick else 180
    corpus = out / "corpus"
    return {
        "720p": build_clip(corpus / f"loop-720p-{seconds}s.mp4", 1280, 720, seconds),
        "1080p": build_clip(corpus / f"loop-1080p-{seconds}s.mp4", 1920, 1080, seconds),
    }


def build_checkpoint(out: Path) -> Path:
    """ViT-B-32 with seeded random weights (no model hub here): real size, real speed."""
    ckpt = out / "vitb32-random.pt"
    if not ckpt.is_file():
        code = (
            "import open_clip, torch, sys; torch.manual_seed(0); "
            "m = open_clip.create_model('ViT-B-32', pretrained=None); "
            "torch.save(m.state_dict(), sys.argv[1])"
        )
        tmp = ckpt.with_suffix(".tmp")
        subprocess.run([sys.executable, "-c", code, str(tmp)], check=True)
        tmp.replace(ckpt)
    return ckpt



# -- measuring helpers ----------------------------------------------------------------------------
def run_child(cmd: list[str], env: dict[str, str] | None = None, quiet: bool = True,
              capture: Path | None = None) -> tuple[float, int, int]:
    """Runs a command; returns (wall seconds, peak RSS in MB, exit code); RSS from wait4.

    Started with posix_spawn (no fork): a forked child's peak RSS would count the pages it
    shared with this (large) process until its exec. CPU seconds (user + system, all threads)
    are kept in LAST_CPU[0]; stdout goes to `capture` when given.
    """
    import tempfile

    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    with tempfile.NamedTemporaryFile(prefix="bench-stderr-", delete=False) as err:
        err_path = err.name
    actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]
    if capture is not None:
        actions.append((os.POSIX_SPAWN_OPEN, 1, str(capture), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
    elif quiet:
        actions.append((os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0))
    if quiet:
        actions.append((os.POSIX_SPAWN_OPEN, 2, err_path, os.O_WRONLY | os.O_TRUNC, 0))
    exe = shutil.which(cmd[0]) or cmd[0]
    t0 = time.perf_counter()
    pid = os.posix_spawn(exe, [str(c) for c in cmd], full_env, file_actions=actions)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    LAST_CPU[0] = usage.ru_utime + usage.ru_stime
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = Path(err_path).read_text(errors="replace")[-2000:]
        print(f"bench: {' '.join(map(str, cmd))} exited {code}:\n{tail}", file=sys.stderr)
    os.unlink(err_path)
    return wall, usage.ru_maxrss // 1024, code


LAST_CPU = [0.0]


def compile_code(code: Path) -> None:
    """Byte-compiles the cliptool package in `code`, as installing it does, so that the processes
    measured do not compile it from source each time where PYTHONDONTWRITEBYTECODE is set (it
    is on the machines this was built on: 0.2 s of every cold search)."""
    import compileall

    compileall.compile_dir(str(code / "cliptool"), quiet=1)


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def video_facts(path: Path) -> dict[str, float]:
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames = s.frames or 0
        duration = float(s.duration * s.time_base) if s.duration else c.duration / 1e6
        return {"width": s.codec_context.width, "height": s.codec_context.height, "frames": frames,
                "duration": duration, "mbps": path.stat().st_size * 8 / duration / 1e6}


def bare_decode_pyav(path: Path) -> tuple[float, float]:
    """Decode every frame with PyAV, 2 threads, no conversion (the floor for any indexer).
    Returns (wall, CPU) seconds."""
    import av

    c0 = time.process_time()
    t0 = time.perf_counter()
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        s.thread_count = 2
        for _ in c.decode(s):
            pass
    return time.perf_counter() - t0, time.process_time() - c0


def bare_decode_ffmpeg(path: Path) -> float | None:
    exe = shutil.which("ffmpeg")
    if exe is None:
        return None
    t0 = time.perf_counter()
    subprocess.run([exe, "-v", "error", "-threads", "2", "-i", str(path), "-f", "null", "-"], check=True)
    return time.perf_counter() - t0


# -- the seeds' approaches, as small faithful baselines ------------------------------------------
_BASELINE = r"""
import sys, time, json
t0 = time.perf_counter()
import av, torch, open_clip
from PIL import Image
mode, path, ckpt, arg = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=ckpt)
model.eval()
load = time.perf_counter() - t0

def embed(frame):
    with torch.inference_mode():
        x = preprocess(frame.to_image()).unsqueeze(0)          # PIL path, one frame at a time
        v = model.encode_image(x)
        return (v / v.norm(dim=-1, keepdim=True))[0].numpy()

if mode == "scan":  # every frame through the model, one at a time; a prefix of `arg` frames
    t1 = time.perf_counter(); n = 0
    with av.open(path) as c:
        for frame in c.decode(video=0):
            embed(frame); n += 1
            if n >= arg:
                break
    per_frame = (time.perf_counter() - t1) / n
    print(json.dumps({"load": load, "per_frame": per_frame, "frames": n}))
else:  # detect-then-seek: a full PySceneDetect pass, then seek to 3 frames per scene
    from scenedetect import ContentDetector, detect
    t1 = time.perf_counter()
    scenes = detect(path, ContentDetector())
    t_detect = time.perf_counter() - t1
    with av.open(path) as c:
        s = c.streams.video[0]
        fps = float(s.average_rate)
        if not scenes:
            total = s.frames or int(float(s.duration * s.time_base) * fps)
            spans = [(0, total)]
        else:
            spans = [(a.frame_num, b.frame_num) for a, b in scenes]
        n = 0
        for start, end in spans:
            for i in range(3):
                target = start + (i + 1) * (end - start) // 4
                t = target / fps
                c.seek(int(t / s.time_base) + (s.start_time or 0), stream=s, backward=True)
                for frame in c.decode(s):
                    if frame.time is not None and frame.time >= t - 0.5 / fps:
                        embed(frame); n += 1
                        break
    print(json.dumps({"load": load, "detect": t_detect, "scenes": len(spans), "embedded": n,
                      "total": time.perf_counter() - t0}))
"""


def run_baseline(mode: str, path: Path, ckpt: Path, arg: float = 0) -> dict:
    out = subprocess.run([sys.executable, "-c", _BASELINE, mode, str(path), str(ckpt), str(arg)],
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if out.returncode != 0:
        print(f"bench: baseline {mode} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
        return {}
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- indexing -----------------------------------------------------------------------------------
def index_once(paths: Path | list[Path], ckpt: Path, work: Path, extra: list[str] | None = None) -> tuple[float, int, float]:
    index_dir = work / "index"
    shutil.rmtree(index_dir, ignore_errors=True)
    files = [str(p) for p in (paths if isinstance(paths, list) else [paths])]
    wall, rss, code = run_child([sys.executable, "-m", "cliptool", "--index-dir", str(index_dir), "index", *files,
                                 "--model", "ViT-B-32", "--pretrained", str(ckpt), *(extra or [])])
    return (wall if code == 0 else float("nan")), rss, LAST_CPU[0]


# -- search on a synthetic 100k-scene index ---------------------------------------------------------
def build_search_index(out: Path, ckpt: Path, scenes: int, model: str = "ViT-B-32", label: str = "") -> Path:
    """An index of `scenes` random unit vectors written through the store API (cached), with
    the model's text encoder exported as `cliptool index` does."""
    from cliptool.models.spec import ModelSpec
    from cliptool.store import IndexStore, SceneRecord, SceneVectors, VideoRecord
    from cliptool.vectors.faiss import load_vector_index

    index_dir = out / (f"search-{label}-{scenes}" if label else f"search-{scenes}")
    done = index_dir / "bench-complete"
    if done.is_file():
        return index_dir
    shutil.rmtree(index_dir, ignore_errors=True)
    spec = ModelSpec(model, str(ckpt)).resolved()
    rng = np.random.default_rng(0)
    per_video, dim = 1000, 512
    with IndexStore(index_dir, create=True) as store:
        store.bind_model(spec.identity(), spec.to_dict())
        for v in range(scenes // per_video):
            vid = f"{v:016x}"
            frames = rng.standard_normal((per_video, 3, dim), dtype=np.float32)
            frames /= np.linalg.norm(frames, axis=2, keepdims=True)
            mean = frames.mean(axis=1)
            mean /= np.linalg.norm(mean, axis=1, keepdims=True)
            recs = [SceneRecord(i, i * 10.0, i * 10.0 + 10, i * 300, i * 300 + 300,
                                [i * 10 + 2.5, i * 10 + 5.0, i * 10 + 7.5], [i * 300 + 75, i * 300 + 150, i * 300 + 225])
                    for i in range(per_video)]
            vecs = [SceneVectors(mean[i], frames[i]) for i in range(per_video)]
            record = VideoRecord(vid, f"/videos/synthetic-{v:04d}.mp4", 1, 0.0, vid, per_video * 10.0, 30.0, 1920,
                                 1080, per_video * 300, per_video, "h264", spec.identity(), time.time(), "")
            store.put_video(record, recs, vecs)
    load_vector_index(index_dir)  # builds the cache
    export_text(REPO, model, ckpt, index_dir)
    done.write_text("ok")
    return index_dir


def export_text(code: Path, model: str, ckpt: Path, index_dir: Path) -> None:
    """Exports the model's text tower into the index with the cliptool in `code` (this one, or an
    older one the text bench compares with), in a new process, as `cliptool index` does."""
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from cliptool.models.clip import ClipModel; from cliptool.models.spec import ModelSpec; "
              "ClipModel(ModelSpec(sys.argv[2], sys.argv[3])).export_text_encoder(sys.argv[4])")
    subprocess.run([sys.executable, "-c", script, str(code), model, str(ckpt), str(index_dir)], check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})


def warm_search(index_dir: Path, repeat: int) -> dict[str, float]:
    from cliptool.search.searcher import Searcher

    searcher = Searcher(index_dir, text_runtime="onnxruntime")
    queries = ["a dog running on a beach", "a red car at night", "two people talking in a kitchen",
               "snow on mountains", "a cat", "fireworks over a city skyline"]
    searcher.search(searcher.text_vector("warm up"), top=10)
    text_ms, search_ms, total_ms = [], [], []
    for _ in range(repeat):
        for q in queries:
            t0 = time.perf_counter()
            v = searcher.text_vector(q)
            t1 = time.perf_counter()
            searcher.search(v, top=10)
            t2 = time.perf_counter()
            text_ms.append((t1 - t0) * 1e3)
            search_ms.append((t2 - t1) * 1e3)
            total_ms.append((t2 - t0) * 1e3)
    encoder = searcher.exported_text_encoder()
    return {"text_ms": median(text_ms), "search_ms": median(search_ms), "query_ms": median(total_ms),
            "exported_text_encoder": encoder is not None,
            "text_path": "open_clip" if encoder is None else f"{type(encoder).__name__} ({encoder.runtime})"}


# -- the text path: cold and warm search, this cliptool against the numpy encoder before it -----------
TEXT_BASELINE_COMMIT = "ee9ec7e"  # the last commit whose text path is the numpy encoder (textenc before ONNX)
_CLI = "import sys; sys.path.insert(0, sys.argv[1]); sys.argv = ['cliptool', *sys.argv[2:]]; from cliptool.cli import run; run()"
# Warm queries with the cliptool in argv[1] (this one or an older one: only the Searcher API both
# have), wall and CPU per query: CPU time is what the shared machine's load disturbs least.
_WARM = """
import json, statistics, sys, time
sys.path.insert(0, sys.argv[1])
from cliptool.search import Searcher
searcher = Searcher(sys.argv[2], text_runtime="onnxruntime")
queries = ["a dog running on a beach", "a red car at night", "two people talking in a kitchen",
           "snow on mountains", "a cat", "fireworks over a city skyline"]
searcher.search(searcher.text_vector("warm up"), top=10)
wall, cpu, total = [], [], []
for _ in range(int(sys.argv[3])):
    for q in queries:
        w0, c0 = time.perf_counter(), time.process_time()
        v = searcher.text_vector(q)
        w1, c1 = time.perf_counter(), time.process_time()
        searcher.search(v, top=10)
        wall.append((w1 - w0) * 1e3); cpu.append((c1 - c0) * 1e3); total.append((time.perf_counter() - w0) * 1e3)
encoder = searcher.exported_text_encoder()
path = "open_clip (torch)" if encoder is None else type(encoder).__name__
if encoder is not None and hasattr(encoder, "runtime"):
    path += f" ({encoder.runtime}{', ' + encoder.precision if hasattr(encoder, 'precision') else ''})"
print(json.dumps({"text_ms": statistics.median(wall), "text_cpu_ms": statistics.median(cpu),
                  "query_ms": statistics.median(total), "text_path": path}))
"""


def baseline_code(out: Path, commit: str) -> Path | None:
    """The cliptool package of an earlier commit, extracted (once) from this repository's git
    history into out/code-COMMIT; None when git cannot give it."""
    folder = out / f"code-{commit}"
    if (folder / "cliptool" / "__init__.py").is_file():
        compile_code(folder)
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "cliptool"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"bench: cannot extract cliptool at {commit} ({exc}); no before figures", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    tmp.replace(folder)
    compile_code(folder)
    return folder


def build_multilingual_checkpoint(out: Path) -> tuple[Path, Path]:
    """xlm-roberta-base-ViT-B-32's architecture with seeded random weights (config JSON whose
    text tower is a local Hugging Face folder, checkpoint): real size, real speed."""
    folder = out / "xlmr-base-random"
    code = ("import sys, importlib.util as u; s = u.spec_from_file_location('m', sys.argv[1]); m = u.module_from_spec(s); "
            "s.loader.exec_module(m); print(*m.write_tiny_multilingual_model(sys.argv[2], size='base'))")
    done = subprocess.run([sys.executable, "-c", code, str(REPO / "data" / "tiny_multilingual.py"), str(folder)],
                          check=True, capture_output=True, text=True).stdout.split()
    return Path(done[0]), Path(done[1])


def bench_text(out: Path, ckpt: Path, work: Path, n_scenes: int, repeat: int,
               baseline_commit: str | None = TEXT_BASELINE_COMMIT) -> list[dict[str, Any]]:
    """Cold `cliptool search` (a new process) and warm queries on a synthetic index, for a CLIP
    text tower (ViT-B-32) and a Hugging Face one (XLM-RoBERTa base), with this cliptool's ONNX
    text path (its exact tower, and its int8 one: `--text-precision int8`) and with the cliptool
    of `baseline_commit` (its numpy encoder; open_clip for towers that encoder could not run),
    in this one run."""
    old = baseline_code(out, baseline_commit) if baseline_commit else None
    hf_config, hf_ckpt = build_multilingual_checkpoint(out)
    rows: list[dict[str, Any]] = []
    towers = {"CLIP ViT-B-32": ("ViT-B-32", ckpt, ""), "HF XLM-R base": (str(hf_config), hf_ckpt, "xlmr")}
    for tower, (model, weights, label) in towers.items():
        print(f"bench: text path, {tower}, {n_scenes} scenes", file=sys.stderr)
        sdir = build_search_index(out, weights, n_scenes, model, label)
        codes = {"now": REPO, "now, int8 text": REPO}
        envs = {"now": {"CLIPTOOL_TEXT_PRECISION": "fp32"}, "now, int8 text": {"CLIPTOOL_TEXT_PRECISION": "int8"}}
        if old is not None:
            export_text(old, model, weights, sdir)  # the old export lives beside the new one
            codes[f"before ({baseline_commit})"] = old
        # Each measurement alternates between the versions, so that both see the same load.
        cold: dict[str, list[tuple[float, float, int]]] = {v: [] for v in codes}
        warm: dict[str, list[dict[str, Any]]] = {v: [] for v in codes}
        for _ in range(max(3, repeat + 2)):
            for version, code in codes.items():
                wall, rss, _ = run_child([sys.executable, "-c", _CLI, str(code), "--index-dir", str(sdir), "search",
                                          "a dog running on a beach", "--top", "10"], env=envs.get(version))
                cold[version].append((wall, LAST_CPU[0], rss))
        for _ in range(2):
            for version, code in codes.items():
                warm_out = work / "warm-text.json"
                run_child([sys.executable, "-c", _WARM, str(code), str(sdir), str(repeat)], capture=warm_out,
                          env=envs.get(version))
                try:
                    warm[version].append(json.loads(warm_out.read_text()))
                except (OSError, ValueError):
                    pass
        for version in codes:
            runs, w = cold[version], warm[version]
            rows.append({"tower": tower, "code": version, "scenes": n_scenes,
                         "text_path": w[0]["text_path"] if w else "-",
                         "cold_s": median([r[0] for r in runs]), "cold_runs_s": [r[0] for r in runs],
                         "cold_cpu_s": median([r[1] for r in runs]), "cold_peak_rss_mb": max(r[2] for r in runs),
                         "warm_text_ms": median([x["text_ms"] for x in w]),
                         "warm_text_cpu_ms": median([x["text_cpu_ms"] for x in w]),
                         "warm_query_ms": median([x["query_ms"] for x in w])})
    return rows


def print_text(rows: list[dict[str, Any]]) -> None:
    def f(x: object, fmt: str) -> str:
        return "-" if x is None or (isinstance(x, float) and x != x) else fmt.format(x)

    print(f"\ntext search path, {rows[0]['scenes'] if rows else '-'} scenes (cold: `cliptool search` in a new process; "
          "warm: one searcher, medians)")
    table = [("tower", "cliptool", "text path", "cold s", "cold CPU s", "cold RSS MB", "warm text ms",
              "warm text CPU ms", "warm query ms")]
    table += [(r["tower"], r["code"], r["text_path"], f(r["cold_s"], "{:.2f}"), f(r.get("cold_cpu_s"), "{:.2f}"),
               f(r.get("cold_peak_rss_mb"), "{:.0f}"), f(r["warm_text_ms"], "{:.1f}"),
               f(r.get("warm_text_cpu_ms"), "{:.1f}"), f(r["warm_query_ms"], "{:.1f}")) for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))


# -- a synthetic index of N scenes, written through the store's own API ------------------------------
SYNTH_ROOT = "/synthetic"  # where the synthetic videos "are": no such folder, so no index run prunes them


def synthetic_scene_vectors(rng: np.random.Generator, centres: np.ndarray, n: int, frames: int,
                            theme: int) -> tuple[np.ndarray, np.ndarray]:
    """(scene vectors (n, D), frame vectors (n, frames, D)) that look like CLIP's: unit vectors
    around cluster centres that share a common direction (CLIP's embeddings sit in a narrow
    cone), most scenes of a video near its theme cluster, each frame near its scene's
    direction, and the scene vector the normalised mean of its frames, as indexing makes it."""
    dim = centres.shape[1]
    pick = np.where(rng.random(n) < 0.6, theme, rng.integers(len(centres), size=n))
    direction = centres[pick] + 0.6 * rng.standard_normal((n, dim), dtype=np.float32) / np.sqrt(dim)
    f = direction[:, None, :] + 0.3 * rng.standard_normal((n, frames, dim), dtype=np.float32) / np.sqrt(dim)
    f /= np.linalg.norm(f, axis=2, keepdims=True)
    scene = f.mean(axis=1)
    scene /= np.linalg.norm(scene, axis=1, keepdims=True)
    return scene.astype(np.float32), f.astype(np.float32)


def synthetic_centres(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    common = rng.standard_normal(dim).astype(np.float32)
    common /= np.linalg.norm(common)
    own = rng.standard_normal((count, dim)).astype(np.float32)
    own /= np.linalg.norm(own, axis=1, keepdims=True)
    centres = 0.7 * common + own
    return centres / np.linalg.norm(centres, axis=1, keepdims=True)


def write_synthetic(index_dir: Path, scenes: int, dim: int, identity: str, spec: dict[str, str], *,
                    per_video: int = 250, frames: int = 3, seed: int = 0, name: str = "synth",
                    progress: bool = True, batch_scenes: int = 20_000) -> dict[str, Any]:
    """Writes `scenes` synthetic scenes (videos of `per_video` scenes) into the index at
    `index_dir` through the store's commit protocol (IndexStore.put_videos: one commit per
    `batch_scenes` scenes' worth of videos), under the writer lock; records the model as an index run does (`identity`, `spec`);
    then brings the search cache in line (appends the new videos, or builds it)."""
    from cliptool.store import IndexStore, SceneRecord, SceneVectors, VideoRecord, WriterLock, video_id_for
    from cliptool.vectors.faiss import sync_cache

    index_dir = Path(index_dir)
    rng = np.random.default_rng(seed)
    centres = synthetic_centres(rng, max(64, scenes // 200), dim)
    t0 = time.perf_counter()
    videos = (scenes + per_video - 1) // per_video
    with WriterLock(index_dir):
        with IndexStore(index_dir, create=True) as store:
            store.bind_model(identity, spec)
            store.recover()  # as an index run starts: stores.clean is written when all went through
            done = committed = 0
            batch: list[Any] = []
            for v in range(videos):
                n = min(per_video, scenes - done)
                scene_vecs, frame_vecs = synthetic_scene_vectors(rng, centres, n, frames, int(rng.integers(len(centres))))
                lengths = rng.uniform(2.0, 10.0, size=n)
                ends = np.cumsum(lengths)
                starts = ends - lengths
                recs = []
                for i in range(n):
                    s, e = float(starts[i]), float(ends[i])
                    times = [round(s + (e - s) * (j + 1) / (frames + 1), 3) for j in range(frames)]
                    recs.append(SceneRecord(i, round(s, 3), round(e, 3), int(s * 30), int(e * 30), times,
                                            [int(t * 30) for t in times]))
                path = f"{SYNTH_ROOT}/{name}/video-{v:07d}.mp4"
                vid = video_id_for(path)
                record = VideoRecord(vid, path, n, 0.0, f"synthetic-{seed}-{v}", float(ends[-1]), 30.0, 1920, 1080,
                                     int(ends[-1] * 30), n, "h264", identity, time.time(), "")
                batch.append((record, recs, [SceneVectors(scene_vecs[i], frame_vecs[i]) for i in range(n)]))
                done += n
                if done - committed >= batch_scenes or done == scenes:  # one commit per batch of videos
                    store.put_videos(batch)
                    batch, committed = [], done
                if progress and (v + 1) % max(1, videos // 20) == 0:
                    print(f"synth-index: {done} / {scenes} scenes ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    stored_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    sync = sync_cache(index_dir, report=(lambda m: print(m, file=sys.stderr)) if progress else None)
    return {"scenes": scenes, "videos": videos, "store_s": stored_s, "cache_s": time.perf_counter() - t1,
            "cache_rebuilt": sync.rebuilt, "cache_added_rows": sync.added_rows}


def synth_index_main(argv: list[str]) -> int:
    """`python -m cliptool.bench synth-index DIR --scenes N --model M --pretrained P`."""
    from cliptool.models.clip import ClipModel
    from cliptool.models.spec import ModelSpec
    from cliptool.index.indexer import resolve_model_spec

    ap = argparse.ArgumentParser(prog="python -m cliptool.bench synth-index",
                                 description="Builds a synthetic index of N scenes through the store's own API, "
                                             "recording the given model as `cliptool index` does, so that real "
                                             "videos can be added to it and it can be searched by text and image.")
    ap.add_argument("dir", type=Path, help="the index directory (created, or added to)")
    ap.add_argument("--scenes", type=int, required=True)
    ap.add_argument("--model", required=True, help="open_clip model name or config JSON, as for `cliptool index`")
    ap.add_argument("--pretrained", required=True, help="pretrained tag or checkpoint file, as for `cliptool index`")
    ap.add_argument("--precision", default=None, help="image tower precision, as for `cliptool index` [int8]")
    ap.add_argument("--scenes-per-video", type=int, default=250)
    ap.add_argument("--frames", type=int, default=3, help="sample-frame vectors per scene [3]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default=None, help="folder name of the synthetic videos [synth-SEED]")
    args = ap.parse_args(argv)
    if args.scenes < 1 or args.scenes_per_video < 1 or args.frames < 1:
        ap.error("--scenes, --scenes-per-video and --frames must be at least 1")
    spec = resolve_model_spec(args.dir, ModelSpec(args.model, args.pretrained))
    if args.precision:
        spec = ModelSpec(spec.name, spec.pretrained, args.precision)
    model = ClipModel(spec)
    identity = spec.identity()
    out = write_synthetic(args.dir, args.scenes, model.dim, identity, spec.to_dict(), per_video=args.scenes_per_video,
                          frames=args.frames, seed=args.seed, name=args.name or f"synth-{args.seed}")
    t0 = time.perf_counter()
    model.export_text_encoder(args.dir)  # the numpy text tower, for fast text search (as `index` does)
    out["text_export_s"] = time.perf_counter() - t0
    print(json.dumps(out))
    return 0


# -- big collections: synthetic indexes of 100k, 1M, ... scenes -------------------------------------
SCALE_QUERIES = ["a dog running on a beach", "a red car at night", "two people talking in a kitchen",
                 "snow on mountains", "a cat", "fireworks over a city skyline"]
SCALE_FILTER_S = 1500.0  # the filter measured at scale: --min-duration 25m, about half the synthetic videos
_VMHWM_RUNNER = ("import atexit, re, runpy, sys\n"
                 "def hwm():\n"
                 "    kb = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
                 "    sys.stderr.write(f'\\nbench-vmhwm-kb {kb}\\n')\n"
                 "atexit.register(hwm)\n"
                 "sys.path.insert(0, sys.argv[1])\n"  # the cliptool measured (-c also puts the current folder first)
                 "sys.argv = ['cliptool'] + sys.argv[2:]\n"
                 "runpy.run_module('cliptool', run_name='__main__')\n")


def scale_index(out: Path, ckpt: Path, scenes: int) -> tuple[Path, dict[str, Any]]:
    """The synthetic index of `scenes` scenes (built once with `synth-index` in a new process,
    its build time and peak RSS kept beside it in bench-synth.json)."""
    index_dir = out / f"scale-{scenes}"
    done = index_dir / "bench-synth.json"
    if done.is_file():
        return index_dir, json.loads(done.read_text())
    shutil.rmtree(index_dir, ignore_errors=True)
    capture = out / f"synth-{scenes}.out"
    print(f"bench: synth-index of {scenes} scenes", file=sys.stderr)
    wall, rss, code = run_child([sys.executable, "-m", "cliptool.bench", "synth-index", str(index_dir), "--scenes",
                                 str(scenes), "--model", "ViT-B-32", "--pretrained", str(ckpt)], capture=capture)
    if code != 0:
        raise SystemExit(f"bench: synth-index of {scenes} scenes failed")
    info = json.loads(capture.read_text().strip().splitlines()[-1])
    info.update(build_s=wall, build_peak_rss_mb=rss)
    done.write_text(json.dumps(info))
    return index_dir, info


def search_process(index_dir: Path, *args: str, code: Path | None = None) -> tuple[float, float]:
    """(wall seconds, VmHWM in MB) of one `cliptool search` in a new process, with the cliptool
    in `code` (an earlier commit's, see baseline_code) or this one. CPU seconds (user + system)
    are kept in LAST_CPU[0]."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CLIPTOOL_INDEX_DIR": str(index_dir)}
    t0 = time.perf_counter()
    before = os.times()
    proc = subprocess.run([sys.executable, "-c", _VMHWM_RUNNER, str(code or REPO), "search", *args],
                          capture_output=True, text=True, env=env, timeout=900)
    wall = time.perf_counter() - t0
    after = os.times()
    LAST_CPU[0] = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    if proc.returncode != 0:
        print(f"bench: search {' '.join(args)} exited {proc.returncode}: {proc.stderr[-1500:]}", file=sys.stderr)
    found = [line for line in proc.stderr.splitlines() if line.startswith("bench-vmhwm-kb ")]
    return wall, (int(found[-1].split()[1]) / 1024 if found else float("nan"))


def _exact_top(index: Any, queries: np.ndarray, k: int) -> list[set[int]]:
    """The exact top-k rows of each query over every live row (each segment's flat scan)."""
    from cliptool.vectors.faiss import LiveIndex

    segments = index.segments if isinstance(index, LiveIndex) else [index]
    offsets = index.offsets if isinstance(index, LiveIndex) else [0]
    scores, rows = [], []
    for seg, off in zip(segments, offsets):
        s, r = seg.faiss.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        scores.append(s)
        rows.append(r + int(off))
    s, r = np.concatenate(scores, axis=1), np.concatenate(rows, axis=1)
    best = np.argsort(-s, axis=1)[:, :k]
    return [set(r[i][best[i]].tolist()) for i in range(len(queries))]


def warm_scale(index_dir: Path, repeat: int) -> dict[str, Any]:
    """In one process, as a searcher that lives on: warm text query latency (text encoding
    included), plain and --videos; recall@10 of the scene search against the exact scan on
    query-like vectors; the float16 error of the stored vectors; this process's VmHWM."""
    from cliptool.search import searcher as search_module
    from cliptool.search.searcher import Searcher
    from cliptool.vectors.faiss import sample_queries

    searcher = Searcher(index_dir, text_runtime="onnxruntime")
    searcher.search(searcher.text_vector("warm up"), top=10)
    searcher.search(searcher.text_vector("warm up"), top=10)
    searcher.search(searcher.text_vector("warm up"), top=10, by_video=True)
    out: dict[str, Any] = {}
    cases = [("plain", {}, repeat), ("videos", {"by_video": True}, repeat)]
    if "Filters" in dir(search_module):  # a cliptool with filters (this one; not every baseline)
        cases.append(("filter", {"where": search_module.Filters(min_duration=SCALE_FILTER_S)}, repeat))
    for label, options, rounds in cases:
        text_ms, total_ms = [], []
        for _ in range(rounds):
            for q in SCALE_QUERIES:
                t0 = time.perf_counter()
                v = searcher.text_vector(q)
                t1 = time.perf_counter()
                searcher.search(v, top=10, **options)
                t2 = time.perf_counter()
                text_ms.append((t1 - t0) * 1e3)
                total_ms.append((t2 - t0) * 1e3)
        out[label] = {"query_ms": median(total_ms), "text_ms": median(text_ms), "runs": len(total_ms),
                      "vmhwm_mb": _vmhwm_mb()}  # after these queries (before the measures below)
    index = searcher.vectors
    base = index.segments[0] if hasattr(index, "segments") else index
    queries = sample_queries(base.vectors_view(), 200, seed=12345)
    exact = _exact_top(index, queries, 10)
    found = sum(len(set(index.scores(q, 10)[1].tolist()) & want) for q, want in zip(queries, exact))
    out["recall_at_10"] = found / (10 * len(queries))
    out["describe"] = index.describe()
    sample = np.asarray(base.vectors_view()[: min(base.size, 100_000)], dtype=np.float32)
    half = sample.astype(np.float16).astype(np.float32)
    cos = np.sum(sample * half, axis=1) / np.linalg.norm(half, axis=1)
    score_err = np.abs((sample - half) @ queries[:20].T)
    out["float16"] = {"max_cosine_error": float(1 - cos.min()), "max_score_error": float(score_err.max())}
    return out


def _vmhwm_mb() -> float:
    """This process's peak resident memory (VmHWM), MB."""
    import re

    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def add_one_video(index_dir: Path, clip: Path, work: Path, ckpt: Path, repeat: int, fresh: bool) -> list[float]:
    """Wall seconds of `cliptool index` adding one copy of `clip` (a new file each run) to
    `index_dir`, or, with fresh, to a new empty index each run."""
    times = []
    for i in range(repeat):
        target = work / f"scale-empty-{i}" if fresh else index_dir
        if fresh:
            shutil.rmtree(target, ignore_errors=True)
        copy = work / "scale-adds" / f"{index_dir.name}-{'fresh' if fresh else 'big'}-{i}-{time.time_ns()}.mp4"
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(clip, copy)
        wall, _, code = run_child([sys.executable, "-m", "cliptool", "--index-dir", str(target), "index", str(copy),
                                   "--model", "ViT-B-32", "--pretrained", str(ckpt)])
        if code == 0:
            times.append(wall)
        if fresh:
            shutil.rmtree(target, ignore_errors=True)
    return times


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench_scale(out: Path, ckpt: Path, sizes: list[int], repeat: int,
                baseline_commit: str | None = None) -> list[dict[str, Any]]:
    """For each size: build time, add-one-video time (empty index vs this one), cold and warm
    query latency (plain, --videos and a filter), recall@10, peak memory (VmHWM) and disk size.
    With `baseline_commit`, the searches also with that commit's cliptool, alternately in this
    run (its figures under "before")."""
    os.environ.setdefault("CLIPTOOL_CACHE_DIR", str(out / "cache"))
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    clip = build_clip(out / "corpus" / "loop-720p-60s.mp4", 1280, 720, 60)
    add_one_video(out / "scale-warmup", clip, work, ckpt, 1, fresh=True)  # exports the int8 tower once
    codes: dict[str, Path | None] = {"now": None}
    old = baseline_code(out, baseline_commit) if baseline_commit else None
    if old is not None:
        codes[f"before ({baseline_commit})"] = old
    filter_args = ("--min-duration", f"{SCALE_FILTER_S:.0f}")
    rows = []
    for scenes in sizes:
        index_dir, built = scale_index(out, ckpt, scenes)
        print(f"bench: scale {scenes}: searches", file=sys.stderr)
        search_process(index_dir, "warm the page cache", "--top", "10")
        searches: dict[str, dict[str, Any]] = {}
        cold: dict[str, dict[str, list[tuple[float, float, float]]]] = {
            v: {"plain": [], "videos": [], "filter": []} for v in codes}
        for i in range(repeat):  # each kind of search alternately with each cliptool: the same load
            for kind, extra in (("plain", ()), ("videos", ("--videos",)), ("filter", filter_args)):
                for version, code in codes.items():
                    wall, hwm = search_process(index_dir, SCALE_QUERIES[i % len(SCALE_QUERIES)], "--top", "10",
                                               *extra, code=code)
                    cold[version][kind].append((wall, LAST_CPU[0], hwm))
        for version, code in codes.items():
            warm_out = work / f"scale-warm-{scenes}.json"
            script = ("import sys, json; sys.path.insert(0, sys.argv[3]) if sys.argv[3] else None; "
                      "from cliptool.bench import warm_scale; print(json.dumps(warm_scale(sys.argv[1], int(sys.argv[2]))))")
            run_child([sys.executable, "-c", script, str(index_dir), str(repeat), str(code or "")], capture=warm_out)
            try:
                warm = json.loads(warm_out.read_text())
            except (OSError, ValueError):
                warm = {}
            runs = cold[version]
            searches[version] = {
                "warm": warm,
                **{f"cold{'' if kind == 'plain' else '_' + kind}_s": median([r[0] for r in runs[kind]]) for kind in runs},
                **{f"cold{'' if kind == 'plain' else '_' + kind}_cpu_s": median([r[1] for r in runs[kind]])
                   for kind in runs},
                **{f"cold{'' if kind == 'plain' else '_' + kind}_vmhwm_mb": max(r[2] for r in runs[kind]) for kind in runs},
                "cold_runs_s": {kind: [r[0] for r in runs[kind]] for kind in runs}}
        print(f"bench: scale {scenes}: adding one 1-minute video", file=sys.stderr)
        empty = add_one_video(index_dir, clip, work, ckpt, repeat, fresh=True)
        big = add_one_video(index_dir, clip, work, ckpt, repeat, fresh=False)
        row = {"scenes": scenes, "build": built, **searches["now"],
               "before": {v: r for v, r in searches.items() if v != "now"},
               "add_empty_s": median(empty), "add_big_s": median(big),
               "add_ratio": median(big) / median(empty) if empty and big else float("nan"),
               "add_runs": {"empty": empty, "big": big}, "disk_bytes": _du(index_dir),
               "disk": {p.name: _du(p) for p in index_dir.iterdir() if p.is_dir()},
               "load_average": os.getloadavg()}
        rows.append(row)
        (out / "bench-scale.json").write_text(json.dumps(rows, indent=2, default=float))
    return rows


def print_scale(rows: list[dict[str, Any]]) -> None:
    def ms(w: dict[str, Any], label: str, key: str = "query_ms") -> str:
        return f"{(w.get(label) or {}).get(key, float('nan')):.1f}"

    print("\nbig collections (synthetic CLIP-like vectors, ViT-B-32 text tower; medians; cold: new process, "
          f"wall s (CPU s); filter: --min-duration {SCALE_FILTER_S:.0f})")
    head = ("scenes", "cliptool", "build s", "add 1 min: empty / this", "ratio", "cold s", "cold --videos s",
            "cold filter s", "warm ms (text ms)", "warm --videos ms", "warm filter ms", "recall@10", "index",
            "VmHWM MB (cold / --videos / warm)", "disk GB")
    print(" | ".join(head))
    for r in rows:
        for version, x in [("now", r), *r.get("before", {}).items()]:
            w = x.get("warm") or {}
            d = w.get("describe") or {}
            kind = d.get("kind", "?") if d.get("kind") != "approximate" else f"{d.get('factory')} nprobe {d.get('nprobe')}"
            now = version == "now"
            print(" | ".join([
                str(r["scenes"]), version, f"{r['build'].get('build_s', float('nan')):.0f}" if now else "",
                f"{r['add_empty_s']:.1f} / {r['add_big_s']:.1f}" if now else "", f"{r['add_ratio']:.2f}" if now else "",
                f"{x['cold_s']:.2f} ({x.get('cold_cpu_s', float('nan')):.2f})",
                f"{x.get('cold_videos_s', float('nan')):.2f} ({x.get('cold_videos_cpu_s', float('nan')):.2f})",
                f"{x.get('cold_filter_s', float('nan')):.2f} ({x.get('cold_filter_cpu_s', float('nan')):.2f})",
                f"{ms(w, 'plain')} ({ms(w, 'plain', 'text_ms')})", ms(w, "videos"), ms(w, "filter"),
                f"{w.get('recall_at_10', float('nan')):.3f}", kind,
                f"{x['cold_vmhwm_mb']:.0f} / {x.get('cold_videos_vmhwm_mb', float('nan')):.0f} / "
                f"{(w.get('plain') or {}).get('vmhwm_mb', float('nan')):.0f}",
                f"{r['disk_bytes'] / 1e9:.1f}" if now else ""]))
    for r in rows:
        f16 = (r.get("warm") or {}).get("float16")
        if f16:
            print(f"float16 storage at {r['scenes']}: max cosine error {f16['max_cosine_error']:.2e}, "
                  f"max score error {f16['max_score_error']:.2e} (measured, not used)")


# -- serving from Milvus: Milvus Lite against the FAISS cache ------------------------------------------
MILVUS_QUERIES = 10  # query-like vectors per size (stored scene vectors moved away from themselves)


def milvus_latency(index_dir: Path, repeat: int) -> dict[str, Any]:
    """In one process: builds (once) a Milvus Lite collection of the index, then warm query
    latency through the searcher against the FAISS cache (plain, --videos, a length filter),
    alternating per query, and the bare top-10 scene search of each (FAISS's flat scan: exact);
    and whether their top 10 agree with the exact scan."""
    from cliptool.vectors.milvus import collection_state, parse_vector_store, release, sync_collection
    from cliptool.search.filters import Filters
    from cliptool.search.searcher import Searcher
    from cliptool.vectors.faiss import sample_queries

    index_dir = Path(index_dir)
    target = parse_vector_store(f"milvus://{index_dir.resolve() / 'bench-milvus.db'}")
    assert target is not None
    built = index_dir / "bench-milvus.json"
    if built.is_file() and collection_state(index_dir, target) == "current":
        build = json.loads(built.read_text())
    else:
        t0 = time.perf_counter()
        sync = sync_collection(index_dir, target, rebuild=True)
        build = {"insert_s": time.perf_counter() - t0, "scenes": sync.scenes, "peak_rss_mb": _vmhwm_mb()}
        built.write_text(json.dumps(build))
    faiss = Searcher(index_dir, vector_store="faiss")
    milvus = Searcher(index_dir, vector_store=target.spelled)
    index = faiss.vectors
    base = index.segments[0] if hasattr(index, "segments") else index
    queries = sample_queries(base.vectors_view(), MILVUS_QUERIES, seed=4321)
    durations = sorted(faiss.video_facts()[v].duration for v in faiss.row_videos()[0])
    short = Filters(max_duration=durations[max(0, len(durations) // 10 - 1)])  # about 10% of the videos
    cases = {"plain": {}, "videos": {"by_video": True}, "filter 10%": {"where": short}}
    out: dict[str, Any] = {"build": build, "faiss_kind": index.describe().get("kind"), "queries": len(queries)}
    for searcher in (faiss, milvus):  # warm up
        searcher.search(queries[0], top=10)
        searcher.search(queries[1], top=10, by_video=True)
    for label, kwargs in cases.items():
        times: dict[str, list[float]] = {"faiss": [], "milvus": []}
        same = 0
        for _ in range(repeat if label == "plain" else 1):
            for q in queries:
                found = {}
                for name, searcher in (("faiss", faiss), ("milvus", milvus)):
                    t0 = time.perf_counter()
                    found[name] = [h.scene_id for h in searcher.search(q, top=10, **kwargs)]
                    times[name].append((time.perf_counter() - t0) * 1e3)
                same += found["faiss"] == found["milvus"]
        out[label] = {"faiss_ms": median(times["faiss"]), "milvus_ms": median(times["milvus"]),
                      "same_top10": same / len(times["faiss"])}
    bare: dict[str, list[float]] = {"faiss_flat": [], "milvus": []}
    exact_same = 0
    client = milvus.vectors.client  # type: ignore[union-attr]
    for q in queries:
        t0 = time.perf_counter()
        flat = _flat_top(index, q, 10)
        bare["faiss_flat"].append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        hits = client.search(target.scenes, data=[q.tolist()], limit=10, output_fields=["scene_id"],
                             search_params={"metric_type": "IP"})
        bare["milvus"].append((time.perf_counter() - t0) * 1e3)
        exact_same += [h["entity"]["scene_id"] for h in hits[0]] == [index.position(int(r)).scene_id for r in flat]
    out["bare_top10"] = {"faiss_flat_ms": median(bare["faiss_flat"]), "milvus_ms": median(bare["milvus"]),
                         "milvus_equals_exact": exact_same / len(queries)}
    out["vmhwm_mb"] = _vmhwm_mb()
    release(target)
    return out


def _flat_top(index: Any, query: np.ndarray, k: int) -> list[int]:
    """The exact top-k rows of one query by each segment's flat scan (no approximate index)."""
    segments = index.segments if hasattr(index, "segments") else [index]
    offsets = index.offsets if hasattr(index, "segments") else [0]
    scores, rows = [], []
    for seg, off in zip(segments, offsets):
        s, r = seg.faiss.search(np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1), k)
        scores.append(s[0])
        rows.append(r[0] + int(off))
    s, r = np.concatenate(scores), np.concatenate(rows)
    return [int(x) for x in r[np.argsort(-s, kind="stable")[:k]]]


def bench_milvus(out: Path, ckpt: Path, sizes: list[int], repeat: int) -> list[dict[str, Any]]:
    """Milvus Lite against FAISS on the synthetic indexes of `sizes` scenes (each measured in a
    new process); [] with a note when pymilvus or milvus-lite is missing."""
    import importlib.util

    if importlib.util.find_spec("pymilvus") is None or importlib.util.find_spec("milvus_lite") is None:
        print("bench: Milvus skipped: pip install 'cliptool[cluster]'", file=sys.stderr)
        return []
    rows = []
    for scenes in sizes:
        index_dir, _ = scale_index(out, ckpt, scenes)
        print(f"bench: Milvus Lite against FAISS at {scenes} scenes", file=sys.stderr)
        capture = out / f"milvus-{scenes}.out"
        wall, rss, code = run_child([sys.executable, "-c", "import sys, json; from cliptool.bench import milvus_latency; "
                                     "print(json.dumps(milvus_latency(sys.argv[1], int(sys.argv[2]))))",
                                     str(index_dir), str(repeat)], capture=capture)
        if code != 0:
            print(f"bench: Milvus at {scenes} scenes failed (see {capture})", file=sys.stderr)
            continue
        rows.append({"scenes": scenes, **json.loads(capture.read_text().strip().splitlines()[-1])})
    return rows


def print_milvus(rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    print("\nserving from Milvus Lite against the FAISS cache (synthetic 512-d vectors; warm, top 10, "
          "query vector ready; medians, ms)")
    head = ("scenes", "insert s", "plain faiss / milvus", "--videos", "10% filter", "bare top-10 flat / milvus",
            "same top 10", "FAISS kind")
    print(" | ".join(head))
    for r in rows:
        p, v, f, b = r["plain"], r["videos"], r["filter 10%"], r["bare_top10"]
        print(" | ".join([str(r["scenes"]), f"{r['build']['insert_s']:.0f}",
                          f"{p['faiss_ms']:.1f} / {p['milvus_ms']:.1f}", f"{v['faiss_ms']:.1f} / {v['milvus_ms']:.1f}",
                          f"{f['faiss_ms']:.1f} / {f['milvus_ms']:.1f}", f"{b['faiss_flat_ms']:.1f} / {b['milvus_ms']:.1f}",
                          f"{p['same_top10']:.0%} (bare = exact {b['milvus_equals_exact']:.0%})", str(r["faiss_kind"])]))


# -- int8 and bf16 against fp32 on real frames -------------------------------------------------------
def precision_accuracy(ckpt: Path, clips: list[Path], per_clip: int) -> dict[str, dict[str, float]]:
    from cliptool.media.decode import VideoReader, to_rgb
    from cliptool.models.clip import ClipModel
    from cliptool.models.spec import ModelSpec

    frames = []
    for clip in clips:
        with VideoReader(clip) as reader:
            info = reader.info
            step = max(1, int(info.duration * max(info.fps, 1) / per_clip))
            frames += [to_rgb(f.av_frame) for f in reader.frames() if f.index % step == 0][:per_clip]
    models = {p: ClipModel(ModelSpec("ViT-B-32", str(ckpt), p)) for p in ("fp32", "bf16", "int8")}
    batch = np.stack([models["fp32"].preprocess(f) for f in frames])
    queries = models["fp32"].encode_text([f"a photo of {w}" for w in (
        "a deer", "a bird", "a man", "a city at night", "leaves", "text on a screen", "a car", "water",
        "a face", "a street", "an explosion", "a parrot")])
    vectors, speed = {}, {}
    for name, model in models.items():
        model.encode_preprocessed(batch[:16])  # warm up
        t0 = time.perf_counter()
        vectors[name] = np.concatenate([model.encode_preprocessed(batch[i:i + 16]) for i in range(0, len(batch), 16)])
        speed[name] = len(frames) / (time.perf_counter() - t0)
    out: dict[str, dict[str, float]] = {"fp32": {"frames": len(frames), "img_s": speed["fp32"]}}
    a = vectors["fp32"]
    for name in ("bf16", "int8"):
        b = vectors[name]
        cos = np.sum(a * b, axis=1)
        overlaps = []
        for q in queries:  # top-10 frames of a text query, against the exact path's
            overlaps.append(len(set(np.argsort(-(a @ q))[:10]) & set(np.argsort(-(b @ q))[:10])) / 10)
        self_rank = np.mean(np.argmax(b @ a.T, axis=1) == np.arange(len(a)))  # each frame finds its fp32 self
        out[name] = {"frames": len(frames), "cos_min": float(cos.min()), "cos_median": float(np.median(cos)),
                     "top10_overlap_mean": float(np.mean(overlaps)), "top10_overlap_min": float(np.min(overlaps)),
                     "self_top1": float(self_rank), "img_s": speed[name]}
    return out


# -- main -----------------------------------------------------------------------------------------
# -- moment recall with the toy CLIP; image search by real frames ------------------------------------
TOY_MODEL = REPO / "data" / "toy-clip"
SAMPLINGS = {  # IndexOptions changes: today's fixed samples per scene, and samples that follow the content
    "old": {"change_threshold": 0.0},
    "new": {},
}
IMAGE_VIDEOS = [  # shared videos for image queries; vtest.avi is a fixed camera (said apart)
    "scenes/bikes.mp4", "scenes/testvideo.mp4", "scenes/goldeneye-vfr-drop3.mp4", "content/cockatoo.mp4",
    "content/Megamind.avi", "content/cityCC0.mpg", "content/movie-hello.mp4", "content/pool_cleaning.mp4",
    "content/vtest.avi",
]
STATIC_CAMERAS = {"content/vtest.avi"}


def _toy_videos() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("toy_videos", REPO / "data" / "toy_videos.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules.setdefault("toy_videos", module)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return sys.modules["toy_videos"]


def _quiet(message: str) -> None:
    pass


def _index_timed(paths: list[Path], index_dir: Path, spec: Any, changes: dict[str, Any]) -> tuple[float, int, float]:
    """Indexes `paths` afresh with the sampling `changes`; (seconds, samples, video seconds)."""
    from cliptool.config import IndexOptions
    from cliptool.index.indexer import index_paths
    from cliptool.vectors.faiss import load_vector_index

    shutil.rmtree(index_dir, ignore_errors=True)
    t0 = time.perf_counter()
    summary = index_paths(paths, index_dir, spec, IndexOptions(**changes), report=_quiet, progress=False)
    seconds = time.perf_counter() - t0
    vectors = load_vector_index(index_dir)
    samples = sum(len(vectors.position(r).sample_times) for r in range(vectors.size))
    return seconds, samples, summary.video_seconds


def moment_found(hits: list[Any], path: Path, start: float, end: float, slack: float = 0.02) -> bool:
    """Rank 1 is the video and its best time lies inside the appearance (a frame's slack)."""
    return bool(hits) and Path(hits[0].path).name == path.name and start - slack <= hits[0].best_time < end + slack


def bench_recall(out: Path, model_dir: Path = TOY_MODEL, per_duration: int = 8, two_count: int = 4,
                 rankings: tuple[str, ...] = ("frames", "scene+frames")) -> dict[str, Any]:
    """Moment recall on generated toy videos, for the old and the new sampling and each ranking:
    for each set (one per duration D, plus two-shape videos) a fresh index; per query (a shown
    shape's caption) found = rank 1 is its video and the best time lies inside its appearance."""
    from cliptool.models.spec import ModelSpec
    from cliptool.search.searcher import Searcher
    from cliptool.store import video_id_for

    config, weights = model_dir / "config.json", model_dir / "weights.safetensors"
    if not (config.is_file() and weights.is_file()):
        return {"skipped": f"no toy model at {model_dir}"}
    tv = _toy_videos()
    print("bench: recall corpus (cached)", file=sys.stderr)
    sets = tv.recall_corpus(out / "toy-videos", per_duration=per_duration, two_count=two_count)
    spec = ModelSpec(str(config), str(weights))
    result: dict[str, Any] = {"model": str(model_dir), "videos_per_set": per_duration, "two_shape_videos": two_count,
                              "sampling": {}}
    for mode, changes in SAMPLINGS.items():
        row: dict[str, Any] = {"index_s": 0.0, "samples": 0, "video_s": 0.0, "recall": {}}
        for key, videos in sets.items():
            folder = out / "toy-videos" / key
            index_dir = out / "work" / f"recall-{mode}-{key}"
            secs, samples, video_s = _index_timed([folder], index_dir, spec, changes)
            row["index_s"] += secs
            row["samples"] += samples
            row["video_s"] += video_s
            searcher = Searcher(index_dir)
            for ranking in rankings:
                searcher.ranking = ranking
                found = sampled = total = 0
                for v in videos:
                    for a in v.appearances:
                        query = searcher.text_vector(a.caption)
                        hits = searcher.search(query, top=1)
                        found += moment_found(hits, folder / v.name, a.start, a.end)
                        # apart from the other videos: did sampling give the moment a frame that
                        # wins in its own video? (a miss above that passes here is the model's
                        # confusion with another video's background, not a moment left unsampled)
                        own = searcher.best_in_video(query, video_id_for(folder / v.name))
                        sampled += moment_found([own] if own else [], folder / v.name, a.start, a.end)
                        total += 1
                row["recall"].setdefault(ranking, {})[key] = found / total
                row.setdefault("sampled", {}).setdefault(ranking, {})[key] = sampled / total
        row["samples_per_min"] = row["samples"] / max(1e-9, row["video_s"] / 60)
        result["sampling"][mode] = row
        print(f"bench:   recall {mode}: {row['recall']}, {row['samples_per_min']:.1f} samples/min", file=sys.stderr)
    return result


def _frame_times(path: Path, count: int, seed: int) -> list[tuple[float, np.ndarray]]:
    """`count` frames at seeded random positions of a video (decoded in one pass): (time, RGB)."""
    from cliptool.media.decode import VideoReader, to_rgb

    with VideoReader(path) as reader:
        times = [f.time for f in reader.frames()]
    rng = np.random.default_rng(seed)
    picks = set(int(i) for i in rng.choice(len(times), size=min(count, len(times)), replace=False))
    out = []
    with VideoReader(path) as reader:
        for i, f in enumerate(reader.frames()):
            if i in picks:
                out.append((f.time, to_rgb(f.av_frame)))
    return out


def image_containment(index_dir: Path, videos: list[Path], per_video: int = 12, seed: int = 0,
                      rankings: tuple[str, ...] = ("frames", "scene+frames")) -> dict[str, dict[str, float]]:
    """Search by frames taken from indexed videos: how often rank 1 is that video (`video`) and a
    scene that contains the frame's time (`scene`), per ranking and per video."""
    from cliptool.search.searcher import Searcher

    searcher = Searcher(index_dir)
    out: dict[str, dict[str, float]] = {}
    for k, video in enumerate(videos):
        frames = _frame_times(video, per_video, seed + k)
        queries = [(t, searcher.model.encode_images([rgb])[0]) for t, rgb in frames]
        for ranking in rankings:
            searcher.ranking = ranking
            same_video = same_scene = 0
            for t, q in queries:
                hits = searcher.search(q, top=1)
                if hits and Path(hits[0].path).name == video.name:
                    same_video += 1
                    same_scene += hits[0].start - 1e-3 <= t < hits[0].end + 1e-3
            out.setdefault(ranking, {})[video.name] = same_scene / max(1, len(queries))
            out.setdefault(ranking + ":video", {})[video.name] = same_video / max(1, len(queries))
    return out


def bench_images(out: Path, ckpt_args: tuple[str, str], per_video: int = 12) -> dict[str, Any]:
    """Image search by real frames of the shared videos, old and new sampling, each ranking."""
    from cliptool.models.spec import ModelSpec

    videos = [SHARED / v for v in IMAGE_VIDEOS if (SHARED / v).is_file()]
    if not videos:
        return {"skipped": f"no shared videos under {SHARED}"}
    spec = ModelSpec(*ckpt_args)
    result: dict[str, Any] = {"model": ckpt_args[0], "static_cameras": sorted(STATIC_CAMERAS)}
    for mode, changes in SAMPLINGS.items():
        index_dir = out / "work" / f"images-{mode}"
        secs, samples, video_s = _index_timed(videos, index_dir, spec, changes)
        per = image_containment(index_dir, videos, per_video)
        moving = [v.name for v in videos if str(v.relative_to(SHARED)) not in STATIC_CAMERAS]
        summary = {r: {"moving": float(np.mean([per[r][n] for n in moving])), "all": float(np.mean(list(per[r].values())))}
                   for r in per}
        result[mode] = {"index_s": secs, "samples_per_min": samples / max(1e-9, video_s / 60),
                        "per_video": per, "summary": summary}
        print(f"bench:   images {mode}: {summary}", file=sys.stderr)
    return result


def index_time_ratio(corpus: dict[str, Path], ckpt: Path, work: Path, repeat: int) -> dict[str, Any]:
    """The bench corpus indexed with the old and the new sampling, alternately in one run (same
    machine state), each in a fresh process as `cliptool index` runs: median seconds, ratio."""
    times: dict[str, list[float]] = {m: [] for m in SAMPLINGS}
    samples: dict[str, int] = {}
    for warm_up in [True] + [False] * repeat:  # the first round (untimed) exports the model into the cache
        for mode, changes in SAMPLINGS.items():
            index_dir = work / f"ratio-{mode}"
            shutil.rmtree(index_dir, ignore_errors=True)
            script = ("import sys, json; from pathlib import Path; from cliptool.config import IndexOptions; "
                      "from cliptool.models.spec import ModelSpec; from cliptool.index.indexer import index_paths; "
                      "index_paths([Path(p) for p in sys.argv[4:]], Path(sys.argv[1]), ModelSpec('ViT-B-32', sys.argv[2]), "
                      "IndexOptions(**json.loads(sys.argv[3])), progress=False)")
            wall, _, code_ = run_child([sys.executable, "-c", script, str(index_dir), str(ckpt), json.dumps(changes),
                                        *[str(p) for p in corpus.values()]])
            if warm_up:
                break
            times[mode].append(wall if code_ == 0 else float("nan"))
            from cliptool.vectors.faiss import load_vector_index

            v = load_vector_index(index_dir)
            samples[mode] = sum(len(v.position(r).sample_times) for r in range(v.size))
    duration = sum(video_facts(p)["duration"] for p in corpus.values())
    res = {m: {"index_s": median(t), "runs_s": t, "samples_per_min": samples[m] / (duration / 60)} for m, t in times.items()}
    res["ratio_new_to_old"] = res["new"]["index_s"] / res["old"]["index_s"]
    return res


def bench_sampling(results: dict[str, Any], out: Path, corpus: dict[str, Path], ckpt: Path, work: Path, repeat: int,
                   quick: bool, toy_model: Path) -> None:
    """The sampling figures: moment recall, image search by real frames, old vs new index time."""
    print("bench: moment recall with the toy CLIP, old and new sampling", file=sys.stderr)
    results["recall"] = bench_recall(out, toy_model, per_duration=16)
    print("bench: image search by frames of the shared videos (random-weight ViT-B-32)", file=sys.stderr)
    results["images"] = bench_images(out, ("ViT-B-32", str(ckpt)), per_video=8 if quick else 16)
    print("bench: index time on the corpus, old and new sampling", file=sys.stderr)
    results["index_ratio"] = index_time_ratio(corpus, ckpt, work, repeat)


# -- queries: filters, --videos and merging on a large index ------------------------------------
def _old_videos_search(searcher: Any, query: np.ndarray, top: int) -> list[Any]:
    """--videos as it was before: every row a candidate, each scored by its frames in Python."""
    scores, rows = searcher.vectors.scores(query, searcher.vectors.size)
    return searcher._hits([searcher._candidate(int(r), float(s), query) for s, r in zip(scores, rows)], top, True)


def _python_filtered_search(searcher: Any, query: np.ndarray, top: int, where: Any) -> list[Any]:
    """A filter without a row mask: every row ranked, each row's video judged in Python."""
    facts = searcher.video_facts()
    scores, rows = searcher.vectors.scores(query, searcher.vectors.size)
    kept = []
    for s, r in zip(scores, rows):
        pos = searcher.vectors.position(int(r))
        if where.allows(facts.get(pos.video_id)):
            kept.append((int(r), float(s)))
            if len(kept) >= max(4 * top, 50):
                break
    return searcher._hits([searcher._candidate(r, s, query) for r, s in kept], top, False)


def bench_queries(index_dir: Path, repeat: int) -> dict[str, Any]:
    """Warm query latency (query vector ready; the search alone) on a large synthetic index:
    plain, with filters (1 and 10% of the videos, and one every video passes: the mask's own
    cost) and with --videos, against the code paths they replace, all in this one process."""
    from cliptool.search.filters import Filters
    from cliptool.search.searcher import Searcher

    searcher = Searcher(index_dir, text_runtime="numpy")
    texts = ["a dog running on a beach", "a red car at night", "two people talking in a kitchen",
             "snow on mountains", "a cat", "fireworks over a city skyline"]
    vectors = [searcher.text_vector(t) for t in texts]
    paths = sorted(f.path for f in searcher.video_facts().values())
    tenth, one = Filters(under=tuple(paths[::10])), Filters(under=(paths[len(paths) // 2],))
    every = Filters(since=min(f.mtime for f in searcher.video_facts().values()))
    cases = {
        "plain": lambda v: searcher.search(v, top=10),
        "plain, --no-merge": lambda v: searcher.search(v, top=10, merge=False),
        "--in 10% of videos": lambda v: searcher.search(v, top=10, where=tenth),
        "--in 1 video": lambda v: searcher.search(v, top=10, where=one),
        "filter every video passes": lambda v: searcher.search(v, top=10, where=every),
        "--min-score 0.05": lambda v: searcher.search(v, top=10, where=Filters(min_score=0.05)),
        "--videos": lambda v: searcher.search(v, top=10, by_video=True),
        "--videos --in 10%": lambda v: searcher.search(v, top=10, by_video=True, where=tenth),
    }
    before = {
        "--videos": lambda v: _old_videos_search(searcher, v, 10),
        "--in 10% of videos": lambda v: _python_filtered_search(searcher, v, 10, tenth),
        "--in 1 video": lambda v: _python_filtered_search(searcher, v, 10, one),
    }
    for case in cases.values():  # warm: pages, masks, lazy columns
        case(vectors[0])
    rows: dict[str, Any] = {}
    for name, case in cases.items():
        times = []
        for _ in range(repeat):
            for v in vectors:
                t0 = time.perf_counter()
                case(v)
                times.append((time.perf_counter() - t0) * 1e3)
        rows[name] = {"ms": median(times)}
    for name, case in before.items():
        times, same, overlap = [], [], []
        key = (lambda h: h.video_id) if name == "--videos" else (lambda h: h.scene_id)
        for v in vectors[:3]:  # seconds each: a few
            t0 = time.perf_counter()
            old = [key(h) for h in case(v)]
            times.append((time.perf_counter() - t0) * 1e3)
            new = [key(h) for h in cases[name](v)]
            same.append(old == new)
            overlap.append(len(set(old) & set(new)) / max(1, len(old)))
        rows[name].update(before_ms=median(times), same_results=sum(same) / len(same),
                          overlap=sum(overlap) / len(overlap))
    return {"scenes": searcher.vectors.size, "videos": len(paths), "cases": rows}


def print_queries(r: dict[str, Any]) -> None:
    print(f"\nwarm query latency, {r['scenes']} scenes in {r['videos']} videos (median ms; query vector ready)")
    print(f"{'query':<28}{'now':>10}{'before':>12}{'same top-10':>14}{'overlap':>10}")
    for name, row in r["cases"].items():
        old = f"{row['before_ms']:.1f}" if "before_ms" in row else "-"
        same = f"{row['same_results']:.0%}" if "same_results" in row else "-"
        overlap = f"{row['overlap']:.0%}" if "overlap" in row else "-"
        print(f"{name:<28}{row['ms']:>10.2f}{old:>12}{same:>14}{overlap:>10}")
    print("(before: --videos scored every scene in Python; a filter without a row mask judges each "
          "ranked scene's video in Python. overlap: share of the before top-10, videos for --videos, "
          "found by now's; the synthetic frames are random, so a scene's mean says little about its "
          "best frame, which is --videos' worst case)")


def print_recall(r: dict[str, Any]) -> None:
    rec = r.get("recall") or {}
    if rec.get("skipped") or not rec:
        print(f"\nmoment recall: {rec.get('skipped', 'not run')}")
    else:
        keys = list(next(iter(rec["sampling"].values()))["recall"]["frames"].keys())
        print(f"\nmoment recall (toy CLIP {rec['model']}; {rec['videos_per_set']} videos per D, 30 s single shots; "
              f"found = rank 1 is the video and best time inside the appearance; 'two' = two shapes a video, 1 s each)")
        head = ["sampling", "ranking", *[f"D={k[1:]}s" if k.startswith("d") else k for k in keys], "samples/min", "index s"]
        rows = [head]
        for mode, row in rec["sampling"].items():
            for ranking, by_set in row["recall"].items():
                rows.append([mode, ranking, *[f"{by_set[k]:.0%}" for k in keys], f"{row['samples_per_min']:.1f}",
                             f"{row['index_s']:.1f}"])
        widths = [max(len(str(x[i])) for x in rows) for i in range(len(head))]
        for x in rows:
            print("  ".join(str(c).rjust(w) for c, w in zip(x, widths)))
        print("moment sampled (within its own video, the best time lies inside the appearance):")
        for mode, row in rec["sampling"].items():
            for ranking, by_set in (row.get("sampled") or {}).items():
                print(f"  {mode} {ranking}: " + ", ".join(f"{k}: {by_set[k]:.0%}" for k in keys))
    img = r.get("images") or {}
    if img and not img.get("skipped"):
        print(f"\nimage search by real frames (model {img['model']}): rank 1 is a scene containing the frame's time")
        for mode in SAMPLINGS:
            if mode in img:
                s = img[mode]["summary"]
                print(f"  {mode} sampling ({img[mode]['samples_per_min']:.1f} samples/min): " + "; ".join(
                    f"{rk}: {v['moving']:.0%} moving cameras, {v['all']:.0%} all" for rk, v in s.items() if ":" not in rk))
        print(f"  static cameras (excepted): {', '.join(img['static_cameras'])}")
    ratio = r.get("index_ratio")
    if ratio:
        print(f"\nindex time on the bench corpus, old vs new sampling in this run: old {ratio['old']['index_s']:.1f} s "
              f"({ratio['old']['samples_per_min']:.1f} samples/min), new {ratio['new']['index_s']:.1f} s "
              f"({ratio['new']['samples_per_min']:.1f} samples/min): {ratio['ratio_new_to_old']:.2f}x")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["synth-index"]:
        return synth_index_main(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m cliptool.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short clips, fewer repeats, 20k-scene search index")
    ap.add_argument("--out", type=Path, default=REPO / "bench-out")
    ap.add_argument("--repeat", type=int, default=None, help="runs per timing (median) [3; quick: 2]")
    ap.add_argument("--recall-only", action="store_true",
                    help="only the sampling figures: moment recall (toy CLIP), image search by real frames, "
                         "and index time of old vs new sampling on the corpus")
    ap.add_argument("--queries-only", action="store_true",
                    help="only warm query latency with filters and --videos (and the code they replace) "
                         "on the synthetic search index (100k scenes; quick: 20k)")
    ap.add_argument("--text-only", action="store_true",
                    help="only the text path: cold and warm search for a CLIP and a Hugging Face text tower, now and "
                         "with the numpy encoder of --text-baseline")
    ap.add_argument("--text-baseline", default=TEXT_BASELINE_COMMIT,
                    help=f"commit whose cliptool the text figures compare with ('' for none) [{TEXT_BASELINE_COMMIT}]")
    ap.add_argument("--scale-only", action="store_true",
                    help="only the big-collection figures (synthetic indexes of --scale-sizes scenes)")
    ap.add_argument("--scale-sizes", default="100000,1000000",
                    help="comma-separated scene counts of the big-collection figures [100000,1000000; quick: 20000]")
    ap.add_argument("--ray-only", action="store_true",
                    help="only the Ray figures: `index --ray` on a two-node local cluster against a local run")
    ap.add_argument("--scale-baseline", default="",
                    help="commit whose cliptool the big-collection searches are also measured with, alternately "
                         "('' for none) []")
    ap.add_argument("--milvus-only", action="store_true",
                    help="only Milvus Lite's query latency against FAISS on the synthetic indexes of --milvus-sizes")
    ap.add_argument("--milvus-sizes", default="100000,1000000",
                    help="comma-separated scene counts of the Milvus figures [100000,1000000; quick: 20000]")
    ap.add_argument("--toy-model", type=Path, default=TOY_MODEL, help="folder with the toy CLIP's config.json and "
                    "weights.safetensors [data/toy-clip]")
    args = ap.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    compile_code(REPO)
    repeat = args.repeat or (2 if args.quick else 3)
    results: dict[str, object] = {"quick": args.quick, "repeat": repeat, "cpus": os.cpu_count(),
                                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    t_start = time.perf_counter()
    cache = out / "cache"  # exported int8 image tower and text encoder, as in a user's cache
    os.environ["CLIPTOOL_CACHE_DIR"] = str(cache)
    if args.queries_only:
        n_scenes = 20_000 if args.quick else 100_000
        print(f"bench: queries on a synthetic {n_scenes}-scene index (cached in {out})", file=sys.stderr)
        results["queries"] = bench_queries(build_search_index(out, build_checkpoint(out), n_scenes), repeat)
        (out / "bench.json").write_text(json.dumps(results, indent=2, default=float))
        print_queries(results["queries"])
        print(f"\nfigures: {out / 'bench.json'}")
        return 0
    sizes = [int(x) for x in ("20000" if args.quick and "--scale-sizes" not in argv else args.scale_sizes).split(",")]
    milvus_sizes = [int(x) for x in ("20000" if args.quick and "--milvus-sizes" not in argv
                                     else args.milvus_sizes).split(",")]
    if args.milvus_only:
        results["milvus"] = bench_milvus(out, build_checkpoint(out), milvus_sizes, repeat)
        (out / "bench-milvus.json").write_text(json.dumps(results, indent=2, default=float))
        print_milvus(results["milvus"])
        print(f"\nfigures: {out / 'bench-milvus.json'}")
        return 0
    if args.scale_only:
        results["scale"] = bench_scale(out, build_checkpoint(out), sizes, repeat, args.scale_baseline or None)
        (out / "bench-scale-run.json").write_text(json.dumps(results, indent=2, default=float))
        print_scale(results["scale"])
        print(f"\nfigures: {out / 'bench-scale.json'}")
        return 0
    print("bench: building corpus and checkpoint (cached in %s)" % out, file=sys.stderr)
    corpus = {} if args.text_only else build_corpus(out, args.quick)
    ckpt = build_checkpoint(out)
    work = out / "work"
    work.mkdir(exist_ok=True)
    if args.text_only:
        n_scenes = 20_000 if args.quick else 100_000
        results["text"] = bench_text(out, ckpt, work, n_scenes, repeat, args.text_baseline or None)
        (out / "bench.json").write_text(json.dumps(results, indent=2, default=float))
        print_text(results["text"])
        print(f"\nfigures: {out / 'bench.json'}")
        return 0
    if args.ray_only:
        results["ray"] = bench_ray(corpus, ckpt, work, repeat, args.quick)
        (out / "bench-ray.json").write_text(json.dumps(results, indent=2, default=float))
        print_ray(results["ray"])
        print(f"\nfigures: {out / 'bench-ray.json'}")
        return 0
    if args.recall_only:
        bench_sampling(results, out, corpus, ckpt, work, repeat, args.quick, args.toy_model)
        (out / "bench.json").write_text(json.dumps(results, indent=2, default=float))
        print_recall(results)
        print(f"\nfigures: {out / 'bench.json'}")
        return 0

    # The very first run with a model: exports and quantises the image tower, exports the text tower.
    shutil.rmtree(cache, ignore_errors=True)
    first_file = next(iter(corpus.values()))
    first_wall, first_rss, _ = index_once(first_file, ckpt, work)
    results["first_run"] = {"file": next(iter(corpus)), "index_s": first_wall, "peak_rss_mb": first_rss}

    results["index"] = bench_indexing(corpus, ckpt, work, repeat, args.quick, results, out)
    results["ray"] = bench_ray(corpus, ckpt, work, repeat, args.quick)

    # exact path one flag away: fp32 indexing of the first file
    first = next(iter(corpus.values()))
    fp32_runs = [index_once(first, ckpt, work, ["--precision", "fp32"])[0] for _ in range(1 if args.quick else 2)]
    results["index_fp32_s"] = {"file": next(iter(corpus)), "index_s": median(fp32_runs)}

    n_scenes = 20_000 if args.quick else 100_000
    print(f"bench: search on a synthetic {n_scenes}-scene index", file=sys.stderr)
    results["search"] = bench_search(out, ckpt, work, n_scenes, repeat)
    results["queries"] = bench_queries(build_search_index(out, ckpt, n_scenes), repeat)
    from cliptool.bench.serve import bench_serve

    results["text"] = bench_text(out, ckpt, work, n_scenes, repeat, args.text_baseline or None)
    print("bench: the web app on the same index", file=sys.stderr)
    results["serve"] = bench_serve(build_search_index(out, ckpt, n_scenes), queries=1000)
    (out / "bench.json").write_text(json.dumps(results, indent=2, default=float))
    helps = [run_child([sys.executable, "-m", "cliptool", "--help"])[0] for _ in range(5)]
    results["help_s"] = median(helps)

    print("bench: int8 and bf16 vs fp32 on real frames", file=sys.stderr)  # last: it loads torch in this process
    clips = [SHARED / s for s in SOURCES if (SHARED / s).is_file()]
    results["precision"] = precision_accuracy(ckpt, clips, 16 if args.quick else 48)

    try:
        from cliptool.analysis.detect.evaluate import detector_rows  # type: ignore[import-not-found]
    except ImportError:
        detector_rows = None
    if detector_rows is not None:
        try:
            results["detectors"] = detector_rows()
        except Exception as exc:  # noqa: BLE001 - another module's failure must not lose this run
            results["detectors_error"] = f"{type(exc).__name__}: {exc}"
    bench_sampling(results, out, corpus, ckpt, work, repeat, args.quick, args.toy_model)
    print("bench: big collections", file=sys.stderr)
    results["scale"] = bench_scale(out, ckpt, sizes, repeat, args.scale_baseline or None)
    print("bench: serving from Milvus Lite", file=sys.stderr)
    results["milvus"] = bench_milvus(out, ckpt, milvus_sizes, repeat)
    results["bench_seconds"] = time.perf_counter() - t_start
    (out / "bench.json").write_text(json.dumps(results, indent=2, default=float))
    print_table(results)
    print_ray(results["ray"])
    print_queries(results["queries"])
    print_text(results["text"])
    print_recall(results)
    print_scale(results["scale"])
    print_milvus(results["milvus"])
    print(f"\nfigures: {out / 'bench.json'}")
    return 0


def bench_indexing(corpus: dict[str, Path], ckpt: Path, work: Path, repeat: int, quick: bool,
                   results: dict[str, object], out: Path) -> list[dict[str, Any]]:
    """Each file of the corpus, then the corpus in one run: index time against bare decoding,
    a per-frame scan and a seek baseline."""
    rows: list[dict[str, Any]] = []
    for label, path in corpus.items():
        facts = video_facts(path)
        print(f"bench: {label} {path.name} ({facts['duration']:.0f} s, {facts['mbps']:.1f} Mbps)", file=sys.stderr)
        decodes = [bare_decode_pyav(path) for _ in range(repeat)]
        decode = median([d[0] for d in decodes])
        decode_cpu = median([d[1] for d in decodes])
        ff = [x for x in (bare_decode_ffmpeg(path) for _ in range(repeat)) if x is not None]
        runs = [index_once(path, ckpt, work) for _ in range(repeat)]
        wall = median([r[0] for r in runs])
        rss = max(r[1] for r in runs)
        cpu = median([r[2] for r in runs])
        prefix = 20 if quick else 60
        scan = run_baseline("scan", path, ckpt, prefix)
        seek = run_baseline("seek", path, ckpt)
        scan_total = scan.get("load", 0) + scan.get("per_frame", float("nan")) * facts["frames"] if scan else float("nan")
        row = {
            "file": label, "path": str(path), **facts,
            "bare_decode_pyav_s": decode, "bare_decode_fps": facts["frames"] / decode,
            "bare_decode_ffmpeg_s": median(ff) if ff else None,
            "index_s": wall, "index_runs_s": [r[0] for r in runs], "index_peak_rss_mb": rss,
            "bare_decode_cpu_s": decode_cpu, "index_cpu_s": cpu, "cpu_ratio_to_decode": cpu / decode_cpu,
            "realtime_x": facts["duration"] / wall, "ratio_to_decode": wall / decode,
            "scan_s_extrapolated": scan_total, "scan_prefix_frames": scan.get("frames"),
            "scan_per_frame_s": scan.get("per_frame"), "x_vs_scan": scan_total / wall,
            "seek_s": seek.get("total", float("nan")), "seek_scenes": seek.get("scenes"),
            "x_vs_seek": seek.get("total", float("nan")) / wall,
        }
        rows.append(row)
        results["index"] = rows
        (out / "bench.json").write_text(json.dumps(results, indent=2, default=float))
        print(f"bench:   index {wall:.1f} s, decode {decode:.1f} s, scan {scan_total:.0f} s (extrapolated), "
              f"seek {row['seek_s']:.1f} s", file=sys.stderr)
    # The corpus as one run: start-up paid once, as when indexing a folder.
    runs = [index_once(list(corpus.values()), ckpt, work) for _ in range(repeat)]
    total = {k: sum(r[k] for r in rows) for k in ("duration", "bare_decode_pyav_s", "bare_decode_cpu_s", "scan_s_extrapolated", "seek_s")}
    wall = median([r[0] for r in runs])
    rows.append({
        "file": "corpus", "duration": total["duration"], "mbps": float("nan"), "frames": sum(r["frames"] for r in rows),
        "bare_decode_pyav_s": total["bare_decode_pyav_s"], "bare_decode_fps": float("nan"), "bare_decode_ffmpeg_s": None,
        "index_s": wall, "index_runs_s": [r[0] for r in runs], "index_peak_rss_mb": max(r[1] for r in runs),
        "bare_decode_cpu_s": total["bare_decode_cpu_s"], "index_cpu_s": median([r[2] for r in runs]),
        "cpu_ratio_to_decode": median([r[2] for r in runs]) / total["bare_decode_cpu_s"],
        "realtime_x": total["duration"] / wall, "ratio_to_decode": wall / total["bare_decode_pyav_s"],
        "x_vs_scan": total["scan_s_extrapolated"] / wall, "x_vs_seek": total["seek_s"] / wall,
    })
    return rows


def bench_ray(corpus: dict[str, Path], ckpt: Path, work: Path, repeat: int, quick: bool) -> dict[str, Any]:
    """`cliptool index --ray` on a two-node Ray cluster on this machine (its CPUs split between
    the nodes) against a local run, alternately: each corpus file alone, then the corpus and
    a few short clips in one run. Fresh processes and indexes each time, medians."""
    try:
        from ray.cluster_utils import Cluster
    except ImportError:
        return {"skipped": "ray is not installed (pip install 'cliptool[cluster]')"}
    from cliptool.config import usable_cores

    shorts_dir = work / "ray-shorts"
    shorts_dir.mkdir(parents=True, exist_ok=True)
    seconds, count = (5, 4) if quick else (10, 8)
    short = build_clip(ckpt.parent / "corpus" / f"short-720p-{seconds}s.mp4", 1280, 720, seconds)
    shorts = []
    for i in range(count):  # copies: each a video of its own for the index
        shorts.append(shorts_dir / f"short-{i}.mp4")
        if not shorts[-1].is_file():
            shutil.copy2(short, shorts[-1])
    cpus = usable_cores()
    t0 = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": max(1, cpus // 2), "include_dashboard": False})
    cluster.add_node(num_cpus=max(1, cpus - cpus // 2))
    started = time.perf_counter() - t0
    out: dict[str, Any] = {"nodes": 2, "cpus": cpus, "cluster_start_s": started, "rows": []}
    print(f"bench: Ray cluster of 2 nodes started in {started:.1f} s", file=sys.stderr)
    summary = work / "ray-summary.json"
    try:
        cases = [(label, [path]) for label, path in corpus.items()]
        cases.append((f"corpus + {count} x {seconds} s", [*corpus.values(), *shorts]))
        for label, paths in cases:
            local, ray, workers, scenes = [], [], [], 0
            for _ in range(repeat):
                local.append(index_once(paths, ckpt, work)[0])
                shutil.rmtree(work / "index", ignore_errors=True)
                wall, _, code = run_child([sys.executable, "-m", "cliptool", "--index-dir", str(work / "index"),
                                           "index", *map(str, paths), "--model", "ViT-B-32", "--pretrained", str(ckpt),
                                           "--ray", cluster.address, "--json"], capture=summary)
                shutil.rmtree(work / "index", ignore_errors=True)
                ray.append(wall if code == 0 else float("nan"))
                if code == 0:
                    facts = json.loads(summary.read_text())
                    workers.append(facts["workers"])
                    scenes = facts["scenes"]
            duration = sum(video_facts(p)["duration"] for p in paths)
            row = {"case": label, "videos": len(paths), "duration": duration, "local_s": median(local),
                   "ray_s": median(ray), "local_runs_s": local, "ray_runs_s": ray, "workers": max(workers, default=0), "scenes": scenes}
            row["overhead_s"] = row["ray_s"] - row["local_s"]
            row["overhead_per_video_s"] = row["overhead_s"] / len(paths)
            row["ray_realtime_x"] = duration / row["ray_s"]
            row["local_realtime_x"] = duration / row["local_s"]
            out["rows"].append(row)
            print(f"bench:   {label}: local {row['local_s']:.1f} s, Ray {row['ray_s']:.1f} s "
                  f"({row['workers']} workers)", file=sys.stderr)
    finally:
        cluster.shutdown()
    return out


def print_ray(r: dict[str, Any]) -> None:
    if "rows" not in r:
        print(f"\nindex on Ray: {r.get('skipped')}")
        return
    print(f"\nindex on Ray: a {r['nodes']}-node cluster on this machine ({r['cpus']} CPUs split between them; "
          f"started in {r['cluster_start_s']:.1f} s, not counted) against a local run; fresh processes, medians")
    head = ("case", "videos", "length", "local s", "Ray s", "overhead s", "per video s", "local x rt", "Ray x rt",
            "workers")
    rows = [head] + [(x["case"], x["videos"], f"{x['duration']:.0f} s", f"{x['local_s']:.1f}", f"{x['ray_s']:.1f}",
                      f"{x['overhead_s']:+.1f}", f"{x['overhead_per_video_s']:+.2f}", f"{x['local_realtime_x']:.1f}",
                      f"{x['ray_realtime_x']:.1f}", x["workers"]) for x in r["rows"]]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    for row in rows:
        print("  ".join(str(c).rjust(w) for c, w in zip(row, widths)))


def bench_search(out: Path, ckpt: Path, work: Path, n_scenes: int, repeat: int) -> dict[str, Any]:
    """Cold `cliptool search` (new process), a warm query and a cache rebuild on a synthetic index."""
    sdir = build_search_index(out, ckpt, n_scenes)
    cold = []
    for _ in range(max(3, repeat + 2)):
        wall, rss, _ = run_child([sys.executable, "-m", "cliptool", "--index-dir", str(sdir), "search",
                                  "a dog running on a beach", "--top", "10"])
        cold.append(wall)
    rb_wall, rb_rss, _ = run_child([sys.executable, "-c", "import sys; from cliptool.vectors.faiss import rebuild; "
                                    "rebuild(sys.argv[1])", str(sdir)])
    vec_mb = n_scenes * 4 * 512 * 4 / 2**20  # scene + 3 frame vectors
    warm_out = work / "warm.json"
    run_child([sys.executable, "-c", "import sys, json; from cliptool.bench import warm_search; "
               "print(json.dumps(warm_search(sys.argv[1], int(sys.argv[2]))))", str(sdir), str(repeat)],
              capture=warm_out)
    try:
        warm = json.loads(warm_out.read_text())
    except (OSError, ValueError):
        warm = {}
    return {"scenes": n_scenes, "cold_s": median(cold), "cold_runs_s": cold,
            **warm, "rebuild_s": rb_wall, "rebuild_peak_rss_mb": rb_rss, "vectors_mb": vec_mb}


def print_table(r: dict) -> None:
    def f(x: object, fmt: str = "{:.1f}") -> str:
        return "-" if x is None or (isinstance(x, float) and x != x) else fmt.format(x)

    print(f"\ncliptool bench ({'quick' if r['quick'] else 'full'}; medians of {r['repeat']} runs; "
          f"{r['cpus']} CPUs; ViT-B-32, default settings)")
    head = ("file", "length", "Mbps", "decode s", "dec fps", "ffmpeg s", "index s", "x realtime",
            "/decode", "CPU /decode", "x vs scan", "x vs seek", "peak RSS MB")
    rows = [head]
    for x in r["index"]:
        rows.append((x["file"], f(x["duration"], "{:.0f} s"), f(x["mbps"]), f(x["bare_decode_pyav_s"]),
                     f(x["bare_decode_fps"], "{:.0f}"), f(x["bare_decode_ffmpeg_s"]), f(x["index_s"]),
                     f(x["realtime_x"]), f(x["ratio_to_decode"], "{:.2f}"), f(x["cpu_ratio_to_decode"], "{:.2f}"),
                     f(x["x_vs_scan"], "{:.0f}"),
                     f(x["x_vs_seek"]), f(x["index_peak_rss_mb"], "{:.0f}")))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    for row in rows:
        print("  ".join(str(c).rjust(w) for c, w in zip(row, widths)))
    s = r["search"]
    p = r["precision"]
    print(f"\nscan = per-frame scan extrapolated from a prefix of {r['index'][0].get('scan_prefix_frames')} frames "
          f"(+ its model load); seek = full PySceneDetect pass + seek to 3 frames/scene, one at a time")
    print("corpus = both files in one `cliptool index` run; its decode, scan and seek are the sums of the files'")
    first = r.get("first_run", {})
    print(f"first run with a model ({first.get('file')}; exports the int8 image tower and the text encoder): "
          f"{f(first.get('index_s'))} s, peak RSS {first.get('peak_rss_mb')} MB")
    print(f"index with --precision fp32 ({r['index_fp32_s']['file']}): {f(r['index_fp32_s']['index_s'])} s")
    print(f"search, {s['scenes']} scenes: cold `cliptool search` {f(s['cold_s'], '{:.2f}')} s; warm query "
          f"{f(s['query_ms'])} ms (text {f(s['text_ms'])} ms + search {f(s['search_ms'])} ms; "
          f"text path: {s.get('text_path')})")
    print(f"cache rebuild, {s['scenes']} scenes: {f(s['rebuild_s'])} s, peak RSS {s['rebuild_peak_rss_mb']} MB "
          f"(vectors {s['vectors_mb']:.0f} MB)")
    v = r.get("serve") or {}
    if v:
        print(f"cliptool serve, {s['scenes']} scenes: /api/search {f(v.get('query_ms'))} ms median "
              f"(p95 {f(v.get('query_p95_ms'))} ms), query to rendered page {f(v.get('page_ms'), '{:.0f}')} ms, "
              f"{f(v.get('rss_mb'), '{:.0f}')} MB after {v.get('queries')} queries")
    print(f"cliptool --help: {f(r['help_s'], '{:.2f}')} s")
    print(f"image tower on {p['fp32']['frames']} real frames (random-weight ViT-B-32, batch 16): "
          f"fp32 {p['fp32']['img_s']:.1f} img/s")
    for name in ("int8", "bf16"):
        q = p[name]
        print(f"  {name}: {q['img_s']:.1f} img/s; cosine to fp32 min {q['cos_min']:.4f}, median {q['cos_median']:.4f}; "
              f"top-10 overlap mean {q['top10_overlap_mean']:.2f}, min {q['top10_overlap_min']:.2f}; "
              f"finds its own fp32 frame first {q['self_top1']:.0%}")
    if r.get("detectors"):
        det = r["detectors"]
        keys = list(det[0].keys())
        print("\nshot detectors")
        table = [keys] + [[f(d.get(k), "{:.3f}") if isinstance(d.get(k), float) else str(d.get(k)) for k in keys]
                          for d in det]
        widths = [max(len(str(row[i])) for row in table) for i in range(len(keys))]
        for row in table:
            print("  ".join(str(c).rjust(w) for c, w in zip(row, widths)))
    elif r.get("detectors_error"):
        print(f"\nshot detectors: {r['detectors_error']}")
    print(f"\nbench took {r['bench_seconds']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
