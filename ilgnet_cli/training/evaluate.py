"""`ilgnet eval`: accuracy with its baseline, balanced accuracy, ROC AUC, CIs, correlations.

Works alone or under torchrun (each rank scores a shard; rank 0 merges and reports).
"""

from __future__ import annotations

import math
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
from ilgnet_cli.training.metrics import EvalMetrics, PaperFigure

TTA = ("none", "mirror", "10crop")
PRECISIONS = ("fp32", "bf16")
_CROPS = {"none": Crops.CENTRE, "mirror": Crops.MIRROR, "10crop": Crops.TENCROP}


class LeakError(UsageError):
    """The weights (may) have trained on images of the test list: refused unless --allow-overlap."""


@dataclass
class EvalResult:
    dataset: str
    weights: str
    tta: str
    metrics: EvalMetrics
    missing: int
    listed: int
    paper: PaperFigure | None  # only for the authors' own test lists, and weights that never saw them
    notes: list[str] = field(default_factory=list)
    partition_kind: str | None = None
    precision: str = "fp32"
    decode: str = "exact"
    trained_on: str = "unknown"  # the weights' provenance, in words
    overlap: int | None = 0  # test images the weights trained on; None: unknown (allowed with --allow-overlap)
    paper_withheld: str | None = None  # why the paper's figure is not shown as comparable
    labels: np.ndarray | None = field(default=None, repr=False)  # of the scored images, for plots
    scores: np.ndarray | None = field(default=None, repr=False)

    @property
    def paper_accuracy(self) -> float | None:
        return self.paper.accuracy if self.paper is not None else None

    def headline(self) -> str:
        """What qualifies the accuracy, said beside it: missing images, overlap with training."""
        parts = [f"n={self.metrics.n} scored"]
        if self.missing:
            parts.append(f"{self.missing} of {self.listed} listed images missing")
        if self.overlap is None:
            parts.append("training data unknown: overlap NOT checked")
        elif self.overlap:
            parts.append(f"OVERLAP: {self.overlap} test images were in the training data")
        return "; ".join(parts)

    def to_json(self) -> dict:
        diff = self.paper_difference()
        return {"dataset": self.dataset, "partition_kind": self.partition_kind, "weights": self.weights,
                "tta": self.tta, "precision": self.precision, "decode": self.decode, "listed": self.listed,
                "missing_images": self.missing, "trained_on": self.trained_on, "overlap": self.overlap,
                "headline": self.headline(),
                "paper": None if self.paper is None else {
                    "accuracy": self.paper.accuracy, "n": self.paper.n, "listed": self.paper.listed,
                    "how": self.paper.how, "ci": list(self.paper.ci),
                    "difference": diff[0] if diff else None, "p_value": diff[1] if diff else None},
                "paper_withheld": self.paper_withheld, "paper_accuracy": self.paper_accuracy,
                "metrics": self.metrics.to_json(), "notes": self.notes}

    def paper_difference(self) -> tuple[float, float] | None:
        """(ours - paper, p-value of a two-sample test on the proportions), when comparable."""
        if self.paper is None:
            return None
        return metrics.two_proportions(self.metrics.accuracy, self.metrics.n, self.paper.accuracy, self.paper.n)


def check_overlap(training: set[int] | None, items: list[tuple[int, int]], *, weights: str, trained_on: str,
                  dataset: str, allow: bool) -> int | None:
    """How many test items the weights trained on (None: not known). Raises :class:`LeakError`
    (one line: the count and how to proceed) for any overlap, or unknown provenance, unless
    ``allow``."""
    if training is None:
        if not allow:
            raise LeakError(f"{weights}: what these weights were trained on is unknown ({trained_on}), so they "
                            f"may have seen {dataset}'s test images; evaluate weights of known provenance, or "
                            "--allow-overlap to evaluate anyway (marked as unchecked, no paper comparison)")
        return None
    overlap = sum(1 for i, _ in items if i in training)
    if overlap and not allow:
        raise LeakError(f"{overlap} of the {len(items)} test images of {dataset} are in the training data of "
                        f"{weights} ({trained_on}): evaluate weights that never saw them, or --allow-overlap to "
                        "evaluate anyway (marked, no paper comparison)")
    return overlap


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
             precision: str = "fp32", allow_overlap: bool = False, offline: bool = False) -> EvalResult | None:
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
    loaded = store.load_model(store.resolve_weights(weights, allow_download=not offline), dev)
    trained_on = loaded.provenance.describe()
    overlap = check_overlap(loaded.training_ids(), items, weights=loaded.name, trained_on=trained_on,
                            dataset=folder.name, allow=allow_overlap)
    transform = loaded.transforms(DecodeMode.DRAFT if draft else DecodeMode.EXACT, _CROPS[tta])
    p = predict(loaded.model, present, images, transform, device=dev, batch_size=batch_size,
                workers=workers, cache=cache, precision=precision)
    dd.end()
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
    paper = metrics.PAPER.get(kind) if kind is not None and is_authors_test_list(kind, items) else None
    withheld = None
    if paper is None:
        withheld = "another test list: the paper reports accuracy only on the authors' AVA1/AVA2 test lists"
    elif overlap is None:
        withheld, paper = "the weights' training data is unknown (--allow-overlap)", None
    elif overlap:
        withheld, paper = f"{overlap} test images were in the weights' training data (--allow-overlap)", None
    m = metrics.compute(y, p, votes, rounds=rounds)
    return EvalResult(dataset=folder.name, weights=loaded.name, tta=tta, metrics=m, missing=len(items) - len(present),
                      listed=len(items), paper=paper, notes=notes, partition_kind=kind, precision=precision,
                      decode=mode, trained_on=trained_on, overlap=overlap, paper_withheld=withheld, labels=y, scores=p)


def _pct(value: float, digits: int = 2) -> str:
    """A share as a percentage, or an em dash where it is undefined (no image scored)."""
    return f"{value:.{digits}%}" if math.isfinite(value) else "—"


def comparison_rows(result: EvalResult) -> list[tuple[str, str, str]]:
    """(what, accuracy, note) rows: ours first (with what qualifies it), then the paper with its own
    sample size and CI and whether we differ beyond noise, then the majority baseline."""
    m = result.metrics
    lo, hi = m.accuracy_ci
    ci = f"95% CI {_pct(lo)}–{_pct(hi)}" if math.isfinite(lo) and math.isfinite(hi) else "no CI (no image scored)"
    rows = [(f"ours ({result.weights}, tta {result.tta})", _pct(m.accuracy), f"{ci}; {result.headline()}")]
    if result.paper is not None:
        plo, phi = result.paper.ci
        rows.append(("paper (Jin et al. 2016)", _pct(result.paper.accuracy),
                     f"on {result.paper.n:,} of the {result.paper.listed:,} test images ({result.paper.how}); "
                     f"95% CI {_pct(plo, 1)}–{_pct(phi, 1)}"))
        diff = result.paper_difference()
        if diff is not None and math.isfinite(diff[0]) and math.isfinite(diff[1]):
            delta, pvalue = diff
            verdict = "differs beyond noise" if pvalue < 0.05 else "within noise"
            rows.append(("ours − paper", f"{delta * 100:+.2f} pts",
                         f"two-sample test on proportions: p = {pvalue:.3g}, {verdict}"))
    else:
        rows.append(("paper (Jin et al. 2016)", "n/a", f"not comparable: {result.paper_withheld}"))
    rows.append(("always the majority class", _pct(m.majority_baseline), "baseline of this test set"))
    return rows
