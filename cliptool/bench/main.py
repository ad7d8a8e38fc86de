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
* the speech and on-screen-text engines (`words_engines`): sentences said by Festival found at
  their times by pocketsphinx, drawn words read by tesseract, and what each costs against the
  picture index time of the same clips (`--speech-only`, `--screen-only`);
* serving from Milvus (`bench_milvus`): Milvus Lite's build time and query latency against the
  FAISS cache on the synthetic indexes of `--milvus-sizes` scenes, and whether their top 10
  agree (`--milvus-only` runs only these).

Prints one table and writes the figures to bench-out/bench.json. It asserts nothing about time.
Timings are medians over repeated runs (machines are shared and noisy).

Each benchmark is a module of this package (indexing, cluster, search, text, recall, scale,
milvus, precision, serve); this one reads the arguments and runs them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from cliptool.bench.cluster import bench_ray, print_ray
from cliptool.bench.corpus import REPO, SHARED, SOURCES, build_checkpoint, build_corpus
from cliptool.bench.indexing import bench_indexing, index_once, print_table
from cliptool.bench.measure import compile_code, median, run_child
from cliptool.bench.milvus import bench_milvus, print_milvus
from cliptool.bench.precision import precision_accuracy
from cliptool.bench.recall import TOY_MODEL, bench_sampling, print_recall
from cliptool.bench.scale import bench_scale, print_scale, synth_index_main
from cliptool.bench.search import bench_queries, bench_search, build_search_index, print_queries
from cliptool.bench.text import TEXT_BASELINE_COMMIT, bench_text, print_text


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m cliptool.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short clips, fewer repeats, 20k-scene search index")
    ap.add_argument("--out", type=Path, default=REPO / "bench-out")
    ap.add_argument("--repeat", type=int, default=None, help="runs per timing (median) [3; quick: 2]")
    ap.add_argument("--recall-only", action="store_true",
                    help="only the sampling figures: moment recall (toy CLIP), image search by real frames, "
                         "and index time of old vs new sampling on the corpus")
    ap.add_argument("--views-cost-only", action="store_true",
                    help="index time of the corpus files with each way of seeing (--views) against bare decoding")
    ap.add_argument("--views-only", action="store_true",
                    help="only what the image tower sees of a frame: recall over frame shapes and places, per view")
    ap.add_argument("--words-only", action="store_true",
                    help="only words: subtitles found at the right time, --then chains in order, the index-time "
                         "cost of subtitles, and full-text query latency (FTS5, tantivy when installed); then speech and "
                         "screen words through a real index run (as --words-pipeline-only)")
    ap.add_argument("--words-pipeline-only", action="store_true",
                    help="only speech and screen words through a real index run: --said and --shows found at "
                         "their times, --then across them, and the index time of each --words setting")
    ap.add_argument("--words-cost-only", action="store_true",
                    help="only the index time of each --words setting against pictures only (speech-heavy clip)")
    ap.add_argument("--moments-only", action="store_true",
                    help="only how long a hit is: moment spans on the toy videos for several MOMENT_DROP values")
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
    ap.add_argument("--speech-only", action="store_true",
                    help="only the speech engine: sentences found at their times, and its cost with the voice "
                         "activity detector on and off against the picture index time")
    ap.add_argument("--screen-only", action="store_true",
                    help="only on-screen text: drawn words read, and what the detector and tesseract cost a frame")
    ap.add_argument("--toy-model", type=Path, default=TOY_MODEL, help="folder with the toy CLIP's config.json and "
                    "weights.safetensors [data/toy-clip]")
    return ap


def scene_counts(value: str, option: str, quick: bool, argv: list[str]) -> list[int]:
    """The scene counts of `option` (comma-separated); 20000 with --quick unless it was given."""
    return [int(x) for x in ("20000" if quick and option not in argv else value).split(",")]


def write_json(path: Path, results: dict[str, Any]) -> None:
    path.write_text(json.dumps(results, indent=2, default=float))


def search_scenes(args: argparse.Namespace) -> int:
    """Scenes of the synthetic search index: 100k, or 20k with --quick."""
    return 20_000 if args.quick else 100_000


def run_queries(args: argparse.Namespace, out: Path, results: dict[str, Any], repeat: int) -> int:
    n_scenes = search_scenes(args)
    print(f"bench: queries on a synthetic {n_scenes}-scene index (cached in {out})", file=sys.stderr)
    results["queries"] = bench_queries(build_search_index(out, build_checkpoint(out), n_scenes), repeat)
    write_json(out / "bench.json", results)
    print_queries(results["queries"])
    print(f"\nfigures: {out / 'bench.json'}")
    return 0


def run_moments(args: argparse.Namespace, out: Path, results: dict[str, Any]) -> int:
    from cliptool.bench.moments import bench_moments, print_moments

    results["moments"] = bench_moments(out, args.toy_model, per_duration=4 if args.quick else 8)
    write_json(out / "bench-moments.json", results)
    print_moments(results["moments"])
    print(f"\nfigures: {out / 'bench-moments.json'}")
    return 0


def run_words(args: argparse.Namespace, out: Path, results: dict[str, Any], repeat: int) -> int:
    """--words-only: subtitles (unless --words-pipeline-only), then speech and screen words through
    a real index run and search (`words_engines.bench_pipeline`)."""
    from cliptool.bench.words import bench_words, print_words
    from cliptool.bench.words_engines import bench_pipeline, print_pipeline

    if not args.words_pipeline_only:
        results["words"] = bench_words(out, args.toy_model, quick=args.quick)
        write_json(out / "bench-words.json", results)
        print_words(results["words"])
    work = out / "work"
    work.mkdir(exist_ok=True)
    results["words_pipeline"] = bench_pipeline(out, build_checkpoint(out), work, repeat, args.quick)
    write_json(out / "bench-words.json", results)
    print_pipeline(results["words_pipeline"])
    print(f"\nfigures: {out / 'bench-words.json'}")
    return 0


def run_views(args: argparse.Namespace, out: Path, results: dict[str, Any]) -> int:
    from cliptool.bench.views import bench_views, print_views

    results["views"] = bench_views(out, args.toy_model, quick=args.quick)
    write_json(out / "bench-views.json", results)
    print_views(results["views"])
    print(f"\nfigures: {out / 'bench-views.json'}")
    return 0


def run_word_engines(args: argparse.Namespace, out: Path, results: dict[str, Any], repeat: int) -> int:
    from cliptool.bench.words_engines import run_words as bench_words

    work = out / "work"
    work.mkdir(exist_ok=True)
    bench_words(out, build_checkpoint(out), work, repeat, args.quick, args.speech_only, args.screen_only, results)
    write_json(out / "bench-words.json", results)
    print(f"\nfigures: {out / 'bench-words.json'}")
    return 0


def run_milvus(out: Path, results: dict[str, Any], sizes: list[int], repeat: int) -> int:
    results["milvus"] = bench_milvus(out, build_checkpoint(out), sizes, repeat)
    write_json(out / "bench-milvus.json", results)
    print_milvus(results["milvus"])
    print(f"\nfigures: {out / 'bench-milvus.json'}")
    return 0


def run_scale(args: argparse.Namespace, out: Path, results: dict[str, Any], sizes: list[int], repeat: int) -> int:
    results["scale"] = bench_scale(out, build_checkpoint(out), sizes, repeat, args.scale_baseline or None)
    write_json(out / "bench-scale-run.json", results)
    print_scale(results["scale"])
    print(f"\nfigures: {out / 'bench-scale.json'}")
    return 0


def run_text(args: argparse.Namespace, out: Path, results: dict[str, Any], ckpt: Path, work: Path,
             repeat: int) -> int:
    results["text"] = bench_text(out, ckpt, work, search_scenes(args), repeat, args.text_baseline or None)
    write_json(out / "bench.json", results)
    print_text(results["text"])
    print(f"\nfigures: {out / 'bench.json'}")
    return 0


def run_ray(args: argparse.Namespace, out: Path, results: dict[str, Any], corpus: dict[str, Path], ckpt: Path,
            work: Path, repeat: int) -> int:
    results["ray"] = bench_ray(corpus, ckpt, work, repeat, args.quick)
    write_json(out / "bench-ray.json", results)
    print_ray(results["ray"])
    print(f"\nfigures: {out / 'bench-ray.json'}")
    return 0


def run_recall(args: argparse.Namespace, out: Path, results: dict[str, Any], corpus: dict[str, Path], ckpt: Path,
               work: Path, repeat: int) -> int:
    bench_sampling(results, out, corpus, ckpt, work, repeat, args.quick, args.toy_model)
    write_json(out / "bench.json", results)
    print_recall(results)
    print(f"\nfigures: {out / 'bench.json'}")
    return 0


def measure_indexing(args: argparse.Namespace, out: Path, results: dict[str, Any], corpus: dict[str, Path],
                     ckpt: Path, work: Path, repeat: int) -> None:
    """The first run with a model (an emptied cache), each file and the corpus, Ray, and fp32."""
    # The very first run with a model: exports and quantises the image tower, exports the text tower.
    shutil.rmtree(out / "cache", ignore_errors=True)
    first_file = next(iter(corpus.values()))
    first_wall, first_rss, _ = index_once(first_file, ckpt, work)
    results["first_run"] = {"file": next(iter(corpus)), "index_s": first_wall, "peak_rss_mb": first_rss}

    results["index"] = bench_indexing(corpus, ckpt, work, repeat, args.quick, results, out)
    results["ray"] = bench_ray(corpus, ckpt, work, repeat, args.quick)

    # exact path one flag away: fp32 indexing of the first file
    first = next(iter(corpus.values()))
    fp32_runs = [index_once(first, ckpt, work, ["--precision", "fp32"])[0] for _ in range(1 if args.quick else 2)]
    results["index_fp32_s"] = {"file": next(iter(corpus)), "index_s": median(fp32_runs)}


def measure_search(args: argparse.Namespace, out: Path, results: dict[str, Any], ckpt: Path, work: Path,
                   repeat: int) -> None:
    """Search, queries, the text path and the web app on the synthetic index; `cliptool --help`."""
    n_scenes = search_scenes(args)
    print(f"bench: search on a synthetic {n_scenes}-scene index", file=sys.stderr)
    results["search"] = bench_search(out, ckpt, work, n_scenes, repeat)
    results["queries"] = bench_queries(build_search_index(out, ckpt, n_scenes), repeat)
    from cliptool.bench.serve import bench_serve

    results["text"] = bench_text(out, ckpt, work, n_scenes, repeat, args.text_baseline or None)
    print("bench: the web app on the same index", file=sys.stderr)
    results["serve"] = bench_serve(build_search_index(out, ckpt, n_scenes), queries=1000)
    write_json(out / "bench.json", results)
    helps = [run_child([sys.executable, "-m", "cliptool", "--help"])[0] for _ in range(5)]
    results["help_s"] = median(helps)


def measure_detectors(results: dict[str, Any]) -> None:
    """The shot detectors' precision and recall, where cliptool.analysis.detect.evaluate has them."""
    try:
        from cliptool.analysis.detect.evaluate import detector_rows  # type: ignore[import-not-found]
    except ImportError:
        detector_rows = None
    if detector_rows is not None:
        try:
            results["detectors"] = detector_rows()
        except Exception as exc:  # noqa: BLE001 - another module's failure must not lose this run
            results["detectors_error"] = f"{type(exc).__name__}: {exc}"


def print_all(results: dict[str, Any]) -> None:
    print_table(results)
    print_ray(results["ray"])
    print_queries(results["queries"])
    print_text(results["text"])
    print_recall(results)
    print_scale(results["scale"])
    print_milvus(results["milvus"])
    if "words" in results:
        from cliptool.bench.words import print_words

        print_words(results["words"])
    if "views" in results:
        from cliptool.bench.views import print_views, print_views_cost

        print_views(results["views"])
        print_views_cost(results["views_cost"])
    if "words_pipeline" in results:
        from cliptool.bench.words_engines import print_pipeline

        print_pipeline(results["words_pipeline"])


def run_all(args: argparse.Namespace, out: Path, results: dict[str, Any], corpus: dict[str, Path], ckpt: Path,
            work: Path, repeat: int, sizes: list[int], milvus_sizes: list[int], t_start: float) -> int:
    """Every benchmark, then every table."""
    measure_indexing(args, out, results, corpus, ckpt, work, repeat)
    measure_search(args, out, results, ckpt, work, repeat)

    print("bench: int8 and bf16 vs fp32 on real frames", file=sys.stderr)  # last: it loads torch in this process
    clips = [SHARED / s for s in SOURCES if (SHARED / s).is_file()]
    results["precision"] = precision_accuracy(ckpt, clips, 16 if args.quick else 48)

    measure_detectors(results)
    bench_sampling(results, out, corpus, ckpt, work, repeat, args.quick, args.toy_model)
    print("bench: big collections", file=sys.stderr)
    results["scale"] = bench_scale(out, ckpt, sizes, repeat, args.scale_baseline or None)
    print("bench: serving from Milvus Lite", file=sys.stderr)
    results["milvus"] = bench_milvus(out, ckpt, milvus_sizes, repeat)
    print("bench: words (subtitles, full text)", file=sys.stderr)
    from cliptool.bench.words import bench_words

    results["words"] = bench_words(out, args.toy_model, quick=args.quick)
    print("bench: the speech and on-screen-text engines", file=sys.stderr)
    from cliptool.bench.words_engines import run_words as bench_word_engines

    bench_word_engines(out, ckpt, work, repeat, args.quick, True, True, results)
    print("bench: words through the pipeline (index --words, search --said/--shows/--then)", file=sys.stderr)
    from cliptool.bench.words_engines import bench_pipeline

    results["words_pipeline"] = bench_pipeline(out, ckpt, work, repeat, args.quick)
    print("bench: what the image tower sees of a frame, and what each way costs", file=sys.stderr)
    from cliptool.bench.views import bench_views, bench_views_cost

    results["views"] = bench_views(out, args.toy_model, quick=args.quick)
    results["views_cost"] = bench_views_cost(corpus, ckpt, work, repeat)
    results["bench_seconds"] = time.perf_counter() - t_start
    write_json(out / "bench.json", results)
    print_all(results)
    print(f"\nfigures: {out / 'bench.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["synth-index"]:
        return synth_index_main(argv[1:])
    args = build_parser().parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    compile_code(REPO)
    repeat = args.repeat or (2 if args.quick else 3)
    results: dict[str, Any] = {"quick": args.quick, "repeat": repeat, "cpus": os.cpu_count(),
                               "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    t_start = time.perf_counter()
    cache = out / "cache"  # exported int8 image tower and text encoder, as in a user's cache
    os.environ["CLIPTOOL_CACHE_DIR"] = str(cache)
    if args.queries_only:
        return run_queries(args, out, results, repeat)
    if args.moments_only:
        return run_moments(args, out, results)
    if args.words_only or args.words_pipeline_only:
        return run_words(args, out, results, repeat)
    if args.words_cost_only:
        from cliptool.bench.words_engines import bench_pipeline_cost, print_pipeline

        work = out / "work"
        work.mkdir(exist_ok=True)
        results["words_pipeline"] = bench_pipeline_cost(out, build_checkpoint(out), work, repeat, args.quick)
        write_json(out / "bench-words-cost.json", results)
        print_pipeline(results["words_pipeline"])
        return 0
    if args.views_only:
        return run_views(args, out, results)
    sizes = scene_counts(args.scale_sizes, "--scale-sizes", args.quick, argv)
    milvus_sizes = scene_counts(args.milvus_sizes, "--milvus-sizes", args.quick, argv)
    if args.milvus_only:
        return run_milvus(out, results, milvus_sizes, repeat)
    if args.speech_only or args.screen_only:
        return run_word_engines(args, out, results, repeat)
    if args.scale_only:
        return run_scale(args, out, results, sizes, repeat)
    print("bench: building corpus and checkpoint (cached in %s)" % out, file=sys.stderr)
    corpus = {} if args.text_only else build_corpus(out, args.quick)
    ckpt = build_checkpoint(out)
    work = out / "work"
    work.mkdir(exist_ok=True)
    if args.text_only:
        return run_text(args, out, results, ckpt, work, repeat)
    if args.ray_only:
        return run_ray(args, out, results, corpus, ckpt, work, repeat)
    if args.recall_only:
        return run_recall(args, out, results, corpus, ckpt, work, repeat)
    if args.views_cost_only:
        from cliptool.bench.views import bench_views_cost, print_views_cost

        results["views_cost"] = bench_views_cost(corpus, ckpt, work, repeat)
        write_json(out / "bench-views-cost.json", results)
        print_views_cost(results["views_cost"])
        return 0
    return run_all(args, out, results, corpus, ckpt, work, repeat, sizes, milvus_sizes, t_start)


if __name__ == "__main__":
    sys.exit(main())
