"""Stage 8: search the index by text or by image."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .embed import TEXTENC_DIR, ClipModel, ModelSpec, text_encoder_identity, warn_slow_text_path
from .errors import IndexMismatchError, UsageError
from .store import generation
from .vector_index import LiveIndex, ScenePosition, VectorIndex, load_vector_index

RERANK_CANDIDATES = 50  # scenes fetched by scene vector (and by frame) before re-scoring with their frames
FRAME_SCAN_LIMIT = 40_000  # up to this many frame vectors, each query also scans them all for candidates
RANKINGS = ("frames", "scene+frames", "scene")


@dataclass
class Hit:
    """One search result: a scene (or, with by_video, a video's best scene)."""

    rank: int
    score: float
    path: str
    start: float
    end: float
    best_time: float
    scene_id: str
    scene_index: int
    video_id: str

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["score"] = round(self.score, 6)
        return d


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


class Searcher:
    """An index opened for queries; loads the model it was built with on first need.

    text_runtime: how the exported text tower starts in ONNX Runtime: "numpy" (the name of the
    numpy encoder this replaced; one query per process: starts with nothing to prepare, ~0.15 s
    of CPU less) or "onnxruntime" (packs the weights once at start, then each query takes about
    a third of the CPU; for a searcher that lives on).
    """

    def __init__(self, index_dir: Path, spec: ModelSpec | None = None, *, text_runtime: str = "numpy") -> None:
        self.index_dir = Path(index_dir)
        self.text_runtime = text_runtime
        self._generation = generation(self.index_dir)
        self.vectors: VectorIndex | LiveIndex = load_vector_index(self.index_dir)
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

    def exported_text_encoder(self) -> object | None:
        """The ONNX text encoder exported into the index for this model (see textenc), if any.

        It gives open_clip's text vectors without importing torch or open_clip, which is what
        lets a search in a new process answer in a fraction of a second.
        """
        if self._text_encoder is None:
            self._text_encoder = False
            if text_encoder_identity(self.index_dir) == self.vectors.meta.get("model_identity"):
                from .textenc import OnnxTextEncoder

                try:
                    self._text_encoder = OnnxTextEncoder.load(self.index_dir / TEXTENC_DIR,
                                                              prepack=self.text_runtime != "numpy")
                except Exception:  # noqa: BLE001 - damaged or foreign export, or ONNX Runtime failed: open_clip
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
        return self.model.encode_images([image])[0]

    def _candidate(self, row: int, scene_score: float, query: np.ndarray) -> tuple[float, float, ScenePosition]:
        """(score, best sample time, position) of a scene. A scene scores what the query actually
        matches: its best sample frame (`ranking` "frames"). The normalised mean of unlike frames
        sits close to everything, so the scene vector only finds candidates; a scene without
        frame vectors scores its scene vector."""
        pos = self.vectors.position(row)
        frame_scores = self.vectors.frame_vectors(row) @ query
        if len(frame_scores) == 0:
            return scene_score, pos.start_time, pos
        best = int(np.argmax(frame_scores))
        score = float(frame_scores[best])
        if self.ranking == "scene+frames":
            score = max(scene_score, score)
        elif self.ranking == "scene":
            score = scene_score
        return score, pos.sample_times[best], pos

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
                            pos.scene_id, pos.scene_index, pos.video_id))
            if len(hits) >= top:
                break
        return hits

    def search(self, query: np.ndarray, top: int = 10, by_video: bool = False) -> list[Hit]:
        """Ranked scenes for a query vector; with by_video, each video once, ranked by its best scene.

        Candidates come from FAISS by scene vector (the mean of a scene's sample frames) and,
        on a cache small enough to scan, by frame vector too; each is then scored by
        `_candidate` (its best frame).
        """
        if top < 1:
            raise UsageError("--top must be at least 1")
        k = self.vectors.size if by_video else max(4 * top, RERANK_CANDIDATES)
        scene_scores, rows = self.vectors.scores(query, k)
        by_row = {int(r): float(s) for s, r in zip(scene_scores, rows)}
        if self.ranking != "scene":
            for r in self.vectors.frame_candidates(query, k, FRAME_SCAN_LIMIT):
                if r not in by_row:
                    by_row[r] = float(self.vectors.scene_vector(r) @ query)
        candidates = [self._candidate(r, s, query) for r, s in by_row.items()]
        return self._hits(candidates, top, by_video)

    def similar(self, scene_id: str, top: int = 10, by_video: bool = False) -> list[Hit]:
        """Scenes most like an indexed one ("more like this"), that scene itself left out."""
        row = self.vectors.row_of_scene(scene_id)
        if row is None:
            raise UsageError(f"no scene {scene_id!r} in the index (scene ids come from search results)")
        query = self.vectors.scene_vector(row)
        hits = [h for h in self.search(query, top=top + 1, by_video=by_video) if h.scene_id != scene_id]
        for rank, hit in enumerate(hits[:top], 1):
            hit.rank = rank
        return hits[:top]

    def refresh(self) -> bool:
        """Takes in what was committed since this searcher opened the index; True if anything was."""
        if generation(self.index_dir) == self._generation:
            return False
        self._generation = generation(self.index_dir)
        self.vectors = load_vector_index(self.index_dir)
        self._frame_rows = None
        return True

    def best_in_video(self, query: np.ndarray, video_id: str) -> Hit | None:
        """The best scene of one video for a query, scored as `search` scores scenes."""
        rows = self.vectors.rows_of_video(video_id)
        candidates = [self._candidate(int(r), float(self.vectors.scene_vector(int(r)) @ query), query) for r in rows]
        hits = self._hits(candidates, 1, False)
        return hits[0] if hits else None
