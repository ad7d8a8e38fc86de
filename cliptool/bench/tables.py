"""Table printing shared by the benchmarks: a figure or "-", and rows in aligned columns."""

from __future__ import annotations

from collections.abc import Sequence


def cell(x: object, spec: str = "{:.1f}") -> str:
    """`x` formatted with `spec`; "-" for None and NaN."""
    return "-" if x is None or (isinstance(x, float) and x != x) else spec.format(x)


def print_aligned(rows: Sequence[Sequence[object]], left: bool = False) -> None:
    """Rows in columns as wide as their widest cell, two spaces apart, right-aligned (or left)."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(c).ljust(w) if left else str(c).rjust(w) for c, w in zip(row, widths)))
