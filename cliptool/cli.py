"""The `cliptool` command line: a thin layer over the library. Heavy imports live inside commands."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer

from .config import INDEX_DIR_ENV
from .errors import CliptoolError, UsageError

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    no_args_is_help=True,
    help="Search a folder of videos by meaning: index it, then search by text or image.",
)

EXIT_INTERRUPTED = 130
EXIT_SOME_FAILED = 8


class _State:
    index_dir: Path | None = None


def _index_dir() -> Path:
    if _State.index_dir is not None:
        return _State.index_dir
    from .config import default_index_dir

    return default_index_dir()


def _fail(message: str, code: int) -> None:
    print(f"cliptool: error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def _run(action: Callable[[], Any]) -> Any:
    """Runs a command body; errors become one line on stderr and a meaningful exit code."""
    try:
        return action()
    except CliptoolError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        print("cliptool: interrupted; everything committed before this point is kept", file=sys.stderr)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0) from None


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _version(value: bool) -> None:
    if value:
        from . import __version__

        print(f"cliptool {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    index_dir: Optional[Path] = typer.Option(
        None, "--index-dir", envvar=INDEX_DIR_ENV, help="Index directory [default: the user data dir]."
    ),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    _State.index_dir = index_dir


def _model_spec(model: Optional[str], pretrained: Optional[str]) -> Any:
    if model is None and pretrained is None:
        return None
    from .config import DEFAULT_MODEL, DEFAULT_PRETRAINED
    from .embed import ModelSpec

    return ModelSpec(model or DEFAULT_MODEL, pretrained or DEFAULT_PRETRAINED)


@app.command()
def index(
    paths: list[Path] = typer.Argument(..., help="Video files or folders (searched recursively)."),
    model: Optional[str] = typer.Option(None, help="open_clip model name or config JSON [default: ViT-B-32]."),
    pretrained: Optional[str] = typer.Option(
        None, help="open_clip pretrained tag or a local checkpoint file [default: datacomp_xl_s13b_b90k]."
    ),
    detector: str = typer.Option("content", help="Shot detector: content, adaptive, threshold, transnetv2."),
    threshold: Optional[float] = typer.Option(None, help="Detector threshold [default: the detector's own]."),
    max_scene: float = typer.Option(10.0, help="Split shots longer than this many seconds into windows (0: never)."),
    samples: int = typer.Option(3, min=1, max=16, help="Frames embedded per scene."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Find videos, cut them into scenes, embed and store them."""

    def body() -> None:
        from .config import IndexOptions
        from .detect import DETECTORS
        from .indexer import index_paths

        if detector not in DETECTORS:
            raise UsageError(f"unknown detector {detector!r} (choose from {', '.join(DETECTORS)})")
        if max_scene < 0:
            raise UsageError("--max-scene must not be negative")
        options = IndexOptions(detector=detector, threshold=threshold, max_scene_seconds=max_scene, samples_per_scene=samples)
        summary = index_paths(paths, _index_dir(), _model_spec(model, pretrained), options)
        if as_json:
            _print_json(summary.to_dict())
        else:
            speed = f", {summary.video_seconds / summary.seconds:.1f}x real time" if summary.video_seconds else ""
            print(
                f"indexed {summary.added} new, {summary.updated} updated, {summary.skipped} unchanged, "
                f"{len(summary.failed)} failed; {summary.scenes} scenes in {summary.seconds:.1f} s{speed}",
                file=sys.stderr,
            )
        if summary.failed:
            done = summary.added + summary.updated + summary.skipped
            raise typer.Exit(EXIT_SOME_FAILED if done else 7)

    _run(body)


@app.command()
def search(
    query: Optional[str] = typer.Argument(None, help="What to look for, in words."),
    image: Optional[Path] = typer.Option(None, "--image", help="Search with a photo or frame instead of words."),
    top: int = typer.Option(10, "--top", "-n", min=1, help="How many results."),
    videos: bool = typer.Option(False, "--videos", help="Rank whole videos by their best scene."),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON."),
) -> None:
    """Ranked moments for a text or image query."""

    def body() -> None:
        if image is None and (query is None or not query.strip()):
            raise UsageError("empty query: give some words to search for, or --image FILE")
        if image is not None and query:
            raise UsageError("give either words or --image, not both")
        if image is not None and not image.is_file():
            raise UsageError(f"no such image: {image}")
        from .search import Searcher
        from .timecode import format_time

        searcher = Searcher(_index_dir())
        vector = searcher.image_vector(image) if image is not None else searcher.text_vector(query or "")
        hits = searcher.search(vector, top=top, by_video=videos)
        if as_json:
            _print_json({"query": query, "image": str(image) if image else None, "results": [h.to_dict() for h in hits]})
            return
        if not hits:
            print("no results", file=sys.stderr)
            return
        print(f"{'#':>3}  {'score':>6}  {'start':>12}  {'end':>12}  {'best':>12}  file")
        for h in hits:
            print(f"{h.rank:>3}  {h.score:6.3f}  {format_time(h.start):>12}  {format_time(h.end):>12}  "
                  f"{format_time(h.best_time):>12}  {h.path}")

    _run(body)


@app.command("export-frame")
def export_frame(
    query: Optional[str] = typer.Argument(None, help="What the frame should show, in words."),
    output: Path = typer.Option(..., "--output", "-o", help="Image to write (.jpg or .png)."),
    video: Optional[Path] = typer.Option(None, "--video", help="Take the frame from this video."),
    at: Optional[str] = typer.Option(None, "--at", help="Write the frame at this time (seconds or HH:MM:SS.mmm)."),
    image: Optional[Path] = typer.Option(None, "--image", help="Match this photo instead of words."),
    step: float = typer.Option(0.2, help="Seconds between frames scored inside the best scene."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Write the best matching frame (or the frame at a time) at full resolution."""

    def body() -> None:
        from .export import check_output, export_at, export_best
        from .timecode import format_time, parse_time

        check_output(output)
        if at is not None:
            if video is None:
                raise UsageError("--at needs --video")
            if query or image:
                raise UsageError("--at takes no query")
            result = export_at(video, parse_time(at), output)
        else:
            if image is None and (query is None or not query.strip()):
                raise UsageError("empty query: give some words, --image FILE, or --video with --at")
            if video is not None and not video.is_file():
                raise UsageError(f"no such video: {video}")
            if step <= 0:
                raise UsageError("--step must be positive")
            from .search import Searcher

            searcher = Searcher(_index_dir())
            vector = searcher.image_vector(image) if image is not None else searcher.text_vector(query or "")
            result = export_best(searcher, vector, output, video=video, step=step)
        if as_json:
            _print_json(result.to_dict())
        else:
            score = f"  score {result.score:.3f}" if result.score is not None else ""
            print(f"{result.output}  {result.video}  {format_time(result.time)}  {result.width}x{result.height}{score}")

    _run(body)


def _dir_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """What is indexed: videos, scenes, model, sizes."""

    def body() -> None:
        from .store import STORE_NAMES, IndexStore

        root = _index_dir()
        with IndexStore(root) as store:
            meta = store.meta()
            records = list(store.videos())
        info = {
            "index_dir": str(root),
            "model": meta.get("model"),
            "model_identity": meta.get("model_identity"),
            "videos": len(records),
            "scenes": sum(v.scene_count for v in records),
            "hours": round(sum(v.duration for v in records) / 3600, 3),
            "bytes": {name: _dir_size(root / f"{name}.ldb") for name in STORE_NAMES} | {"faiss": _dir_size(root / "faiss")},
        }
        if as_json:
            _print_json(info)
            return
        model = info["model"] or {}
        print(f"index:   {root}")
        print(f"model:   {model.get('name', '-')} / {model.get('pretrained', '-')}")
        print(f"videos:  {info['videos']}  ({info['hours']} h)")
        print(f"scenes:  {info['scenes']}")
        for name, size in info["bytes"].items():  # type: ignore[union-attr]
            print(f"{name + ':':<12}{size / 1e6:9.2f} MB")

    _run(body)


@app.command()
def scenes(
    video: Path = typer.Argument(..., help="An indexed video file."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """The scene list of an indexed video."""

    def body() -> None:
        from dataclasses import asdict

        from .store import IndexStore, video_id_for
        from .timecode import format_time

        with IndexStore(_index_dir()) as store:
            record = store.get_video(video_id_for(video.expanduser()))
            if record is None:
                raise UsageError(f"not in the index: {video}")
            scene_list = store.scenes(record)
        if as_json:
            _print_json({"video": record.path, "duration": record.duration, "fps": record.fps,
                         "scenes": [asdict(s) for s in scene_list]})
            return
        print(f"{'#':>4}  {'start':>12}  {'end':>12}  {'frames':>13}  samples")
        for s in scene_list:
            samples = " ".join(format_time(t) for t in s.sample_times)
            print(f"{s.index:>4}  {format_time(s.start_time):>12}  {format_time(s.end_time):>12}  "
                  f"{s.start_frame:>6}-{s.end_frame:<6}  {samples}")

    _run(body)


def run() -> None:
    """Console-script entry point."""
    app(prog_name="cliptool")
