"""`ilgnet prepare`, `ilgnet train` and `ilgnet eval`: the research loop on AVA."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ilgnet_cli.cli import options
from ilgnet_cli.cli.common import (
    app,
    ava_dir,
    errors_as_messages,
    fail,
    load_torch,
    out,
    progress_bar,
)
from ilgnet_cli.runtime.precision import Precision
from ilgnet_cli.runtime.text import display, strict_json

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
    from ilgnet_cli.ava.partition import resolve_partition
    from ilgnet_cli.ava.prepare import prepare as run
    from ilgnet_cli.ava.records import read_label_list

    ava = ava_dir(ava)
    with errors_as_messages():
        folder = resolve_partition(dataset, ava)
        ids = [i for name in ("train.txt", "test.txt") if (folder / name).exists()
               for i, _ in read_label_list(folder / name)]
    if not ids:
        raise fail(f"no images listed in {escape(display(str(folder)))}", 1)
    out_dir = out_dir or ava / "prepared" / folder.name
    progress = progress_bar()
    task = progress.add_task("preparing", total=len(set(ids)))
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
    offline: options.Offline = False,
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
    device: options.Device = "auto",
    amp: Annotated[bool | None, typer.Option("--amp/--no-amp", help="bf16 autocast on CUDA (default: paper fp32, fast bf16).")] = None,
    workers: options.Workers = None,
    seed: Annotated[int, typer.Option(help="Seed for init, validation split, data order, crops and dropout.")] = 0,
    mean: Annotated[str | None, typer.Option(help="Mean to subtract: ava1, ava2 (mean images), imagenet, B,G,R, a .npy or .binaryproto (default: the dataset's).")] = None,
    draft: Annotated[bool, typer.Option("--draft/--exact", help="JPEG draft decoding, or full decoding as the authors (default).")] = False,
    deterministic: Annotated[bool, typer.Option("--deterministic", help="torch deterministic algorithms (slower).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Fine-tune ILGNet; with no options: the paper's AVA1 training from ImageNet GoogLeNet.

    Multi-GPU: torchrun --nproc-per-node N -m ilgnet_cli train ...
    """
    from ilgnet_cli.ava.partition import resolve_partition
    load_torch()
    from ilgnet_cli.training.train import TrainConfig
    from ilgnet_cli.training.train import train as run

    ava = ava_dir(ava)
    is_main = int(os.environ.get("RANK", "0")) == 0
    progress = progress_bar("loss {task.fields[loss]}", "{task.fields[rate]}", quiet=not is_main)
    task = progress.add_task("training", total=None, loss="-", rate="")

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
                          batch_size=batch_size, lr=lr, dropout=dropout, device=device, amp=amp, workers=options.workers_or_default(workers),
                          seed=seed, checkpoint_every=checkpoint_every, val_size=val_size, val_list=val_list,
                          mean=mean, draft=draft, deterministic=deterministic, resume=resume,
                          offline=offline)
        with progress:
            summary = run(cfg, progress=update)
    if not is_main:
        return
    if as_json:
        print(strict_json(summary))
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


@app.command("eval")
def eval_cmd(
    dataset: Annotated[str, typer.Option(help=DATASET_HELP)] = "ava1",
    weights: Annotated[str | None, typer.Option("--weights", "-w", help="Installed weights name or .safetensors file (default: the authors' weights for the dataset, ilgnet-ava1 or ilgnet-ava2; a partition folder needs -w).")] = None,
    ava: Annotated[Path | None, typer.Option("--ava", help="The AVA folder (default: $ILGNET_DATA/ava; AVA.txt for SRCC/PLCC).")] = None,
    images: Annotated[Path | None, typer.Option(help="Folder of <id>.jpg (default: AVA/images).")] = None,
    prepared: Annotated[Path | None, typer.Option(help="256x256 cache from 'ilgnet prepare'.")] = None,
    tta: Annotated[TTAMode, typer.Option(help="Test-time augmentation.")] = TTAMode.none,
    draft: Annotated[bool, typer.Option("--draft/--exact", help="JPEG draft decoding, or full decoding as the authors (default).")] = False,
    precision: Annotated[Precision, typer.Option(help="fp32 as Caffe (default), or bf16 (a bf16 copy of the weights; faster where bf16 is native, unchecked).")] = Precision.FP32,
    device: options.Device = "auto",
    batch_size: options.BatchSize = 32,
    workers: options.Workers = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Also write the report: .html (plots) or .json.")] = None,
    offline: options.Offline = False,
    allow_overlap: Annotated[bool, typer.Option("--allow-overlap", help="Evaluate even when the weights trained on test images (or their training data is unknown); the overlap is shown beside the accuracy and the paper comparison hidden.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Accuracy next to the test set's majority baseline and the paper, with balanced accuracy, ROC AUC, CIs."""
    from ilgnet_cli.runtime.fsutil import atomic_write_text, check_writable_file
    load_torch()
    from ilgnet_cli.training.evaluate import comparison_rows, evaluate

    if output is not None and output.suffix.lower() not in (".html", ".htm", ".json"):
        raise fail("the report file must end in .html or .json", 2)
    with errors_as_messages():
        if output is not None:
            check_writable_file(output)
        if precision is Precision.AUTO:
            raise fail("eval runs in fp32 (as Caffe) or bf16 when asked; auto is for scoring", 2)
        result = evaluate(dataset, weights, ava_dir=ava_dir(ava), images=images, tta=tta.value, device=device,
                          batch_size=batch_size, workers=options.workers_or_default(workers), prepared=prepared,
                          draft=draft, precision=precision.value, allow_overlap=allow_overlap, offline=offline)
        if result is not None and output is not None:
            if output.suffix.lower() == ".json":
                atomic_write_text(output, strict_json(result.to_json(), indent=2) + "\n")
            else:
                from ilgnet_cli.training.eval_report import to_html

                assert result.labels is not None and result.scores is not None  # evaluate() keeps them for plots
                atomic_write_text(output, to_html(result, result.labels, result.scores))
    if result is None:
        return
    if as_json:
        print(strict_json(result.to_json(), indent=2))
        return
    m = result.metrics
    table = Table(title=f"{escape(display(result.dataset))}: {m.n} of {result.listed} test images scored; "
                        f"{result.precision}, {result.decode} decoding, tta {result.tta}; weights trained on: "
                        f"{escape(display(result.trained_on))}")
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
