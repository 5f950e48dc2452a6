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

from ilgnet_cli.cli.common import (
    app,
    download_progress,
    err,
    errors_as_messages,
    fail,
    out,
    progress_bar,
)
from ilgnet_cli.fsutil import display


class ReportFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    html = "html"


class XmpStyle(str, Enum):
    adobe = "adobe"
    darktable = "darktable"
    both = "both"


class ScorePrecision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


@app.command()
def score(
    paths: Annotated[list[Path], typer.Argument(help="Image files and/or folders to score.", show_default=False)],
    top: Annotated[int | None, typer.Option("--top", "-n", min=1, help="Show (and copy/link, and put in HTML) the best N. Terminal default: 20.")] = None,
    recursive: Annotated[bool, typer.Option("--recursive/--no-recursive", help="Descend into sub-folders.")] = True,
    report_format: Annotated[ReportFormat | None, typer.Option("--format", "-f", help="Report format (default: from --output's extension, else table).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the report to this file (atomically).")] = None,
    weights: Annotated[str | None, typer.Option("--weights", "-w", help="Installed weights name or .safetensors file (default: ilgnet-ava1, fetched on first use).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 32,
    workers: Annotated[int | None, typer.Option(min=0, help="Decoding worker processes (default: one per CPU core, at most 8; 0 = decode in this process).")] = None,
    exact: Annotated[bool, typer.Option("--exact", help="The authors' pipeline: full-resolution JPEG decode and fp32 (default: DCT-domain downscale to >= 256 px, much faster).")] = False,
    precision: Annotated[ScorePrecision | None, typer.Option(help="auto: bf16 where the device computes it natively and a check on the first batch shows it keeps every score within 0.005 and the order of photos further apart; else fp32.")] = None,
    compile: Annotated[bool | None, typer.Option("--compile/--no-compile", help="Run bf16 under torch.compile (fp32 runs are never compiled; default: only for runs of 20,000+ photos to score, where the compile time pays; any compile failure falls back to eager).")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Ignore and do not update the score cache.")] = False,
    min_score: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Only report files scoring at least this.")] = None,
    include: Annotated[list[str] | None, typer.Option("--include", "-i", help="Only files matching this glob (name or relative path); repeatable.")] = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", "-x", help="Skip files matching this glob; repeatable.")] = None,
    hidden: Annotated[bool, typer.Option("--hidden", help="Include hidden files and folders (dot-names).")] = False,
    copy_top: Annotated[Path | None, typer.Option("--copy-top", help="Copy the ranked files (best N with --top) into this folder as NNN_name.")] = None,
    link_top: Annotated[Path | None, typer.Option("--link-top", help="Like --copy-top but with symbolic links.")] = None,
    max_pixels: Annotated[int | None, typer.Option(min=1, help="Refuse images declaring more pixels (decompression bombs). Default 120,000,000.")] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Never download weights (also ILGNET_OFFLINE=1).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Same as --format json (to stdout unless --output).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")] = False,
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
    Exit code 0 when at least one file was scored, 1 when none could be, 2 for usage errors,
    130 when interrupted (the partial report is still written).
    """
    from ilgnet_cli.fsutil import check_writable_file, check_writable_folder
    from ilgnet_cli.photos import reports
    from ilgnet_cli.photos.collection import score_collection
    from ilgnet_cli.photos.discover import holds_image

    xmp_style = sidecar_style.value
    fmt = "json" if as_json and not report_format else reports.guess_format(
        output, report_format.value if report_format else None)
    if fmt not in reports.FORMATS:
        raise fail(f"unknown --format {fmt!r} (choose {', '.join(reports.FORMATS)})", 2)
    if output is not None and report_format is None and not as_json and fmt == "table":
        raise fail(f"cannot tell the report format from {escape(display(output.name))!s}: name it .csv, .json "
                   "or .html, or give --format", 2)
    if fmt == "html" and output is None:
        raise fail("--format html needs --output FILE.html", 2)
    if copy_top and link_top:
        raise fail("use either --copy-top or --link-top, not both", 2)
    if xmp:
        from ilgnet_cli.photos.xmp import check_options

        try:
            check_options(xmp_style, stars)
        except ValueError as exc:
            raise fail(str(exc), 2) from None
    is_main = int(os.environ.get("RANK", "0")) == 0

    def say(kind: str, text: str) -> None:
        if kind == "precision":  # the first time the bf16 guard runs for these weights here
            if not quiet and is_main:
                err.print(f"precision: {escape(display(text))}", highlight=False, soft_wrap=True)
        else:
            err.print(f"[yellow]warning[/]: {escape(display(text))}", highlight=False)

    with errors_as_messages():
        if output is not None and fmt != "table":
            check_writable_file(output)
            if holds_image(output):  # -o pointing at a photo (a typo, a wrong argument order)
                raise fail(f"will not write the report over {escape(display(str(output)))}: it is an image", 2)
        export_to = copy_top or link_top
        if export_to is not None:
            check_writable_folder(export_to)
        outputs = [p for p in (copy_top, link_top, output if fmt != "table" else None) if p is not None]
        started = time.monotonic()
        bar, on_bytes = download_progress()
        progress = _ScoreProgress(quiet or not is_main)
        with bar, progress:
            run = score_collection(
                paths, weights=weights, device=device, batch_size=batch_size, workers=workers, exact=exact,
                precision=(precision or ScorePrecision.auto).value, compile=compile, cache=not no_cache, recursive=recursive,
                hidden=hidden, include=include or [], exclude=exclude or [], skip=outputs, max_pixels=max_pixels,
                group_bursts=group_bursts, allow_download=not offline, download_progress=on_bytes,
                progress=progress.start, on_note=say)
        if run is None:  # not rank 0 under torchrun: rank 0 writes the report
            return
        elapsed = time.monotonic() - started
        if output is not None and fmt != "table":
            reports.write_report(run, fmt, output, top=top, min_score=min_score, max_pixels=max_pixels,
                                 stars=stars if xmp else None)
        if fmt == "json" and output is None:
            print(reports.to_json(run, min_score))
        elif not (quiet and output is not None):
            out.print(reports.terminal_table(run, top or 20, min_score))
        exported = []
        if export_to is not None:
            exported = reports.export_top(reports.selected(run, min_score, top), export_to,
                                          link=link_top is not None)
    if xmp:
        _write_xmp(run, run.weights_name, xmp_style, stars, overwrite_ratings, dry_run,
                   darktable_initial=darktable_initial_rating)
    if not quiet:
        _summary(run, elapsed, output if fmt != "table" else None, exported,
                 reports.distribution(run, top, min_score, stars if xmp else None).line())
    if run.stats.interrupted:
        raise typer.Exit(130)
    if run.stats.scored == 0:
        raise typer.Exit(1)


def _write_xmp(run, model: str, style: str, stars: str, overwrite: bool, dry_run: bool,
               darktable_initial: int | None = None) -> None:
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
        written = sum(c.action != "clash" for c in changes)
        err.print(f"XMP: {written} sidecar(s) written ({kept} hand rating(s) kept)", highlight=False)
    for p in problems:
        err.print(f"[yellow]XMP skipped[/] {escape(display(p))}", highlight=False)


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


def _summary(run, elapsed: float, output: Path | None, exported: list[Path], scores_line: str | None = None) -> None:
    s = run.stats
    rate = f", {s.decoded / elapsed:.1f} img/s" if s.decoded and elapsed > 0 else ""
    line = (f"scored {s.scored} of {s.files} files ({s.cache_hits} from cache, {s.decoded} decoded) "
            f"in {elapsed:.1f}s{rate}")
    if s.errors:
        line += f"; [yellow]{s.errors} warning(s): not scored[/] (reasons in the report)"
    err.print(line, highlight=False)
    if scores_line and s.scored:
        err.print(escape(scores_line), highlight=False)
    for r in run.errors[:10]:
        err.print(f"  [yellow]skipped[/] {escape(display(r.path))}: {escape(display(r.error))}", highlight=False)
    if len(run.errors) > 10:
        err.print(f"  ... and {len(run.errors) - 10} more", highlight=False)
    if output is not None:
        err.print(f"report written to {escape(display(str(output)))}", highlight=False)
    if exported:
        err.print(f"{len(exported)} file(s) placed in {escape(display(str(exported[0].parent)))}", highlight=False)
    if s.interrupted:
        err.print("[yellow]interrupted[/]: the report holds what finished; run again to continue (cached)")
