"""Searching by what is seen, said and shown, alone or together, and chains of moments in order.

A `Step` is one moment to find: a picture query (CLIP, `searcher.Searcher`), words said
(subtitles and speech) and words shown (text on screen), any of them; the words are matched in
the full-text cache (`vectors.fulltext`, BM25). One signal alone ranks as it scores. Several are
fused by reciprocal rank fusion: each signal ranks its own moments, moments of one video that
overlap or lie within `FUSE_GAP` s of each other are one moment, and a moment scores the sum of
1 / (RRF_K + rank) over the signals that found it, so a moment seen and said outranks one only
seen or only said. `then` chains steps: a hit is a moment of each step, in one video, in order
(each starts no earlier than the one before), each gap at most `within` s; a chain scores the sum
of its steps' fused scores and spans from its first moment's start to its last one's end.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from cliptool.errors import UsageError
from cliptool.search.filters import Filters
from cliptool.search.query import Query
from cliptool.search.searcher import Hit, Searcher

RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al. 2009)
FUSE_GAP = 2.0  # s: a picture moment and words this close in one video are one moment
CANDIDATES = 100  # moments each signal of a step brings (more with --then: chains need depth)
CHAIN_CANDIDATES = 300
DEFAULT_WITHIN = 10.0  # s: the largest gap between a chain's moments when --within is not given
SIGNALS = ("picture", "said", "shown")
WORDS_SHARE = 2 / 3  # of a query of three words or more, the share a row must hold (vectors.fulltext.words_needed)


@dataclass(frozen=True)
class Step:
    """One moment to find: a picture query, words said, words shown (at least one)."""

    picture: Query | None = None
    said: str | None = None
    shows: str | None = None

    def __post_init__(self) -> None:
        if self.picture is None and not (self.said or "").strip() and not (self.shows or "").strip():
            raise UsageError("empty query: give some words to search for, --image FILE, --said or --shows")

    @classmethod
    def parse(cls, raw: str, option: str = "--then") -> Step:
        """A step as `--then` writes it: `said:WORDS`, `shows:WORDS`, else a picture query
        (`2:a dog` weights as everywhere)."""
        head, sep, rest = raw.partition(":")
        kind = head.strip().lower()
        if sep and kind in ("said", "shows"):
            if not rest.strip():
                raise UsageError(f"{option}: no words after {kind}:")
            return cls(said=rest.strip()) if kind == "said" else cls(shows=rest.strip())
        return cls(picture=Query.parse(raw))

    def to_dict(self) -> dict[str, Any]:
        return {"terms": self.picture.to_list() if self.picture is not None else [], "said": self.said,
                "shows": self.shows}


@dataclass
class Moment:
    """A candidate moment of one step, as one signal or several found it."""

    video_id: str
    path: str
    start: float
    end: float
    best_time: float
    scene_id: str
    scene_index: int
    hit: Hit | None = None  # the picture signal's hit
    ranks: dict[str, int] = field(default_factory=dict)  # signal -> rank in its own list (1 = best)
    scores: dict[str, float] = field(default_factory=dict)  # signal -> its own score
    said: list[dict[str, Any]] = field(default_factory=list)
    shown: list[dict[str, Any]] = field(default_factory=list)
    fused: float = 0.0

    def near(self, other: Moment, gap: float) -> bool:
        return self.video_id == other.video_id and other.start <= self.end + gap and self.start <= other.end + gap


def _picture_moments(searcher: Searcher, query: Query, top: int, where: Filters | None) -> list[Moment]:
    vector = searcher.query_vector(query)
    out = []
    for rank, h in enumerate(searcher.search(vector, top=top, where=where), 1):
        out.append(Moment(h.video_id, h.path, h.start, h.end, h.best_time, h.scene_id, h.scene_index, h,
                           {"picture": rank}, {"picture": h.score}))
    return out


def _word_moments(searcher: Searcher, text: str, signal: str, top: int, where: Filters | None) -> list[Moment]:
    from cliptool.vectors.fulltext import SAID_SOURCES, SHOWN_SOURCES, search_words

    allowed = None
    if where is not None and where.narrows_videos:
        facts = _store_facts(searcher)
        allowed = {vid for vid, f in facts.items() if where.allows(f)}
    sources = SAID_SOURCES if signal == "said" else SHOWN_SOURCES
    out = []
    hits = search_words(searcher.index_dir, text, sources, limit=top, videos=allowed, share=WORDS_SHARE)
    for rank, w in enumerate(hits, 1):
        m = Moment(w.video_id, w.path, w.start, w.end, w.start, w.scene_id, w.scene_index,
                    ranks={signal: rank}, scores={signal: w.score})
        (m.said if signal == "said" else m.shown).append(w.to_dict())
        out.append(m)
    return out


def _store_facts(searcher: Searcher) -> dict[str, Any]:
    """Every stored video's facts for filters (the words cache may hold videos the search
    cache has not taken in yet)."""
    from cliptool.search.filters import VideoFacts
    from cliptool.store import IndexStore

    with IndexStore(searcher.index_dir) as store:
        return {r.video_id: VideoFacts(r.path, r.mtime, r.duration) for r in store.videos()}


def step_moments(searcher: Searcher, step: Step, top: int, where: Filters | None = None,
                 method: str = "rrf") -> list[Moment]:
    """A step's moments, best first: each signal's own ranking when it has one signal, else
    their fusion (`fuse`; see the module docstring)."""
    lists = signal_moments(searcher, step, top, where)
    if len(lists) == 1:
        for m in lists[0]:
            m.fused = next(iter(m.scores.values()))
        return lists[0]
    return fuse(lists, method=method)


def signal_moments(searcher: Searcher, step: Step, top: int, where: Filters | None = None) -> list[list[Moment]]:
    """Each signal's own ranked moments for a step (picture, said, shown: those it asks for)."""
    lists: list[list[Moment]] = []
    if step.picture is not None:
        lists.append(_picture_moments(searcher, step.picture, top, where))
    if step.said:
        lists.append(_word_moments(searcher, step.said, "said", top, where))
    if step.shows:
        lists.append(_word_moments(searcher, step.shows, "shown", top, where))
    return lists


FUSIONS = ("rrf", "rrf-listed", "combsum")
TIE = 1e-9  # relative: scores this close are a tie and share a rank


def fuse(lists: list[list[Moment]], gap: float = FUSE_GAP, k: int = RRF_K, method: str = "rrf") -> list[Moment]:
    """Fusion of several signals' ranked moments: a moment that lies within `gap` s of one a
    better-ranked entry already made (in the same video, not yet holding this signal) joins it.
    "rrf" (reciprocal rank fusion, what search uses): a moment scores the sum of 1 / (k + rank)
    over its signals, where moments of one signal that score the same share the best of their
    ranks (so a signal that cannot tell them apart does not pick among them by list order:
    `--said` words said in many places alike); "rrf-listed" takes the ranks as listed and
    "combsum" sums the signals' scores, each scaled to 0..1 over its own list (min-max); both
    for the bench's comparison."""
    if method not in FUSIONS:
        raise ValueError(f"unknown fusion {method!r}")
    if method == "rrf":
        lists = [_tied_ranks(lst) for lst in lists]
    scale: dict[str, tuple[float, float]] = {}
    for lst in lists:
        for m in lst:
            for signal, score in m.scores.items():
                lo, hi = scale.get(signal, (score, score))
                scale[signal] = (min(lo, score), max(hi, score))
    fused: list[Moment] = []
    order = sorted(((rank, i, m) for i, lst in enumerate(lists) for rank, m in enumerate(lst, 1)),
                   key=lambda t: (t[0], t[1]))
    for _, _, m in order:
        signal = next(iter(m.ranks))
        into = next((f for f in fused if signal not in f.ranks and f.near(m, gap)), None)
        if into is None:
            fused.append(replace(m, ranks=dict(m.ranks), scores=dict(m.scores), said=list(m.said), shown=list(m.shown)))
            continue
        into.ranks[signal] = m.ranks[signal]
        into.scores[signal] = m.scores[signal]
        into.said += m.said
        into.shown += m.shown
        if m.hit is not None:  # the picture's moment leads: its span and best time
            into.hit, into.best_time, into.scene_id, into.scene_index = m.hit, m.best_time, m.scene_id, m.scene_index
        into.start, into.end = min(into.start, m.start), max(into.end, m.end)
    for f in fused:
        if method in ("rrf", "rrf-listed"):
            f.fused = sum(1.0 / (k + r) for r in f.ranks.values())
        else:
            f.fused = sum((f.scores[sig] - scale[sig][0]) / max(scale[sig][1] - scale[sig][0], 1e-9) for sig in f.ranks)
    return sorted(fused, key=lambda f: -f.fused)


def _tied_ranks(moments: list[Moment]) -> list[Moment]:
    """The moments of one signal's list with equal scores given the same (best) rank."""
    ranks = _shared_ranks([next(iter(m.scores.values())) for m in moments])
    return [replace(m, ranks={next(iter(m.ranks)): r}) for m, r in zip(moments, ranks)]


def _shared_ranks(scores: list[float]) -> list[int]:
    """1-based ranks of a best-first list of scores, equal scores sharing the best of theirs."""
    out: list[int] = []
    rank, previous = 0, None
    for i, score in enumerate(scores, 1):
        if previous is None or abs(score - previous) > TIE * max(1.0, abs(previous)):
            rank, previous = i, score
        out.append(rank)
    return out


def _signals(m: Moment) -> list[str]:
    return [s for s in SIGNALS if s in m.ranks]


def _hit(m: Moment, rank: int, score: float) -> Hit:
    base = m.hit
    if base is not None:
        shot_start, shot_end = base.shot_start, base.shot_end
        ids = base.scene_ids
    else:
        shot_start, shot_end, ids = m.start, m.end, [m.scene_id] if m.scene_id else []
    return Hit(rank, score, m.path, m.start, m.end, m.best_time, m.scene_id, m.scene_index, m.video_id, ids,
               min(shot_start, m.start) if shot_start is not None else None,
               max(shot_end, m.end) if shot_end is not None else None,
               signals=_signals(m), said=sorted(m.said, key=_at), shown=sorted(m.shown, key=_at))


def _at(d: dict[str, Any]) -> float:
    return float(d["start"])


def search_steps(searcher: Searcher, steps: list[Step], top: int = 10, where: Filters | None = None,
                 within: float | None = None) -> list[Hit]:
    """The hits of one step (fused when it has several signals), or of a chain of steps
    (`within`: the largest gap in s between consecutive moments; default DEFAULT_WITHIN)."""
    if not steps:
        raise UsageError("empty query: give some words to search for, --image FILE, --said or --shows")
    if within is not None and (not np.isfinite(within) or within < 0):
        raise UsageError("--within must not be negative")
    if within is not None and len(steps) == 1:
        raise UsageError("--within needs --then")
    min_score = where.min_score if where is not None else None
    where = replace(where, min_score=None) if where is not None else None  # applied to the hits' own scores
    if len(steps) == 1:
        moments = step_moments(searcher, steps[0], max(top, CANDIDATES) if _fused(steps[0]) else top, where)
        hits = []
        for m in moments:
            if min_score is not None and m.fused < min_score:
                continue
            hits.append(_hit(m, len(hits) + 1, m.fused))
            if len(hits) >= top:
                break
        return hits
    per_step = [step_moments(searcher, s, CHAIN_CANDIDATES, where) for s in steps]
    hits = chains(per_step, DEFAULT_WITHIN if within is None else within, top if min_score is None else 10 * top)
    hits = [h for h in hits if min_score is None or h.score >= min_score][:top]
    for rank, h in enumerate(hits, 1):
        h.rank = rank
    return hits


def _fused(step: Step) -> bool:
    return sum(x is not None and x != "" for x in (step.picture, step.said, step.shows)) > 1


def chains(per_step: list[list[Moment]], within: float, top: int, k: int = RRF_K) -> list[Hit]:
    """The best chains: one moment of each step, in one video, in order, each gap at most
    `within`; scored by the sum over steps of 1 / (k + the moment's rank in its step, moments
    that score the same sharing a rank); chains
    whose spans overlap a better one's in the same video are left out."""
    # best[i][j]: (score, previous j) of the best chain ending at step i's j-th moment
    scored = [[(1.0 / (k + r), m) for r, m in zip(_shared_ranks([m.fused for m in moments]), moments)]
              for moments in per_step]
    best: list[list[tuple[float, int]]] = [[(s, -1) for s, _ in scored[0]]]
    for i in range(1, len(scored)):
        row: list[tuple[float, int]] = []
        for s, m in scored[i]:
            choice = (-1.0, -1)
            for j, (prev_score, _) in enumerate(best[i - 1]):
                p = scored[i - 1][j][1]
                if prev_score < 0 or p.video_id != m.video_id:
                    continue
                ordered = (m.start, m.best_time) > (p.start, p.best_time) or (
                    (m.start, m.best_time) == (p.start, p.best_time) and m.end > p.end)
                if ordered and m.start - p.end <= within and prev_score + s > choice[0]:
                    choice = (prev_score + s, j)
            row.append(choice)
        best.append(row)
    ends = sorted(((score, j) for j, (score, _) in enumerate(best[-1]) if score >= 0), key=lambda t: -t[0])
    hits: list[Hit] = []
    for score, j in ends:
        path_ = [j]
        for i in range(len(scored) - 1, 0, -1):
            path_.append(best[i][path_[-1]][1])
        members = [scored[i][jj][1] for i, jj in zip(range(len(scored)), reversed(path_))]
        first = members[0]
        start, end = first.start, max(m.end for m in members)
        if any(h.video_id == first.video_id and h.start < end and start < h.end for h in hits):
            continue
        hit = _hit(first, len(hits) + 1, score)
        hit.start, hit.end = start, end
        hit.shot_start, hit.shot_end = min(hit.shot_start or start, start), max(hit.shot_end or end, end)
        hit.signals = [s for s in SIGNALS if any(s in m.ranks for m in members)]
        hit.said = sorted((d for m in members for d in m.said), key=_at)
        hit.shown = sorted((d for m in members for d in m.shown), key=_at)
        hit.scene_ids = list(dict.fromkeys(sid for m in members for sid in ([m.scene_id] if m.scene_id else [])))
        hit.chain = [{"step": n + 1, "start": round(m.start, 3), "end": round(m.end, 3),
                      "best_time": round(m.best_time, 3), "scene_id": m.scene_id, "signals": _signals(m),
                      "said": m.said, "shown": m.shown} for n, m in enumerate(members)]
        hits.append(hit)
        if len(hits) >= top:
            break
    return hits


__all__ = ["CANDIDATES", "DEFAULT_WITHIN", "FUSE_GAP", "FUSIONS", "Moment", "RRF_K", "SIGNALS", "Step", "chains", "fuse",
           "search_steps", "signal_moments", "step_moments"]
