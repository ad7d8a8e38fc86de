"""The `cliptool` command line: a thin layer over the library. Heavy imports live inside commands."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, Optional

import click
import typer
from typer.core import TyperGroup

from cliptool.config import INDEX_DIR_ENV
from cliptool.errors import CliptoolError, UsageError

# Options of the program as a whole, which may also follow the subcommand (`cliptool serve
# --index-dir DIR`): each takes one value.
GLOBAL_OPTIONS = ("--index-dir", "--text-precision")


def hoist_global_options(args: list[str], commands: Collection[str]) -> list[str]:
    """`args` with every global option that follows the subcommand moved to just before it, so
    that it may be written on either side (after `--` nothing moves)."""
    for at, arg in enumerate(args):
        if arg in commands:
            break
        if arg == "--":
            return args
    else:
        return args
    head, command, tail, moved = args[:at], args[at], [], []
    rest = iter(args[at + 1:])
    for arg in rest:
        if arg == "--":
            tail += [arg, *rest]
            break
        name = arg.split("=", 1)[0]
        if name in GLOBAL_OPTIONS:
            moved.append(arg)
            if "=" not in arg:
                value = next(rest, None)
                if value is not None:
                    moved.append(value)
        else:
            tail.append(arg)
    return [*head, *moved, command, *tail]


class _Group(TyperGroup):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_global_options(list(args), self.commands))


app = typer.Typer(
    cls=_Group,
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
    from cliptool.config import default_index_dir

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
        _exit_interrupted()
    except Exception as exc:
        if _caused_by_interrupt(exc):  # Ctrl-C inside an import turns into the import's own error
            _exit_interrupted()
        raise
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0) from None


def _exit_interrupted() -> None:
    _say_interrupted()
    # Every store is closed by now. Exit at once: interpreter shutdown while a library
    # thread (torch, the decoder) is still inside native code can abort the process.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)


def _caused_by_interrupt(exc: BaseException | None) -> bool:
    """Whether a KeyboardInterrupt is among an error's causes (a dataclass defined while Ctrl-C
    lands raises RuntimeError from it, for one)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _say_interrupted() -> None:
    print("cliptool: interrupted; everything committed before this point is kept", file=sys.stderr)


def _print_json(data: object) -> None:
    text = json.dumps(data, indent=2, ensure_ascii=False)
    try:
        text.encode(sys.stdout.encoding or "utf-8")
    except UnicodeEncodeError:
        # A path that is not valid UTF-8 (or a narrow terminal encoding): \u escapes keep the
        # JSON valid, and json.loads + os.fsencode give back the exact bytes.
        text = json.dumps(data, indent=2, ensure_ascii=True)
    print(text)


def _version(value: bool) -> None:
    if value:
        from cliptool import __version__

        print(f"cliptool {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    index_dir: Optional[Path] = typer.Option(
        None, "--index-dir", envvar=INDEX_DIR_ENV, help="Index directory [default: the user data dir]."
    ),
    text_precision: Optional[str] = typer.Option(
        None, "--text-precision", envvar="CLIPTOOL_TEXT_PRECISION", metavar="fp32|int8",
        help="Text tower for queries: fp32 (exact) or int8 (quantised: faster for a large tower, cosine about "
             "0.9997 to the exact vector) [default: fp32]."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    _State.index_dir = index_dir
    if text_precision is not None:  # for every searcher of this run (the web app's too)
        from cliptool.search.searcher import TEXT_PRECISION_ENV, check_text_precision

        try:
            os.environ[TEXT_PRECISION_ENV] = check_text_precision(text_precision)
        except CliptoolError as exc:
            _fail(f"--text-precision: {exc}", 2)


def _index() -> Any:
    from cliptool.api import Index

    return Index(_index_dir(), text_runtime="numpy")  # one query per process: nothing to start


_VECTOR_STORE_HELP = ("Search this vector store for this run: faiss (the local cache), milvus (Milvus Lite in "
                      "the index dir), milvus:///path/file.db, milvus://host:19530, milvus+https://host "
                      "[default: the one `index --vector-store` recorded, else faiss].")


def _use_vector_store(value: str | None) -> None:
    """--vector-store for one run: checked, then set as $CLIPTOOL_VECTOR_STORE for every searcher
    of this process (the web app's too)."""
    if value is None:
        return
    from cliptool.vectors.milvus import VECTOR_STORE_ENV, parse_vector_store

    parse_vector_store(value, _index_dir())
    os.environ[VECTOR_STORE_ENV] = value


@app.command()
def index(
    paths: list[Path] = typer.Argument(..., help="Video files or folders (searched recursively)."),
    model: Optional[str] = typer.Option(
        None, help="open_clip model name or config JSON, a model folder, hf-hub:ORG/NAME, or 'multilingual' "
        "(xlm-roberta-base-ViT-B-32: queries in ~100 languages) [default: ViT-B-32]."
    ),
    pretrained: Optional[str] = typer.Option(
        None, help="open_clip pretrained tag, a local checkpoint file or hf-hub:ORG/NAME [default: datacomp_xl_s13b_b90k]."
    ),
    detector: Optional[str] = typer.Option(
        None, help="Shot detector: content, adaptive, threshold, transnetv2 [default: the index's, else content]."),
    threshold: Optional[float] = typer.Option(None, help="Detector threshold [default: the index's, else the "
                                              "detector's own]."),
    max_scene: Optional[float] = typer.Option(None, help="Split shots longer than this many seconds into windows "
                                              "(0: never) [default: the index's, else 10]."),
    samples: Optional[int] = typer.Option(None, min=1, max=16, help="Frames embedded per scene [default: the "
                                          "index's, else 3]."),
    views: Optional[str] = typer.Option(
        None, "--views", help="What the image tower sees of each sample: squeeze (the whole frame squeezed into "
        "the tower's square), tiles (squares across the frame, edge to edge: 3 tower passes for 16:9), centre "
        "(the centre square only), pad (letterboxed whole frame and centre) [default: the index's, else squeeze]."),
    reindex: bool = typer.Option(False, "--reindex", help="Analyse every video found again, unchanged ones too "
                                 "(after changing --max-scene, --samples or the detector)."),
    prune: Optional[bool] = typer.Option(
        None, "--prune/--no-prune",
        help="Remove indexed videos whose files are gone from these folders [default: yes, except under "
        "a folder that holds no videos at all, which may be an unmounted disk; --prune removes those too].",
    ),
    file_timeout: float = typer.Option(
        120.0, "--file-timeout", help="Give up on a file after this many seconds without a decoded frame (0: never)."
    ),
    precision: Optional[str] = typer.Option(
        None, help="Image tower numbers: int8 (fastest; ONNX Runtime), bf16 (open_clip, bfloat16) or fp32 "
        "(open_clip, exact) [default: the index's, else int8]."
    ),
    ray: Optional[str] = typer.Option(
        None, "--ray", metavar="ADDRESS",
        help="Analyse the videos on a Ray cluster: auto (the cluster this machine belongs to), ray://HOST:PORT "
        "or HOST:PORT (its GCS); every node must see the videos and the model at the same paths.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    words: Optional[str] = typer.Option(
        None, "--words", help="Where each video's words come from, for search --said/--shows: subtitles (sidecar "
        ".srt/.vtt/.ass files and text tracks), speech, screen (text on screen), comma-separated, all or none; "
        "a change re-reads only the words [default: the index's, else subtitles]."),
    speech_engine: Optional[str] = typer.Option(
        None, "--speech-engine", help="Speech recognition for --words speech: pocketsphinx or whisper "
        "[default: the index's, else pocketsphinx]."),
    speech_model: Optional[str] = typer.Option(
        None, "--speech-model", metavar="NAME|FOLDER", help="The speech engine's model [default: its own]."),
    language: Optional[str] = typer.Option(
        None, "--language", help="The language spoken and shown (en, de, ...) [default: the engines' own]."),
    vector_store: Optional[str] = typer.Option(
        None, "--vector-store", help="Record where searches of this index look: faiss (the local cache), milvus "
        "(Milvus Lite in the index dir), milvus:///path/file.db, milvus://host:19530 or milvus+https://host; a "
        "Milvus collection is kept in step with every commit [default: as recorded, else faiss]."),
) -> None:
    """Find videos, cut them into scenes, embed and store them; later runs redo only what changed."""

    def body() -> None:
        from cliptool.analysis.detect import DETECTORS
        from cliptool.models.spec import PRECISIONS

        if detector is not None and detector not in DETECTORS:
            raise UsageError(f"unknown detector {detector!r} (choose from {', '.join(DETECTORS)})")
        if max_scene is not None and max_scene < 0:
            raise UsageError("--max-scene must not be negative")
        if file_timeout < 0:
            raise UsageError("--file-timeout must not be negative")
        if precision is not None and precision not in PRECISIONS:
            raise UsageError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
        from cliptool.models.views import VIEWS

        if views is not None and views not in VIEWS:
            raise UsageError(f"unknown views {views!r} (choose from {', '.join(VIEWS)})")
        from cliptool.analysis.words.extract import SPEECH_ENGINES, parse_words_option

        if speech_engine is not None and speech_engine not in SPEECH_ENGINES:
            raise UsageError(f"unknown speech engine {speech_engine!r} (choose from {', '.join(SPEECH_ENGINES)})")
        settings = {"detector": detector, "threshold": threshold, "max_scene_seconds": max_scene,
                    "samples_per_scene": samples, "views": views,
                    "words": parse_words_option(words) if words is not None else None,
                    "speech_engine": speech_engine, "speech_model": speech_model, "language": language}
        summary = _index().index(paths, model=model, pretrained=pretrained, settings=settings, prune=prune,
                                 file_timeout=file_timeout, precision=precision, ray=ray,
                                 vector_store=vector_store, reindex=reindex)
        if as_json:
            _print_json(summary.to_dict())
        else:
            speed = f", {summary.video_seconds / summary.seconds:.1f}x real time" if summary.video_seconds else ""
            if ray is not None:
                speed += f", on {summary.workers} Ray worker{'s' if summary.workers != 1 else ''}"
                speed += f" ({summary.retried} video(s) analysed again after a worker died)" if summary.retried else ""
            print(
                f"indexed {summary.added} new, {summary.updated} updated, {summary.moved} moved, "
                f"{summary.removed} removed, {summary.skipped} unchanged, {len(summary.failed)} failed"
                f"{f', {summary.words} with new words' if summary.words else ''}; "
                f"{summary.scenes} scenes in {summary.seconds:.1f} s{speed}",
                file=sys.stderr,
            )
            for path, error in summary.failed:
                print(f"failed: {path}: {error}", file=sys.stderr)
        if summary.failed:
            done = summary.added + summary.updated + summary.moved + summary.skipped
            raise typer.Exit(EXIT_SOME_FAILED if done else 7)

    _run(body)


_SETTLE_HELP = ("Index a file once its size and modification time have not changed for this many seconds "
                "(a copy in progress is never indexed half-way).")
_POLL_HELP = ("Rescan the folders every this many seconds instead of waiting for file events [default: file "
              "events; rescans every 30 s on a network file system, or where events are unavailable].")


def _watcher(paths: list[Path], model: str | None, pretrained: str | None, precision: str | None, settle: float,
             poll: float | None, file_timeout: float, prune: bool | None = None) -> Any:
    from cliptool.api import model_spec
    from cliptool.index.watch import Watcher
    from cliptool.models.spec import PRECISIONS

    if precision is not None and precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    if file_timeout < 0:
        raise UsageError("--file-timeout must not be negative")
    return Watcher(paths, _index_dir(), model_spec(model, pretrained), precision=precision, settle=settle,
                   poll=poll, file_timeout=file_timeout, prune=prune)


@app.command()
def watch(
    paths: list[Path] = typer.Argument(..., help="Video files or folders to keep indexed (searched recursively)."),
    model: Optional[str] = typer.Option(
        None, help="open_clip model name or config JSON, a model folder, hf-hub:ORG/NAME, or 'multilingual' "
        "[default: the index's, else ViT-B-32]."),
    pretrained: Optional[str] = typer.Option(
        None, help="open_clip pretrained tag, a local checkpoint file or hf-hub:ORG/NAME [default: the index's]."),
    precision: Optional[str] = typer.Option(
        None, help="Image tower numbers: int8, bf16 or fp32 [default: the index's, else int8]."),
    settle: float = typer.Option(2.0, "--settle", metavar="SECONDS", help=_SETTLE_HELP),
    poll: Optional[float] = typer.Option(None, "--poll", metavar="SECONDS", help=_POLL_HELP),
    prune: Optional[bool] = typer.Option(
        None, "--prune/--no-prune",
        help="Remove indexed videos whose files are gone from these folders [default: yes, except under "
        "a folder that holds no videos at all, which may be an unmounted disk; --prune removes those too].",
    ),
    file_timeout: float = typer.Option(
        120.0, "--file-timeout", help="Give up on a file after this many seconds without a decoded frame (0: never)."),
) -> None:
    """Keep the index in step with folders: new, changed, moved and deleted videos as they happen, until Ctrl-C."""

    def body() -> None:
        _watcher(paths, model, pretrained, precision, settle, poll, file_timeout, prune).run()

    _run(body)


@app.command()
def check(
    repair: bool = typer.Option(False, "--repair", help="Fix what can be fixed; a video whose stored data is damaged "
                                "is removed and analysed again from its file."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Verify that the stores and the search cache agree; exit 1 while problems remain."""

    def body() -> None:
        from cliptool.errors import printable

        report = _index().check(repair=repair)
        if as_json:
            _print_json(report.to_dict())
        else:
            print(f"index:   {report.index_dir}\nvideos:  {report.videos}\nscenes:  {report.scenes}\n"
                  f"cache:   {report.cache}")
            if report.collection:
                print(f"milvus:  {report.collection}")
            if report.thumbnails:
                print("thumbs:  " + ", ".join(f"{n} {what}" for what, n in report.thumbnails.items()))
            for p in report.problems:
                print(f"{'repaired' if p.repaired else 'problem'}: {printable(p.message)}")
            for path in report.reanalysed:
                print(f"analysed again: {printable(path)}")
            if report.ok:
                print("ok" if not report.problems else "ok after repair")
            elif not repair:
                print("run `cliptool check --repair` to fix what can be fixed", file=sys.stderr)
        if not report.ok:
            raise typer.Exit(1)

    _run(body)


# Hand-on options shared by search and similar.
_HTML_OPTION = typer.Option(None, "--html", help="Also write a contact sheet (self-contained HTML).")
_PLAY_OPTION = typer.Option(None, "--play", min=1, help="Open result N in a video player at its time.")
_EDL_OPTION = typer.Option(None, "--edl", help="Also write the results as a CMX 3600 EDL.")
_OTIO_OPTION = typer.Option(None, "--otio", help="Also write the results as an OpenTimelineIO timeline.")

# Query terms (search, export-frame) and filters (search, similar): see docs/query-syntax.md.
_AND_OPTION = typer.Option(None, "--and", metavar="<text>",
                           help="Also match these words (repeatable; a weight first: '2:on a beach').")
_NOT_OPTION = typer.Option(None, "--not", metavar="<text>",
                           help="Avoid these words (repeatable; '0.5:at night' weighs it less).")
_AND_IMAGE_OPTION = typer.Option(None, "--and-image", metavar="<file>",
                                 help="Also match this image file (repeatable; '2:still.jpg').")
_NOT_IMAGE_OPTION = typer.Option(None, "--not-image", metavar="<file>",
                                 help="Avoid what this image file shows (repeatable).")
_IN_OPTION = typer.Option(None, "--in", metavar="<folder>",
                          help="Only videos under this folder (repeatable; by real path).")
_MIN_SCORE_OPTION = typer.Option(None, "--min-score", metavar="<number>", help="Only hits scoring at least this much.")
_SINCE_OPTION = typer.Option(None, "--since", metavar="<date>", help="Only videos whose file date is on or after "
                             "this (YYYY-MM-DD or an ISO date and time).")
_UNTIL_OPTION = typer.Option(None, "--until", metavar="<date>", help="Only videos whose file date is on or before "
                             "this (YYYY-MM-DD: that whole day, or an ISO date and time).")
_MIN_DURATION_OPTION = typer.Option(None, "--min-duration", metavar="<duration>",
                                    help="Only videos at least this long (90, 1:30, 2m, 1h30m).")
_MAX_DURATION_OPTION = typer.Option(None, "--max-duration", metavar="<duration>",
                                    help="Only videos at most this long (90, 1:30, 2m, 1h30m).")


def _query_of(text: str | None, image: Path | None, also: list[str] | None, avoid: list[str] | None,
              also_images: list[str] | None, avoid_images: list[str] | None) -> Any:
    """The search.Query the options spell (main term: words or --image), checked before anything loads."""
    from cliptool.search.query import Query

    _check_query(text, image)
    query = Query.parse(text if image is None else None, image, also=also or [], avoid=avoid or [],
                        also_images=also_images or [], avoid_images=avoid_images or [])
    query.check_images()
    return query


def _filters_of(under: list[Path] | None, min_score: str | None, since: str | None, until: str | None,
                min_duration: str | None, max_duration: str | None) -> Any:
    """The search.Filters the options spell; one-line UsageError (exit 2) for a bad value."""
    from cliptool.search.filters import Filters

    for folder in under or []:
        if not folder.expanduser().exists():
            raise UsageError(f"--in: no such folder: {folder}")
    return Filters.parse(under or [], since=since, until=until, min_duration=min_duration,
                         max_duration=max_duration, min_score=min_score)


@app.command()
def search(
    query: Optional[str] = typer.Argument(None, help="What to look for, in words."),
    image: Optional[Path] = typer.Option(None, "--image", help="Search with a photo or frame instead of words."),
    top: int = typer.Option(10, "--top", "-n", min=1, help="How many results."),
    videos: bool = typer.Option(False, "--videos", help="Rank whole videos by their best scene."),
    also: Optional[list[str]] = _AND_OPTION,
    avoid: Optional[list[str]] = _NOT_OPTION,
    also_images: Optional[list[str]] = _AND_IMAGE_OPTION,
    avoid_images: Optional[list[str]] = _NOT_IMAGE_OPTION,
    under: Optional[list[Path]] = _IN_OPTION,
    min_score: Optional[str] = _MIN_SCORE_OPTION,
    since: Optional[str] = _SINCE_OPTION,
    until: Optional[str] = _UNTIL_OPTION,
    min_duration: Optional[str] = _MIN_DURATION_OPTION,
    max_duration: Optional[str] = _MAX_DURATION_OPTION,
    no_merge: bool = typer.Option(False, "--no-merge", help="Report each window of a long shot on its own "
                                  "[default: neighbouring windows that both match are one hit]."),
    said: Optional[str] = typer.Option(
        None, "--said", metavar="<words>", help="Words said there (subtitles, speech): stemmed, any case and "
        "accents; '\"a phrase\"' in quotes, 'birth*' a prefix. With a picture query, both ranked together."),
    shows: Optional[str] = typer.Option(
        None, "--shows", metavar="<words>", help="Words shown on screen there (index --words screen)."),
    then: Optional[list[str]] = typer.Option(
        None, "--then", metavar="<step>", help="A moment that must follow in the same video (repeatable, in "
        "order): words for a picture, 'said:WORDS' or 'shows:WORDS'."),
    within: Optional[str] = typer.Option(
        None, "--within", metavar="<duration>", help="With --then: the largest gap between the chain's moments "
        "(10s, 1m) [default: 10s]."),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON."),
    html: Optional[Path] = _HTML_OPTION,
    play: Optional[int] = _PLAY_OPTION,
    edl: Optional[Path] = _EDL_OPTION,
    otio: Optional[Path] = _OTIO_OPTION,
    vector_store: Optional[str] = typer.Option(None, "--vector-store", help=_VECTOR_STORE_HELP),
) -> None:
    """Ranked moments for a text or image query, words said or shown, or a chain of them in order."""

    def body() -> None:
        _use_vector_store(vector_store)
        wordy = said is not None or shows is not None or bool(then)
        picture = query is not None or image is not None or bool(also or also_images)
        terms = _query_of(query, image, also, avoid, also_images, avoid_images) if picture or not wordy else None
        where = _filters_of(under, min_score, since, until, min_duration, max_duration)
        gap = None
        if within is not None:
            from cliptool.search.filters import parse_duration

            gap = parse_duration(within, "--within")
        outputs = _HandOn.check(html, edl, otio, play)
        index = _index()
        hits = index.search(terms, top=max(top, play or 0), videos=videos, where=where, merge=not no_merge,
                            said=said, shows=shows, then=then or [], within=gap)
        shown = hits[:top]
        if as_json:
            _print_json({"query": query, "image": str(image) if image else None,
                         "terms": terms.to_list() if terms is not None else [],
                         **({"said": said, "shows": shows, "then": then or [], "within": gap} if wordy else {}),
                         "filters": where.to_dict(), "results": [h.to_dict() for h in shown]})
        else:
            _print_hits(shown)
        label = query if image is None else None
        if wordy:  # what the sheet and timelines say was asked: the picture, the words, the chain
            label = "; ".join([*([query] if query else []), *([f"said: {said}"] if said else []),
                               *([f"shows: {shows}"] if shows else []), *(f"then {t}" for t in then or [])])
        outputs.run(index, shown, hits, query=label, image=str(image) if image else None)

    _run(body)


class _HandOn:
    """What --html, --edl, --otio and --play do with a command's hits (outputs checked first)."""

    def __init__(self, html: Path | None, edl: Path | None, otio: Path | None, play: int | None) -> None:
        self.html, self.edl, self.otio, self.play = html, edl, otio, play

    @classmethod
    def check(cls, html: Path | None, edl: Path | None, otio: Path | None, play: int | None) -> _HandOn:
        from cliptool.writers.html import HTML_SUFFIXES
        from cliptool.writers.files import check_output_file
        from cliptool.writers.timeline import check_outputs

        html = check_output_file(html, HTML_SUFFIXES, "--html file") if html is not None else None
        otio, edl = check_outputs(otio, edl)
        return cls(html, edl, otio, play)

    def run(self, index: Any, shown: list[Any], hits: list[Any], *, query: str | None, image: str | None) -> None:
        from cliptool.errors import printable

        def report(message: str) -> None:
            print(f"cliptool: warning: {printable(message)}", file=sys.stderr)

        if self.html is not None:
            from cliptool.writers.html import write_contact_sheet

            write_contact_sheet(shown, self.html, query=query, image=image, report=report)
            print(f"contact sheet: {printable(str(self.html))}", file=sys.stderr)
        if self.edl is not None or self.otio is not None:
            from cliptool.writers.timeline import write_timelines

            write_timelines(shown, index.records_of(shown), otio_path=self.otio, edl_path=self.edl,
                            query=query, image=image, report=report)
            for path in (self.otio, self.edl):
                if path is not None:
                    print(f"timeline: {printable(str(path))}", file=sys.stderr)
        if self.play is not None:
            from cliptool.media.timecode import format_time
            from cliptool.writers.player import play as start_player

            if self.play > len(hits):
                raise UsageError(f"--play {self.play}: there {'is' if len(hits) == 1 else 'are'} only "
                                 f"{len(hits)} result{'' if len(hits) == 1 else 's'}")
            hit = hits[self.play - 1]
            command = start_player(hit.path, hit.start)  # the moment, from its start
            at = f" at {format_time(hit.start)}" if command.seeks else " (from the start: it takes no time)"
            print(f"playing #{hit.rank} in {command.name}{at}: {printable(hit.path)}", file=sys.stderr)


def _check_query(query: str | None, image: Path | None) -> None:
    """Words or an image, exactly one, checked before anything is loaded."""
    if image is None and (query is None or not query.strip()):
        raise UsageError("empty query: give some words to search for, or --image FILE")
    if image is not None and query:
        raise UsageError("give either words or --image, not both")
    if image is not None and not image.is_file():
        raise UsageError(f"no such image: {image}")


def _print_hits(hits: list[Any]) -> None:
    from cliptool.media.timecode import format_time

    if not hits:
        print("no results", file=sys.stderr)
        return
    print(f"{'#':>3}  {'score':>6}  {'start':>12}  {'end':>12}  {'best':>12}  file")
    for h in hits:
        print(f"{h.rank:>3}  {h.score:6.3f}  {format_time(h.start):>12}  {format_time(h.end):>12}  "
              f"{format_time(h.best_time):>12}  {h.path}")
        for d in getattr(h, "said", []) + getattr(h, "shown", []):
            lacks = f"  (without: {', '.join(d['missing'])})" if d.get("missing") else ""
            print(f"{'':>5}{'said' if d in h.said else 'shown'} {format_time(float(d['start']))}: {d['text']}{lacks}")


@app.command()
def similar(
    video: Optional[Path] = typer.Argument(None, help="An indexed video (with --at)."),
    at: Optional[str] = typer.Option(None, "--at", help="The moment of VIDEO to match (seconds or HH:MM:SS.mmm)."),
    scene: Optional[str] = typer.Option(None, "--scene", help="A scene id, as search --json gives it."),
    top: int = typer.Option(10, "--top", "-n", min=1, help="How many results."),
    videos: bool = typer.Option(False, "--videos", help="Rank videos by their best scene."),
    other_videos: bool = typer.Option(False, "--other-videos", help="Leave out the scene's own video."),
    under: Optional[list[Path]] = _IN_OPTION,
    min_score: Optional[str] = _MIN_SCORE_OPTION,
    since: Optional[str] = _SINCE_OPTION,
    until: Optional[str] = _UNTIL_OPTION,
    min_duration: Optional[str] = _MIN_DURATION_OPTION,
    max_duration: Optional[str] = _MAX_DURATION_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON."),
    html: Optional[Path] = _HTML_OPTION,
    play: Optional[int] = _PLAY_OPTION,
    edl: Optional[Path] = _EDL_OPTION,
    otio: Optional[Path] = _OTIO_OPTION,
    vector_store: Optional[str] = typer.Option(None, "--vector-store", help=_VECTOR_STORE_HELP),
) -> None:
    """Moments that look like a moment of a video, or like an indexed scene ("more like this")."""

    def body() -> None:
        _use_vector_store(vector_store)
        from cliptool.media.timecode import parse_time

        if scene is not None and (video is not None or at is not None):
            raise UsageError("give either VIDEO --at TIME or --scene SCENE_ID, not both")
        if scene is None and (video is None or at is None):
            raise UsageError("give VIDEO --at TIME (a moment of an indexed video) or --scene SCENE_ID"
                             if video is None or at is not None else "--at TIME is needed with VIDEO")
        if scene is not None and not scene.strip():
            raise UsageError("empty --scene")
        t = parse_time(at) if at is not None else None
        where = _filters_of(under, min_score, since, until, min_duration, max_duration)
        outputs = _HandOn.check(html, edl, otio, play)
        index = _index()
        n = max(top, play or 0)
        if scene is not None:
            scene_id, hits = scene, index.similar_scene(scene, top=n, videos=videos, other_videos=other_videos,
                                                        where=where)
        else:
            assert video is not None and t is not None
            _, record = index.scene_at(video, t)
            scene_id = record.scene_id
            hits = index.similar_scene(scene_id, top=n, videos=videos, other_videos=other_videos, at=t, where=where)
        shown = hits[:top]
        if as_json:
            _print_json({"query": None, "image": None, "scene_id": scene_id,
                         "video": str(video) if video is not None else None, "at": t,
                         "results": [h.to_dict() for h in shown]})
        else:
            _print_hits(shown)
        outputs.run(index, shown, hits, query=None, image=None)

    _run(body)


@app.command()
def clips(
    query: Optional[str] = typer.Argument(None, help="What to look for, in words."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the clips and manifest.json (made if missing)."),
    image: Optional[Path] = typer.Option(None, "--image", help="Search with a photo or frame instead of words."),
    top: int = typer.Option(10, "--top", "-n", min=1, help="How many clips."),
    videos: bool = typer.Option(False, "--videos", help="One clip per video: its best scene."),
    exact: bool = typer.Option(False, "--exact", help="Re-encode (H.264) to start and end on the exact frames "
                               "[default: stream copy from the key frame at or before each start]."),
    edl: Optional[Path] = typer.Option(None, "--edl", help="Also write the hits as a CMX 3600 EDL."),
    otio: Optional[Path] = typer.Option(None, "--otio", help="Also write the hits as an OpenTimelineIO timeline."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Write each hit's span as a video file, in rank order, with manifest.json."""

    def body() -> None:
        from cliptool.errors import printable
        from cliptool.media.timecode import format_time
        from cliptool.writers.clips import check_output_dir

        _check_query(query, image)
        outputs = _HandOn.check(None, edl, otio, None)
        if output.exists() and not output.is_dir():
            raise UsageError(f"not a folder: {output}")
        if not output.exists() and not output.expanduser().parent.is_dir():
            raise UsageError(f"output folder's parent does not exist: {output.expanduser().parent}")
        index = _index()
        text = query if image is None else None
        hits = index.search(text, image=image, top=top, videos=videos)
        if not hits:
            raise UsageError("no results to cut")
        check_output_dir(output)

        def report(message: str) -> None:
            print(f"cliptool: warning: {printable(message)}", file=sys.stderr)

        manifest = index.clips(hits, output, exact=exact, query=text, image=image, report=report)
        if as_json:
            _print_json(manifest)
        else:
            for c in manifest["clips"]:
                early = c["start"] - c["clip_start"]
                note = f"  (from the key frame {early:.3f} s before)" if early > 1e-3 else ""
                print(f"{printable(str(output / c['file']))}  {format_time(c['clip_start'])}-"
                      f"{format_time(c['clip_end'])}  {c['mode']}{note}")
        done = {c["rank"] for c in manifest["clips"]}
        outputs.run(index, [h for h in hits if h.rank in done], hits, query=text,
                    image=str(image) if image else None)
        print(f"{len(manifest['clips'])} clips, {len(manifest['failed'])} failed; manifest: "
              f"{printable(str(output / 'manifest.json'))}", file=sys.stderr)
        if manifest["failed"]:
            raise typer.Exit(EXIT_SOME_FAILED if manifest["clips"] else 7)

    _run(body)


@app.command("export-frame")
def export_frame(
    query: Optional[str] = typer.Argument(None, help="What the frame should show, in words."),
    output: Path = typer.Option(..., "--output", "-o", help="Image to write (.jpg or .png)."),
    video: Optional[Path] = typer.Option(None, "--video", help="Take the frame from this video."),
    at: Optional[str] = typer.Option(None, "--at", help="Write the frame at this time (seconds or HH:MM:SS.mmm)."),
    image: Optional[Path] = typer.Option(None, "--image", help="Match this photo instead of words."),
    also: Optional[list[str]] = _AND_OPTION,
    avoid: Optional[list[str]] = _NOT_OPTION,
    also_images: Optional[list[str]] = _AND_IMAGE_OPTION,
    avoid_images: Optional[list[str]] = _NOT_IMAGE_OPTION,
    step: float = typer.Option(0.2, help="Seconds between frames scored inside the best scene."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Write the best matching frame (or the frame at a time) at full resolution."""

    def body() -> None:
        from cliptool.writers.frame import check_output
        from cliptool.media.timecode import format_time, parse_time

        check_output(output)
        if at is None and image is None and (query is None or not query.strip()):
            raise UsageError("empty query: give some words, --image FILE, or --video with --at")
        if image is not None and query:
            raise UsageError("give either words or --image, not both")
        extra = bool(also or avoid or also_images or avoid_images)
        if at is not None and extra:
            raise UsageError("--at takes no query")
        terms = _query_of(query, image, also, avoid, also_images, avoid_images) if at is None else None
        result = _index().export_frame(output, terms if terms is not None else (query if image is None else None),
                                       image=image if terms is None else None, video=video,
                                       at=parse_time(at) if at is not None else None, step=step)
        if as_json:
            _print_json(result.to_dict())
        else:
            score = f"  score {result.score:.3f}" if result.score is not None else ""
            print(f"{result.output}  {result.video}  {format_time(result.time)}  {result.width}x{result.height}{score}")

    _run(body)


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """What is indexed: videos, scenes, model, sizes."""

    def body() -> None:
        info = _index().status()
        if as_json:
            _print_json(info)
            return
        model = info["model"] or {}
        print(f"index:   {info['index_dir']}")
        weights = model.get("pretrained") or ""  # none for a model folder or hf-hub: name: it brings its own
        print(f"model:   {model.get('name', '-')}" + (f" / {weights}" if weights else ""))
        print(f"videos:  {info['videos']}  ({info['hours']} h)")
        print(f"scenes:  {info['scenes']}")
        print(f"cache:   {info['cache']}")
        print(f"search:  {_search_index_line(info.get('search_index') or {})}")
        print(f"text:    {_text_tower_line(info.get('text_tower') or {})}")
        if info.get("vector_store", "faiss") != "faiss":
            print(f"vectors: {info['vector_store']} (recorded: searches ask Milvus)")
        for name, size in info["bytes"].items():  # type: ignore[union-attr]
            print(f"{name + ':':<12}{size / 1e6:9.2f} MB")

    _run(body)


def _text_tower_line(d: dict[str, Any]) -> str:
    """How text queries are encoded, and whether --text-precision int8 can be had."""
    if d.get("path") != "onnxruntime":
        return "open_clip (torch; the fast path cannot run this tower or is not exported yet)"
    from cliptool.models.text import int8_unavailable

    why = int8_unavailable(d.get("int8"))
    if why is None:
        return (f"ONNX Runtime, exact; --text-precision int8 available (cosine to the exact vectors "
                f"at least {d['int8'].get('min_cosine', 0):.4f} on the export's check texts)")
    return f"ONNX Runtime, exact; no int8 variant ({why})"


def _search_index_line(d: dict[str, Any]) -> str:
    """How the cache answers: exact, or approximate with its parameters and measured recall."""
    if "kind" not in d:
        return "-"
    where = f"{d['segments']} segment(s), {d['rows']} rows, {d['retired_rows']} retired"
    approx = d.get("approx")
    if not approx:
        return f"exact scan ({where})"
    return (f"approximate, FAISS {approx['factory']}, nprobe {approx['nprobe']}, re-ranking "
            f"{approx['candidates']} candidates exactly; recall@10 {approx['recall_at_10']:.3f} against the exact scan "
            f"(measured when built) ({where})")


@app.command()
def scenes(
    video: Path = typer.Argument(..., help="An indexed video file."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """The scene list of an indexed video."""

    def body() -> None:
        from dataclasses import asdict

        from cliptool.media.timecode import format_time

        record, scene_list = _index().scenes(video)
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


@app.command()
def keyframes(
    video: Path = typer.Argument(..., help="A video file."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the images and manifest.json."),
    count: Optional[str] = typer.Option(
        None, "--count", help="Exactly this many pictures (k-means per scene), or 'auto' (best silhouette) "
        "[default: every distinct moment, near-duplicates removed by a threshold learned from the video]."),
    min_count: int = typer.Option(2, "--min-count", help="Smallest count --count auto may choose."),
    max_count: int = typer.Option(24, "--max-count", help="Largest count --count auto may choose."),
    step: float = typer.Option(1 / 3, show_default="0.333", help="Seconds between candidate frames."),
    chapters: bool = typer.Option(False, "--chapters", help="Group the pictures into chapters (contiguous)."),
    keep_blank: bool = typer.Option(False, "--keep-blank", help="Keep black, white, solid and featureless frames."),
    keep_blurry: bool = typer.Option(False, "--keep-blurry", help="Keep frames much blurrier than those around them."),
    no_quality_filter: bool = typer.Option(False, "--no-quality-filter", help="Both --keep-blank and --keep-blurry."),
    keep_repeats: bool = typer.Option(
        False, "--keep-repeats", help="Keep a picture again when a later scene shows it again."),
    image_format: str = typer.Option("jpg", "--format", help="Image format: jpg or png."),
    detector: Optional[str] = typer.Option(
        None, help="Shot detector: content, adaptive, threshold, transnetv2 [default: the index's scenes "
        "when the video is indexed with this model, else content]."),
    threshold: Optional[float] = typer.Option(None, help="Detector threshold [default: the detector's own]."),
    no_index: bool = typer.Option(False, "--no-index", help="Do not reuse the index's scenes and embeddings."),
    views: Optional[str] = typer.Option(
        None, "--views", help="What the image tower sees of each frame: squeeze, tiles, pad or centre "
        "[default: the index's when the video is indexed, else squeeze]."),
    model: Optional[str] = typer.Option(
        None, help="open_clip model name or config JSON, a model folder, or hf-hub:ORG/NAME [default: the index's]."
    ),
    pretrained: Optional[str] = typer.Option(None, help="open_clip pretrained tag or a local checkpoint file."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Write one picture per distinct moment of a video (no near-duplicates, blanks or blur)."""

    def body() -> None:
        from cliptool.analysis.detect import DETECTORS

        if not video.is_file():
            raise UsageError(f"no such video: {video}")
        if detector is not None and detector not in DETECTORS:
            raise UsageError(f"unknown detector {detector!r} (choose from {', '.join(DETECTORS)})")
        auto = count is not None and count.strip().lower() == "auto"
        fixed: int | None = None
        if count is not None and not auto:
            try:
                fixed = int(count)
            except ValueError:
                raise UsageError(f"--count must be a number or 'auto', not {count!r}") from None
        from cliptool.analysis.keyframes import KeyframeOptions

        options = KeyframeOptions(
            step=step, count=fixed, auto_count=auto, min_count=min_count, max_count=max_count, chapters=chapters,
            blank_filter=not (keep_blank or no_quality_filter), blur_filter=not (keep_blurry or no_quality_filter),
            keep_repeats=keep_repeats, image_format=image_format.lower().lstrip("."),
            detector=detector or "content", detector_threshold=threshold, use_index=not no_index and detector is None,
            views=views,
        )
        manifest = _index().keyframes(video, output, options, model=model, pretrained=pretrained)
        from cliptool.media.timecode import format_time

        if as_json:
            _print_json(manifest)
            return
        for k in manifest["keyframes"]:
            chapter = f"  chapter {k['chapter'] + 1}" if k.get("chapter") is not None else ""
            print(f"{output / k['file']}  {k['timecode']}  scene {k['scene']}{chapter}")
        groups = manifest.get("chapters")
        for ch in groups or []:
            print(f"chapter {ch['index'] + 1}  {format_time(ch['start'])}-{format_time(ch['end'])}  "
                  f"{ch['keyframes']} picture{'' if ch['keyframes'] == 1 else 's'}")
        c = manifest["counts"]
        grouped = f" in {len(groups)} chapter{'' if len(groups) == 1 else 's'}" if groups is not None else ""
        print(f"{c['kept']} pictures{grouped} from {c['candidates']} candidates; dropped {c['duplicate']} "
              f"near-duplicates, {c['repeat']} repeats, {c['blank']} blank, {c['blurry']} blurry; manifest: "
              f"{output / 'manifest.json'}", file=sys.stderr)

    _run(body)


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on; a non-loopback one requires a token."),
    port: int = typer.Option(8765, min=1, max=65535, help="Port to listen on."),
    token: Optional[str] = typer.Option(None, help="Access token every request must carry [default: none on "
                                         "loopback; generated and printed otherwise]."),
    open_browser: bool = typer.Option(False, "--open", help="Open the page in the web browser."),
    vector_store: Optional[str] = typer.Option(None, "--vector-store", help=_VECTOR_STORE_HELP),
    watch: bool = typer.Option(False, "--watch", help="Also keep the index in step with the PATHs given, as "
                               "`cliptool watch` does, while serving."),
    paths: Optional[list[Path]] = typer.Argument(None, help="With --watch: video files or folders to keep indexed."),
    settle: float = typer.Option(2.0, "--settle", metavar="SECONDS", help="With --watch: i" + _SETTLE_HELP[1:]),
    poll: Optional[float] = typer.Option(None, "--poll", metavar="SECONDS", help="With --watch: r" + _POLL_HELP[1:]),
) -> None:
    """A local web app over the index: search, see, play; a JSON API under /api."""

    def body() -> None:
        if watch and not paths:
            raise UsageError("--watch needs the folders to watch: cliptool serve --watch PATH...")
        if paths and not watch:
            raise UsageError("folders to serve are not needed; to keep them indexed too, add --watch")
        watcher = _watcher(paths or [], None, None, None, settle, poll, 120.0) if watch else None
        _use_vector_store(vector_store)
        from cliptool.vectors.milvus import connect, resolve_target
        from cliptool.serve import serve as run_server

        target = resolve_target(_index_dir())
        if target is not None:
            connect(target)  # pymilvus missing or Milvus unreachable: one line now, not on each request

        try:
            run_server(_index_dir(), host=host, port=port, token=token, open_browser=open_browser,
                       beside=watcher.run if watcher is not None else None)
        except KeyboardInterrupt:
            pass

    _run(body)


def run() -> None:
    """Console-script entry point."""
    # File names that are not valid UTF-8 print as their raw bytes, as `ls` prints them.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")
    try:
        app(prog_name="cliptool")
    except SystemExit as exc:
        if exc.code == EXIT_INTERRUPTED:  # typer's own answer to a Ctrl-C outside a command body
            _say_interrupted()
        raise
    finally:
        # The command is over and has said so: a Ctrl-C while the interpreter shuts down (a
        # few tenths of a second) must not turn its exit status into a death by SIGINT or
        # print a traceback from the threading module.
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)
