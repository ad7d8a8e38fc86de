"""Stage 8: search the index by text or by image: ranking and merging windows into moments.

A query (`search.query`) is one or more weighted terms. Filters (`search.filters`) decide which videos may answer (folder, file date,
duration) in Python over the few videos, then reach FAISS as a boolean mask over rows; a
minimum score applies to the scored hits. Neighbouring windows of one long shot that both
match are reported as one hit spanning them.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import numpy as np

from cliptool.models.clip import (
    ClipModel,
    TEXTENC_DIR,
    text_encoder_identity,
    text_export_damage,
    warn_slow_text_path,
)
from cliptool.models.spec import ModelSpec
from cliptool.errors import IndexMismatchError, UsageError, one_line
from cliptool.store import IndexStore, generation
from cliptool.search.filters import Filters, VideoFacts
from cliptool.search.query import Query
from cliptool.vectors.base import ScenePosition, VectorBackend
from cliptool.vectors.faiss import CacheChangedError

RERANK_CANDIDATES = 50  # scenes fetched by scene vector (and by frame) before re-scoring with their frames
FRAME_SCAN_LIMIT = 40_000  # up to this many frame vectors, each query also scans them all for candidates
RANKINGS = ("frames", "scene+frames", "scene")
PER_VIDEO_CANDIDATES = 8  # with --videos, each video's best scenes by scene vector re-scored by their frames
CANCELLED = 1e-4  # a query whose weighted sum is shorter than this (times the sum of |weights|) says nothing
TOUCHING = 1e-3  # seconds: windows of one shot that end and start within this are neighbours
# A hit is the moment around its best sample: the samples of its shot next to it in time that
# score within MOMENT_DROP of it (see `_moment`; measured by `python -m cliptool.bench --moments-only`).
MOMENT_DROP = 0.05

@dataclass
class Hit:
    """One search result: a moment. `start`-`end` is the span around `best_time` where the
    query matches about as well (never longer than the window it was found in; see
    `Searcher._moment`), inside the shot `shot_start`-`shot_end`; `scene_ids` are the windows
    of the shot the span touches. Without merging, the span is the scene (window) itself."""

    rank: int
    score: float
    path: str
    start: float
    end: float
    best_time: float
    scene_id: str
    scene_index: int
    video_id: str
    scene_ids: list[str] = field(default_factory=list)  # the scenes the hit spans, in time order
    shot_start: float | None = None  # the shot (all its windows) the moment lies in; None: the span's
    shot_end: float | None = None
    # with words in the query (search.signals): which signals matched ("picture", "said",
    # "shown"), the words matched with their times (vectors.fulltext.WordHit.to_dict each), and
    # for a --then chain each step's moment; all empty for a search by picture alone
    signals: list[str] = field(default_factory=list)
    said: list[dict[str, object]] = field(default_factory=list)
    shown: list[dict[str, object]] = field(default_factory=list)
    chain: list[dict[str, object]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.shot_start is None:
            self.shot_start = self.start
        if self.shot_end is None:
            self.shot_end = self.end

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["score"] = round(self.score, 6)
        for name in ("signals", "said", "shown", "chain"):
            if not d[name]:
                del d[name]
        return d


def _first_per_video(videos: np.ndarray, cap: int) -> np.ndarray:
    """Which entries of a best-first list of rows' videos are among their video's first `cap`."""
    order = np.argsort(videos, kind="stable")
    ranked = videos[order]
    rank_in_video = np.arange(len(videos)) - np.searchsorted(ranked, ranked)
    keep = np.zeros(len(videos), dtype=bool)
    keep[order[rank_in_video < cap]] = True
    return keep


def read_image(path: Path) -> np.ndarray:
    """An image file as RGB uint8; UsageError when it is missing or not an image."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no such image: {path}")
    data = np.fromfile(path, dtype=np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise UsageError(f"not a readable image: {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


_T = TypeVar("_T")


def _again_on_a_changed_cache(method: Callable[..., _T]) -> Callable[..., _T]:
    """Runs a query again on the cache as it is now when a merge removed a segment the
    searcher had open but not yet read (an index run in another process)."""

    @functools.wraps(method)
    def wrapper(self: Searcher, *args: object, **kwargs: object) -> _T:
        try:
            return method(self, *args, **kwargs)
        except CacheChangedError:
            self.refresh(force=True)
            return method(self, *args, **kwargs)

    return wrapper


TEXT_PRECISION_ENV = "CLIPTOOL_TEXT_PRECISION"  # set by the global --text-precision for one run


def check_text_precision(value: str) -> str:
    from cliptool.models.text import check_precision

    try:
        return check_precision(value)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


class Searcher:
    """An index opened for queries; loads the model it was built with on first need.

    text_runtime: how the exported text tower starts in ONNX Runtime: "numpy" (the name of the
    numpy encoder this replaced; one query per process: starts with nothing to prepare, ~0.15 s
    of CPU less) or "onnxruntime" (packs the weights once at start, then each query takes about
    a third of the CPU; for a searcher that lives on).
    text_precision: "fp32" (the exact text tower) or "int8" (its quantised variant: about half
    the time per query for a large tower, at a cosine of about 0.9997 to the exact vector);
    None: $CLIPTOOL_TEXT_PRECISION, else fp32.
    """

    def __init__(self, index_dir: Path, spec: ModelSpec | None = None, *, text_runtime: str = "numpy",
                 vector_store: str | None = None, text_precision: str | None = None) -> None:
        from cliptool.vectors import open_vectors

        self.index_dir = Path(index_dir)
        self.text_runtime = text_runtime
        self.text_precision = check_text_precision(text_precision or os.environ.get(TEXT_PRECISION_ENV) or "fp32")
        self.vector_store = vector_store  # None: $CLIPTOOL_VECTOR_STORE, else the index's recorded one, else FAISS
        self._generation = generation(self.index_dir)
        self.vectors: VectorBackend = open_vectors(self.index_dir, vector_store)
        recorded = ModelSpec.from_record(self.vectors.model_spec)
        # a given model is compared in the index's precision (search has no precision of its own)
        if spec is not None and spec.resolved().with_precision(recorded.precision).identity() != \
                self.vectors.meta["model_identity"]:
            raise IndexMismatchError(
                f"index at {self.index_dir} was built with {self.vectors.meta['model_identity']}; "
                "search it without --model/--pretrained, or use another --index-dir"
            )
        self.spec = recorded
        self._model: ClipModel | None = None
        self._text_encoder: object = None  # None: not looked for yet; False: none usable
        self.use_exported_text_encoder = True
        # How a candidate scene is scored: "frames" (its best sample frame: what the query
        # matches), "scene+frames" (the better of that and its scene vector, the old way) or
        # "scene" (its scene vector alone). The bench compares them.
        self.ranking = "frames"
        self._row_videos: tuple[list[str], np.ndarray] | None = None
        self._facts: dict[str, VideoFacts] | None = None
        self._masks: dict[Filters, np.ndarray] = {}

    def exported_text_encoder(self) -> object | None:
        """The ONNX text encoder exported into the index for this model (see textenc), if any.

        It gives open_clip's text vectors without importing torch or open_clip, which is what
        lets a search in a new process answer in a fraction of a second.
        """
        if self._text_encoder is None:
            self._text_encoder = False
            if text_encoder_identity(self.index_dir) == self.vectors.meta.get("model_identity"):
                from concurrent.futures import ThreadPoolExecutor

                from cliptool.models.text import OnnxTextEncoder

                folder, prepack = self.index_dir / TEXTENC_DIR, self.text_runtime != "numpy"
                with ThreadPoolExecutor(1) as pool:  # its files checked while ONNX Runtime loads them
                    damage = pool.submit(text_export_damage, self.index_dir, self.text_precision)
                    try:
                        try:
                            self._text_encoder = OnnxTextEncoder.load(folder, prepack=prepack,
                                                                      precision=self.text_precision)
                        except ValueError as exc:
                            if self.text_precision == "fp32":
                                raise
                            print(f"note: {one_line(exc)}; using the exact text tower", file=sys.stderr)
                            self._text_encoder = OnnxTextEncoder.load(folder, prepack=prepack)
                    except Exception:  # noqa: BLE001 - damaged or foreign export, or ONNX Runtime failed: open_clip
                        self._text_encoder = False
                    if damage.result() is not None and self._text_encoder:
                        print(f"cliptool: {damage.result()}; using open_clip's text tower "
                              "(`cliptool check --repair` removes it, the next index run writes it again)",
                              file=sys.stderr)
                        self._text_encoder = False
        return self._text_encoder or None

    @property
    def model(self) -> ClipModel:
        if self._model is None:
            self._model = ClipModel(self.spec)
        return self._model

    def text_vector(self, text: str) -> np.ndarray:
        if not text or not text.strip():
            raise UsageError("empty query: give some words to search for, or --image FILE")
        encoder = self.exported_text_encoder() if self.use_exported_text_encoder else None
        if encoder is not None:
            return encoder.encode(text.strip())  # type: ignore[attr-defined]
        if self.use_exported_text_encoder:
            warn_slow_text_path(self.spec)
        return self.model.encode_text([text.strip()])[0]

    def image_vector(self, path: Path) -> np.ndarray:
        image = read_image(path)  # a bad file fails before the model starts loading
        return self.model.encode_picture(image)  # the whole photo, every part of it seen

    def _candidate(self, row: int, scene_score: float, query: np.ndarray) -> tuple[float, float, ScenePosition]:
        """(score, best sample time, position) of a scene. A scene scores what the query actually
        matches: its best sample frame (`ranking` "frames"). The normalised mean of unlike frames
        sits close to everything, so the scene vector only finds candidates; a scene without
        frame vectors scores its scene vector."""
        pos = self.vectors.position(row)
        times, frame_scores = sample_scores(self.vectors.frame_vectors(row), pos.sample_times, query)
        if len(frame_scores) == 0:
            return scene_score, pos.start_time, pos
        best = int(np.argmax(frame_scores))
        score = float(frame_scores[best])
        if self.ranking == "scene+frames":
            score = max(scene_score, score)
        elif self.ranking == "scene":
            score = scene_score
        return score, times[best], pos

    def query_vector(self, query: Query | str) -> np.ndarray:
        """The vector of a query: the sum of weight * normalised vector over its terms,
        renormalised. UsageError when the terms cancel out (the sum is about zero)."""
        if isinstance(query, str):
            query = Query.of(query)
        query.check_images()
        total = np.zeros(self.vectors.dim, dtype=np.float64)
        for term in query.terms:
            vector = self.text_vector(term.text) if term.text is not None else self.image_vector(Path(term.image or ""))
            vector = np.asarray(vector, dtype=np.float64)
            total += term.weight * vector / max(float(np.linalg.norm(vector)), 1e-12)
        length = float(np.linalg.norm(total))
        if length <= CANCELLED * sum(abs(t.weight) for t in query.terms):
            raise UsageError("the query's terms cancel out (their weighted sum is zero): "
                             "change a weight or leave out a --not term")
        return (total / length).astype(np.float32)

    @staticmethod
    def _hits(candidates: list[tuple[float, float, ScenePosition]], top: int, by_video: bool) -> list[Hit]:
        candidates.sort(key=lambda c: -c[0])
        hits: list[Hit] = []
        seen: set[str] = set()
        for score, best_time, pos in candidates:
            if by_video:
                if pos.video_id in seen:
                    continue
                seen.add(pos.video_id)
            hits.append(Hit(len(hits) + 1, score, pos.path, pos.start_time, pos.end_time, best_time,
                            pos.scene_id, pos.scene_index, pos.video_id, [pos.scene_id]))
            if len(hits) >= top:
                break
        return hits

    @_again_on_a_changed_cache
    def search(self, query: np.ndarray, top: int = 10, by_video: bool = False, where: Filters | None = None,
               merge: bool = True) -> list[Hit]:
        """Ranked scenes for a query vector; with by_video, each video once, ranked by its best scene.

        Candidates come from FAISS by scene vector (the mean of a scene's sample frames) and,
        on a cache small enough to scan, by frame vector too; each is then scored by
        `_candidate` (its best frame). `where` narrows the videos (as a row mask FAISS honours)
        and drops hits under its min_score. With merge, neighbouring windows of one long shot
        that both make the results become one hit spanning them (see `_merged`).
        """
        if top < 1:
            raise UsageError("--top must be at least 1")
        allowed = self.allowed_rows(where) if where is not None and where.narrows_videos else None
        if allowed is not None and not allowed.any():
            return []
        if allowed is not None and allowed.all():
            allowed = None  # every row may answer: FAISS's plain scan is the faster one
        floor = where.min_score if where is not None else None
        k = max(4 * top, RERANK_CANDIDATES)
        while True:
            if by_video:
                candidates, exhausted = self._video_candidates(query, top, allowed)
            else:
                candidates, exhausted = self._scene_candidates(query, k, allowed)
            if floor is not None:
                scored = len(candidates)
                candidates = [c for c in candidates if c[0] >= floor]
                exhausted = exhausted or len(candidates) < scored  # deeper ones score lower still
            if not merge:
                return self._hits(candidates, top, by_video)
            if by_video:  # each video's best candidate, as the moment a plain search gives it
                return self._video_moments(candidates, top, query)
            hits = self._merged(candidates, top, query)
            if len(hits) >= top or exhausted:
                return hits
            k *= 4  # windows merged into fewer hits than asked for: look deeper

    def _scene_candidates(self, query: np.ndarray, k: int, allowed: np.ndarray | None
                          ) -> tuple[list[tuple[float, float, ScenePosition]], bool]:
        """The k best rows by scene vector (and, on a small cache, the scenes of the k best
        frames), scored by `_candidate`; and whether that was every allowed row."""
        scene_scores, rows = self.vectors.scores(query, k, allowed=allowed)
        by_row = {int(r): float(s) for s, r in zip(scene_scores, rows)}
        if self.ranking != "scene":
            for r in self.vectors.frame_candidates(query, k, FRAME_SCAN_LIMIT, allowed=allowed):
                if r not in by_row:
                    by_row[r] = float(self.vectors.scene_vector(r) @ query)
        return [self._candidate(r, s, query) for r, s in by_row.items()], len(rows) < k

    def _video_candidates(self, query: np.ndarray, top: int, allowed: np.ndarray | None
                          ) -> tuple[list[tuple[float, float, ScenePosition]], bool]:
        """Candidates for ranking videos, scored by `_candidate`: the rows a plain search would
        take (so the best video is the best moment's), then rows by scene vector and, on a
        cache small enough to scan, by frame vector, in growing batches until they come from
        `top` videos, each video's first PER_VIDEO_CANDIDATES of them. On a scanned cache this
        is exact: the first `top` videos among the best frames are the best `top` videos."""
        _, row_video = self.row_videos()
        first = max(4 * top, RERANK_CANDIDATES)
        k = first
        while True:
            scene_scores, rows = self.vectors.scores(query, k, allowed=allowed)
            if len(rows) < k or len(np.unique(row_video[rows])) >= top:
                break
            k *= 4
        keep = _first_per_video(row_video[rows], PER_VIDEO_CANDIDATES)
        keep[:first] = True
        by_row = {int(r): float(s) for r, s, kept in zip(rows, scene_scores, keep) if kept}
        if self.ranking != "scene":
            k = first
            while True:
                found = np.asarray(self.vectors.frame_candidates(query, k, FRAME_SCAN_LIMIT, allowed=allowed),
                                   dtype=np.int64)
                if len(found) < k or len(np.unique(row_video[found])) >= top:
                    break
                k *= 4
            for r in found[_first_per_video(row_video[found], PER_VIDEO_CANDIDATES)]:
                if int(r) not in by_row:
                    by_row[int(r)] = float(self.vectors.scene_vector(int(r)) @ query)
        return [self._candidate(r, s, query) for r, s in by_row.items()], True

    # -- which rows may answer ----------------------------------------------------------------
    def row_videos(self) -> tuple[list[str], np.ndarray]:
        """The cache's videos and, for each row, the number of its video in that list (-1 for a
        row hidden since the build). Read from the cache's per-row video column; kept until
        the searcher takes in new commits."""
        if self._row_videos is None:
            ids, column = self.vectors.row_videos()
            self._row_videos = ([str(v) for v in ids], column)
        return self._row_videos

    def video_facts(self) -> dict[str, VideoFacts]:
        """video id -> what filters look at (real path, file date, length): from the cache's
        video list when it has them all, else from the videos store; read once per generation."""
        if self._facts is None:
            listed = self.vectors.listed_videos()
            if listed and all("mtime" in v for v in listed):
                self._facts = {v["video_id"]: VideoFacts(v["path"], float(v["mtime"]), float(v["duration"]))
                               for v in listed}
            else:  # a cache with videos committed since, or one built before it listed file dates
                with IndexStore(self.index_dir) as store:
                    self._facts = {r.video_id: VideoFacts(r.path, r.mtime, r.duration) for r in store.videos()}
        return self._facts

    def allowed_rows(self, where: Filters) -> np.ndarray:
        """A boolean mask over the cache's rows: those of the videos `where` allows. The
        videos are judged in Python (there are few); the rows follow with one numpy gather.
        The last few masks are kept until the searcher takes in new commits."""
        native = self.vectors.native_filter(where)  # Milvus: a filter expression, not a mask
        if native is not None:
            return native
        key = replace(where, min_score=None)
        mask = self._masks.get(key)
        if mask is None:
            ids, column = self.row_videos()
            facts = self.video_facts()
            ok = np.array([where.allows(facts.get(vid)) for vid in ids] + [False], dtype=bool)
            mask = ok[column]  # a hidden row (-1) takes the last entry: False
            if len(self._masks) >= 8:
                self._masks.pop(next(iter(self._masks)))
            self._masks[key] = mask
        return mask

    # -- the moment, not the shot -----------------------------------------------------------
    def _shot(self, pos: ScenePosition, videos: dict[str, list[tuple[int, ScenePosition]]]
              ) -> list[tuple[int, ScenePosition]]:
        """The windows (row, position) of the shot `pos` lies in, in time order: its neighbours
        of one video that continue the shot and touch in time."""
        if pos.video_id not in videos:
            rows = self.vectors.rows_of_video(pos.video_id)
            videos[pos.video_id] = sorted(((int(r), self.vectors.position(int(r))) for r in rows),
                                          key=lambda rp: rp[1].scene_index)
        windows = videos[pos.video_id]
        at = next((i for i, (_, p) in enumerate(windows) if p.scene_index == pos.scene_index), None)
        if at is None:
            return [(pos.row, pos)]
        lo = hi = at
        while lo > 0 and _continues(windows[lo - 1][1], windows[lo][1]):
            lo -= 1
        while hi + 1 < len(windows) and _continues(windows[hi][1], windows[hi + 1][1]):
            hi += 1
        return windows[lo:hi + 1]

    def _shot_samples(self, shot: list[tuple[int, ScenePosition]], query: np.ndarray) -> list[tuple[float, float]]:
        """(time, score) of every sample of a shot, in time order (see `sample_scores`)."""
        out: list[tuple[float, float]] = []
        for row, p in shot:
            times, scores = sample_scores(self.vectors.frame_vectors(row), p.sample_times, query)
            out += zip(times, (float(s) for s in scores))
        return sorted(out)

    def _moment(self, cand: tuple[float, float, ScenePosition], query: np.ndarray,
                videos: dict[str, list[tuple[int, ScenePosition]]]
                ) -> tuple[Hit, float, float, list[tuple[float, float]]]:
        """The hit of a candidate window: the run of its shot's samples around the best one that
        score at least its score - MOMENT_DROP, widened to the first samples on either side that
        do not (the moment lies between them), else to the shot's ends; at most as long as the
        window it was found in, around the best time. Returns the hit, the stretch that matches
        as well before that cut (which later candidates of the same match fall in) and the
        shot's samples (time, score)."""
        score, best_time, pos = cand
        shot = self._shot(pos, videos)
        samples = self._shot_samples(shot, query)
        shot_start, shot_end = shot[0][1].start_time, shot[-1][1].end_time
        if not samples:
            start, end = pos.start_time, pos.end_time
            reach = (start, end)
        else:
            best = min(range(len(samples)), key=lambda i: (abs(samples[i][0] - best_time), -samples[i][1]))
            floor = samples[best][1] - MOMENT_DROP
            lo = hi = best
            while lo > 0 and samples[lo - 1][1] >= floor:
                lo -= 1
            while hi + 1 < len(samples) and samples[hi + 1][1] >= floor:
                hi += 1
            start = samples[lo - 1][0] if lo > 0 else shot_start
            end = samples[hi + 1][0] if hi + 1 < len(samples) else shot_end
            reach = (start, end)
            cap = max(pos.end_time - pos.start_time, 1e-3)
            if end - start > cap:  # a long stretch that matches: the window's length around the best time
                start = min(max(start, best_time - cap / 2), end - cap)
                end = start + cap
        ids = [p.scene_id for _, p in shot if p.end_time > start + TOUCHING and p.start_time < end - TOUCHING]
        hit = Hit(0, score, pos.path, start, end, best_time, pos.scene_id, pos.scene_index, pos.video_id,
                  ids or [pos.scene_id], shot_start, shot_end)
        return hit, reach[0], reach[1], samples

    def _video_moments(self, candidates: list[tuple[float, float, ScenePosition]], top: int,
                       query: np.ndarray) -> list[Hit]:
        videos: dict[str, list[tuple[int, ScenePosition]]] = {}
        hits: list[Hit] = []
        seen: set[str] = set()
        for cand in sorted(candidates, key=lambda c: -c[0]):
            if cand[2].video_id in seen:
                continue
            seen.add(cand[2].video_id)
            hit, _, _, _ = self._moment(cand, query, videos)
            hit.rank = len(hits) + 1
            hits.append(hit)
            if len(hits) >= top:
                break
        return hits

    def _merged(self, candidates: list[tuple[float, float, ScenePosition]], top: int, query: np.ndarray) -> list[Hit]:
        """The top hits, best first, each the moment around a candidate's best sample (see
        `_moment`). A candidate whose best time falls in the matching stretch of a moment
        already taken, or whose moment overlaps one, is that moment again and is left out; so
        one appearance in a long shot is one hit however many of its windows matched, and two
        in one shot are two hits. Each moment depends on its shot alone, not on `top` or on the
        other hits."""
        videos: dict[str, list[tuple[int, ScenePosition]]] = {}
        hits: list[Hit] = []
        reaches: list[tuple[str, float, float]] = []
        shots: list[list[tuple[float, float]]] = []  # each hit's shot samples
        for cand in sorted(candidates, key=lambda c: -c[0]):
            pos = cand[2]
            if any(v == pos.video_id and lo - TOUCHING <= cand[1] <= hi + TOUCHING for v, lo, hi in reaches):
                continue
            hit, lo, hi, samples = self._moment(cand, query, videos)
            if any(h.video_id == hit.video_id and h.start < hit.end - TOUCHING and hit.start < h.end - TOUCHING
                   for h in hits):
                continue
            if any(h.video_id == hit.video_id and (h.shot_start, h.shot_end) == (hit.shot_start, hit.shot_end)
                   and not _dip_between(s, h, hit) for h, s in zip(hits, shots)):
                continue  # the same shot, matched as well all the way between: the same moment
            reaches.append((hit.video_id, lo, hi))
            shots.append(samples)
            hit.rank = len(hits) + 1
            hits.append(hit)
            if len(hits) >= top:
                break
        return hits

    @_again_on_a_changed_cache
    def similar(self, scene_id: str, top: int = 10, by_video: bool = False) -> list[Hit]:
        """Scenes most like an indexed one ("more like this"), that scene itself left out."""
        row = self.vectors.row_of_scene(scene_id)
        if row is None:
            raise UsageError(f"no scene {scene_id!r} in the index (scene ids come from search results)")
        query = self.vectors.scene_vector(row)
        hits = [h for h in self.search(query, top=top + 1, by_video=by_video, merge=False) if h.scene_id != scene_id]
        for rank, hit in enumerate(hits[:top], 1):
            hit.rank = rank
        return hits[:top]

    def refresh(self, force: bool = False) -> bool:
        """Takes in what was committed since this searcher opened the index; True if anything was
        (force: loads the cache again whatever the stores say)."""
        if generation(self.index_dir) == self._generation and not force:
            return False
        from cliptool.vectors import open_vectors

        self._generation = generation(self.index_dir)
        self.vectors = open_vectors(self.index_dir, self.vector_store)
        self._frame_rows = None
        self._row_videos, self._facts, self._masks = None, None, {}
        return True

    @_again_on_a_changed_cache
    def best_in_video(self, query: np.ndarray, video_id: str) -> Hit | None:
        """The best moment of one video for a query, scored and spanned as `search` does."""
        rows = self.vectors.rows_of_video(video_id)
        candidates = [self._candidate(int(r), float(self.vectors.scene_vector(int(r)) @ query), query) for r in rows]
        hits = self._video_moments(candidates, 1, query)
        return hits[0] if hits else None


def _continues(before: ScenePosition, after: ScenePosition) -> bool:
    """Whether `after` is the next window of `before`'s shot (no cut between, touching times)."""
    return (after.scene_index == before.scene_index + 1 and after.continues_shot
            and abs(before.end_time - after.start_time) <= TOUCHING)


def sample_scores(frames: np.ndarray, row_times: list[float], query: np.ndarray) -> tuple[list[float], np.ndarray]:
    """Each sample's time and score: the best of its views' (a frame row each, sharing the
    sample's time; models.views) and of the whole frame's (their normalised mean), so that a
    shape at the edge scores as its view and a query picture as the whole frame it shows."""
    if len(frames) == 0:
        return [], np.zeros(0, dtype=np.float32)
    rows = np.asarray(frames @ query, dtype=np.float32)
    times = np.asarray(row_times[: len(rows)], dtype=np.float64)
    if len(times) < len(rows) or len(np.unique(times)) == len(times):  # one view per sample
        return [float(t) for t in row_times[: len(rows)]], rows
    order, scores = [], []
    for t in dict.fromkeys(times.tolist()):
        views = frames[times == t]
        mean = views.mean(axis=0)
        whole = float(mean @ query) / max(float(np.linalg.norm(mean)), 1e-12)
        order.append(float(t))
        scores.append(max(float(rows[times == t].max()), whole))
    return order, np.asarray(scores, dtype=np.float32)


def _dip_between(samples: list[tuple[float, float]], a: Hit, b: Hit) -> bool:
    """Whether a shot's samples between two moments' best times match clearly worse than both
    (by MOMENT_DROP): two appearances, not one stretch of a shot that matches all along."""
    lo, hi = sorted((a.best_time, b.best_time))
    between = [s for t, s in samples if lo < t < hi]
    return bool(between) and min(between) < min(a.score, b.score) - MOMENT_DROP
