"""The public face of cliptool: one `Index` object over an index directory. The CLI uses it.

    from cliptool import Index
    index = Index.open("~/cliptool-index")
    index.index(["~/Videos"])
    for hit in index.search("a dog in a park", top=5):
        print(hit.path, hit.start, hit.end, hit.score)
    index.similar(hit.scene_id)
    index.export_frame("dog.jpg", "a dog in a park")
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cliptool.config import IndexOptions
from cliptool.errors import CliptoolError, ModelUnavailableError, UsageError

if TYPE_CHECKING:
    from cliptool.index.check import CheckReport
    from cliptool.models.spec import ModelSpec
    from cliptool.writers.frame import ExportResult
    from cliptool.index.indexer import IndexSummary
    from cliptool.analysis.keyframes import KeyframeOptions
    from cliptool.search.filters import Filters
    from cliptool.search.query import Query
    from cliptool.search.searcher import Hit, Searcher
    from cliptool.search.signals import Step
    from cliptool.vectors.fulltext import WordHit
    from cliptool.store import SceneRecord, VideoRecord

PathLike = str | os.PathLike[str]


def model_spec(model: str | None = None, pretrained: str | None = None) -> ModelSpec | None:
    """The model a user named (open_clip name, short name such as "multilingual", or config
    JSON; pretrained tag or weights file), None when neither is named (then the index's model,
    else the default, is used)."""
    if model is None and pretrained is None:
        return None
    from cliptool.config import DEFAULT_MODEL, DEFAULT_PRETRAINED, MODEL_SHORT_NAMES
    from cliptool.models.spec import ModelSpec

    name, default_pretrained = MODEL_SHORT_NAMES.get(model or "", (model or DEFAULT_MODEL, DEFAULT_PRETRAINED))
    return ModelSpec(name, pretrained or default_pretrained)


class Index:
    """An index directory: its stores, its search cache and the model it was built with.

    Opening is cheap (nothing is read until asked). Methods raise `CliptoolError`s with
    one-line messages; `IndexMissingError` before anything was indexed.
    """

    def __init__(self, directory: PathLike | None = None, *, text_runtime: str = "onnxruntime",
                 vector_store: str | None = None, text_precision: str | None = None) -> None:
        """text_runtime: "onnxruntime" (the default: ~0.3 s once, then about half the time per
        text query) or "numpy" (nothing to start: best for a single query, as the CLI makes).
        vector_store: what searches ask ("faiss", "milvus://..."; see docs/cluster-and-milvus.md,
        "Serving from Milvus"); None: $CLIPTOOL_VECTOR_STORE, else the one the index recorded, else FAISS.
        text_precision: "fp32" (exact) or "int8" (the quantised text tower, faster for a large
        one); None: $CLIPTOOL_TEXT_PRECISION, else fp32."""
        self.text_runtime = text_runtime
        self.text_precision = text_precision
        self.vector_store = vector_store
        if directory is None:
            from cliptool.config import default_index_dir

            directory = default_index_dir()
        self.directory = Path(directory).expanduser()
        self._searcher: Searcher | None = None

    @classmethod
    def open(cls, directory: PathLike | None = None, *, text_runtime: str = "onnxruntime") -> Index:
        """The index at `directory` (default: $CLIPTOOL_INDEX_DIR, else the user data dir)."""
        return cls(directory, text_runtime=text_runtime)

    # -- building ----------------------------------------------------------------------------
    def index(
        self,
        paths: Iterable[PathLike],
        *,
        model: str | None = None,
        pretrained: str | None = None,
        precision: str | None = None,
        options: IndexOptions | None = None,
        prune: bool | None = None,
        file_timeout: float | None = None,
        progress: bool | None = None,
        report: Callable[[str], None] | None = None,
        ray: str | None = None,
        vector_store: str | None = None,
        settings: dict[str, Any] | None = None,
        reindex: bool = False,
    ) -> IndexSummary:
        """Indexes the videos under `paths`; later calls redo only what changed (see docs/commands.md).
        options: the analysis settings (None: the index's recorded ones, else the defaults);
        settings: some of them changed ({"max_scene_seconds": 5}); reindex: analyse every video
        found again (an unchanged one made with other settings is otherwise kept, and counted).
        ray: analyse them on a Ray cluster ("auto", "ray://HOST:PORT" or a GCS "HOST:PORT";
        a process already connected to Ray uses its connection), committed here as locally.
        vector_store ("faiss", "milvus://..."): recorded in the index for later searches; the
        Milvus collection is kept in step commit by commit."""
        from cliptool.index.indexer import index_paths
        from cliptool.index.worker import DEFAULT_FILE_TIMEOUT

        if vector_store is not None:
            from cliptool.vectors.milvus import record_vector_store

            record_vector_store(self.directory, vector_store)

        kwargs: dict[str, Any] = {} if report is None else {"report": report}
        return index_paths([Path(p) for p in paths], self.directory, model_spec(model, pretrained), options,
                           progress=progress, prune=prune, precision=precision, ray=ray, settings=settings,
                           reindex=reindex,
                           file_timeout=DEFAULT_FILE_TIMEOUT if file_timeout is None else file_timeout, **kwargs)

    def check(self, repair: bool = False, reanalyse: bool = True) -> CheckReport:
        """Whether the stores and the search cache agree; with repair, fixes what it can, and
        (reanalyse) analyses the videos it removed for damage again from their files."""
        from cliptool.index.check import VIDEO, Problem, check_index

        report = check_index(self.directory, repair=repair)
        again = [p for p in report.removed if os.path.isfile(p)] if repair and reanalyse else []
        if again:
            try:
                self.index(again, prune=False, progress=False, report=lambda message: None)
            except CliptoolError as exc:
                report.problems.append(Problem(VIDEO, f"could not analyse the removed videos again: {exc}"))
            else:
                report.reanalysed = again
        return report

    # -- reading -----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Where the index is, its model, how many videos, scenes and hours, and its sizes."""
        from cliptool.store import STORE_NAMES, IndexStore
        from cliptool.vectors.milvus import recorded_vector_store
        from cliptool.vectors.faiss import cache_state, describe_cache
        from cliptool.vectors.fulltext import fulltext_state

        with IndexStore(self.directory) as store:
            meta = store.meta()
            records = list(store.videos())
        sizes = {name: _dir_size(self.directory / f"{name}.ldb") for name in STORE_NAMES}
        return {
            "index_dir": str(self.directory),
            "model": meta.get("model"),
            "model_identity": meta.get("model_identity"),
            "videos": len(records),
            "scenes": sum(v.scene_count for v in records),
            "hours": round(sum(v.duration for v in records) / 3600, 3),
            "cache": cache_state(self.directory),
            "search_index": describe_cache(self.directory),  # exact or approximate, its parameters, recall
            "vector_store": recorded_vector_store(self.directory) or "faiss",
            "words": {"videos": sum(1 for v in records if v.words), "cache": fulltext_state(self.directory)},
            "text_tower": _text_tower(self.directory, meta.get("model_identity")),
            "bytes": sizes | {"faiss": _dir_size(self.directory / "faiss"),
                              "words": _dir_size_of_files(self.directory, "words.sqlite")},
        }

    def videos(self) -> list[VideoRecord]:
        """Every indexed video's record, by path."""
        from cliptool.store import IndexStore

        with IndexStore(self.directory) as store:
            return sorted(store.videos(), key=lambda v: v.path)

    def scenes(self, video: PathLike) -> tuple[VideoRecord, list[SceneRecord]]:
        """An indexed video's record and scene list (any spelling of its path)."""
        from cliptool.store import IndexStore, video_id_for

        with IndexStore(self.directory) as store:
            record = store.get_video(video_id_for(video))
            if record is None:
                raise UsageError(f"not in the index: {video}")
            return record, store.scenes(record)

    # -- searching ---------------------------------------------------------------------------
    def searcher(self) -> Searcher:
        """The index opened for queries, kept between calls and brought up to date on each."""
        from cliptool.search.searcher import Searcher

        if self._searcher is None:
            self._searcher = Searcher(self.directory, text_runtime=self.text_runtime, vector_store=self.vector_store,
                                      text_precision=self.text_precision)
        else:
            self._searcher.refresh()
        return self._searcher

    def query_vector(self, text: str | Query | None = None, image: PathLike | None = None) -> Any:
        """The embedding of a text or an image file (exactly one of them), or of a `Query`:
        the sum of weight * normalised vector over its terms, renormalised."""
        from cliptool.search.query import Query

        if isinstance(text, Query):
            if image is not None:
                raise UsageError("give the image as a term of the query")
            return self.searcher().query_vector(text)
        if (text is None or not text.strip()) == (image is None):
            raise UsageError("give either words or an image to search with" if image is None
                             else "give either words or an image, not both")
        searcher = self.searcher()
        return searcher.image_vector(Path(image)) if image is not None else searcher.text_vector(text or "")

    def search(self, text: str | Query | None = None, *, image: PathLike | None = None, top: int = 10,
               videos: bool = False, where: Filters | None = None, merge: bool = True, said: str | None = None,
               shows: str | None = None, then: Iterable[Step | str] = (), within: float | None = None) -> list[Hit]:
        """Ranked moments for words, an image or a `Query` of several weighted terms (words
        here are literal; `Query.parse` reads the command line's `2:a dog`); with videos, each
        video once by its best scene. `where` (a `Filters`) narrows the videos and sets a
        minimum score. With merge, neighbouring windows of one long shot that both match are
        one hit spanning them (`Hit.scene_ids`).

        said / shows: words said (subtitles, speech) or shown on screen at the moment, matched
        stemmed, case- and accent-folded ("a phrase" in quotes, `birth*` a prefix); with a
        picture query too, the signals are fused into one ranking (docs/query-syntax.md).
        then: further moments that must follow in the same video, in order (`Step`s, or
        strings as `--then` writes them: "a scoreboard", "said:goal", "shows:EXIT"), each gap
        at most `within` seconds (default 10). Each hit's `signals` says what matched, its
        `said`/`shown` the words with their times, and a chain's `chain` each step's moment."""
        if said is None and shows is None and not then:
            if within is not None:
                raise UsageError("--within needs --then")
            vector = self.query_vector(text, image)
            return self.searcher().search(vector, top=top, by_video=videos, where=where, merge=merge)
        from cliptool.search.query import Query
        from cliptool.search.signals import Step, search_steps

        if videos:
            raise UsageError("--videos does not combine with --said, --shows or --then")
        if top < 1:
            raise UsageError("--top must be at least 1")
        picture: Query | None
        if isinstance(text, Query):
            picture = text
        elif text is not None and text.strip() or image is not None:
            picture = Query.of(text if text and text.strip() else None, image)
        else:
            picture = None
        if picture is not None:
            picture.check_images()
        steps = [Step(picture, said, shows)] + [t if isinstance(t, Step) else Step.parse(t) for t in then]
        return search_steps(self.searcher(), steps, top=top, where=where, within=within)

    def words(self, video: PathLike, start: float | None = None, end: float | None = None) -> list[WordHit]:
        """The words of an indexed video (any spelling of its path), by time: its subtitle cues,
        runs of speech and screen text, those overlapping `start`-`end` when given."""
        from cliptool.vectors.fulltext import words_between

        record, _ = self.scenes(video)
        return words_between(self.directory, record.video_id, start, end)

    def similar(self, scene_id: str, *, top: int = 10, videos: bool = False) -> list[Hit]:
        """Moments most like an indexed scene (give a `Hit.scene_id`), that scene left out."""
        return self.searcher().similar(scene_id, top=top, by_video=videos)

    # -- pictures ----------------------------------------------------------------------------
    def export_frame(self, output: PathLike, text: str | Query | None = None, *, image: PathLike | None = None,
                     video: PathLike | None = None, at: float | None = None, step: float = 0.2) -> ExportResult:
        """Writes the best matching frame (in `video` if given), or with `at` the frame of
        `video` at that time, at full resolution (.jpg or .png by the output's name). `text`
        may be a `Query` of several weighted terms."""
        from cliptool.writers.frame import check_output, export_at, export_best

        output = check_output(Path(output))
        if at is not None:
            if video is None:
                raise UsageError("--at needs --video")
            if text or image:
                raise UsageError("--at takes no query")
            return export_at(Path(video), at, output)
        if video is not None and not Path(video).is_file():
            raise UsageError(f"no such video: {video}")
        if step <= 0:
            raise UsageError("--step must be positive")
        vector = self.query_vector(text, image)
        return export_best(self.searcher(), vector, output, video=Path(video) if video else None, step=step)

    def keyframes(self, video: PathLike, output: PathLike, options: KeyframeOptions | None = None, *,
                  model: str | None = None, pretrained: str | None = None,
                  progress: bool | None = None) -> dict[str, Any]:
        """A few distinct pictures of a video, written to `output` with manifest.json (see
        docs/commands.md); uses this index's model, and its vectors when the video is indexed with it
        (unless options.use_index is False)."""
        return extract_keyframes(video, output, options, model=model, pretrained=pretrained,
                                 index_dir=self.directory, progress=progress)

    # -- more like this, and results handed on (writers) --------------------------------------
    def scene_at(self, video: PathLike, t: float) -> tuple[VideoRecord, SceneRecord]:
        """The indexed scene of `video` on screen at `t` seconds (the last one for a time in
        its final frame's span); UsageError for a time outside the video."""
        from cliptool.errors import printable

        if t < 0:
            raise UsageError("time must not be negative")
        record, scene_list = self.scenes(video)
        if not scene_list:
            raise UsageError(f"no scenes indexed for {printable(str(video))}")
        for scene in scene_list:
            if scene.start_time <= t < scene.end_time:
                return record, scene
        last = scene_list[-1]
        if t < scene_list[0].start_time or t > max(last.end_time, record.duration) + 1e-3:
            from cliptool.media.timecode import format_time

            raise UsageError(f"{printable(str(video))} has no moment at {format_time(t)} "
                             f"(it lasts {format_time(max(last.end_time, record.duration))})")
        return record, last

    def similar_at(self, video: PathLike, t: float, *, top: int = 10, videos: bool = False,
                   other_videos: bool = False, where: Filters | None = None) -> list[Hit]:
        """Moments that look like `video` at `t`: queried by the sample frame of that scene
        nearest `t`; the scene itself left out (with other_videos, its whole video)."""
        _, scene = self.scene_at(video, t)
        return self.similar_scene(scene.scene_id, top=top, videos=videos, other_videos=other_videos, at=t,
                                  where=where)

    def similar_scene(self, scene_id: str, *, top: int = 10, videos: bool = False, other_videos: bool = False,
                      at: float | None = None, where: Filters | None = None) -> list[Hit]:
        """Moments most like an indexed scene, that scene left out; other_videos leaves out its
        whole video; with `at`, the query is the scene's sample frame nearest that time, else
        the scene's vector. With videos, each video once, by its best scene. `where` (a
        `Filters`) narrows the videos and sets a minimum score."""
        import dataclasses

        import numpy as np

        if top < 1:
            raise UsageError("--top must be at least 1")
        searcher = self.searcher()
        vectors = searcher.vectors
        row = vectors.row_of_scene(scene_id)
        if row is None:
            raise UsageError(f"no scene {scene_id!r} in the index (scene ids come from search results)")
        position = vectors.position(row)
        query = vectors.scene_vector(row)
        if at is not None:
            from cliptool.models.views import whole

            frames = vectors.frame_vectors(row)
            times = np.asarray(position.sample_times, dtype=np.float64)
            if len(frames) and len(times) == len(frames):  # a row per view of each sample
                nearest = times[int(np.argmin(np.abs(times - at)))]
                query = whole(np.asarray(frames[times == nearest], dtype=np.float32))
        if videos:
            wanted = vectors.size  # as search ranks videos: every scene a candidate
        elif other_videos:
            wanted = top + 1 + len(vectors.rows_of_video(position.video_id))
        else:
            wanted = top + 1
        hits = []
        seen: set[str] = set()
        for hit in searcher.search(query, top=wanted, by_video=False, where=where, merge=False):
            if hit.scene_id == scene_id or (other_videos and hit.video_id == position.video_id):
                continue
            if videos:
                if hit.video_id in seen:
                    continue
                seen.add(hit.video_id)
            hits.append(dataclasses.replace(hit, rank=len(hits) + 1))
            if len(hits) >= top:
                break
        return hits

    def records_of(self, hits: Iterable[Hit]) -> dict[str, VideoRecord]:
        """video id -> record of the videos the hits come from (for frame rates and lengths)."""
        from cliptool.store import IndexStore

        ids = {h.video_id for h in hits}
        with IndexStore(self.directory) as store:
            found = {vid: store.get_video(vid) for vid in ids}
        return {vid: rec for vid, rec in found.items() if rec is not None}

    def clips(self, hits: list[Hit], output: PathLike, *, exact: bool = False, query: str | None = None,
              image: PathLike | None = None, report: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Writes each hit's span as a video file in `output` plus manifest.json (see
        cliptool.writers.clips): stream copy from the key frame at or before each start, or
        with exact, re-encoded frame-accurately. Returns the manifest."""
        from cliptool.writers.clips import write_clips

        return write_clips(hits, Path(output), exact=exact, query=query,
                           image=str(image) if image is not None else None, report=report)


def extract_keyframes(video: PathLike, output: PathLike, options: KeyframeOptions | None = None, *,
              model: str | None = None, pretrained: str | None = None, index_dir: PathLike | None = None,
              progress: bool | None = None) -> dict[str, Any]:
    """A few distinct pictures of a video, written to `output` with manifest.json; returns the
    manifest. With index_dir, the model defaults to that index's, and its vectors are reused."""
    from cliptool.models.clip import ClipModel
    from cliptool.models.spec import ModelSpec
    from cliptool.index.indexer import resolve_model_spec
    from cliptool.analysis import keyframes as stage

    video = Path(video).expanduser()
    if not video.is_file():
        raise UsageError(f"no such video: {video}")
    options = options or stage.KeyframeOptions()
    options.check()
    if index_dir is not None:
        spec = resolve_model_spec(Path(index_dir), model_spec(model, pretrained))
    else:
        spec = (model_spec(model, pretrained) or ModelSpec()).check_files().resolved()
    loaded: list[ClipModel] = []

    def get_model() -> ClipModel:
        if not loaded:
            loaded.append(ClipModel(spec))
        return loaded[0]

    identity = spec.identity()
    if index_dir is not None and model is None and pretrained is None:
        identity = _reuse_identity(Path(index_dir), spec)
    return stage.extract_keyframes(video, Path(output), get_model, identity, options,
                             index_dir=Path(index_dir) if index_dir is not None else None, progress=progress)


def _reuse_identity(index_dir: Path, spec: ModelSpec) -> str:
    """The model identity under which keyframes reuse an index's vectors, given the index's own
    model: that model's, or, when its files are gone (it cannot be loaded, so nothing can be
    embedded by another model beside the index's vectors), the one the index recorded."""
    from cliptool.store import IndexStore

    try:
        spec.check_files()
    except ModelUnavailableError:
        store = IndexStore(index_dir)
        if store.exists():
            with store:
                recorded = store.meta().get("model_identity")
            if recorded:
                return str(recorded)
    return spec.identity()


def _text_tower(directory: Path, identity: str | None) -> dict[str, Any]:
    """How text queries are encoded: the exported ONNX tower (and its int8 variant), or open_clip."""
    from cliptool.models.clip import TEXTENC_DIR, text_encoder_identity
    from cliptool.models.text import export_meta

    meta = export_meta(directory / TEXTENC_DIR) if identity is not None else None
    if meta is None or text_encoder_identity(directory) != identity:
        return {"path": "open_clip"}
    return {"path": "onnxruntime", "int8": meta.get("int8")}


def _dir_size_of_files(folder: Path, name: str) -> int:
    """The bytes of an SQLite file and its -wal and -shm companions in `folder`."""
    return sum(p.stat().st_size for p in folder.glob(name + "*") if p.is_file())


def _dir_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total
