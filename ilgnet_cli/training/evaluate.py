"""`ilgnet eval`: accuracy with its baseline, balanced accuracy, ROC AUC, CIs, correlations.

Works alone or under torchrun (each rank scores a shard; rank 0 merges and reports).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from ilgnet_cli.ava.records import available, read_ava, read_label_list, resized_image
from ilgnet_cli.errors import DataError, UsageError
from ilgnet_cli.model.inference import Forward, infer
from ilgnet_cli.model.preprocess import CROP, RESIZE, parse_mean, to_blob
from ilgnet_cli.training import metrics
from ilgnet_cli.training.distributed import current

TTA = ("none", "mirror", "10crop")
PRECISIONS = ("fp32", "bf16")


def crops(tta: str) -> list[tuple[int, int, bool]]:
    """(top, left, mirror) crops of the 256x256 image for each TTA mode."""
    c, e = (RESIZE - CROP) // 2, RESIZE - CROP
    centre = [(c, c, False)]
    if tta == "none":
        return centre
    if tta == "mirror":
        return centre + [(c, c, True)]
    five = [(0, 0), (0, e), (e, 0), (e, e), (c, c)]
    return [(t, left, m) for m in (False, True) for t, left in five]


class _EvalImages(Dataset):
    def __init__(self, items: list[tuple[int, int]], images: Path, mean, tta: str, cache=None,
                 draft: bool = False) -> None:
        self.items, self.images, self.mean, self.crops = items, images, parse_mean(mean), crops(tta)
        self.cache, self.draft = cache, draft

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        image_id, label = self.items[i]
        img = resized_image(image_id, self.images, self.cache, draft=self.draft)
        blobs = np.stack([to_blob(img, self.mean, t, left, m) for t, left, m in self.crops])
        return i, torch.from_numpy(blobs), label


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


def predict(model: torch.nn.Module, items: list[tuple[int, int]], images: Path, mean, *, tta: str = "none",
            device: torch.device, batch_size: int = 32, workers: int = 0, cache=None, draft: bool = False,
            precision: str = "fp32") -> np.ndarray:
    """P(high) per item (averaged over TTA crops); shards across torchrun ranks and gathers."""
    here = current(device)
    shard = here.shard(range(len(items)))
    ds = _EvalImages([items[i] for i in shard], images, mean, tta, cache, draft)
    cuda = device.type == "cuda"
    out = np.full(len(items), np.nan)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, pin_memory=cuda)
    for idx, p in infer(Forward(model, precision), ((idx, x) for idx, x, _ in loader), device):
        assert p is not None
        out[[shard[i] for i in idx.tolist()]] = p.numpy()
    if here.world > 1:
        t = torch.from_numpy(np.nan_to_num(out, nan=0.0)).to(device if cuda else "cpu")
        mask = torch.from_numpy((~np.isnan(out)).astype(np.float64)).to(t.device)
        dist.all_reduce(t)
        dist.all_reduce(mask)
        out = np.where(mask.cpu().numpy() > 0, t.cpu().numpy(), np.nan)
    return out


def evaluate(dataset: str, weights: str, *, ava_dir: Path | None = None, images: Path | None = None,
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
    from ilgnet_cli.datadir import default_ava, missing_ava_hint
    from ilgnet_cli.model import store
    from ilgnet_cli.photos.scoring import pick_device
    from ilgnet_cli.training.distributed import init_distributed

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
    present = available(items, images, cache)
    if not present:
        hint = missing_ava_hint(ava_dir) if images == ava_dir / "images" else "check the image folder"
        raise DataError(f"none of the {len(items)} test images of {folder.name} is in {images}: {hint}")
    dd = init_distributed(pick_device(device))
    dev = dd.device
    loaded = store.load_model(weights, dev)
    p = predict(loaded.model, present, images, loaded.mean, tta=tta, device=dev, batch_size=batch_size,
                workers=workers, cache=cache, draft=draft, precision=precision)
    if dd.rank != 0:
        return None
    y = np.array([label for _, label in present])
    votes = None
    notes = []
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
