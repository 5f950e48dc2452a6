"""Reports of a scoring run: terminal table, CSV, JSON and a self-contained HTML contact sheet.

Every file write is atomic (temp file in the same folder, then rename), so an interrupted
run never leaves half a report. File names and EXIF text are attacker-controlled: the HTML
escapes every string and forbids scripts with a Content-Security-Policy.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import io
import json
import math
import os
import stat
import statistics
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

from rich.text import Text

from ilgnet_cli._version import __version__
from ilgnet_cli.errors import UsageError
from ilgnet_cli.photos.discover import EXPORT_MANIFEST
from ilgnet_cli.photos.exif import ExifInfo
from ilgnet_cli.photos.results import ScoreResult, ScoreRun
from ilgnet_cli.runtime.fsutil import atomic_write_text, copy_new
from ilgnet_cli.runtime.text import display, escape_controls, json_escaped, printable, strict_json

FORMATS = ("table", "csv", "json", "html")
CSV_FIELDS = ("rank", "score", "path", "status", "error", "width", "height", "format", "captured", "camera",
              "lens", "exposure", "aperture", "iso", "focal_length", "has_gps", "sharpness", "precision", "decode",
              "burst", "keeper", "note")

# Below this short side (in stored pixels) the model sees mostly upscaling blur, and its score
# means little: such photos are scored but marked in every report.
TINY_SIDE = 64


def note_for(result: ScoreResult) -> str | None:
    """A warning that goes with the score ("tiny: 1x1, upscaled"), or None."""
    notes = []
    w, h = result.width, result.height
    if result.ok and isinstance(w, int) and isinstance(h, int) and min(w, h) < TINY_SIDE:
        notes.append(f"tiny: {w}x{h}, upscaled")
    return "; ".join(notes) or None


def exif_of(result: ScoreResult) -> ExifInfo:
    return result.exif


def record(result: ScoreResult, rank: int | None) -> dict[str, Any]:
    exif = exif_of(result)
    return {
        "rank": rank,
        "score": result.score,
        "path": result.path,
        "status": "scored" if result.ok else "error",
        "error": result.error,
        "width": result.width,
        "height": result.height,
        "format": result.format,
        "captured": exif.captured,
        "camera": exif.camera or None,
        "lens": exif.lens,
        "exposure": exif.exposure,
        "aperture": exif.aperture,
        "iso": exif.iso,
        "focal_length": exif.focal_length,
        "has_gps": exif.has_gps,
        "exif_error": exif.error,
        "sharpness": result.sharpness,
        "precision": result.precision,
        "decode": result.decode,
        "burst": result.burst.id if result.burst else None,
        "keeper": result.burst.keeper if result.burst else None,
        "note": note_for(result),
    }


def selected(run: ScoreRun, min_score: float | None = None, top: int | None = None) -> list[ScoreResult]:
    """Scored results for a report, best first. With bursts, ``top`` counts bursts (each burst's
    keeper first, then its other frames) and ``min_score`` applies to keepers."""
    if run.bursts is not None:
        groups = [b for b in run.bursts if min_score is None or b.keeper.score >= min_score]
        return [m for b in (groups[:top] if top else groups) for m in b.members]
    rows = [r for r in run.scored if min_score is None or (r.score is not None and r.score >= min_score)]
    return rows[:top] if top else rows


def to_json(run: ScoreRun, min_score: float | None = None, top: int | None = None) -> str:
    rows = selected(run, min_score, top)
    payload = {
        "generator": f"ilgnet {__version__}",
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "weights": run.weights_name,
        "weights_sha256": run.weights_sha256,
        "summary": {"files": run.stats.files, "scored": run.stats.scored, "errors": run.stats.errors,
                    "cache_hits": run.stats.cache_hits, "interrupted": run.stats.interrupted},
        "results": [record(r, i) for i, r in enumerate(rows, 1)],
        "errors": [{"path": r.path, "reason": r.error} for r in run.errors],
    }
    return json_escaped(strict_json(payload, indent=2, ensure_ascii=False))


def to_csv(run: ScoreRun, min_score: float | None = None, top: int | None = None) -> str:
    """Scored files best first, then the files that failed (status=error, with the reason)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for i, r in enumerate(selected(run, min_score, top), 1):
        writer.writerow(_csv_row(record(r, i)))
    for r in run.errors:
        writer.writerow(_csv_row(record(r, None)))
    return buf.getvalue()


# A spreadsheet runs a cell starting with one of these as a formula (OWASP "CSV injection"):
# such text cells get a leading ' (shown literally, not evaluated). Numbers are never text here.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A text cell as data, never a formula, on one visible line (controls escaped); file-name
    bytes that are not UTF-8 stay as they are on disk."""
    if not isinstance(value, str):
        return value
    text = escape_controls(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _csv_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: csv_cell(v) for k, v in row.items()}


def keepers(run: ScoreRun, min_score: float | None = None, top: int | None = None) -> list[ScoreResult]:
    """What ``--copy-top``/``--link-top`` export: the best ``top`` photos, and with bursts only
    each burst's keeper (a burst's blurred frames are never exported as keepers)."""
    rows = selected(run, min_score, top)
    if run.bursts is not None:
        rows = [r for r in rows if r.burst is None or r.burst.keeper]
    return rows


def shown_path(path: str, roots: list[str]) -> str:
    """``path`` as the table shows it: relative to the folder argument it was found under (the
    longest that holds it), else as given."""
    absolute = os.path.abspath(path)
    best = None
    for root in roots:
        r = os.path.abspath(root)
        if os.path.isdir(r) and (absolute == r or absolute.startswith(r.rstrip(os.sep) + os.sep)):
            if best is None or len(r) > len(best):
                best = r
    return os.path.relpath(absolute, best) if best is not None else path


def middle(text: str, width: int) -> str:
    """``text`` cut to ``width`` terminal cells in the middle (``IMG_00…/DSC_0001.JPG``): a file
    name's end (its number, its extension) says the most."""
    from rich.cells import cell_len

    if cell_len(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    keep = width - 1
    head, tail = "", ""
    left, right = keep // 2, keep - keep // 2
    for ch in text:
        if cell_len(head + ch) > left:
            break
        head += ch
    for ch in reversed(text):
        if cell_len(ch + tail) > right:
            break
        tail = ch + tail
    return head + "…" + tail


def terminal_table(run: ScoreRun, top: int, min_score: float | None = None, *,
                   roots: Iterable[str | os.PathLike[str]] = (), width: int = 80) -> Text:
    """The best ``top`` rows, one terminal line each within ``width`` columns: file paths relative
    to the folder given on the command line and cut in the middle, never wrapped."""
    from rich.cells import cell_len

    rows = selected(run, min_score, top)
    if run.bursts is not None:  # one row per burst: its keeper
        rows = [r for r in rows if r.burst is not None and r.burst.keeper]
        total = len([b for b in run.bursts if min_score is None or b.keeper.score >= min_score])
        real = sum(len(b.members) > 1 for b in run.bursts)
        title = (f"ILGNet scores — best {len(rows)} of {total} shots and bursts "
                 f"({real} burst{'s' if real != 1 else ''} of 2+ frames; {run.weights_name})")
    else:
        total = len(selected(run, min_score))
        title = f"ILGNet scores — top {len(rows)} of {total} ({run.weights_name})"
    root_list = [os.fspath(r) for r in roots]
    cols: dict[str, list[str]] = {
        "rank": [str(i) for i in range(1, len(rows) + 1)],
        "score": [f"{r.score:.4f}" for r in rows],
        "file": [display(shown_path(r.path, root_list)) for r in rows],
        "date": [display((r.exif.captured or "")[:16].replace("T", " ")) for r in rows],
        "camera": [display(r.exif.camera) for r in rows],
    }
    if run.bursts is not None:
        cols["burst"] = [f"keeper of {r.burst.size}" if r.burst and r.burst.size > 1 else "" for r in rows]
    notes = [display(note_for(r)) if note_for(r) else "" for r in rows]
    if any(notes):
        cols["note"] = notes
    caps = {"camera": 22, "note": 24}
    widths = {k: min(caps.get(k, 10_000), max([cell_len(k), *(cell_len(v) for v in vs)])) for k, vs in cols.items()}
    gap = 2
    rest = width - sum(w + gap for k, w in widths.items() if k != "file")
    for drop in ("note", "camera", "date"):  # a narrow terminal: the file name matters most
        if rest >= 16 or drop not in widths:
            continue
        rest += widths.pop(drop) + gap
        cols.pop(drop)
    widths["file"] = max(8, min(widths["file"], rest))
    right = {"rank", "score"}

    def cell(key: str, text: str) -> str:
        text = middle(text, widths[key])
        pad = " " * (widths[key] - cell_len(text))
        return pad + text if key in right else text + pad

    out = Text(no_wrap=True, overflow="crop")
    out.append(middle(display(title), width) + "\n", style="bold")
    out.append((" " * gap).join(cell(k, k) for k in cols).rstrip() + "\n", style="dim")
    for i in range(len(rows)):
        out.append((" " * gap).join(cell(k, cols[k][i]) for k in cols).rstrip() + "\n")
    out.rstrip()
    return out


def _plain(text: str | None) -> str:
    from rich.markup import escape

    return escape(text or "")


# --------------------------------------------------------------------------- distribution


def star_thresholds(scores: list[float], spec: str) -> list[tuple[int, float]]:
    """Where the XMP stars begin: ``(stars, lowest score rated that many or more)`` for 2..5
    stars, as :func:`ilgnet_cli.photos.xmp.stars_for` rates these ``scores``. ``fixed:`` thresholds
    are the spec's own; quantile ones come from the run (a level no score reaches is left out).
    Raises ValueError (one line) for a bad spec, as ``stars_for`` does."""
    from ilgnet_cli.photos.xmp import stars_for

    stars = stars_for(list(scores), spec)  # also validates the spec
    if spec.startswith("fixed:"):
        return [(k, float(t)) for k, t in zip(range(2, 6), spec[6:].split(","), strict=True)]
    return [(k, min(s for s, n in zip(scores, stars, strict=True) if n >= k))
            for k in range(2, 6) if any(n >= k for n in stars)]


@dataclass
class Distribution:
    """The run's scores at a glance, with where the report's cuts fall."""

    scores: list[float]  # every scored file of the run, ascending
    top: int | None = None
    top_at: float | None = None  # lowest score (of a keeper, with bursts) inside --top; None: nothing cut
    min_score: float | None = None
    stars: list[tuple[int, float]] = field(default_factory=list)

    def line(self) -> str:
        """One terminal line: ``scores: min 0.12 · median 0.55 · max 0.91 · top 50 ≥ 0.71 · ...``."""
        if not self.scores:
            return "scores: none"
        parts = [f"min {self.scores[0]:.2f}", f"median {statistics.median(self.scores):.2f}",
                 f"max {self.scores[-1]:.2f}"]
        if self.top_at is not None:
            parts.append(f"top {self.top} ≥ {self.top_at:.2f}")
        if self.min_score is not None:
            parts.append(f"min-score {self.min_score:g}")
        parts += [f"{'★' * k} ≥ {t:.2f}" for k, t in self.stars]
        return "scores: " + " · ".join(parts)


def distribution(run: ScoreRun, top: int | None = None, min_score: float | None = None,
                 stars: str | None = None) -> Distribution:
    """``stars``: the ``--stars`` spec when XMP ratings are written (None: no star thresholds)."""
    scores = sorted(r.score for r in run.results if r.ok and isinstance(r.score, (int, float))
                    and math.isfinite(r.score))
    top_at = None
    if top:
        keepers = ([b.keeper for b in run.bursts if min_score is None or b.keeper.score >= min_score]
                   if run.bursts is not None else selected(run, min_score))
        if len(keepers) > top:
            top_at = keepers[top - 1].score
    return Distribution(scores=scores, top=top, top_at=top_at, min_score=min_score,
                        stars=star_thresholds(scores, stars) if stars else [])


def histogram_svg(dist: Distribution, bins: int = 20, width: int = 640, height: int = 130) -> str:
    """An inline SVG histogram of the scores on 0..1 with the --top, --min-score and star
    thresholds as marked lines. Only numbers go into it: nothing to escape."""
    pad_l, pad_r, top_m, bottom_m = 8, 8, 30, 20
    plot_w, plot_h = width - pad_l - pad_r, height - top_m - bottom_m
    counts = [0] * bins
    for sc in dist.scores:
        counts[min(bins - 1, max(0, int(sc * bins)))] += 1
    peak = max(counts) or 1
    bar_w = plot_w / bins

    def x(v: float) -> float:
        return pad_l + min(1.0, max(0.0, v)) * plot_w

    # Inline SVG in HTML needs no xmlns (and the sheet names no http: URL at all).
    out = [f'<svg class="hist" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="histogram of {len(dist.scores)} scores">']
    for i, c in enumerate(counts):
        if c:
            h = max(1.0, c / peak * plot_h)
            out.append(f'<rect x="{pad_l + i * bar_w + 1:.1f}" y="{top_m + plot_h - h:.1f}" '
                       f'width="{bar_w - 2:.1f}" height="{h:.1f}" fill="#6b8fb3">'
                       f'<title>{i / bins:.2f}–{(i + 1) / bins:.2f}: {c}</title></rect>')
    base = top_m + plot_h
    out.append(f'<line x1="{pad_l}" y1="{base}" x2="{pad_l + plot_w}" y2="{base}" stroke="#667"/>')
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        anchor = "start" if t == 0 else "end" if t == 1 else "middle"
        out.append(f'<text x="{x(t):.1f}" y="{height - 5}" fill="#9aa" font-size="11" '
                   f'text-anchor="{anchor}">{t:g}</text>')

    def mark(v: float, label: str, colour: str, dash: str, y: float) -> None:
        anchor = "end" if v > 0.85 else "start"
        dx = -3 if anchor == "end" else 3
        y1 = y - 9 if y < top_m else top_m  # star lines reach up to their label
        out.append(f'<line x1="{x(v):.1f}" y1="{y1}" x2="{x(v):.1f}" y2="{base}" stroke="{colour}" '
                   f'stroke-width="1.5" stroke-dasharray="{dash}"/>')
        # A dark outline keeps a label readable where it crosses a bar.
        out.append(f'<text x="{x(v) + dx:.1f}" y="{y}" fill="{colour}" font-size="11" text-anchor="{anchor}" '
                   f'stroke="#15171a" stroke-width="3" paint-order="stroke">{label}</text>')

    for k, t in dist.stars:  # two label rows: neighbouring thresholds are often close
        mark(t, "★" * k, "#c9a227", "3 3", 11 if k % 2 else 23)
    if dist.min_score is not None:
        mark(dist.min_score, f"min-score {dist.min_score:g}", "#e07a5f", "", top_m + 14)
    if dist.top_at is not None:
        mark(dist.top_at, f"top {dist.top}", "#8fd694", "", top_m + 30)
    out.append("</svg>")
    return "".join(out)


# --------------------------------------------------------------------------- HTML


# A thumbnail is decoded in a worker process under a deadline, as photos are when scored: a file that
# hangs or crashes its decoder costs only its preview, never the report.
THUMBNAIL_TIMEOUT_S = 60


def make_thumbnails(jobs: list[tuple[str, int]], max_pixels: int | None = None,
               timeout: float = THUMBNAIL_TIMEOUT_S) -> dict[tuple[str, int], str | None]:
    """Data URIs of (path, size) thumbnails, made in worker processes; None where the photo could
    not be decoded in ``timeout`` seconds (the stuck worker is ended)."""
    import multiprocessing as mp

    from ilgnet_cli.runtime.system import default_signals, default_workers

    out: dict[tuple[str, int], str | None] = {}
    todo = list(dict.fromkeys(jobs))
    ctx = mp.get_context("spawn" if os.name == "nt" else "fork")
    while todo:
        pool = ctx.Pool(min(default_workers(), len(todo)), initializer=default_signals, maxtasksperchild=50)
        try:
            pending = [(job, pool.apply_async(thumbnail_data_uri, (job[0], job[1], max_pixels))) for job in todo]
            todo = []
            for i, (job, res) in enumerate(pending):
                try:
                    out[job] = res.get(timeout)
                except mp.TimeoutError:
                    out[job] = None  # the stuck one: the pool is ended, the rest start again
                    todo = [j for j, _ in pending[i + 1:] if j not in out]
                    break
                except Exception:  # noqa: BLE001 - a decoder crash in the worker: no preview
                    out[job] = None
        finally:
            pool.terminate()
            pool.join()
    return out


def thumbnail_data_uri(path: str, size: int = 240, max_pixels: int | None = None) -> str | None:
    """A small JPEG of the photo (orientation applied) as a data: URI, or None if undecodable."""
    from PIL import Image

    from ilgnet_cli.data.decode import DecodeError, decode

    try:
        rgb = decode(path, draft=size, max_pixels=max_pixels).rgb
    except (DecodeError, OSError):
        return None
    img = Image.fromarray(rgb)
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=78, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5rem;background:#15171a;color:#e8e8e8}
h1{font-size:1.3rem;margin:0 0 .3rem}p.meta{color:#9aa;margin:.2rem 0 .6rem;font-size:.85rem}
.dist{margin:0 0 1rem}.dist p{color:#aab;font-size:.8rem;margin:.1rem 0 0}
.hist{display:block;max-width:100%;height:auto}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:14px;grid-auto-flow:row dense}
figure{margin:0;background:#22262b;border-radius:8px;padding:8px;overflow:hidden}
figure a{display:block;position:relative}
figure img{display:block;width:100%;height:200px;object-fit:contain;background:#0d0e10;border-radius:4px}
.noimg{height:200px;display:flex;align-items:center;justify-content:center;color:#777;background:#0d0e10}
figcaption{font-size:.8rem;line-height:1.35;margin-top:6px;word-break:break-all}
.strip{grid-column:span 2;background:#2a2e34;box-shadow:inset 0 0 0 1px #ffd36b55}
.frames{display:flex;gap:8px}.frames>a{flex:1 1 0;min-width:0}
.keeper img{box-shadow:0 0 0 2px #ffd36b}
.mark{position:absolute;left:6px;top:6px;background:#ffd36b;color:#15171a;font-size:.7rem;font-weight:700;
padding:1px 6px;border-radius:9px}
.others{flex:1 1 0;min-width:0;display:grid;grid-template-columns:1fr 1fr;gap:6px;align-content:start;
max-height:200px;overflow-y:auto}
.others img,.others .noimg{height:97px}
.others span{position:absolute;left:3px;bottom:3px;background:#000a;font-size:.7rem;padding:0 4px;border-radius:3px}
.count{color:#ffd36b}.note{color:#f4a259}
@media (max-width:561px){.strip{grid-column:auto}.frames{flex-direction:column}.frames>a,.others{flex:none}
.others{grid-template-columns:repeat(3,1fr)}}
.rank{color:#9aa}.score{font-weight:700;font-size:1rem;color:#ffd36b}.exif{color:#aab}
table{border-collapse:collapse;margin-top:1.5rem;font-size:.8rem}
td,th{border:1px solid #333;padding:3px 6px;text-align:left}
"""


def _caption(exif: ExifInfo) -> str:
    parts = [exif.camera or None, exif.lens,
             f"{exif.focal_length:g} mm" if exif.focal_length else None,
             f"f/{exif.aperture:g}" if exif.aperture else None,
             f"{exif.exposure} s" if exif.exposure else None,
             f"ISO {exif.iso}" if exif.iso else None,
             (exif.captured or "")[:19].replace("T", " ") or None]
    return " · ".join(p for p in parts if p)


def file_href(path: str, base: str | Path | None = None) -> str:
    """A link to the original photo: relative to the report's folder ``base`` when there is
    one (the sheet and its photos can move together), else an absolute ``file:`` URL.

    Every byte but letters, digits, ``_.-~`` and ``/`` is percent-encoded (undecodable name
    bytes included, as they are on disk), so a name holding ``"#?%:`` or looking like
    ``javascript:...`` stays one plain path: never a scheme, a query or a fragment."""
    target = os.path.abspath(path)
    if base is not None:
        try:
            rel = os.path.relpath(target, os.path.abspath(base))
        except ValueError:  # another drive (Windows): no relative path exists
            rel = None
        if rel is not None:
            return quote_from_bytes(os.fsencode(rel.replace(os.sep, "/")), safe="/")
    return Path(target).as_uri()


def _groups(run: ScoreRun, rows: list[ScoreResult]) -> list[list[ScoreResult]]:
    """Report rows as sheet cells: one per single shot, one per burst of 2+ (keeper first)."""
    if run.bursts is None:
        return [[r] for r in rows]
    cells: list[list[ScoreResult]] = []
    for r in rows:
        if (r.burst is not None and r.burst.keeper) or not cells:
            cells.append([r])
        else:
            cells[-1].append(r)
    return cells


def to_html(run: ScoreRun, top: int | None = None, min_score: float | None = None,
            thumbnails: bool = True, max_pixels: int | None = None, base: str | Path | None = None,
            stars: str | None = None) -> str:
    """A contact sheet that works offline: inline CSS, thumbnails as data URIs, no scripts.

    ``base``: the folder the sheet is written to (thumbnails link there relatively); ``stars``:
    the ``--stars`` spec when XMP ratings are written, marked on the score histogram."""
    def esc(text: str) -> str:  # untrusted text: markup escaped, controls and bidi overrides visible
        return html.escape(display(text))

    rows = selected(run, min_score, top)
    cells = _groups(run, rows)
    wanted = [(c[0].path, 240) for c in cells] + [(m.path, 160) for c in cells if len(c) > 1 for m in c[1:]]
    previews = make_thumbnails(wanted, max_pixels) if thumbnails else {}

    def picture(r: ScoreResult, size: int, inner: str = "", css: str = "") -> str:
        uri = previews.get((r.path, size))
        name = os.path.basename(r.path)
        img = (f'<img src="{esc(uri)}" alt="{esc(name)}" loading="lazy">' if uri
               else '<div class="noimg">no preview</div>')
        title = r.path + (f" ({note_for(r)})" if note_for(r) else "")
        attrs = f' class="{css}"' if css else ""
        return f'<a{attrs} href="{html.escape(file_href(r.path, base))}" title="{esc(title)}">{img}{inner}</a>'

    def caption(label: str, r: ScoreResult, extra: str = "") -> str:
        note = note_for(r)
        return (f'<figcaption><span class="rank">{esc(label)}</span> <span class="score">{r.score:.4f}</span>{extra}'
                + (f'<br><span class="note">{esc(note)}</span>' if note else "")
                + f'<br><span class="name" title="{esc(r.path)}">{esc(os.path.basename(r.path))}</span>'
                f'<br><span class="exif">{esc(_caption(exif_of(r)))}</span></figcaption>')

    figures = []
    for rank, cell in enumerate(cells, 1):
        first = cell[0]
        if len(cell) == 1:  # a single shot, or a burst of one: an ordinary cell
            figures.append(f'<figure class="shot">{picture(first, 240)}{caption(f"#{rank}", first)}</figure>')
            continue
        # Small frames have room for the score only; a note shows as a mark (and in full on hover).
        others = "".join(picture(m, 160, f'<span class="score">{m.score:.4f}{" ⚠" if note_for(m) else ""}</span>')
                         for m in cell[1:])
        count = f' <span class="count">burst of {len(cell)} frames</span>'
        keeper = picture(first, 240, '<span class="mark">★ keeper</span>', css="keeper")
        figures.append(
            f'<figure class="strip"><div class="frames">{keeper}<div class="others">{others}</div></div>'
            f'{caption(f"#{rank}", first, count)}</figure>')
    errors = "".join(f"<tr><td>{esc(r.path)}</td><td>{esc(r.error or '')}</td></tr>" for r in run.errors)
    error_table = (f"<h2>Not scored ({len(run.errors)})</h2><table><tr><th>file</th><th>reason</th></tr>"
                   f"{errors}</table>") if run.errors else ""
    total = len(selected(run, min_score))
    summary = (f"{len(rows)} of {total} scored photos, best first · weights {esc(run.weights_name)} "
               f"(sha256 {esc(run.weights_sha256[:12])}…) · {run.stats.errors} not scored · ilgnet {__version__}")
    if run.stats.interrupted:
        summary += " · run interrupted: partial report"
    dist = distribution(run, top, min_score, stars)
    histogram = (f'<div class="dist">{histogram_svg(dist)}<p>{esc(dist.line())}</p></div>' if dist.scores else "")
    return printable(f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ILGNet contact sheet</title><style>{CSS}</style></head>
<body><h1>ILGNet contact sheet</h1><p class="meta">{summary}</p>{histogram}
<div class="grid">{''.join(figures)}</div>{error_table}</body></html>
""")


def write_report(run: ScoreRun, fmt: str, output: str | Path, *, top: int | None = None,
                 min_score: float | None = None, max_pixels: int | None = None, stars: str | None = None) -> Path:
    """``stars``: the ``--stars`` spec when XMP ratings are written (marked on the HTML histogram)."""
    if fmt == "json":
        text = to_json(run, min_score)
    elif fmt == "csv":
        text = to_csv(run, min_score)
    elif fmt == "html":
        text = to_html(run, top=top, min_score=min_score, max_pixels=max_pixels,
                       base=os.path.dirname(os.path.abspath(output)), stars=stars)
    else:
        raise UsageError(f"cannot write format {fmt!r} to a file (choose csv, json or html)")
    # CSV keeps undecodable file-name bytes as they are on disk, so every path in it opens.
    atomic_write_text(output, text, errors="surrogateescape" if fmt == "csv" else "strict")
    return Path(output)


def guess_format(output: str | Path | None, fmt: str | None) -> str:
    if fmt:
        return fmt
    suffix = Path(output).suffix.lower().lstrip(".") if output else ""
    return {"htm": "html"}.get(suffix, suffix) if suffix in ("csv", "json", "html", "htm") else "table"


MAX_MANIFEST = 16 << 20


@dataclass
class Export:
    """What ``--copy-top``/``--link-top`` did in ``folder``."""

    folder: Path
    added: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)  # already there from an earlier run (renamed to the new rank)
    removed_from_ranking: list[Path] = field(default_factory=list)  # earlier keepers no longer ranked: left in place


def _read_manifest(dest: Path) -> dict[str, dict[str, Any]]:
    from ilgnet_cli.runtime.fsutil import UnreadableFile, read_json_object

    try:
        raw = read_json_object(dest / EXPORT_MANIFEST, MAX_MANIFEST)
    except (OSError, UnreadableFile):
        return {}
    entries = raw.get("files")
    if not isinstance(entries, dict):
        return {}
    out = {}
    for name, entry in entries.items():
        if (isinstance(name, str) and name and "/" not in name and os.sep not in name and name not in (".", "..")
                and isinstance(entry, dict) and isinstance(entry.get("source"), str)):
            out[name] = entry
    return out


def _source_stamp(path: str) -> dict[str, Any]:
    st = os.stat(path)
    return {"source": os.path.realpath(path), "source_size": st.st_size, "source_mtime_ns": st.st_mtime_ns}


def _still_ours(target: Path, entry: dict[str, Any], link: bool) -> bool:
    """The file an earlier run exported is still what it exported (a copy or link of the same,
    unchanged photo), so it need not be exported again."""
    try:
        st = os.lstat(target)
        src = os.stat(entry["source"])
    except (OSError, KeyError, TypeError, ValueError):
        return False
    if (src.st_size, src.st_mtime_ns) != (entry.get("source_size"), entry.get("source_mtime_ns")):
        return False
    if link:
        return stat.S_ISLNK(st.st_mode) and os.readlink(target) == entry["source"]
    return stat.S_ISREG(st.st_mode) and (st.st_size, st.st_mtime_ns) == (entry.get("size"), entry.get("mtime_ns"))


def check_export_folder(dest: str | Path) -> None:
    """Before any scoring: ``dest`` can be a folder, and its mark (written last, after the
    copies) can be written; one :class:`UsageError` line otherwise."""
    from ilgnet_cli.runtime.fsutil import check_target, check_writable_folder

    check_writable_folder(dest)
    check_target(Path(dest) / EXPORT_MANIFEST)


def export_top(results: Iterable[ScoreResult], dest: str | Path, *, link: bool = False) -> Export:
    """Copy (or symlink) ranked files into ``dest`` as ``NNN_name``; never overwrites anything.

    Idempotent: a photo an earlier run already exported (and that is unchanged) is not exported
    again, only renamed to its new rank when that name is free; earlier keepers that dropped out of
    the ranking are left where they are and counted. The folder's manifest
    (``.ilgnet-export.json``) remembers what ilgnet put there, and marks the folder so that a
    later run over a tree holding it never scores the copies. The free-name check and the write
    are one step (a hard link or symlink to a name fails if anything is there), so a file or link
    that appears in ``dest`` meanwhile is never replaced."""
    from ilgnet_cli.runtime.fsutil import atomic_write_text

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for stale in dest.glob(".ilgnet-copy.*.tmp"):  # a copy cut short by kill -9: ours, never a keeper
        if stale.is_file() and not stale.is_symlink():
            stale.unlink(missing_ok=True)
    manifest = _read_manifest(dest)
    exported_of = {e["source"]: name for name, e in manifest.items() if _still_ours(dest / name, e, link)}
    rows = list(results)
    width = max(3, len(str(len(rows))))
    done = Export(dest)
    for i, r in enumerate(rows, 1):
        try:
            stamp = _source_stamp(r.path)
        except OSError:
            continue
        wanted = _fit_name(f"{i:0{width}d}_{os.path.basename(r.path)}")
        old = exported_of.pop(stamp["source"], None)
        if old is not None:
            target = dest / old
            if old != wanted and not os.path.lexists(dest / wanted):
                try:  # link() fails if the name was taken meanwhile; nothing is ever replaced
                    os.link(target, dest / wanted, follow_symlinks=False)
                    os.unlink(target)
                    manifest[wanted] = manifest.pop(old)
                    target = dest / wanted
                except OSError:
                    pass
            done.kept.append(target)
            continue
        for target in _free_names(dest, wanted):
            try:
                if link:
                    os.symlink(stamp["source"], target)
                else:
                    copy_new(r.path, target)
            except FileExistsError:
                continue
            st = os.lstat(target)
            manifest[target.name] = {**stamp, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "link": link}
            done.added.append(target)
            break
    done.removed_from_ranking = sorted(dest / name for name in exported_of.values())
    atomic_write_text(dest / EXPORT_MANIFEST, json.dumps({"generator": f"ilgnet {__version__}", "files": manifest},
                                                         indent=1) + "\n")
    return done


def _fit_name(name: str) -> str:
    first = Path(name)
    stem, suffix = first.stem, first.suffix
    if len(os.fsencode(suffix)) > 32:
        stem, suffix = name, ""
    return _fit(stem, suffix)


NAME_MAX = 255  # bytes, on every common file system


def _fit(stem: str, suffix: str) -> str:
    """``stem + suffix`` cut (in the stem) to NAME_MAX bytes: the NNN_ prefix must not turn a
    legal long name into ENAMETOOLONG."""
    size = len(os.fsencode(suffix))
    while stem and len(os.fsencode(stem)) + size > NAME_MAX:
        stem = stem[:-1]
    return stem + suffix


def _free_names(dest: Path, name: str) -> Iterator[Path]:
    """``name``, then ``name-1``, ``name-2``... (suffix kept) as candidates; a cheap existence
    check skips taken ones, the caller's exclusive create is what decides."""
    first = Path(name)
    stem, suffix = first.stem, first.suffix
    if len(os.fsencode(suffix)) > 32:  # a "suffix" that long is part of the name
        stem, suffix = name, ""
    for n in range(100_000):
        target = dest / (_fit(stem, suffix) if n == 0 else _fit(stem, f"-{n}{suffix}"))
        if not (target.exists() or target.is_symlink()):
            yield target
    raise FileExistsError(f"no free name for {display(name)[:80]} in {display(str(dest))[:80]}")
