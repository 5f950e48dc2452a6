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
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rich.table import Table

from ilgnet_cli import __version__
from ilgnet_cli.exif import ExifInfo
from ilgnet_cli.fsutil import atomic_write_text, copy_new, display, escape_controls, json_escaped, printable
from ilgnet_cli.scoring import ScoreResult, ScoreRun

FORMATS = ("table", "csv", "json", "html")
CSV_FIELDS = ("rank", "score", "path", "status", "error", "width", "height", "format", "captured", "camera",
              "lens", "exposure", "aperture", "iso", "focal_length", "has_gps", "sharpness", "burst", "keeper")


def exif_of(result: ScoreResult) -> ExifInfo:
    return ExifInfo.from_json(result.info.get("exif"))


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
        "sharpness": result.info.get("sharpness"),
        "precision": result.info.get("precision"),
        "burst": result.info.get("burst"),
        "keeper": result.info.get("keeper"),
    }


def selected(run: ScoreRun, min_score: float | None = None, top: int | None = None) -> list[ScoreResult]:
    """Scored results for a report, best first. With bursts, ``top`` counts bursts (each burst's
    keeper first, then its other frames) and ``min_score`` applies to keepers."""
    if run.bursts is not None:
        groups = [b for b in run.bursts if min_score is None or b.keeper.score >= min_score]
        return [m for b in (groups[:top] if top else groups) for m in b.members]
    rows = [r for r in run.scored if min_score is None or r.score >= min_score]
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
    return json_escaped(json.dumps(payload, indent=2, ensure_ascii=False))


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


def terminal_table(run: ScoreRun, top: int, min_score: float | None = None) -> Table:
    rows = selected(run, min_score, top)
    if run.bursts is not None:  # one row per burst: its keeper
        rows = [r for r in rows if r.info.get("keeper")]
        total = len([b for b in run.bursts if min_score is None or b.keeper.score >= min_score])
        title = f"ILGNet scores — best {len(rows)} of {total} bursts ({run.weights_name})"
    else:
        total = len(selected(run, min_score))
        title = f"ILGNet scores — top {len(rows)} of {total} ({run.weights_name})"
    table = Table(title=_plain(display(title)), title_justify="left")
    table.add_column("rank", justify="right")
    table.add_column("score", justify="right")
    table.add_column("file", overflow="fold")
    table.add_column("date")
    table.add_column("camera", overflow="fold")
    if run.bursts is not None:
        table.add_column("burst", justify="right")
    for i, r in enumerate(rows, 1):
        exif = exif_of(r)
        date = (exif.captured or "")[:19].replace("T", " ")
        # Rich markup in file names and EXIF must print literally, terminal controls escaped.
        cells = [str(i), f"{r.score:.4f}", _plain(display(r.path)), _plain(display(date)), _plain(display(exif.camera))]
        if run.bursts is not None:
            cells.append(f"keeper of {r.info.get('burst_size', 1)}")
        table.add_row(*cells)
    return table


def _plain(text: str | None) -> str:
    from rich.markup import escape

    return escape(text or "")


# --------------------------------------------------------------------------- HTML


def thumbnail_data_uri(path: str, size: int = 240, max_pixels: int | None = None) -> str | None:
    """A small JPEG of the photo (orientation applied) as a data: URI, or None if undecodable."""
    from PIL import Image

    from ilgnet_cli.decode import DecodeError, decode

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
h1{font-size:1.3rem;margin:0 0 .3rem}p.meta{color:#9aa;margin:.2rem 0 1rem;font-size:.85rem}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:14px}
figure{margin:0;background:#22262b;border-radius:8px;padding:8px;overflow:hidden}
figure img{display:block;width:100%;height:200px;object-fit:contain;background:#0d0e10;border-radius:4px}
.noimg{height:200px;display:flex;align-items:center;justify-content:center;color:#777;background:#0d0e10}
figcaption{font-size:.8rem;line-height:1.35;margin-top:6px;word-break:break-all}
.burst{margin-bottom:14px;padding-bottom:14px;border-bottom:1px solid #333}
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


def to_html(run: ScoreRun, top: int | None = None, min_score: float | None = None,
            thumbnails: bool = True, max_pixels: int | None = None) -> str:
    """A contact sheet that works offline: inline CSS, thumbnails as data URIs, no scripts."""
    def esc(text: str) -> str:  # untrusted text: markup escaped, controls and bidi overrides visible
        return html.escape(display(text))

    rows = selected(run, min_score, top)
    figures = []
    rank = 0
    for r in rows:
        if run.bursts is not None and r.info.get("keeper") and figures:
            figures.append('</div><div class="grid burst">')  # one row per burst, keeper first
        rank += 1 if run.bursts is None or r.info.get("keeper") else 0
        uri = thumbnail_data_uri(r.path, max_pixels=max_pixels) if thumbnails else None
        name = os.path.basename(r.path)
        img = (f'<img src="{esc(uri)}" alt="{esc(name)}" loading="lazy">' if uri
               else '<div class="noimg">no preview</div>')
        label = f"#{rank}"
        if run.bursts is not None and r.info.get("burst_size", 1) > 1:
            label += " keeper" if r.info.get("keeper") else " burst frame"
        figures.append(
            f'<figure>{img}<figcaption><span class="rank">{esc(label)}</span> '
            f'<span class="score">{r.score:.4f}</span><br><span class="name" title="{esc(r.path)}">{esc(name)}</span>'
            f'<br><span class="exif">{esc(_caption(exif_of(r)))}</span></figcaption></figure>'
        )
    errors = "".join(f"<tr><td>{esc(r.path)}</td><td>{esc(r.error or '')}</td></tr>" for r in run.errors)
    error_table = (f"<h2>Not scored ({len(run.errors)})</h2><table><tr><th>file</th><th>reason</th></tr>"
                   f"{errors}</table>") if run.errors else ""
    total = len(selected(run, min_score))
    summary = (f"{len(rows)} of {total} scored photos, best first · weights {esc(run.weights_name)} "
               f"(sha256 {esc(run.weights_sha256[:12])}…) · {run.stats.errors} not scored · ilgnet {__version__}")
    if run.stats.interrupted:
        summary += " · run interrupted: partial report"
    return printable(f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ILGNet contact sheet</title><style>{CSS}</style></head>
<body><h1>ILGNet contact sheet</h1><p class="meta">{summary}</p>
<div class="grid{' burst' if run.bursts is not None else ''}">{''.join(figures)}</div>{error_table}</body></html>
""")


def write_report(run: ScoreRun, fmt: str, output: str | Path, *, top: int | None = None,
                 min_score: float | None = None, max_pixels: int | None = None) -> Path:
    if fmt == "json":
        text = to_json(run, min_score)
    elif fmt == "csv":
        text = to_csv(run, min_score)
    elif fmt == "html":
        text = to_html(run, top=top, min_score=min_score, max_pixels=max_pixels)
    else:
        raise ValueError(f"cannot write format {fmt!r} to a file (choose csv, json or html)")
    # CSV keeps undecodable file-name bytes as they are on disk, so every path in it opens.
    atomic_write_text(output, text, errors="surrogateescape" if fmt == "csv" else "strict")
    return Path(output)


def guess_format(output: str | Path | None, fmt: str | None) -> str:
    if fmt:
        return fmt
    suffix = Path(output).suffix.lower().lstrip(".") if output else ""
    return {"htm": "html"}.get(suffix, suffix) if suffix in ("csv", "json", "html", "htm") else "table"


def export_top(results: Iterable[ScoreResult], dest: str | Path, *, link: bool = False) -> list[Path]:
    """Copy (or symlink) ranked files into ``dest`` as ``NNN_name``; never overwrites anything.

    The free-name check and the write are one step (a hard link or symlink to a name fails if
    anything is there), so a file or link that appears in ``dest`` meanwhile is never replaced."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    rows = list(results)
    width = max(3, len(str(len(rows))))
    written = []
    for i, r in enumerate(rows, 1):
        for target in _free_names(dest, f"{i:0{width}d}_{os.path.basename(r.path)}"):
            try:
                if link:
                    os.symlink(os.path.abspath(r.path), target)
                else:
                    copy_new(r.path, target)
            except FileExistsError:
                continue
            written.append(target)
            break
    return written


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
