"""A query: one or more terms (`QueryTerm`), words or an image file, each with a weight,
negative for a term to avoid (`2:a dog`, `--not`). Its vector is the sum of weight * normalised
term vector, renormalised (`Searcher.query_vector`)."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cliptool.errors import UsageError

_WEIGHT = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*:(.*)$", re.DOTALL)


@dataclass(frozen=True)
class QueryTerm:
    """One term of a query: words or an image file, and its weight (negative: a term to avoid)."""

    text: str | None = None
    image: str | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        if (self.text is None) == (self.image is None):
            raise UsageError("a query term is either words or an image, not both or neither")
        if self.text is not None and not self.text.strip():
            raise UsageError("empty query: give some words to search for, or --image FILE")
        if not math.isfinite(self.weight) or self.weight == 0:
            raise UsageError(f"a term's weight must be a non-zero number, not {self.weight!r}")

    @classmethod
    def parse(cls, raw: str, *, image: bool = False, avoid: bool = False, option: str = "query") -> QueryTerm:
        """A term as the command line writes it: `2:a dog` is "a dog" with weight 2 (a number,
        then a colon, at the start); without one the weight is 1. Text that itself starts with
        a number and a colon takes an explicit weight: `1:3:10 to Yuma`. With avoid (--not,
        --not-image) the weight is negated."""
        weight = 1.0
        match = _WEIGHT.match(raw)
        if match:
            weight, raw = float(match.group(1)), match.group(2)
            if not math.isfinite(weight) or weight <= 0:
                raise UsageError(f"{option}: a weight must be a positive number, not {match.group(1)!r} "
                                 "(use --not or --not-image for a term to avoid)")
        if not raw.strip():
            raise UsageError(f"{option}: empty term" + (" after its weight" if match else ""))
        weight = -weight if avoid else weight
        return cls(image=raw, weight=weight) if image else cls(text=raw.strip(), weight=weight)

    def to_dict(self) -> dict[str, object]:
        return {"text": self.text, "image": self.image, "weight": self.weight}


@dataclass(frozen=True)
class Query:
    """Terms whose weighted, normalised vectors add up to one query vector (see `Searcher.query_vector`)."""

    terms: tuple[QueryTerm, ...]

    def __post_init__(self) -> None:
        if not self.terms:
            raise UsageError("empty query: give some words to search for, or --image FILE")

    @classmethod
    def of(cls, text: str | None = None, image: str | os.PathLike[str] | None = None, *,
           also: Iterable[str] = (), avoid: Iterable[str] = (),
           also_images: Iterable[str | os.PathLike[str]] = (),
           avoid_images: Iterable[str | os.PathLike[str]] = ()) -> Query:
        """A query from literal terms, each of weight 1 (-1 for those to avoid)."""
        terms = [QueryTerm(text=text)] if text is not None else []
        terms += [QueryTerm(image=os.fspath(image))] if image is not None else []
        terms += [QueryTerm(text=t) for t in also] + [QueryTerm(image=os.fspath(i)) for i in also_images]
        terms += [QueryTerm(text=t, weight=-1.0) for t in avoid]
        terms += [QueryTerm(image=os.fspath(i), weight=-1.0) for i in avoid_images]
        return cls(tuple(terms))

    @classmethod
    def parse(cls, text: str | None = None, image: str | os.PathLike[str] | None = None, *,
              also: Sequence[str] = (), avoid: Sequence[str] = (),
              also_images: Sequence[str] = (), avoid_images: Sequence[str] = ()) -> Query:
        """A query as the command line writes it: each term may start with a weight (`2:a dog`,
        see `QueryTerm.parse`); `image` (--image) is taken literally."""
        terms = [QueryTerm.parse(text)] if text is not None else []
        terms += [QueryTerm(image=os.fspath(image))] if image is not None else []
        terms += [QueryTerm.parse(t, option="--and") for t in also]
        terms += [QueryTerm.parse(t, image=True, option="--and-image") for t in also_images]
        terms += [QueryTerm.parse(t, avoid=True, option="--not") for t in avoid]
        terms += [QueryTerm.parse(t, image=True, avoid=True, option="--not-image") for t in avoid_images]
        return cls(tuple(terms))

    def check_images(self) -> None:
        """UsageError for an image term whose file is missing (before any model loads)."""
        for term in self.terms:
            if term.image is not None and not Path(term.image).expanduser().is_file():
                raise UsageError(f"no such image: {term.image}")

    def to_list(self) -> list[dict[str, object]]:
        return [t.to_dict() for t in self.terms]
