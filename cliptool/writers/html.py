"""A contact sheet: one self-contained HTML file of search results, readable offline.

Each hit shows its best frame (decoded frame-accurately and embedded as a data: URI, a JPEG about
320 px wide), rank, score, start-end and best time, and links that open the file (file://, the
thumbnail's with a #t= media fragment at the best time), and the words said or shown there that
a `--said`/`--shows` query matched, with their times and the matched words marked (each links to
its time), and for a `--then` chain each step. Every piece of text is escaped; paths
that are not valid UTF-8 show with U+FFFD and link by their exact bytes.
"""

from __future__ import annotations

import base64
import html
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cliptool.errors import CliptoolError, printable
from cliptool.writers.files import check_output_file, write_atomic
from cliptool.writers.timeline import file_url

if TYPE_CHECKING:
    from cliptool.search.searcher import Hit

HTML_SUFFIXES = (".html", ".htm")
THUMB_WIDTH = 320

_STYLE = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em;background:#fafafa;color:#222}
h1{font-size:1.3em;margin:0 0 .2em}
.meta{color:#666;margin-bottom:1.2em}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:14px}
.hit{background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px}
.hit img,.hit .none{width:100%;height:auto;display:block;border-radius:4px;background:#222}
.hit .none{aspect-ratio:16/9;color:#aaa;display:flex;align-items:center;justify-content:center}
.hit table{width:100%;border-collapse:collapse;font-variant-numeric:tabular-nums}
.hit td{padding:1px 4px;vertical-align:top}
.hit td:first-child{color:#777;width:4.5em}
.rank{font-weight:600}
.path{word-break:break-all}
.words{margin:.3em 4px 0;padding:0;list-style:none;font-size:.95em}
.words li{margin:.1em 0}
.words .t{color:#777;font-variant-numeric:tabular-nums;margin-right:.4em}
.words mark{background:#ffe066;padding:0 1px}
.signals{color:#555}
"""


def thumbnail(video: Path, t: float, width: int = THUMB_WIDTH) -> bytes:
    """JPEG bytes of the frame on screen at `t`, scaled down to `width` pixels wide."""
    import cv2

    from cliptool.media.decode import frame_at

    _, rgb = frame_at(video, t)
    h, w = rgb.shape[:2]
    if w > width:
        rgb = cv2.resize(rgb, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, 82])
    if not ok:
        raise CliptoolError("cannot encode a thumbnail")
    return buf.tobytes()


def _e(text: object) -> str:
    return html.escape(printable(str(text)), quote=True)


def marked(text: str, marks: Sequence[Sequence[int]]) -> str:
    """`text` escaped, with the character ranges `marks` wrapped in <mark>."""
    out, at = [], 0
    for a, b in sorted((int(m[0]), int(m[1])) for m in marks):
        if a < at or b > len(text) or a >= b:
            continue
        out += [_e(text[at:a]), "<mark>", _e(text[a:b]), "</mark>"]
        at = b
    out.append(_e(text[at:]))
    return "".join(out)


def _lacks(d: dict[str, object]) -> str:
    """A partial match's words that were not heard or read there."""
    missing = d.get("missing") or []
    return f' <span class="lacks">(without: {_e(", ".join(map(str, missing)))})</span>' if missing else ""  # type: ignore[call-overload]


def _words(hit: Hit, url: str) -> str:
    """The hit's matched words (said, then shown), each with its time linking there."""
    from cliptool.media.timecode import format_time

    items = []
    for kind in ("said", "shown"):
        for d in getattr(hit, kind, []):
            t = float(d["start"])  # type: ignore[arg-type]
            items.append(f'<li class="{kind}"><a class="t" href="{_e(url)}#t={t:.3f}">{format_time(t)}</a>'
                         f'{kind}: {marked(str(d["text"]), d.get("marks", []))}{_lacks(d)}</li>')  # type: ignore[arg-type]
    return f'<ul class="words">{"".join(items)}</ul>' if items else ""


def render(hits: Sequence[Hit], thumbs: Sequence[bytes | None], *, query: str | None = None,
           image: str | None = None, title: str | None = None) -> str:
    """The sheet as a string (thumbs: JPEG bytes or None per hit)."""
    from cliptool.media.timecode import format_time

    what = query if query else (f"image {Path(printable(image)).name}" if image else (title or "results"))
    heading = title or f"cliptool: {what}"
    cards = []
    for hit, jpeg in zip(hits, thumbs):
        url = file_url(hit.path)
        name = Path(printable(hit.path)).name
        if jpeg is not None:
            pic = (f'<img src="data:image/jpeg;base64,{base64.b64encode(jpeg).decode("ascii")}" '
                   f'alt="{_e(name)} at {format_time(hit.best_time)}" loading="lazy">')
        else:
            pic = '<div class="none">no picture</div>'
        cards.append(
            f'<div class="hit" id="hit{hit.rank}">'
            f'<a href="{_e(url)}#t={hit.best_time:.3f}" title="open at {format_time(hit.best_time)}">{pic}</a>'
            f'<table><tr><td class="rank">#{hit.rank}</td><td>score {hit.score:.3f}</td></tr>'
            f'<tr><td>span</td><td>{format_time(hit.start)} &ndash; {format_time(hit.end)}</td></tr>'
            f'<tr><td>best</td><td>{format_time(hit.best_time)}</td></tr>'
            f'<tr><td>file</td><td class="path"><a href="{_e(url)}">{_e(hit.path)}</a></td></tr>'
            f'<tr><td>scene</td><td><code>{_e(hit.scene_id)}</code></td></tr>'
            + (f'<tr><td>matched</td><td class="signals">{_e(", ".join(hit.signals))}</td></tr>'
               if getattr(hit, "signals", []) not in ([], ["picture"]) else "")
            + (f'<tr><td>chain</td><td>{" &rarr; ".join(format_time(float(c["start"])) for c in hit.chain)}</td></tr>'  # type: ignore[arg-type]
               if getattr(hit, "chain", None) else "")
            + f'</table>{_words(hit, url)}</div>'
        )
    lines = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="generator" content="cliptool">',
        f"<title>{_e(heading)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_e(heading)}</h1>",
        f'<div class="meta">{len(hits)} result{"s" if len(hits) != 1 else ""}'
        + (f" for <q>{_e(query)}</q>" if query else "")
        + (f" for the image <code>{_e(image)}</code>" if image else "")
        + f" &middot; {_e(time.strftime('%Y-%m-%d %H:%M'))}</div>",
        '<div class="grid">',
        *cards,
        "</div></body></html>",
        "",
    ]
    return "\n".join(lines)


def write_contact_sheet(hits: Sequence[Hit], output: Path, *, query: str | None = None, image: str | None = None,
                        title: str | None = None, report: Callable[[str], None] | None = None) -> Path:
    """Writes the sheet to `output`; a frame that cannot be decoded shows as "no picture"
    (said through `report`)."""
    output = check_output_file(output, HTML_SUFFIXES, "--html file")
    thumbs: list[bytes | None] = []
    for hit in hits:
        try:
            thumbs.append(thumbnail(Path(hit.path), hit.best_time))
        except (CliptoolError, OSError) as exc:
            thumbs.append(None)
            if report is not None:
                report(f"no thumbnail for {printable(hit.path)} at {hit.best_time:.3f} s: {exc}")
    write_atomic(output, render(hits, thumbs, query=query, image=image, title=title).encode("utf-8"))
    return output
