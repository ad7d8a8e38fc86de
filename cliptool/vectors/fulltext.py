"""The full-text cache: every video's words (subtitles, speech, screen text) in an SQLite FTS5
index, `<index dir>/words.sqlite`, for `search --said` and `--shows`.

Derived, like the FAISS cache: built from the stores (each video's words list and scene list),
never the source of truth. It records the stores' generation token it matches and, per video,
the scene version and words version it holds; `sync_fulltext` compares those with the video
records and rewrites only the videos that differ, in one SQLite transaction (so a reader sees
the old or the new state, and a crash leaves the old one). A missing or damaged file is built
again from the stores (`rebuild_fulltext`; `cliptool check` finds it, `check --repair` and the
next search rebuild it).

Tokens: FTS5's `porter unicode61 remove_diacritics 2` tokenizer: case- and accent-folded,
English (Porter) stems. A row is a subtitle cue, a run of spoken words (up to `SPEECH_ROW_SECONDS`,
broken at pauses of `SPEECH_GAP` s), or the text seen on screen at one time. Ranking: BM25.
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cliptool.analysis.words.base import Word
from cliptool.errors import CliptoolError, UsageError
from cliptool.store import IndexStore, SceneRecord, VideoRecord, generation

FULLTEXT_FILE = "words.sqlite"
FORMAT = "2"
TOKENIZER = "porter unicode61 remove_diacritics 2"
SAID_SOURCES = ("subtitle", "speech")
SHOWN_SOURCES = ("screen",)
SPEECH_ROW_SECONDS = 8.0
SPEECH_GAP = 1.0
_OPEN, _CLOSE = "\x02", "\x03"  # match markers highlight() puts around matched tokens
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS videos(video_id TEXT PRIMARY KEY, version TEXT, words TEXT, path BLOB);
CREATE TABLE IF NOT EXISTS cues(id INTEGER PRIMARY KEY, video_id TEXT, start REAL, "end" REAL, source TEXT,
                                language TEXT, scene_id TEXT, scene_index INTEGER, box TEXT);
CREATE INDEX IF NOT EXISTS cues_video ON cues(video_id, start);
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(text, tokenize='{TOKENIZER}');
"""


@dataclass
class WordHit:
    """One row of the full-text cache that a query matched (or that lies in a span): its video,
    time, text, where it came from, the scene it falls in and, for a match, its score (the number
    of the query's terms it holds, plus its BM25 relevance squashed into 0..1: b / (1 + b)) and
    the character ranges of the matched words in `text`."""

    video_id: str
    path: str
    start: float
    end: float
    text: str
    source: str
    language: str
    scene_id: str
    scene_index: int
    score: float = 0.0
    marks: list[tuple[int, int]] = field(default_factory=list)
    box: list[float] | None = None
    missing: list[str] = field(default_factory=list)  # words of the query this row lacks (a partial match)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form a hit's `said`/`shown` snippets take."""
        d: dict[str, Any] = {"start": round(self.start, 3), "end": round(self.end, 3), "text": self.text,
                             "source": self.source, "language": self.language,
                             "marks": [list(m) for m in self.marks]}
        if self.box is not None:
            d["box"] = self.box
        if self.missing:
            d["missing"] = self.missing
        return d


def fulltext_path(index_dir: Path) -> Path:
    return Path(index_dir) / FULLTEXT_FILE


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), timeout=30.0, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    return db


# -- building from the stores ------------------------------------------------------------------
def _rows(words: list[Word]) -> Iterator[Word]:
    """The rows a video's words make: a cue each; spoken words gathered into runs (so a phrase
    matches across them); screen words seen at one time (one frame) into one line."""
    speech = [w for w in words if w.source == "speech"]
    screen = [w for w in words if w.source == "screen"]
    yield from (w for w in words if w.source == "subtitle")
    run: list[Word] = []
    for w in sorted(speech, key=lambda w: w.start):
        if run and (w.start - run[-1].end > SPEECH_GAP or w.end - run[0].start > SPEECH_ROW_SECONDS):
            yield _joined(run)
            run = []
        run.append(w)
    if run:
        yield _joined(run)
    by_time: dict[tuple[float, float], list[Word]] = {}
    for w in screen:
        by_time.setdefault((w.start, w.end), []).append(w)
    for group in by_time.values():
        yield group[0] if len(group) == 1 else _joined(group)


def _joined(words: list[Word]) -> Word:
    return Word(min(w.start for w in words), max(w.end for w in words), " ".join(w.text for w in words),
                words[0].source, words[0].language, words[0].box if len(words) == 1 else None)


def _scene_of(t: float, scenes: list[SceneRecord]) -> SceneRecord | None:
    """The scene on screen at `t` (the last one for a time past the end)."""
    if not scenes:
        return None
    for s in scenes:
        if s.start_time <= t < s.end_time:
            return s
    return scenes[0] if t < scenes[0].start_time else scenes[-1]


def _read_video(store: IndexStore, record: VideoRecord) -> list[tuple[Any, ...]]:
    """The cue rows of one video: (start, end, source, language, scene id, scene index, box, text)."""
    words = []
    for raw in store.words(record):
        try:
            words.append(Word.from_json(raw))
        except (ValueError, TypeError):
            continue
    scenes = store.scenes(record) if words else []
    out = []
    for w in _rows(words):
        scene = _scene_of(w.start, scenes)
        out.append((w.start, w.end, w.source, w.language, scene.scene_id if scene else "",
                    scene.index if scene else 0, json.dumps(list(w.box)) if w.box is not None else None, w.text))
    return out


def sync_fulltext(index_dir: Path, rebuild: bool = False, video_ids: Iterable[str] | None = None,
                  since: str | None = None) -> int:
    """Brings the full-text cache in line with the stores (building it when missing, damaged or
    with `rebuild`); returns how many videos' rows were rewritten. IndexMissingError when there
    is no index. video_ids and since: the videos a writer just committed and the generation
    before; when the cache matched that generation only they are compared (the cost is that of
    the change), else every video record is."""
    index_dir = Path(index_dir)
    path = fulltext_path(index_dir)
    token = generation(index_dir)  # read first: a commit after it makes the cache stale again
    if rebuild:
        _remove(path)
    only = list(video_ids) if video_ids is not None and since else None
    try:
        return _sync(index_dir, path, token, only, since)
    except sqlite3.DatabaseError:  # a damaged file: built again from the stores
        _remove(path)
        return _sync(index_dir, path, token)


def _remove(path: Path) -> None:
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        p.unlink(missing_ok=True)


def _sync(index_dir: Path, path: Path, token: str, only: list[str] | None = None, since: str | None = None) -> int:
    with closing(_connect(path)) as db:
        db.executescript(_SCHEMA)
        meta = dict(db.execute("SELECT key, value FROM meta"))
        if meta.get("format") not in (None, FORMAT):  # made by another cliptool: built again
            raise sqlite3.DatabaseError(f"full-text cache format {meta.get('format')}")
        if meta.get("format") == FORMAT and meta.get("generation") == token and token:
            return 0
        if only is not None and not (meta.get("format") == FORMAT and meta.get("generation") == since):
            only = None  # the cache was behind before these commits: every video is compared
        if only is None:
            held = {vid: (version, words)
                    for vid, version, words in db.execute("SELECT video_id, version, words FROM videos")}
        else:
            held = {vid: (version, words) for vid in only
                    for version, words in db.execute("SELECT version, words FROM videos WHERE video_id = ?", (vid,))}
        with IndexStore(index_dir) as store:
            if only is None:
                records = {r.video_id: r for r in store.videos()}
            else:
                found = {vid: store.get_video(vid) for vid in only}
                records = {vid: r for vid, r in found.items() if r is not None}
            changed = [r for vid, r in records.items() if held.get(vid) != (r.version, r.words)]
            rows = {r.video_id: _read_video(store, r) for r in changed}
        gone = [vid for vid in held if vid not in records]
        db.execute("BEGIN IMMEDIATE")
        try:
            for vid in gone + [r.video_id for r in changed]:
                db.execute("DELETE FROM fts WHERE rowid IN (SELECT id FROM cues WHERE video_id = ?)", (vid,))
                db.execute("DELETE FROM cues WHERE video_id = ?", (vid,))
                db.execute("DELETE FROM videos WHERE video_id = ?", (vid,))
            for r in changed:
                for start, end, source, language, sid, sindex, box, text in rows[r.video_id]:
                    cur = db.execute("INSERT INTO cues(video_id, start, \"end\", source, language, scene_id, "
                                     "scene_index, box) VALUES (?,?,?,?,?,?,?,?)",
                                     (r.video_id, start, end, source, language, sid, sindex, box))
                    db.execute("INSERT INTO fts(rowid, text) VALUES (?, ?)", (cur.lastrowid, text))
                db.execute("INSERT INTO videos VALUES (?,?,?,?)", (r.video_id, r.version, r.words, _path_bytes(r.path)))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('format', ?)", (FORMAT,))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('generation', ?)", (token,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return len(changed) + len(gone)


def _path_bytes(path: str) -> bytes:
    """A path as the bytes that name the file (a name that is not valid UTF-8 included)."""
    return os.fsencode(path)


def _path_text(raw: bytes | str) -> str:
    return os.fsdecode(raw) if isinstance(raw, bytes) else raw


def rebuild_fulltext(index_dir: Path) -> int:
    """Builds the full-text cache again from the stores."""
    return sync_fulltext(index_dir, rebuild=True)


def fulltext_state(index_dir: Path) -> str:
    """"missing", "current" or "stale" (behind the stores: the next search catches it up)."""
    path = fulltext_path(index_dir)
    if not path.exists():
        return "missing"
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)) as db:
            meta = dict(db.execute("SELECT key, value FROM meta"))
    except sqlite3.DatabaseError:
        return "damaged"
    return "current" if meta.get("generation") == generation(index_dir) and meta.get("format") == FORMAT else "stale"


def fulltext_problems(index_dir: Path, records: list[VideoRecord]) -> list[str]:
    """What `check` finds wrong with the full-text cache: missing while videos have words,
    damaged (SQLite's and FTS5's integrity checks), or holding other versions of videos than
    the stores while it claims to be current."""
    path = fulltext_path(index_dir)
    if not path.exists():
        return ["the full-text cache is missing"] if any(r.words for r in records) else []
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)) as db:
            result = db.execute("PRAGMA integrity_check").fetchone()
            if not result or result[0] != "ok":
                return [f"the full-text cache is damaged ({result[0] if result else 'no answer'})"]
            meta = dict(db.execute("SELECT key, value FROM meta"))
            if meta.get("format") != FORMAT:
                return [f"the full-text cache has format {meta.get('format')}, not {FORMAT}"]
            held = {vid: (version, words) for vid, version, words in db.execute("SELECT video_id, version, words FROM videos")}
            cues = db.execute("SELECT count(*) FROM cues").fetchone()[0]
            rows = db.execute("SELECT count(*) FROM fts").fetchone()[0]
        with closing(sqlite3.connect(str(path), timeout=30.0)) as db:  # FTS5's own check needs a writable handle
            db.execute("INSERT INTO fts(fts, rank) VALUES ('integrity-check', 1)")
    except sqlite3.DatabaseError as exc:
        return [f"the full-text cache is damaged ({exc})"]
    if cues != rows:
        return [f"the full-text cache is damaged ({cues} cues, {rows} indexed rows)"]
    if meta.get("generation") == generation(index_dir):
        wrong = sum(1 for r in records if held.get(r.video_id) != (r.version, r.words))
        wrong += sum(1 for vid in held if vid not in {r.video_id for r in records})
        if wrong:
            return [f"the full-text cache disagrees with the stores on {wrong} video(s)"]
    return []


# -- queries -------------------------------------------------------------------------------------
_TOKEN = re.compile(r'"([^"]*)"|(\S+)')
_WORD = re.compile(r"\w+", re.UNICODE)


def query_terms(text: str) -> list[tuple[str, bool]]:
    """What a user typed as FTS5 terms, each with whether it is required: a quoted "phrase" must
    appear as it is (required); a bare word may be one a recogniser misheard (see `search_words`);
    a word ending in `*` matches as a prefix (`birth*`). Punctuation is dropped; UsageError when
    no word is left."""
    terms: list[tuple[str, bool]] = []
    for phrase, bare in _TOKEN.findall(text or ""):
        if phrase:
            tokens = _WORD.findall(phrase)
            if tokens:
                terms.append(('"' + " ".join(tokens) + '"' + (" *" if phrase.rstrip().endswith("*") else ""), True))
            continue
        prefix = bare.endswith("*")
        tokens = _WORD.findall(bare)
        for i, token in enumerate(tokens):
            terms.append((f'"{token}"' + (" *" if prefix and i == len(tokens) - 1 else ""), False))
    if not terms:
        raise UsageError(f"no words to look for in {text!r}")
    return terms


def match_expression(text: str) -> str:
    """The FTS5 query for a row that holds every word of `text` (in any order; see `query_terms`)."""
    return " AND ".join(term for term, _ in query_terms(text))


def words_needed(terms: list[tuple[str, bool]], share: float) -> int:
    """How many of the query's terms a row must hold: all of them, except that of three or more
    bare words `share` (rounded up) will do, so that one misheard or misread word in a long
    query does not lose the moment; a quoted phrase is always needed."""
    required = sum(1 for _, req in terms if req)
    optional = len(terms) - required
    if share >= 1.0 or optional < 3:
        return len(terms)
    return required + max(1, math.ceil(share * optional - 1e-9))


def _marks(highlighted: str) -> tuple[str, list[tuple[int, int]]]:
    """The text and the character ranges `highlight()` marked in it."""
    out: list[str] = []
    marks: list[tuple[int, int]] = []
    at = 0
    start = None
    for ch in highlighted:
        if ch == _OPEN:
            start = at
        elif ch == _CLOSE:
            if start is not None:
                marks.append((start, at))
            start = None
        else:
            out.append(ch)
            at += 1
    return "".join(out), marks


@contextmanager
def _reader(index_dir: Path) -> Iterator[sqlite3.Connection]:
    """The cache brought up to date and opened for reading; where it cannot be written (a
    read-only index), read as it is."""
    index_dir = Path(index_dir)
    path = fulltext_path(index_dir)
    try:
        sync_fulltext(index_dir)
        db = _connect(path)
    except (OSError, sqlite3.Error) as exc:
        why = getattr(exc, "strerror", None) or exc
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
            db.execute("SELECT count(*) FROM videos").fetchone()
        except sqlite3.Error:
            raise CliptoolError(f"cannot update the full-text cache in {index_dir}: {why}") from None
    with closing(db):
        yield db


def search_words(index_dir: Path, text: str, sources: Iterable[str], limit: int = 200,
                 videos: set[str] | None = None, share: float = 1.0) -> list[WordHit]:
    """Rows whose words match `text` (see `query_terms`), from `sources`: those that hold every
    word first, best BM25 first; then, where `share` < 1 lets a long query match in part
    (`words_needed`), rows that hold most of its words, the most words first, each hit naming
    the words it lacks (`missing`); only those of `videos` when given. A hit's score orders them
    so (see WordHit): BM25 alone is near 0 in a small collection (every word is common there)."""
    terms = query_terms(text)
    needed = words_needed(terms, share)
    sources = tuple(sources)
    marks = "?, " * len(sources)
    fetch = limit * 8 if videos is not None else limit
    sql = (f"SELECT fts.rowid, cues.video_id, videos.path, cues.start, cues.\"end\", highlight(fts, 0, ?, ?), "
           f"cues.source, cues.language, cues.scene_id, cues.scene_index, bm25(fts), cues.box FROM fts "
           f"JOIN cues ON cues.id = fts.rowid JOIN videos ON videos.video_id = cues.video_id "
           f"WHERE fts MATCH ? AND cues.source IN ({marks.rstrip(', ')}) ORDER BY bm25(fts) LIMIT ?")
    required = [t for t, req in terms if req]
    optional = [t for t, req in terms if not req]
    with _reader(index_dir) as db:
        try:
            fetched = db.execute(sql, (_OPEN, _CLOSE, " AND ".join(t for t, _ in terms), *sources, fetch)).fetchall()
            held = {row[0]: len(terms) for row in fetched}
            lacks: dict[int, list[str]] = {}
            if needed < len(terms):  # rows that hold enough of the words, not all
                loose = " AND ".join([*required, "(" + " OR ".join(optional) + ")"])
                more = [r for r in db.execute(sql, (_OPEN, _CLOSE, loose, *sources, max(fetch * 20, 2000))).fetchall()
                        if r[0] not in held]
                has = _terms_held(db, optional, [r[0] for r in more])
                more = [r for r in more if len(required) + len(has.get(r[0], ())) >= needed]
                held.update({r[0]: len(required) + len(has.get(r[0], ())) for r in more})
                lacks = {r[0]: [_shown(t) for t in optional if t not in has.get(r[0], set())] for r in more}
                fetched += sorted(more, key=lambda r: (-held[r[0]], r[10]))
        except sqlite3.OperationalError as exc:
            raise UsageError(f"cannot search the words for {text!r}: {exc}") from None
    out: list[WordHit] = []
    for rowid, vid, path, start, end, highlighted, source, language, sid, sindex, bm25, box in fetched:
        if videos is not None and vid not in videos:
            continue
        plain, found = _marks(highlighted)
        relevance = max(0.0, -float(bm25))
        hit = WordHit(vid, _path_text(path), start, end, plain, source, language, sid, sindex,
                      held[rowid] + relevance / (1.0 + relevance), found, json.loads(box) if box else None,
                      lacks.get(rowid, []))
        out.append(hit)
        if len(out) >= limit:
            break
    return out


def _terms_held(db: sqlite3.Connection, terms: list[str], rowids: list[int]) -> dict[int, set[str]]:
    """For each of `rowids`, which of `terms` its row holds."""
    held: dict[int, set[str]] = {}
    ids = json.dumps(rowids)
    for term in terms if rowids else []:
        for (rowid,) in db.execute("SELECT rowid FROM fts WHERE fts MATCH ? AND rowid IN (SELECT value FROM json_each(?))",
                                   (term, ids)):
            held.setdefault(rowid, set()).add(term)
    return held


def _shown(term: str) -> str:
    """An FTS5 term as the user wrote it: `"birth" *` -> `birth*`."""
    return term.replace(" *", "*").replace('"', "")


def words_between(index_dir: Path, video_id: str, start: float | None = None, end: float | None = None,
                  sources: Iterable[str] | None = None) -> list[WordHit]:
    """The rows of one video that overlap `start`-`end` (the whole video when not given), by time."""
    lo = -1.0 if start is None else start
    hi = float("inf") if end is None else end
    with _reader(index_dir) as db:
        rows = db.execute("SELECT cues.video_id, videos.path, cues.start, cues.\"end\", fts.text, cues.source, "
                          "cues.language, cues.scene_id, cues.scene_index, cues.box FROM cues "
                          "JOIN fts ON fts.rowid = cues.id JOIN videos ON videos.video_id = cues.video_id "
                          "WHERE cues.video_id = ? AND cues.\"end\" >= ? AND cues.start <= ? ORDER BY cues.start",
                          (video_id, lo, hi if hi != float("inf") else 1e18)).fetchall()
    wanted = set(sources) if sources is not None else None
    return [WordHit(vid, _path_text(path), s, e, text, source, language, sid, sindex,
                    box=json.loads(box) if box else None)
            for vid, path, s, e, text, source, language, sid, sindex, box in rows
            if wanted is None or source in wanted]


__all__ = ["FULLTEXT_FILE", "SAID_SOURCES", "SHOWN_SOURCES", "TOKENIZER", "WordHit", "fulltext_path",
           "fulltext_problems", "fulltext_state", "match_expression", "rebuild_fulltext", "search_words",
           "sync_fulltext", "words_between"]
