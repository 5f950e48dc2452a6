"""`ilgnet eval`: accuracy with its baseline, balanced accuracy, ROC AUC, CIs, correlations.

Works alone or under torchrun (each rank scores a shard; rank 0 merges and reports).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ilgnet_cli.ava.records import available, read_ava, read_label_list
from ilgnet_cli.ava.source import AvaImages
from ilgnet_cli.errors import DataError, UsageError
from ilgnet_cli.model.transform import Crops, DecodeMode, Transform
from ilgnet_cli.predict.predictor import Predictor
from ilgnet_cli.runtime.distributed import current
from ilgnet_cli.training import metrics

TTA = ("none", "mirror", "10crop")
PRECISIONS = ("fp32", "bf16")
_CROPS = {"none": Crops.CENTRE, "mirror": Crops.MIRROR, "10crop": Crops.TENCROP}


@dataclass
class EvalResult:
    dataset: str
    weights: str
    tta: str
    metrics: metrics.EvalMetrics
    missing: int
    listed: int
    paper_accuracy: float | None
    notes: list[str] = field(default_factory=list)
    partition_kind: str | None = None
    precision: str = "fp32"
    decode: str = "exact"
    labels: np.ndarray | None = field(default=None, repr=False)  # of the scored images, for plots
    scores: np.ndarray | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        return {"dataset": self.dataset, "partition_kind": self.partition_kind, "weights": self.weights,
                "tta": self.tta, "precision": self.precision, "decode": self.decode, "listed": self.listed,
                "missing_images": self.missing, "paper_accuracy": self.paper_accuracy,
                "metrics": self.metrics.to_json(), "notes": self.notes}


def predict(model: torch.nn.Module, items: list[tuple[int, int]], images: Path, transform: Transform, *,
            device: torch.device, batch_size: int = 32, workers: int = 0, cache=None,
            precision: str = "fp32", autocast: bool = False) -> np.ndarray:
    """P(high) per item (averaged over the transform's crops; NaN where the image could not be
    read); shards across torchrun ranks and gathers on rank 0 (the other ranks get NaNs)."""
    predictor = Predictor(model, transform, device=device, precision=precision, batch_size=batch_size,
                          workers=workers, autocast=autocast)
    preds = predictor.predict_all(AvaImages(items, images, cache), current(device))
    out = np.full(len(items), np.nan)
    for pred in preds or []:
        if pred.score is not None:
            out[pred.index] = pred.score
    return out


# The authors' weights for each protocol: what `ilgnet eval --dataset KIND` uses without -w.
DEFAULT_WEIGHTS = {"ava1": "ilgnet-ava1", "ava2": "ilgnet-ava2"}


def default_weights(dataset: str) -> str:
    """The weights ``eval`` uses for ``dataset`` when none are given: the authors' model of the
    dataset's protocol; a partition folder of your own has no default (say which weights)."""
    from ilgnet_cli.ava.partition import KINDS, PROTOCOL

    if dataset in KINDS:
        return DEFAULT_WEIGHTS[PROTOCOL[dataset]]
    raise UsageError(f"no default weights for the partition {dataset[:80]!r}: give them with -w NAME")


def evaluate(dataset: str, weights: str | None, *, ava_dir: Path | None = None, images: Path | None = None,
             tta: str = "none", device: str = "auto", batch_size: int = 32, workers: int = 0,
             prepared: Path | None = None, rounds: int = 1000, draft: bool = False,
             precision: str = "fp32") -> EvalResult | None:
    """Evaluate ``weights`` on a test list; returns the result on rank 0 (None on other ranks).

    ``dataset``: ``ava1``/``ava2`` (the paper's protocol: the authors' test lists), another
    partition kind, or a partition folder. The paper's accuracy is reported only when the test
    list is exactly the authors' one (by the partition's recorded kind and content).
    """
    from ilgnet_cli.ava.partition import is_authors_test_list, read_kind, resolve_partition
    from ilgnet_cli.ava.prepare import decode_mode
    from ilgnet_cli.model import store
    from ilgnet_cli.runtime.device import pick_device
    from ilgnet_cli.runtime.distributed import init_distributed
    from ilgnet_cli.runtime.paths import default_ava, missing_ava_hint

    weights = weights or default_weights(dataset)
    if tta not in TTA:
        raise UsageError(f"test-time augmentation must be one of {', '.join(TTA)}")
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}")
    ava_dir = Path(ava_dir) if ava_dir else default_ava()
    folder = resolve_partition(dataset, ava_dir)
    kind = read_kind(folder)
    images = Path(images) if images else (ava_dir / "images" if ava_dir.is_dir() else folder / "images")
    if not (folder / "test.txt").exists():
        raise DataError(f"no test.txt in {folder}")
    items = read_label_list(folder / "test.txt")
    cache = None
    mode = decode_mode(draft)
    if prepared is not None:
        from ilgnet_cli.ava.prepare import PreparedImages

        cache = PreparedImages(prepared)
        if cache.decode != mode:
            raise UsageError(f"{prepared} was prepared with {cache.decode} decoding, not {mode}")
    notes: list[str] = []
    present = available(items, images, cache)
    if not present:
        hint = missing_ava_hint(ava_dir) if images == ava_dir / "images" else "check the image folder"
        raise DataError(f"none of the {len(items)} test images of {folder.name} is in {images}: {hint}")
    dd = init_distributed(pick_device(device))
    dev = dd.device
    loaded = store.load_model(weights, dev)
    transform = loaded.transforms(DecodeMode.DRAFT if draft else DecodeMode.EXACT, _CROPS[tta])
    p = predict(loaded.model, present, images, transform, device=dev, batch_size=batch_size,
                workers=workers, cache=cache, precision=precision)
    if dd.rank != 0:
        return None
    unread = int(np.isnan(p).sum())
    if unread:
        notes.append(f"{unread} test images could not be read and were not scored")
        keep = ~np.isnan(p)
        present = [it for it, k in zip(present, keep, strict=True) if k]
        p = p[keep]
    y = np.array([label for _, label in present])
    votes = None
    ava_txt = ava_dir / "AVA.txt"
    if ava_txt.exists():
        ava = read_ava(ava_txt)
        if all(i in ava.records for i, _ in present):
            votes = np.array([ava.records[i].mean for i, _ in present])
        else:
            notes.append("SRCC/PLCC skipped: some test images have no votes in AVA.txt")
    if len(present) < len(items):
        notes.append(f"{len(items) - len(present)} of {len(items)} test images are missing and were not scored; "
                     "accuracy is over the rest")
    paper = metrics.PAPER_ACCURACY.get(kind) if kind is not None and is_authors_test_list(kind, items) else None
    if paper is None:
        notes.append("not comparable to the paper's accuracy: only the authors' AVA1/AVA2 test lists "
                     "(dataset ava1 or ava2) are")
    m = metrics.compute(y, p, votes, rounds=rounds)
    return EvalResult(dataset=folder.name, weights=loaded.name, tta=tta, metrics=m, missing=len(items) - len(present),
                      listed=len(items), paper_accuracy=paper, notes=notes, partition_kind=kind,
                      precision=precision, decode=mode, labels=y, scores=p)


def comparison_rows(result: EvalResult) -> list[tuple[str, str, str]]:
    """(what, accuracy, note) rows: the paper, the majority baseline and ours, side by side."""
    m = result.metrics
    rows = []
    if result.paper_accuracy is not None:
        rows.append(("paper (Jin et al. 2016)", f"{result.paper_accuracy:.2%}", "as reported; authors' test list"))
    else:
        rows.append(("paper (Jin et al. 2016)", "n/a", "not comparable: another test list"))
    rows.append(("always the majority class", f"{m.majority_baseline:.2%}", "baseline of this test set"))
    lo, hi = m.accuracy_ci
    rows.append((f"ours ({result.weights}, tta {result.tta})", f"{m.accuracy:.2%}", f"95% CI {lo:.2%}–{hi:.2%}"))
    return rows
