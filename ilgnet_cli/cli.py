"""The ``ilgnet`` command line: a thin Typer layer over the library modules.

Exit codes: 0 success, 1 failure (nothing could be done), 2 usage error, 130 interrupted.
Errors are one line on stderr; ``--json`` output goes to stdout.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from ilgnet_cli import __version__

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

out = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def errors_as_messages():
    """Turn the library's expected errors into one-line messages and exit codes."""
    from ilgnet_cli.caffe_import import CaffeModelError
    from ilgnet_cli.download import DownloadError
    from ilgnet_cli.store import WeightsError

    try:
        yield
    except (WeightsError, CaffeModelError, DownloadError) as exc:
        raise fail(str(exc)) from None
    except ValueError as exc:
        raise fail(str(exc), 2) from None
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


def download_progress() -> tuple[Progress, callable]:
    progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                        TransferSpeedColumn(), TimeRemainingColumn(), console=err, transient=True)
    task = progress.add_task("downloading", total=None)

    def update(done: int, total: int | None) -> None:
        progress.update(task, completed=done, total=total)

    return progress, update


# --------------------------------------------------------------------------- score


@app.command()
def score(
    images: Annotated[list[Path], typer.Argument(help="Image files to score.", show_default=False)],
    weights: Annotated[str | None, typer.Option("--weights", "-w", help="Installed weights name or .safetensors file (default: ilgnet-ava1).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 16,
    exact: Annotated[bool, typer.Option("--exact", help="Full-resolution JPEG decode (default: fast DCT-domain downscale).")] = False,
    offline: Annotated[bool, typer.Option("--offline", help="Never download weights (also ILGNET_OFFLINE=1).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Score image files; prints a table sorted by score (high = aesthetically pleasing)."""
    from ilgnet_cli import store
    from ilgnet_cli.scoring import pick_device, score_paths

    with errors_as_messages():
        dev = pick_device(device)
        if weights is None:
            progress, update = download_progress()
            with progress:
                weights = store.ensure_default(allow_download=not offline, progress=update)
        loaded = store.load_model(weights, dev)
        results = list(score_paths(images, loaded.model, loaded.mean_bgr, device=dev, batch_size=batch_size,
                                   exact=exact))
    ok = sorted((r for r in results if r.ok), key=lambda r: (-r.score, r.path))
    bad = [r for r in results if not r.ok]
    if as_json:
        payload = {"weights": loaded.name, "weights_sha256": loaded.sha256,
                   "results": [{"path": r.path, "score": r.score} for r in ok],
                   "errors": [{"path": r.path, "reason": r.error} for r in bad]}
        out.print_json(json.dumps(payload))
    else:
        table = Table(title=f"ILGNet scores ({loaded.name})")
        table.add_column("rank", justify="right")
        table.add_column("score", justify="right")
        table.add_column("file", overflow="fold")
        for rank, r in enumerate(ok, 1):
            table.add_row(str(rank), f"{r.score:.4f}", r.path)
        out.print(table)
        for r in bad:
            err.print(f"[yellow]skipped[/] {r.path}: {r.error}", highlight=False, markup=True)
    if not ok:
        raise typer.Exit(1)


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
    mean: Annotated[str | None, typer.Option(help="ava1, ava2, imagenet, B,G,R or a mean .npy (default ava1; imagenet for GoogLeNet).")] = None,
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


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
