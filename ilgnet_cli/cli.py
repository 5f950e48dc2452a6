"""The ``ilgnet`` command line: a thin Typer layer over the library modules.

Exit codes: 0 success, 1 failure (nothing could be done), 2 usage error, 130 interrupted.
Errors are one line on stderr; ``--json`` output goes to stdout.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from ilgnet_cli import __version__
from ilgnet_cli.fsutil import display

app = typer.Typer(
    name="ilgnet",
    help="Score photos for aesthetic quality with ILGNet (Jin et al., WCSP 2016), and train/evaluate it on AVA.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
weights_app = typer.Typer(help="Manage model weights: list, fetch, import Caffe models, verify.",
                          no_args_is_help=True)
app.add_typer(weights_app, name="weights")
download_app = typer.Typer(help="Download datasets.", no_args_is_help=True)
app.add_typer(download_app, name="download")

out = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def errors_as_messages():
    """Turn the library's errors into one-line messages and exit codes: a usage error exits 2,
    any other :class:`~ilgnet_cli.errors.IlgnetError` (and OSError) 1; anything else is a bug and
    keeps its traceback."""
    from ilgnet_cli.errors import IlgnetError, UsageError

    try:
        yield
    # Messages quote file names: printed literally (no Rich markup, terminal controls escaped).
    except UsageError as exc:
        raise fail(escape(display(str(exc))), 2) from None
    except IlgnetError as exc:  # everything the library raises on purpose; anything else is a bug
        failed = fail(escape(display(str(exc))))
        for line in getattr(exc, "details", ()):  # the one exception to "one line": the first-run help block
            err.print(escape(display(line)), highlight=False, soft_wrap=True)
        raise failed from None
    except OSError as exc:  # disk full, permissions, a path that vanished: one line, never a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        raise fail(escape(display(f"{where}{exc.strerror or exc}"))) from None
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None


def _version(value: bool) -> None:
    if value:
        out.print(f"ilgnet {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """ILGNet image aesthetics: `ilgnet score ~/Photos`."""


class _LazyProgress:
    """A download progress bar that only appears once bytes arrive (no blank line otherwise)."""

    def __init__(self) -> None:
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), TimeRemainingColumn(), console=err, transient=True)
        self.task = None

    def update(self, done: int, total: int | None) -> None:
        if self.task is None:
            self.progress.start()
            self.task = self.progress.add_task("downloading", total=total)
        self.progress.update(self.task, completed=done, total=total)

    def __enter__(self) -> _LazyProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.task is not None:
            self.progress.stop()


def download_progress() -> tuple[_LazyProgress, callable]:
    lazy = _LazyProgress()
    return lazy, lazy.update


# --------------------------------------------------------------------------- score


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
    precision: Annotated[ScorePrecision, typer.Option(help="auto: bf16 where the device computes it natively and a check on the first batch shows it keeps the scores (within 0.005) and their order; else fp32.")] = None,
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
    dry_run: Annotated[bool, typer.Option("--dry-run", help="With --xmp: show what would change, write nothing.")] = False,
    group_bursts: Annotated[float | None, typer.Option("--group-bursts", min=0.0, help="Group shots of one camera body taken within SECONDS of each other; keep the sharp, best-scored frame (e.g. --group-bursts 1).")] = None,
) -> None:
    """Score photos (files or whole folders) and report them sorted by aesthetic score.

    Examples: `ilgnet score ~/Photos --top 50`, `ilgnet score shoot/ -o best.html --top 100`,
    `ilgnet score shoot/ -o scores.csv`. Bad files are listed with a reason, never fatal.
    Exit code 0 when at least one file was scored, 1 when none could be, 2 for usage errors,
    130 when interrupted (the partial report is still written).
    """
    from ilgnet_cli import reports
    from ilgnet_cli.collection import score_collection
    from ilgnet_cli.discover import holds_image
    from ilgnet_cli.fsutil import check_writable_file, check_writable_folder

    xmp_style = sidecar_style.value
    fmt = "json" if as_json and not report_format else reports.guess_format(
        output, report_format.value if report_format else None)
    if fmt not in reports.FORMATS:
        raise fail(f"unknown --format {fmt!r} (choose {', '.join(reports.FORMATS)})", 2)
    if fmt == "html" and output is None:
        raise fail("--format html needs --output FILE.html", 2)
    if copy_top and link_top:
        raise fail("use either --copy-top or --link-top, not both", 2)
    if xmp:
        from ilgnet_cli.xmp import check_options

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
        if copy_top or link_top:
            check_writable_folder(copy_top or link_top)
        outputs = [p for p in (copy_top, link_top, output if fmt != "table" else None) if p is not None]
        started = time.monotonic()
        bar, on_bytes = download_progress()
        progress = _ScoreProgress(quiet or not is_main)
        with bar, progress:
            run = score_collection(
                paths, weights=weights, device=device, batch_size=batch_size, workers=workers, exact=exact,
                precision=(precision or ScorePrecision.auto).value, cache=not no_cache, recursive=recursive,
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
        if copy_top or link_top:
            exported = reports.export_top(reports.selected(run, min_score, top), copy_top or link_top,
                                          link=link_top is not None)
    if xmp:
        _write_xmp(run, run.weights_name, xmp_style, stars, overwrite_ratings, dry_run)
    if not quiet:
        _summary(run, elapsed, output if fmt != "table" else None, exported,
                 reports.distribution(run, top, min_score, stars if xmp else None).line())
    if run.stats.interrupted:
        raise typer.Exit(130)
    if run.stats.scored == 0:
        raise typer.Exit(1)


def _write_xmp(run, model: str, style: str, stars: str, overwrite: bool, dry_run: bool) -> None:
    from ilgnet_cli.xmp import write_sidecars

    changes, problems = write_sidecars(run.results, style=style, stars_spec=stars, model=model,
                                       overwrite_ratings=overwrite, dry_run=dry_run)
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
        from rich.progress import MofNCompleteColumn, SpinnerColumn

        self.progress = Progress(SpinnerColumn(), TextColumn("scoring"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=err,
                                 transient=True, disable=quiet)

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


# --------------------------------------------------------------------------- weights


@weights_app.command("list")
def weights_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Known weight sets (registry) and what is installed, with sizes and checksums."""
    from ilgnet_cli import store

    with errors_as_messages():
        registry = store.load_registry()
        inst = {i.name: i for i in store.installed_all()}
    rows = []
    for name in sorted(set(registry.weights) | set(inst)):
        spec = registry.weights.get(name)
        rec = inst.get(name)
        rows.append({
            "name": name,
            "default": name == registry.default,
            "installed": rec is not None,
            "architecture": rec.architecture if rec else (spec.architecture if spec else ""),
            "size": rec.size if rec else (spec.size if spec else None),
            "size_note": spec.size_note if spec else "",
            "sha256": rec.sha256 if rec else None,
            "source_checksum": spec.checksum if spec else None,
            "description": spec.description if spec else f"user weights from {rec.source}",
            "path": str(rec.path) if rec else None,
        })
    if as_json:
        out.print_json(json.dumps({"home": str(store.home()), "weights": rows}))
        return
    table = Table(title=f"weights (store: {store.home()})")
    for col in ("name", "installed", "size", "sha256 / source checksum", "description"):
        table.add_column(col, overflow="fold")
    for r in rows:
        size = f"{r['size'] / 1e6:.1f} MB" if r["size"] else r["size_note"]
        check = (r["sha256"][:16] + "...") if r["sha256"] else (r["source_checksum"] or "not published")
        table.add_row(r["name"] + (" (default)" if r["default"] else ""), "yes" if r["installed"] else "no",
                      size, check, r["description"])
    out.print(table)


@weights_app.command("fetch")
def weights_fetch(
    name: Annotated[str, typer.Argument(help="Registry name, e.g. ilgnet-ava1, ilgnet-ava2, bvlc-googlenet.")],
    retries: Annotated[int, typer.Option(min=0, help="Retries per source.")] = 4,
) -> None:
    """Download weights (mirrors, resume, checksum) and convert caffemodels to safetensors."""
    from ilgnet_cli import store

    with errors_as_messages():
        progress, update = download_progress()
        with progress:
            rec = store.fetch(name, progress=update, retries=retries)
    out.print(f"installed {rec.name}: {rec.path} ({rec.size / 1e6:.1f} MB, sha256 {rec.sha256})")


@weights_app.command("import")
def weights_import(
    caffemodel: Annotated[Path, typer.Argument(help="A .caffemodel file (ILGNet or bvlc_googlenet).")],
    name: Annotated[str | None, typer.Option(help="Name in the store (default: from the file name).")] = None,
    mean: Annotated[str | None, typer.Option(help="ava1 or ava2 (the authors' mean images), imagenet, B,G,R, or a mean image as .npy or Caffe .binaryproto (default ava1; imagenet for GoogLeNet).")] = None,
) -> None:
    """Convert a Caffe model into the weights store (safetensors), checking every layer."""
    from ilgnet_cli import store

    with errors_as_messages():
        rec = store.import_caffemodel(caffemodel, name, mean)
    out.print(f"imported {caffemodel.name} as {rec.name} ({rec.architecture}): {rec.path}")


@weights_app.command("add")
def weights_add(
    file: Annotated[Path, typer.Argument(help="An ILGNet .safetensors file (e.g. RUN_DIR/best.safetensors).")],
    name: Annotated[str, typer.Option(help="Name in the store.")],
    mean: Annotated[str | None, typer.Option(help="Override the mean stored in the file.")] = None,
) -> None:
    """Install an ILGNet .safetensors file (checked against the architecture) into the store."""
    from ilgnet_cli import store

    with errors_as_messages():
        rec = store.add_safetensors(file, name, mean)
    out.print(f"added {rec.name}: {rec.path}")


@weights_app.command("verify")
def weights_verify(
    name: Annotated[str | None, typer.Argument(help="Weights to check (default: all installed).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Re-hash installed weights and check every tensor against the architecture."""
    from ilgnet_cli import store

    names = [name] if name else [i.name for i in store.installed_all()]
    results = [store.verify(n) for n in names]
    if as_json:
        out.print_json(json.dumps([r.__dict__ for r in results]))
    else:
        for r in results:
            mark = "[green]ok[/]" if r.ok else "[red]FAILED[/]"
            out.print(f"{mark} {r.name}: {r.message}", highlight=False)
        if not results:
            out.print("no weights installed")
    if not all(r.ok for r in results) or (name and not results):
        raise typer.Exit(1)


@weights_app.command("remove")
def weights_remove(name: Annotated[str, typer.Argument(help="Installed weights name.")]) -> None:
    """Delete installed weights from the store."""
    from ilgnet_cli import store

    if not store.remove(name):
        raise fail(f"weights {name!r} are not installed")
    out.print(f"removed {name}")


# --------------------------------------------------------------------------- AVA


DEFAULT_SOURCE = "hf-sxfly"


def _ava_dir(ava: Path | None) -> Path:
    from ilgnet_cli.datadir import default_ava

    return ava if ava is not None else default_ava()


@download_app.command("ava")
def download_ava(
    dest: Annotated[Path | None, typer.Option("--dest", "-d", help="Folder for AVA (default: $ILGNET_DATA/ava): DEST/AVA.txt, DEST/images/<id>.jpg, ...")] = None,
    source: Annotated[str | None, typer.Option(help=f"A shipped mirror manifest (default {DEFAULT_SOURCE}; see below).")] = None,
    manifest: Annotated[Path | None, typer.Option(help="Your own manifest JSON (files with URLs+mirrors, sizes, checksums, archive types).")] = None,
    from_path: Annotated[Path | None, typer.Option("--from", help="Import a copy you have: a folder of images, a zip/tar, or the first part of a 7z volume set.")] = None,
    jobs: Annotated[int, typer.Option(min=1, help="Parallel downloads / verification processes.")] = 4,
    retries: Annotated[int, typer.Option(min=0, help="Retries per URL.")] = 4,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Get AVA (metadata + 255,530 images, about 32 GB) into one layout and verify every image.

    Re-running is safe: finished files are kept, interrupted downloads resume; with no source
    given and AVA.txt already in DEST, only the verification runs again. Writes
    DEST/missing.txt and DEST/corrupt.txt. Shipped sources: hf-sxfly (the default),
    hf-iceclear, hf-will33am (all unverified: their archives' layouts could not be confirmed
    offline).
    """
    from ilgnet_cli.ava_download import download_ava as run

    dest = _ava_dir(dest)
    if not (source or manifest or from_path or (dest / "AVA.txt").exists()):
        source = DEFAULT_SOURCE
    with errors_as_messages():
        progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                            TimeRemainingColumn(), console=err, transient=True)
        tasks: dict[str, int] = {}

        def update(what: str, done: int, total: int | None) -> None:
            if what not in tasks:
                tasks[what] = progress.add_task(what, total=total)
            progress.update(tasks[what], completed=done, total=total)

        with progress:
            report = run(dest, source=source, manifest=manifest, from_path=from_path, jobs=jobs, retries=retries,
                         progress=update)
    summary = report.to_json()
    if as_json:
        print(json.dumps(summary))
    else:
        out.print(f"AVA in {escape(display(str(dest)))}: {report.listed} listed, {report.present} present, "
                  f"{len(report.missing)} missing, {len(report.corrupt)} corrupt ({report.downloaded} downloaded, "
                  f"{report.imported} imported now)", highlight=False)
        for failure in report.failures[:5]:
            err.print(f"[yellow]failed[/] {escape(display(failure))}", highlight=False)
    if report.present == 0:
        raise typer.Exit(1)


class PartitionKind(str, Enum):
    ava1 = "ava1"
    ava2 = "ava2"
    standard = "standard"
    ilgnet_ava1 = "ilgnet-ava1"
    ilgnet_ava2 = "ilgnet-ava2"


@app.command()
def partition(
    kind: Annotated[PartitionKind, typer.Argument(help="ava1 / ava2 (random splits by the paper's rules), standard (the official split), ilgnet-ava1 / ilgnet-ava2 (the authors' exact lists, shipped with ilgnet).")],
    ava: Annotated[Path | None, typer.Option("--ava", help="The AVA folder (default: $ILGNET_DATA/ava).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder (default: AVA/partitions/KIND).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random splits.")] = 0,
    delta: Annotated[float, typer.Option(min=0.0, help="ava1: drop training images with |mean - 5| < delta.")] = 0.0,
    lists: Annotated[Path | None, typer.Option(help="ilgnet-*: a folder with other copies of the authors' AVA1/ and AVA2/ lists (default: the shipped ones).")] = None,
    ava_file: Annotated[Path | None, typer.Option(help="An AVA.txt elsewhere than AVA/AVA.txt.")] = None,
    test_list: Annotated[Path | None, typer.Option(help="standard: the official generic_test.jpgl (default: AVA/aesthetics_image_lists/).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print partition.json.")] = False,
) -> None:
    """Write a train/test partition: train.txt, test.txt (`<id>.jpg <label>`) and partition.json."""
    from ilgnet_cli.partition import make_partition

    ava = _ava_dir(ava)
    out_dir = out_dir or ava / "partitions" / kind.value
    with errors_as_messages():
        part = make_partition(kind.value, ava, out_dir, seed=seed, delta=delta, lists_dir=lists, ava_file=ava_file,
                              test_list=test_list)
    summary = part.summary()
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    t = summary["test"]
    out.print(f"{kind.value}: train {summary['train']['total']} ({summary['train']['per_class']}), test {t['total']} "
              f"({t['per_class']}); always answering the majority class scores "
              f"{summary['test_majority_baseline']:.1%} on this test set -> {escape(display(str(out_dir)))}",
              highlight=False)
    for note in part.notes:
        out.print(f"  note: {escape(display(note))}", highlight=False)


# --------------------------------------------------------------------------- train / eval

DATASET_HELP = ("ava1 or ava2 (the paper's protocol: the authors' lists), standard, ilgnet-ava1, ilgnet-ava2, "
                "or a partition folder from 'ilgnet partition'.")


@app.command()
def prepare(
    dataset: Annotated[str, typer.Option("--dataset", "--partition", help=DATASET_HELP)] = "ava1",
    ava: Annotated[Path | None, typer.Option("--ava", help="The AVA folder (default: $ILGNET_DATA/ava).")] = None,
    images: Annotated[Path | None, typer.Option(help="Folder of <id>.jpg images (default: AVA/images).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Cache folder (default: AVA/prepared/PARTITION; about 197 KB an image).")] = None,
    draft: Annotated[bool, typer.Option("--draft/--exact", help="JPEG draft decoding (faster, a few grey levels off) or full decoding as the authors (default).")] = False,
    jobs: Annotated[int, typer.Option(min=1, help="Decoding processes.")] = max(1, os.cpu_count() or 1),
) -> None:
    """Resize a partition's images once to 256x256 into a compact memory-mapped cache (like the authors' LMDB)."""
    from ilgnet_cli.ava import read_label_list
    from ilgnet_cli.partition import resolve_partition
    from ilgnet_cli.prepare import prepare as run

    ava = _ava_dir(ava)
    with errors_as_messages():
        folder = resolve_partition(dataset, ava)
        ids = [i for name in ("train.txt", "test.txt") if (folder / name).exists()
               for i, _ in read_label_list(folder / name)]
    if not ids:
        raise fail(f"no images listed in {escape(display(str(folder)))}", 1)
    out_dir = out_dir or ava / "prepared" / folder.name
    progress = Progress(TextColumn("preparing"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TimeRemainingColumn(), console=err, transient=True)
    task = progress.add_task("prepare", total=len(set(ids)))
    with errors_as_messages(), progress:
        counts = run(ids, images or ava / "images", out_dir, jobs=jobs, draft=draft,
                     progress=lambda d, t: progress.update(task, completed=d))
    out.print(f"prepared {counts['prepared']} of {counts['images']} images into {escape(display(str(out_dir)))} "
              f"({counts['failed']} failed; see failed.txt)", highlight=False)


class RecipeName(str, Enum):
    paper = "paper"
    fast = "fast"


@app.command()
def train(
    dataset: Annotated[str, typer.Option("--dataset", "--partition", help=DATASET_HELP)] = "ava1",
    ava: Annotated[Path | None, typer.Option("--ava", help="The AVA folder (default: $ILGNET_DATA/ava).")] = None,
    images: Annotated[Path | None, typer.Option(help="Folder of <id>.jpg images (default: AVA/images).")] = None,
    prepared: Annotated[Path | None, typer.Option(help="256x256 cache from 'ilgnet prepare' (default: AVA/prepared/PARTITION when it exists).")] = None,
    init: Annotated[str, typer.Option(help="bvlc-googlenet (ImageNet trunk, fetched if needed), random, or ILGNet weights (name or file).")] = "bvlc-googlenet",
    recipe: Annotated[RecipeName, typer.Option(help="paper: the authors' Caffe solver of the dataset (AVA1 or AVA2). fast: AdamW + cosine.")] = RecipeName.paper,
    iters: Annotated[int | None, typer.Option(min=1, help="Iterations (default: paper: the solver's max_iter; fast: --epochs).")] = None,
    epochs: Annotated[float | None, typer.Option(min=0.0, help="Epochs over the training list (fast: default 1).")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Global batch (default: the recipe's; split across torchrun ranks).")] = None,
    lr: Annotated[float | None, typer.Option(help="Override the recipe's base learning rate.")] = None,
    dropout: Annotated[float, typer.Option(min=0.0, max=0.99, help="Dropout of the FC layers (paper: 0.7).")] = 0.7,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Run folder (default: a new one under $ILGNET_DATA/runs; with --resume the latest).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run from RUN_DIR/checkpoints/last (same settings).")] = False,
    checkpoint_every: Annotated[int | None, typer.Option(min=1, help="Validate and checkpoint every K iterations (default: the solver's test_interval; fast: 1000).")] = None,
    val_size: Annotated[int, typer.Option(min=0, help="Validation images held out of the training list (at most a tenth of it; 0: none).")] = 2000,
    val_list: Annotated[Path | None, typer.Option(help="A validation list (<id>.jpg <label>) instead; its images leave training.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    amp: Annotated[bool | None, typer.Option("--amp/--no-amp", help="bf16 autocast on CUDA (default: paper fp32, fast bf16).")] = None,
    workers: Annotated[int, typer.Option(min=0, help="DataLoader workers per process.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed for init, validation split, data order, crops and dropout.")] = 0,
    mean: Annotated[str | None, typer.Option(help="Mean to subtract: ava1, ava2 (mean images), imagenet, B,G,R, a .npy or .binaryproto (default: the dataset's).")] = None,
    draft: Annotated[bool, typer.Option("--draft/--exact", help="JPEG draft decoding, or full decoding as the authors (default).")] = False,
    deterministic: Annotated[bool, typer.Option("--deterministic", help="torch deterministic algorithms (slower).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Fine-tune ILGNet; with no options: the paper's AVA1 training from ImageNet GoogLeNet.

    Multi-GPU: torchrun --nproc-per-node N -m ilgnet_cli train ...
    """
    from ilgnet_cli.partition import resolve_partition
    from ilgnet_cli.train import TrainConfig
    from ilgnet_cli.train import train as run

    ava = _ava_dir(ava)
    is_main = int(os.environ.get("RANK", "0")) == 0
    progress = Progress(TextColumn("training"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]}"),
                        TimeRemainingColumn(), console=err, transient=True, disable=not is_main)
    task = progress.add_task("train", total=None, loss="-", rate="")

    def update(rec: dict) -> None:
        if rec.get("event") == "start":
            what = "resuming" if resume else "writing"
            progress.console.print(f"{what} {escape(display(rec['run_dir']))}: {rec['train_n']} training and "
                                   f"{rec['val_n']} validation images, {rec['total']} iterations", highlight=False)
            return
        progress.update(task, completed=rec["step"], total=rec["total"], loss=f"{rec['loss']:.4f}",
                        rate=f"{rec['images_per_s']:.1f} img/s")

    with errors_as_messages():
        folder = resolve_partition(dataset, ava)
        if prepared is None and images is None and (ava / "prepared" / folder.name / "index.json").exists():
            prepared = ava / "prepared" / folder.name  # what 'ilgnet prepare' made for this dataset
        cfg = TrainConfig(partition=folder, out=out_dir, images=images or (None if prepared else ava / "images"),
                          prepared=prepared, init=init, recipe=recipe.value, iters=iters, epochs=epochs,
                          batch_size=batch_size, lr=lr, dropout=dropout, device=device, amp=amp, workers=workers,
                          seed=seed, checkpoint_every=checkpoint_every, val_size=val_size, val_list=val_list,
                          mean=mean, draft=draft, deterministic=deterministic, resume=resume)
        with progress:
            summary = run(cfg, progress=update)
    if not is_main:
        return
    if as_json:
        print(json.dumps(summary))
        return
    best = summary["best_val_accuracy"]
    line = f"trained {summary['steps']}/{summary['total']} iterations on {summary['world']} process(es)"
    out.print(line + (f"; best validation accuracy {best:.2%} on {summary['val_n']} held-out images"
                      if best is not None else ""), highlight=False)
    best_file = Path(summary["run_dir"]) / "best.safetensors"
    out.print(f"install: ilgnet weights add {escape(display(str(best_file)))} --name my-ilgnet", highlight=False)


class TTAMode(str, Enum):
    none = "none"
    mirror = "mirror"
    tencrop = "10crop"


class EvalPrecision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"


@app.command("eval")
def eval_cmd(
    dataset: Annotated[str, typer.Option(help=DATASET_HELP)] = "ava1",
    weights: Annotated[str, typer.Option("--weights", "-w", help="Installed weights name or .safetensors file.")] = "ilgnet-ava1",
    ava: Annotated[Path | None, typer.Option("--ava", help="The AVA folder (default: $ILGNET_DATA/ava; AVA.txt for SRCC/PLCC).")] = None,
    images: Annotated[Path | None, typer.Option(help="Folder of <id>.jpg (default: AVA/images).")] = None,
    prepared: Annotated[Path | None, typer.Option(help="256x256 cache from 'ilgnet prepare'.")] = None,
    tta: Annotated[TTAMode, typer.Option(help="Test-time augmentation.")] = TTAMode.none,
    draft: Annotated[bool, typer.Option("--draft/--exact", help="JPEG draft decoding, or full decoding as the authors (default).")] = False,
    precision: Annotated[EvalPrecision, typer.Option(help="fp32 as Caffe (default), or bf16 (a bf16 copy of the weights; faster where bf16 is native).")] = EvalPrecision.fp32,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    workers: Annotated[int, typer.Option(min=0)] = 4,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Also write the report: .html (plots) or .json.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Accuracy next to the test set's majority baseline and the paper, with balanced accuracy, ROC AUC, CIs."""
    from ilgnet_cli.evaluate import comparison_rows, evaluate
    from ilgnet_cli.fsutil import atomic_write_text, check_writable_file

    if output is not None and output.suffix.lower() not in (".html", ".htm", ".json"):
        raise fail("the report file must end in .html or .json", 2)
    with errors_as_messages():
        if output is not None:
            check_writable_file(output)
        result = evaluate(dataset, weights, ava_dir=_ava_dir(ava), images=images, tta=tta.value, device=device,
                          batch_size=batch_size, workers=workers, prepared=prepared, draft=draft,
                          precision=precision.value)
        if result is not None and output is not None:
            if output.suffix.lower() == ".json":
                atomic_write_text(output, json.dumps(result.to_json(), indent=2) + "\n")
            else:
                from ilgnet_cli.eval_report import to_html

                atomic_write_text(output, to_html(result, result.labels, result.scores))
    if result is None:
        return
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
        return
    m = result.metrics
    table = Table(title=f"{escape(display(result.dataset))}: {m.n} test images ({result.missing} missing); "
                        f"{result.precision}, {result.decode} decoding, tta {result.tta}")
    for col in ("", "accuracy", "note"):
        table.add_column(col)
    for row in comparison_rows(result):
        table.add_row(*(escape(display(c)) for c in row))
    out.print(table)
    (tn, fp), (fn, tp) = m.confusion
    out.print(f"balanced accuracy {m.balanced_accuracy:.2%} (95% CI {m.balanced_accuracy_ci[0]:.2%}–"
              f"{m.balanced_accuracy_ci[1]:.2%}); ROC AUC {m.roc_auc:.4f} (95% CI {m.roc_auc_ci[0]:.4f}–"
              f"{m.roc_auc_ci[1]:.4f}); confusion [[TN {tn}, FP {fp}], [FN {fn}, TP {tp}]]", highlight=False)
    if m.srcc is not None:
        out.print(f"SRCC {m.srcc:.4f}, PLCC {m.plcc:.4f} between P(high) and the mean vote", highlight=False)
    for note in result.notes:
        out.print(f"note: {escape(display(note))}", highlight=False)
    if output is not None:
        out.print(f"report: {escape(display(str(output)))}", highlight=False)


# --------------------------------------------------------------------------- learn


@app.command()
def learn(
    paths: Annotated[list[Path] | None, typer.Argument(help="Rated photos (files or folders): their XMP ratings are read.", show_default=False)] = None,
    name: Annotated[str | None, typer.Option("--name", help="Install the learned weights under this name (required unless --dry-run).")] = None,
    base: Annotated[str | None, typer.Option("--base", help="Weights to start from (default: the installed default weights).")] = None,
    keep: Annotated[list[Path] | None, typer.Option("--keep", help="A folder of liked photos (as 5 stars); repeatable.")] = None,
    reject: Annotated[list[Path] | None, typer.Option("--reject", help="A folder of rejected photos; repeatable.")] = None,
    ratings_csv: Annotated[Path | None, typer.Option("--ratings", help="A CSV of path,rating rows (-1 rejected, 1-5; paths relative to the CSV).")] = None,
    liked: Annotated[float, typer.Option("--liked", help="Ratings from this up are liked.")] = 4.0,
    disliked: Annotated[float, typer.Option("--disliked", help="Ratings from 1 up to this, and rejects, are disliked (0: only rejects).")] = 2.0,
    folds: Annotated[int, typer.Option(min=2, max=20, help="Cross-validation folds (grouped by scene).")] = 5,
    group_seconds: Annotated[float, typer.Option(min=0.0, help="Shots of one camera body this close in time are one scene.")] = 5.0,
    force: Annotated[bool, typer.Option("--force", help="Install even with too few ratings or no measured gain over the base.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Learn and evaluate; install nothing.")] = False,
    mirror: Annotated[bool, typer.Option("--mirror/--no-mirror", help="Also learn from each photo's mirror image.")] = True,
    seed: Annotated[int, typer.Option(help="Seed of the fold assignment and the bootstrap.")] = 0,
    recursive: Annotated[bool, typer.Option("--recursive/--no-recursive", help="Descend into sub-folders.")] = True,
    hidden: Annotated[bool, typer.Option("--hidden", help="Include hidden files and folders.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 16,
    workers: Annotated[int | None, typer.Option(min=0, help="Decoding worker processes (default: one per CPU core, at most 8).")] = None,
    max_pixels: Annotated[int | None, typer.Option(min=1, help="Refuse images declaring more pixels.")] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Never download the default weights.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Learn your taste from your ratings (XMP stars and rejects, --keep/--reject folders or a CSV).

    Example: `ilgnet learn ~/Photos/rated --name mine`, then `ilgnet score ~/Photos/new --weights mine`.
    Liked: 4-5 stars, disliked: 1-2 stars and rejects (3 is left out). The new weights are
    compared with the base by grouped cross-validation and installed only when they are better
    beyond noise (and with at least 40 ratings, 10 on each side), unless --force.
    Exit code 0 when installed (or evaluated with --dry-run), 1 when refused or nothing to learn.
    """
    from ilgnet_cli import learn as learning
    from ilgnet_cli import store
    from ilgnet_cli.discover import Selection
    from ilgnet_cli.errors import UsageError
    from ilgnet_cli.ratings import collect
    from ilgnet_cli.scoring import pick_device

    if name is None and not dry_run:
        raise fail("--name NAME is required (or --dry-run to evaluate only)", 2)
    if not (paths or keep or reject or ratings_csv):
        raise fail("give rated photos, --keep/--reject folders or --ratings FILE.csv", 2)
    with errors_as_messages():
        try:
            thresholds = learning.Thresholds(liked=liked, disliked=disliked)
        except UsageError as exc:
            raise fail(str(exc), 2) from None
        if name is not None:
            learning.check_name(name)
        dev = pick_device(device)
        selection = Selection(recursive=recursive, hidden=hidden)
        missing: list[str] = []
        found = collect(paths or [], keep=keep, reject=reject, ratings_csv=ratings_csv, selection=selection,
                        missing=missing)
        found.problems.extend(f"no such file or folder: {m}" for m in missing)
        if base is None:
            progress, update = download_progress()
            with progress:
                base = store.ensure_default(allow_download=not offline, progress=update)
        loaded = store.load_model(base, dev)
        if not as_json:
            _learn_ratings_summary(found, thresholds)
        started = time.monotonic()
        bar, on_done = _learn_progress(sum(thresholds.label(p.rating) is not None for p in found.photos),
                                       as_json)
        with bar:
            outcome = learning.run(found, loaded, name=None if dry_run else name, thresholds=thresholds,
                                   folds=folds, seconds=group_seconds, seed=seed, force=force, mirror=mirror,
                                   device=dev, workers=max(1, min(8, os.cpu_count() or 1)) if workers is None else workers,
                                   batch_size=batch_size, max_pixels=max_pixels, progress=on_done)
    elapsed = time.monotonic() - started
    if as_json:
        print(json.dumps(_learn_json(found, outcome, thresholds, loaded, elapsed), indent=2))
    else:
        _learn_report(outcome, loaded.name, elapsed, force, dry_run)
    if outcome.installed is None and not (dry_run and outcome.refusal is None):
        raise typer.Exit(1)


def _learn_progress(total: int, quiet: bool):
    from rich.progress import MofNCompleteColumn

    bar = Progress(TextColumn("reading photos"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=err, transient=True, disable=quiet)
    task = bar.add_task("features", total=total)
    return bar, lambda done: bar.update(task, completed=done)


def _learn_ratings_summary(found, thresholds) -> None:
    counts = ", ".join(f"{k}: {v}" for k, v in found.counts().items()) or "none"
    sources = ", ".join(f"{v} from {k}" for k, v in found.sources().items())
    err.print(f"ratings: {len(found.photos)} rated photos ({counts}){'; ' + sources if sources else ''}; "
              f"{found.unrated} unrated (ignored)", highlight=False)
    if found.ilgnet_written:
        err.print(f"  {found.ilgnet_written} rating(s) written by ilgnet itself (ilgnet:Rating): not yours, ignored",
                  highlight=False)
    err.print(f"labels: {escape(thresholds.describe())}; ratings in between are left out", highlight=False)
    for kind, lines in (("conflict", found.conflicts), ("skipped", found.problems)):
        for line in lines[:10]:
            err.print(f"  [yellow]{kind}[/] {escape(display(line))}", highlight=False)
        if len(lines) > 10:
            err.print(f"  ... and {len(lines) - 10} more {kind}s", highlight=False)


def _learn_report(outcome, base_name: str, elapsed: float, force: bool, dry_run: bool) -> None:
    data, cv = outcome.data, outcome.cv
    for path, reason in outcome.decode_errors[:10]:
        err.print(f"  [yellow]not decoded[/] {escape(display(path))}: {escape(display(reason))}", highlight=False)
    if len(outcome.decode_errors) > 10:
        err.print(f"  ... and {len(outcome.decode_errors) - 10} more not decoded", highlight=False)
    if data is not None:
        out.print(f"learning from {len(data.y)} photos: {int(data.y.sum())} liked, {int(len(data.y) - data.y.sum())} "
                  f"disliked, {len(set(data.groups.tolist()))} separate scenes ({data.left_out} left out between "
                  f"the thresholds); {elapsed:.0f}s", highlight=False)
    if cv is not None:
        table = Table(title=f"held-out photos, {cv.folds}-fold cross-validation grouped by scene (95% CIs)",
                      title_justify="left")
        for col in ("", "ROC AUC", "accuracy", "Spearman with stars"):
            table.add_column(col)

        def cell(m) -> str:
            return "-" if m.value != m.value else f"{m.value:.3f} [{m.ci[0]:.3f}, {m.ci[1]:.3f}]"

        for label, side in ((f"base ({escape(display(base_name))})", cv.base), ("learned", cv.learned)):
            table.add_row(label, cell(side.auc), cell(side.accuracy), cell(side.spearman))
        table.add_row("majority baseline", "0.500", f"{cv.majority_baseline:.3f}", "")
        out.print(table)
        out.print(f"AUC gain {cv.auc_gain.value:+.3f} (95% CI {cv.auc_gain.ci[0]:+.3f} to {cv.auc_gain.ci[1]:+.3f})",
                  highlight=False)
    if outcome.refusal:
        tail = "installed anyway (--force)" if outcome.installed else (
            "nothing installed" + ("" if dry_run else " (--force installs anyway)"))
        err.print(f"[yellow]note[/]: {escape(display(outcome.refusal))}; {tail}", highlight=False)
    if outcome.installed is not None:
        rec = outcome.installed
        out.print(f"installed {escape(rec.name)} ({rec.path}); score with: ilgnet score PHOTOS --weights "
                  f"{escape(rec.name)}", highlight=False)
    elif dry_run and not outcome.refusal:
        out.print("dry run: nothing installed", highlight=False)


def _learn_json(found, outcome, thresholds, loaded, elapsed: float) -> dict:
    data = outcome.data
    return {
        "ratings": {"rated": len(found.photos), "counts": found.counts(), "sources": found.sources(),
                    "unrated": found.unrated, "ilgnet_written": found.ilgnet_written,
                    "conflicts": found.conflicts, "problems": found.problems},
        "thresholds": {"liked": thresholds.liked, "disliked": thresholds.disliked},
        "base": {"name": loaded.name, "sha256": loaded.sha256},
        "labelled": len(data.y) if data is not None else 0,
        "liked": int(data.y.sum()) if data is not None else 0,
        "groups": len(set(data.groups.tolist())) if data is not None else 0,
        "not_decoded": [{"path": p, "reason": r} for p, r in outcome.decode_errors],
        "cross_validation": outcome.cv.to_json() if outcome.cv is not None else None,
        "refusal": outcome.refusal,
        "installed": outcome.installed.to_json() if outcome.installed is not None else None,
        "seconds": round(elapsed, 1),
    }


def main() -> None:
    # Scoring runs the model's OpenMP threads beside the decoding workers on the same cores;
    # spinning OpenMP threads would burn cycles the decoders need (measured: ~3% more images/s
    # on 2 cores, model-only speed unchanged). Read by libgomp when torch loads, hence here.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
