"""`ilgnet learn`: the photographer's own taste from their ratings."""

from __future__ import annotations

import time
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
    fail,
    load_torch,
    out,
    progress_bar,
)
from ilgnet_cli.runtime.text import display, strict_json


@app.command()
def learn(
    paths: Annotated[list[Path] | None, typer.Argument(help="Rated photos (files or folders): their XMP ratings are read.", show_default=False, metavar="PATH...")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Install the learned weights under this name (required unless --dry-run).")] = None,
    base: Annotated[str | None, typer.Option("--base", help="Weights to start from (default: the installed default weights).")] = None,
    keep: Annotated[list[Path] | None, typer.Option("--keep", help="A folder of liked photos (as 5 stars); repeatable.")] = None,
    reject: Annotated[list[Path] | None, typer.Option("--reject", help="A folder of rejected photos; repeatable.")] = None,
    ratings_csv: Annotated[Path | None, typer.Option("--ratings", help="A CSV of path,rating rows (-1 rejected, 1-5; paths relative to the CSV).")] = None,
    catalog: Annotated[list[Path] | None, typer.Option("--catalog", help="A darktable library.db, digiKam digikam4.db or Lightroom Classic .lrcat: its ratings, picks and rejects, read-only (safe while the program is open); repeatable.")] = None,
    darktable_initial_rating: Annotated[int | None, typer.Option("--darktable-initial-rating", min=0, max=5, help="The initial rating darktable gives on import (its default 1; 0: every darktable star is yours). Stars equal to it that darktable wrote are not taken for yours. Default: darktable's own setting, else 1.")] = None,
    liked: Annotated[float, typer.Option("--liked", help="Ratings from this up are liked.")] = 4.0,
    disliked: Annotated[float, typer.Option("--disliked", help="Ratings from 1 up to this, and rejects, are disliked (0: only rejects).")] = 2.0,
    folds: Annotated[int, typer.Option(min=2, max=20, help="Cross-validation folds (grouped by scene).")] = 5,
    group_seconds: Annotated[float, typer.Option(min=0.0, help="Shots of one camera body this close in time are one scene.")] = 5.0,
    replace: Annotated[bool, typer.Option("--replace", help="Replace installed weights of the same --name (never the base).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Install even with too few ratings or no measured gain over the base.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Learn and evaluate; install nothing.")] = False,
    mirror: Annotated[bool, typer.Option("--mirror/--no-mirror", help="Also learn from each photo's mirror image.")] = True,
    seed: Annotated[int, typer.Option(help="Seed of the fold assignment and the bootstrap.")] = 0,
    recursive: Annotated[bool, typer.Option("--recursive/--no-recursive", help="Descend into sub-folders.")] = True,
    hidden: Annotated[bool, typer.Option("--hidden", help="Include hidden files and folders.")] = False,
    device: options.Device = "auto",
    batch_size: options.BatchSize = 16,
    workers: options.Workers = None,
    max_pixels: options.MaxPixels = None,
    offline: options.Offline = False,
    as_json: options.Json = False,
) -> None:
    """Learn your taste from your ratings (XMP stars and rejects, --keep/--reject folders or a CSV).

    Example: `ilgnet learn ~/Photos/rated --name mine`, then `ilgnet score ~/Photos/new --weights mine`.
    Liked: 4-5 stars, disliked: 1-2 stars and rejects (3 is left out). The new weights are
    compared with the base by grouped cross-validation and installed only when they are better
    beyond noise (and with at least 40 ratings, 10 on each side), unless --force.
    Exit code 0 when installed (or evaluated with --dry-run), 1 when refused or nothing to learn.
    """
    load_torch()
    from ilgnet_cli.errors import UsageError
    from ilgnet_cli.model import store
    from ilgnet_cli.photos.discover import Selection, unusable_reason
    from ilgnet_cli.photos.ratings import collect
    from ilgnet_cli.runtime.device import pick_device
    from ilgnet_cli.training import learn as learning

    if name is None and not dry_run:
        raise fail("--name NAME is required (or --dry-run to evaluate only)", 2)
    if not (paths or keep or reject or ratings_csv or catalog):
        raise fail("give rated photos, --keep/--reject folders, --ratings FILE.csv or --catalog", 2)
    with errors_as_messages():
        try:
            thresholds = learning.Thresholds(liked=liked, disliked=disliked)
        except UsageError as exc:
            raise fail(str(exc), 2) from None
        if name is not None:
            learning.check_name(name, replace=replace)
        dev = pick_device(device)
        selection = Selection(recursive=recursive, hidden=hidden)
        missing: list[str] = []
        found = collect(paths or [], keep=keep, reject=reject, ratings_csv=ratings_csv, selection=selection,
                        missing=missing, catalogs=catalog, darktable_initial_rating=darktable_initial_rating)
        found.problems.extend(f"{unusable_reason(m)}: {m}" for m in missing)
        progress, update = download_progress()
        with progress:
            base = store.resolve_weights(base, allow_download=not offline, progress=update)
        loaded = store.load_model(base, dev)
        if not as_json:
            _learn_ratings_summary(found, thresholds)
        started = time.monotonic()
        bar, on_done = _learn_progress(sum(thresholds.label(p.rating) is not None for p in found.photos),
                                       as_json)
        with bar:
            outcome = learning.learn_taste(found, loaded, name=None if dry_run else name, replace=replace, thresholds=thresholds,
                                   folds=folds, seconds=group_seconds, seed=seed, force=force, mirror=mirror,
                                   device=dev, workers=options.workers_or_default(workers),
                                   batch_size=batch_size, max_pixels=max_pixels, progress=on_done,
                                   grouping=bar.grouping)
    elapsed = time.monotonic() - started
    if as_json:
        print(strict_json(_learn_json(found, outcome, thresholds, loaded, elapsed), indent=2))
    else:
        _learn_report(outcome, loaded.name, elapsed, force, dry_run)
    if outcome.installed is None and not (dry_run and outcome.refusal is None):
        raise typer.Exit(1)


def _learn_progress(total: int, quiet: bool):
    """The bar of the two long steps: reading the photos, then comparing them to group scenes."""
    bar = progress_bar(quiet=quiet)
    task = bar.add_task("reading photos", total=total)
    grouping_task: list = []

    def grouping(done: int, of: int) -> None:
        if not grouping_task:
            grouping_task.append(bar.add_task("grouping scenes", total=of))
        bar.update(grouping_task[0], completed=done, total=of)

    bar.grouping = grouping  # type: ignore[attr-defined]
    return bar, lambda done: bar.update(task, completed=done)


def _learn_ratings_summary(found, thresholds) -> None:
    counts = ", ".join(f"{k}: {v}" for k, v in found.counts().items()) or "none"
    sources = ", ".join(f"{v} from {k}" for k, v in found.sources().items())
    err.print(f"ratings: {len(found.photos)} rated photos ({counts}){'; ' + sources if sources else ''}; "
              f"{found.unrated} unrated (ignored)", highlight=False)
    for line in found.set_aside_lines():  # ilgnet's own stars, darktable defaults, catalogs
        err.print(f"  {escape(display(line))}", highlight=False)
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
                    "conflicts": found.conflicts, "problems": found.problems, **found.summary_json()},
        "thresholds": {"liked": thresholds.liked, "disliked": thresholds.disliked},
        "base": {"name": loaded.name, "sha256": loaded.sha256},
        "labelled": len(data.y) if data is not None else 0,
        "liked": int(data.y.sum()) if data is not None else 0,
        "left_out": data.left_out if data is not None else 0,
        "groups": len(set(data.groups.tolist())) if data is not None else 0,
        "not_decoded": [{"path": p, "reason": r} for p, r in outcome.decode_errors],
        "cross_validation": outcome.cv.to_json() if outcome.cv is not None else None,
        "refusal": outcome.refusal,
        "installed": outcome.installed.to_json() if outcome.installed is not None else None,
        "seconds": round(elapsed, 1),
    }
