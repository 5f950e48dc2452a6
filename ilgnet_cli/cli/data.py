"""`ilgnet download ava` and `ilgnet partition`: the AVA dataset."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ilgnet_cli.cli.common import (
    app,
    ava_dir,
    download_app,
    err,
    errors_as_messages,
    out,
    progress_bar,
)
from ilgnet_cli.runtime.text import display, strict_json

DEFAULT_SOURCE = "hf-sxfly"



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
    from rich.progress import TaskID

    from ilgnet_cli.ava.download import download_ava as run

    dest = ava_dir(dest)
    if not (source or manifest or from_path or (dest / "AVA.txt").exists()):
        source = DEFAULT_SOURCE
    with errors_as_messages():
        progress = progress_bar()
        tasks: dict[str, TaskID] = {}

        def update(what: str, done: int, total: int | None) -> None:
            if what not in tasks:
                tasks[what] = progress.add_task(what, total=total)
            progress.update(tasks[what], completed=done, total=total)

        with progress:
            report = run(dest, source=source, manifest=manifest, from_path=from_path, jobs=jobs, retries=retries,
                         progress=update)
    summary = report.to_json()
    if as_json:
        print(strict_json(summary))
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
    from ilgnet_cli.ava.partition import make_partition

    ava = ava_dir(ava)
    out_dir = out_dir or ava / "partitions" / kind.value
    with errors_as_messages():
        part = make_partition(kind.value, ava, out_dir, seed=seed, delta=delta, lists_dir=lists, ava_file=ava_file,
                              test_list=test_list)
    summary = part.summary()
    if as_json:
        print(strict_json(summary, indent=2))
        return
    t = summary["test"]
    out.print(f"{kind.value}: train {summary['train']['total']} ({summary['train']['per_class']}), test {t['total']} "
              f"({t['per_class']}); always answering the majority class scores "
              f"{summary['test_majority_baseline']:.1%} on this test set -> {escape(display(str(out_dir)))}",
              highlight=False)
    for note in part.notes:
        out.print(f"  note: {escape(display(note))}", highlight=False)
