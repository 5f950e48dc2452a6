"""`ilgnet score`: options in, :func:`ilgnet_cli.photos.collection.score_collection`, reports out."""

from __future__ import annotations

import os
import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ilgnet_cli.cli import options
from ilgnet_cli.cli.common import (
    app,
    download_progress,
    err,
    errors_as_messages,
    exit_code,
    fail,
    load_torch,
    out,
    progress_bar,
)
from ilgnet_cli.model.transform import DecodeMode
from ilgnet_cli.runtime.precision import Precision
from ilgnet_cli.runtime.text import display


class ReportFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    html = "html"


class XmpStyle(str, Enum):
    adobe = "adobe"
    darktable = "darktable"
    both = "both"


@app.command()
def score(
    paths: Annotated[list[Path], typer.Argument(help="Image files and/or folders to score.", show_default=False, metavar="PATH...")],
    top: Annotated[int | None, typer.Option("--top", "-n", min=1, help="Show (and copy/link, and put in HTML) the best N. Terminal default: 20.")] = None,
    recursive: Annotated[bool, typer.Option("--recursive/--no-recursive", help="Descend into sub-folders.")] = True,
    report_format: Annotated[ReportFormat | None, typer.Option("--format", "-f", help="Report format (default: from --output's extension, else table).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the report to this file (atomically).")] = None,
    weights: options.Weights = None,
    device: options.Device = "auto",
    batch_size: options.BatchSize = 32,
    workers: options.Workers = None,
    exact: Annotated[bool, typer.Option("--exact", help="The authors' pipeline exactly: every pixel decoded, OpenCV's bilinear resize to 256x256, fp32 (--decode exact --precision fp32).")] = False,
    decode: Annotated[DecodeMode | None, typer.Option(help="fast (default): large JPEGs decoded at reduced size in the DCT, kept only while the fidelity gate finds every checked score within 0.008 in log-odds of the reference (with weights trained in our tests it moved P by up to 0.013 and was refused; measured by benchmarks/bench_fidelity.py); reference: every pixel, Lanczos to AVA's 800 px, then the authors' steps; exact: the authors' pipeline; draft: ilgnet 0.2's shortcut, unchecked.")] = None,
    precision: options.PrecisionOpt = Precision.AUTO,
    compile: Annotated[bool | None, typer.Option("--compile/--no-compile", help="Run bf16 under torch.compile (fp32 runs are never compiled; default: only for runs of 20,000+ photos to score, where the compile time pays; any compile failure falls back to eager).")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Ignore and do not update the score cache.")] = False,
    min_score: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Only report files scoring at least this.")] = None,
    include: Annotated[list[str] | None, typer.Option("--include", "-i", help="Only files matching this glob (name or relative path); repeatable.")] = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", "-x", help="Skip files matching this glob; repeatable.")] = None,
    hidden: Annotated[bool, typer.Option("--hidden", help="Include hidden files and folders (dot-names).")] = False,
    copy_top: Annotated[Path | None, typer.Option("--copy-top", help="Copy the ranked files (best N with --top) into this folder as NNN_name.")] = None,
    link_top: Annotated[Path | None, typer.Option("--link-top", help="Like --copy-top but with symbolic links.")] = None,
    max_pixels: options.MaxPixels = None,
    offline: options.Offline = False,
    as_json: Annotated[bool, typer.Option("--json", help="Same as --format json (to stdout unless --output).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar, table or summary (warnings and errors still).")] = False,
    xmp: Annotated[bool, typer.Option("--xmp", help="Write xmp:Rating (1-5) and the score into XMP sidecars (never touches images).")] = False,
    sidecar_style: Annotated[XmpStyle, typer.Option("--xmp-style", help="adobe (IMG_0001.xmp), darktable (IMG_0001.JPG.xmp) or both.")] = XmpStyle.adobe,
    stars: Annotated[str, typer.Option(help="quantile (quintiles of this run) or fixed:T1,T2,T3,T4 score thresholds.")] = "quantile",
    overwrite_ratings: Annotated[bool, typer.Option("--overwrite-ratings", help="Replace ratings set by hand (kept by default).")] = False,
    darktable_initial_rating: Annotated[int | None, typer.Option("--darktable-initial-rating", min=0, max=5, help="With --xmp: the initial rating darktable gives on import (default: darktable's setting, else 1; 0: none). A star equal to it in a sidecar darktable wrote is not a hand rating.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="With --xmp: show what would change, write nothing.")] = False,
    group_bursts: Annotated[float | None, typer.Option("--group-bursts", min=0.0, help="Group shots of one camera body taken within SECONDS of each other; keep the sharp, best-scored frame (e.g. --group-bursts 1).")] = None,
) -> None:
    """Score photos (files or whole folders) and report them sorted by aesthetic score.

    Examples: `ilgnet score ~/Photos --top 50`, `ilgnet score shoot/ -o best.html --top 100`,
    `ilgnet score shoot/ -o scores.csv`. Bad files are listed with a reason, never fatal.
    Exit code 0 when at least one file was scored, 1 when none could be (or sidecars could not
    be written), 2 for usage errors, 128+N when ended by signal N (130 Ctrl-C, 143 SIGTERM; the
    partial report is still written).
    """
    load_torch()
    from ilgnet_cli.photos import reports
    from ilgnet_cli.photos.collection import score_collection
    from ilgnet_cli.runtime.fsutil import check_output_file

    xmp_style = sidecar_style.value
    fmt = "json" if as_json and not report_format else reports.guess_format(
        output, report_format.value if report_format else None)
    if output is not None and report_format is None and not as_json and fmt == "table":
        raise fail(f"cannot tell the report format from {escape(display(output.name))!s}: name it .csv, .json "
                   "or .html, or give --format", 2)
    if fmt == "html" and output is None:
        raise fail("--format html needs --output FILE.html", 2)
    if copy_top and link_top:
        raise fail("use either --copy-top or --link-top, not both", 2)
    if exact and decode not in (None, DecodeMode.EXACT):
        raise fail("--exact is --decode exact; give one of them", 2)
    if exact and precision is Precision.BF16:
        raise fail("exact scoring is the authors' fp32 pipeline: it cannot run in bf16", 2)
    if xmp:
        from ilgnet_cli.photos.xmp import check_options

        try:
            check_options(xmp_style, stars)
        except ValueError as exc:
            raise fail(str(exc), 2) from None
    is_main = int(os.environ.get("RANK", "0")) == 0

    def say(kind: str, text: str) -> None:
        if kind == "precision":  # what the fidelity gate decided
            if not quiet and is_main:
                err.print(f"fidelity: {escape(display(text))}", highlight=False)
        else:
            err.print(f"[yellow]warning[/]: {escape(display(text))}", highlight=False)

    with errors_as_messages():
        if output is not None and fmt != "table":
            check_output_file(output)
        export_to = copy_top or link_top
        if export_to is not None:
            if any(os.path.isdir(p) and os.path.realpath(p) == os.path.realpath(export_to) for p in paths):
                raise fail(f"{'--copy-top' if copy_top else '--link-top'} {escape(display(str(export_to)))} is a "
                           "folder being scored: give another folder (a sub-folder such as keepers/ is fine)", 2)
            reports.check_export_folder(export_to)
        outputs = [p for p in (copy_top, link_top, output if fmt != "table" else None) if p is not None]
        started = time.monotonic()
        bar, on_bytes = download_progress()
        progress = _ScoreProgress(quiet or not is_main)
        with bar, progress:
            run = score_collection(
                paths, weights=weights, device=device, batch_size=batch_size, workers=workers, exact=exact,
                decode=decode, precision=Precision.FP32 if exact else precision, compile=compile,
                cache=not no_cache, recursive=recursive, hidden=hidden, include=include or [],
                exclude=exclude or [], skip=outputs, max_pixels=max_pixels, group_bursts=group_bursts,
                allow_download=not offline, download_progress=on_bytes, progress=progress.start, on_note=say)
        if run is None:  # not rank 0 under torchrun: rank 0 writes the report
            return
        elapsed = time.monotonic() - started
        if output is not None and fmt != "table":
            reports.write_report(run, fmt, output, top=top, min_score=min_score, max_pixels=max_pixels,
                                 stars=stars if xmp else None)
        if fmt == "json" and output is None:
            print(reports.to_json(run, min_score))
        elif not quiet and (top is not None or not (outputs or xmp)):
            out.print(reports.terminal_table(run, top or 20, min_score, roots=paths, width=out.width))
        exported = None
        if export_to is not None:
            exported = reports.export_top(reports.keepers(run, min_score, top), export_to,
                                          link=link_top is not None)
    sidecar_failures = 0
    if xmp:
        sidecar_failures = _write_xmp(run, run.weights_name, xmp_style, stars, overwrite_ratings, dry_run,
                                      darktable_initial=darktable_initial_rating)
    if not quiet:
        _summary(run, elapsed, output if fmt != "table" else None, exported,
                 reports.distribution(run, top, min_score, stars if xmp else None).line())
    elif exported is not None and exported.removed_from_ranking:
        _export_line(exported)
    if run.stats.interrupted:
        raise typer.Exit(exit_code(None))
    if run.stats.scored == 0 or sidecar_failures:
        raise typer.Exit(1)


def _write_xmp(run, model: str, style: str, stars: str, overwrite: bool, dry_run: bool,
               darktable_initial: int | None = None) -> int:
    """Write the sidecars; the number that could not be written (the run then exits 1)."""
    from ilgnet_cli.photos.xmp import write_sidecars

    notes: list[str] = []  # the ledger of written stars and sources not read: warnings
    changes, problems = write_sidecars(run.results, style=style, stars_spec=stars, model=model,
                                       overwrite_ratings=overwrite, dry_run=dry_run,
                                       weights_sha256=getattr(run, "weights_sha256", None),
                                       darktable_initial_rating=darktable_initial, notes=notes)
    for note in notes:
        err.print(f"[yellow]warning[/]: {escape(display(note))}", highlight=False)
    if dry_run:
        table = Table(title="XMP sidecars (dry run: nothing written)", title_justify="left")
        for col in ("sidecar", "action", "rating", "score"):
            table.add_column(col, overflow="fold")
        for c in changes:
            table.add_row(escape(display(str(c.path))), c.action,
                          escape(f"{c.old_rating or '-'} -> {c.new_rating or '-'}"), f"{c.score:.4f}")
        out.print(table)
    else:
        kept = sum(c.action == "keep-hand-rating" for c in changes)
        written = sum(c.action not in ("clash",) for c in changes)
        err.print(f"XMP: {written} sidecar(s) written ({kept} hand rating(s) kept)", highlight=False)
    for p in problems:
        err.print(f"[yellow]XMP skipped[/] {escape(display(p))}", highlight=False)
    return sum(1 for p in problems if "the sidecar of both" not in p)


class _ScoreProgress:
    """The scoring bar: it appears once the number of files is known (after discovery and any
    first-use download), counts finished files and shows the decode rate."""

    def __init__(self, quiet: bool) -> None:
        self.progress = progress_bar("{task.fields[rate]}", quiet=quiet)

    def start(self, total: int):
        task = self.progress.add_task("scoring", total=total, rate="")
        started = time.monotonic()
        self.progress.start()

        def update(stats) -> None:
            elapsed = max(time.monotonic() - started, 1e-6)
            rate = f"{stats.decoded / elapsed:.1f} img/s" if stats.decoded else ""
            self.progress.update(task, completed=stats.scored + stats.errors, rate=rate)

        return update

    def __enter__(self) -> _ScoreProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


def _export_line(exported) -> None:
    parts = [f"{len(exported.added)} added", f"{len(exported.kept)} already there"]
    if exported.removed_from_ranking:
        parts.append(f"{len(exported.removed_from_ranking)} no longer in the ranking (left in place)")
    err.print(f"{escape(display(str(exported.folder)))}: " + ", ".join(parts), highlight=False)


def _summary(run, elapsed: float, output: Path | None, exported, scores_line: str | None = None) -> None:
    s = run.stats
    rate = f", {s.decoded / elapsed:.1f} img/s" if s.decoded and elapsed > 0 else ""
    line = (f"scored {s.scored} of {s.files} files ({s.cache_hits} from cache, {s.decoded} decoded) "
            f"in {elapsed:.1f}s{rate}")
    if s.corrected:
        line += f"; {s.corrected} scored again after a shortcut failed its check"
    if s.errors:
        where = "reasons below and in the report" if output is not None else "reasons below"
        line += f"; [yellow]{s.errors} not scored[/] ({where})"
    err.print(line, highlight=False)
    if scores_line and s.scored:
        err.print(escape(scores_line), highlight=False)
    shown = run.errors if len(run.errors) <= 25 else run.errors[:20]
    for r in shown:
        err.print(f"  [yellow]skipped[/] {escape(display(r.path))}: {escape(display(r.error))}", highlight=False)
    if len(shown) < len(run.errors):
        reasons: dict[str, int] = {}
        for r in run.errors[len(shown):]:
            reasons[r.error or "?"] = reasons.get(r.error or "?", 0) + 1
        counted = "; ".join(f"{n} x {escape(display(reason))}" for reason, n in sorted(reasons.items(),
                                                                                          key=lambda kv: -kv[1]))
        err.print(f"  ... and {len(run.errors) - len(shown)} more: {counted}", highlight=False)
    if output is not None:
        err.print(f"report written to {escape(display(str(output)))}", highlight=False)
    if exported is not None:
        _export_line(exported)
    if s.interrupted:
        err.print("[yellow]interrupted[/]: the report holds what finished; run again to continue (cached)")
