"""`ilgnet weights list|fetch|import|add|default|verify|remove`: the weights store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, TypedDict

import typer
from rich.markup import escape
from rich.table import Table

from ilgnet_cli.cli import options
from ilgnet_cli.cli.common import download_progress, err, errors_as_messages, fail, out, weights_app
from ilgnet_cli.runtime.text import display, strict_json


class _Row(TypedDict):
    """One weight set as ``weights list --json`` prints it."""

    name: str
    default: bool
    installed: bool
    architecture: str
    size: int | None
    size_note: str
    sha256: str | None
    source_checksum: str | None
    description: str
    path: str | None
    trained_on: str


@weights_app.command("list")
def weights_list(as_json: options.Json = False) -> None:
    """Known weight sets (registry) and what is installed, with sizes, checksums and what each was
    trained on."""
    from ilgnet_cli.model import records as store  # records and registry only: no torch to import

    with errors_as_messages():
        registry = store.load_registry()
        inst = {i.name: i for i in store.installed_all()}
        default = store.default_name(registry)
    rows: list[_Row] = []
    for name in sorted(set(registry.weights) | set(inst)):
        spec = registry.weights.get(name)
        rec = inst.get(name)
        if spec is not None:
            description = spec.description
        else:
            assert rec is not None  # a name the registry lacks is an installed one
            description = (f"your taste, learned on {rec.base}" if rec.architecture == store.ARCH_TASTE
                           else f"user weights from {rec.source}")
        trained_on = (rec.trained_on if rec is not None else spec.provenance if spec is not None else None)
        rows.append({
            "name": name,
            "default": name == default,
            "installed": rec is not None,
            "architecture": rec.architecture if rec else (spec.architecture if spec else ""),
            "size": rec.size if rec else (spec.size if spec else None),
            "size_note": spec.size_note if spec else "",
            "sha256": rec.sha256 if rec else None,
            "source_checksum": spec.checksum if spec else None,
            "description": description,
            "path": str(rec.path) if rec else None,
            "trained_on": trained_on.describe() if trained_on is not None else "unknown",
        })
    if as_json:
        out.print_json(strict_json({"home": str(store.home()), "weights": rows}))
        return
    # One short row per set, its description on a line of its own: readable at 80 columns.
    table = Table(title=f"weights (store: {escape(display(str(store.home())))})", show_lines=True)
    table.add_column("name", ratio=1)  # takes what the fixed columns leave, the description wraps
    for col in ("installed", "size", "checksum"):
        table.add_column(col, no_wrap=True)
    for r in rows:
        size = f"{r['size'] / 1e6:.1f} MB" if r["size"] else r["size_note"].split(" (")[0]
        if r["sha256"]:
            check = "sha256:" + r["sha256"][:12] + "…"
        elif r["source_checksum"]:
            check = r["source_checksum"][:17] + "…"
        else:
            check = "pinned on fetch"
        name = escape(display(r["name"])) + (" (default)" if r["default"] else "")
        table.add_row(f"{name}\n[dim]{escape(display(r['description']))}[/]", "yes" if r["installed"] else "no",
                      size, check)
    out.print(table)


@weights_app.command("fetch")
def weights_fetch(
    name: Annotated[str, typer.Argument(help="Registry name, e.g. ilgnet-ava1, ilgnet-ava2, bvlc-googlenet.")],
    retries: Annotated[int, typer.Option(min=0, help="Retries per source.")] = 4,
) -> None:
    """Download weights (sources in order, resumed; the published checksum, else the digest pinned
    on the first fetch) and convert caffemodels to safetensors."""
    from ilgnet_cli.model import store

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
    trained_on: Annotated[str | None, typer.Option("--trained-on", help="A registry name whose training data these weights are (e.g. ilgnet-ava1 for your copy of the authors' AVA1 model); recorded as declared. Without it a file ilgnet does not know has unknown provenance, and 'ilgnet eval' asks for --allow-overlap.")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Replace installed weights of the same name.")] = False,
) -> None:
    """Convert a Caffe model into the weights store (safetensors), checking every layer."""
    from ilgnet_cli.model import store

    with errors_as_messages():
        rec = store.import_caffemodel(caffemodel, name, mean, trained_on=trained_on, replace=replace)
    out.print(f"imported {escape(display(caffemodel.name))} as {rec.name} ({rec.architecture}): "
              f"{escape(display(str(rec.path)))}; trained on: {escape(display(rec.trained_on.describe()))}",
              highlight=False)


@weights_app.command("add")
def weights_add(
    file: Annotated[Path, typer.Argument(help="An ILGNet .safetensors file (e.g. RUN_DIR/best.safetensors).")],
    name: Annotated[str, typer.Option(help="Name in the store.")],
    mean: Annotated[str | None, typer.Option(help="Override the mean stored in the file.")] = None,
    trained_on: Annotated[str | None, typer.Option("--trained-on", help="For a file that does not record what it was trained on: the registry name whose training data it is (recorded as declared).")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Replace installed weights of the same name.")] = False,
) -> None:
    """Install an ILGNet .safetensors file (checked against the architecture) into the store."""
    from ilgnet_cli.model import store

    with errors_as_messages():
        rec = store.add_safetensors(file, name, mean, replace=replace, trained_on=trained_on)
    out.print(f"added {rec.name}: {escape(display(str(rec.path)))}; trained on: "
              f"{escape(display(rec.trained_on.describe()))}", highlight=False)


@weights_app.command("default")
def weights_default(
    name: Annotated[str | None, typer.Argument(help="Weights to use when none are named (installed or in the registry).")] = None,
) -> None:
    """Show or set the weights `score`, `learn` and the API use when none are named."""
    from ilgnet_cli.model import records as store

    with errors_as_messages():
        if name is not None:
            store.set_default(name)
        current = store.default_name()
    state = "installed" if store.installed(current) is not None else "not installed yet (fetched on first use)"
    out.print(f"default weights: {escape(display(current))} ({state})", highlight=False)


@weights_app.command("verify")
def weights_verify(
    name: Annotated[str | None, typer.Argument(help="Weights to check (default: all installed).")] = None,
    as_json: options.Json = False,
) -> None:
    """Re-hash installed weights and check every tensor; finish or roll back installs that were cut
    short and remove their temp files. Exit 1 when anything was wrong (even if mended)."""
    from ilgnet_cli.model import store

    with errors_as_messages():
        mended = store.repair_store()
        names = [name] if name else sorted({i.name for i in store.installed_all()} | set(store._unrecorded()))
        results = [store.verify(n) for n in names]
    if as_json:
        out.print_json(strict_json({"repaired": mended, "weights": [r.__dict__ for r in results]}))
    else:
        for line in mended:
            out.print(f"[yellow]repaired[/] {escape(display(line))}", highlight=False)
        for r in results:
            mark = "[green]ok[/]" if r.ok else "[red]FAILED[/]"
            out.print(f"{mark} {escape(display(r.name))}: {escape(display(r.message))}", highlight=False)
            for line in r.repaired:
                out.print(f"  [yellow]repaired[/] {escape(display(line))}", highlight=False)
        if not results:
            out.print(f"no weights installed in {escape(display(str(store.weights_dir())))}", highlight=False)
    if mended or not all(r.ok for r in results) or (name and not results):
        raise typer.Exit(1)


@weights_app.command("remove")
def weights_remove(name: Annotated[str, typer.Argument(help="Installed weights name.")]) -> None:
    """Delete installed weights from the store (tastes learned on them stop working: they are named)."""
    from ilgnet_cli.model import store

    rec = store.installed(name) if store.NAME_RE.fullmatch(name or "") else None
    if not store.remove(name):
        raise fail(f"weights {escape(display(repr(name)))} are not installed")
    out.print(f"removed {escape(display(name))}", highlight=False)
    if rec is not None and (orphans := store.tastes_of(rec.sha256)):
        err.print(f"[yellow]warning[/]: tastes learned on it no longer load: {escape(display(', '.join(orphans)))}",
                  highlight=False)
