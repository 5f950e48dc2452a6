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

from ilgnet_cli import metrics
from ilgnet_cli.ava import available, read_ava, read_label_list, resized_image
from ilgnet_cli.model import score_from_logits
from ilgnet_cli.preprocess import CROP, RESIZE, to_blob

TTA = ("none", "mirror", "10crop")


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
    def __init__(self, items: list[tuple[int, int]], images: Path, mean_bgr, tta: str, cache=None) -> None:
        self.items, self.images, self.mean_bgr, self.crops, self.cache = items, images, mean_bgr, crops(tta), cache

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        image_id, label = self.items[i]
        img = resized_image(image_id, self.images, self.cache)
        blobs = np.stack([to_blob(img, self.mean_bgr, t, left, m) for t, left, m in self.crops])
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

    def to_json(self) -> dict:
        return {"dataset": self.dataset, "weights": self.weights, "tta": self.tta, "listed": self.listed,
                "missing_images": self.missing, "paper_accuracy": self.paper_accuracy,
                "metrics": self.metrics.to_json(), "notes": self.notes}


def predict(model: torch.nn.Module, items: list[tuple[int, int]], images: Path, mean_bgr, *, tta: str = "none",
            device: torch.device, batch_size: int = 32, workers: int = 0, cache=None) -> np.ndarray:
    """P(high) per item (averaged over TTA crops); shards across torchrun ranks and gathers."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    shard = list(range(rank, len(items), world))
    ds = _EvalImages([items[i] for i in shard], images, mean_bgr, tta, cache)
    cuda = device.type == "cuda"
    out = np.full(len(items), np.nan)
    model.eval()
    with torch.inference_mode():
        for idx, x, _ in DataLoader(ds, batch_size=batch_size, num_workers=workers, pin_memory=cuda):
            n, k = x.shape[:2]
            flat = x.view(n * k, 3, CROP, CROP).to(device).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                p = score_from_logits(model(flat)).view(n, k).mean(1).cpu().numpy()
            out[[shard[i] for i in idx.tolist()]] = p
    if world > 1:
        t = torch.from_numpy(np.nan_to_num(out, nan=0.0)).to(device if cuda else "cpu")
        mask = torch.from_numpy((~np.isnan(out)).astype(np.float64)).to(t.device)
        dist.all_reduce(t)
        dist.all_reduce(mask)
        out = np.where(mask.cpu().numpy() > 0, t.cpu().numpy(), np.nan)
    return out


def resolve_dataset(dataset: str, ava_dir: Path | None) -> tuple[Path, str]:
    """A partition kind (built under AVA/partitions/ if needed) or a partition folder."""
    from ilgnet_cli.partition import KINDS, make_partition

    if dataset in KINDS:
        if ava_dir is None:
            raise ValueError(f"--dataset {dataset} needs --ava DIR (or pass a partition folder)")
        folder = ava_dir / "partitions" / dataset
        if not (folder / "test.txt").exists():
            make_partition(dataset, ava_dir, folder)
        return folder, dataset
    folder = Path(dataset)
    if not (folder / "test.txt").exists():
        raise ValueError(f"--dataset: {folder} is neither a partition kind nor a folder with test.txt")
    return folder, folder.name


def evaluate(dataset: str, weights: str, *, ava_dir: Path | None = None, images: Path | None = None,
             tta: str = "none", device: str = "auto", batch_size: int = 32, workers: int = 0,
             prepared: Path | None = None, rounds: int = 1000) -> EvalResult | None:
    """Evaluate ``weights`` on the test list; returns the result on rank 0 (None on other ranks)."""
    from ilgnet_cli import store
    from ilgnet_cli.distributed import init_distributed
    from ilgnet_cli.scoring import pick_device

    if tta not in TTA:
        raise ValueError(f"--tta must be one of {', '.join(TTA)}")
    dd = init_distributed(pick_device(device))
    dev = dd.device
    folder, name = resolve_dataset(dataset, ava_dir)
    images = images or (ava_dir / "images" if ava_dir else folder / "images")
    items = read_label_list(folder / "test.txt")
    cache = None
    if prepared is not None:
        from ilgnet_cli.prepare import PreparedImages

        cache = PreparedImages(prepared)
    present = available(items, images, cache)
    loaded = store.load_model(weights, dev)
    p = predict(loaded.model, present, images, loaded.mean_bgr, tta=tta, device=dev, batch_size=batch_size,
                workers=workers, cache=cache)
    if dd.rank != 0:
        return None
    y = np.array([label for _, label in present])
    votes = None
    notes = []
    ava_txt = (ava_dir / "AVA.txt") if ava_dir else None
    if ava_txt is not None and ava_txt.exists():
        ava = read_ava(ava_txt)
        if all(i in ava.records for i, _ in present):
            votes = np.array([ava.records[i].mean for i, _ in present])
        else:
            notes.append("SRCC/PLCC skipped: some test images have no votes in AVA.txt")
    if len(present) < len(items):
        notes.append(f"{len(items) - len(present)} of {len(items)} test images are missing and were not scored; "
                     "accuracy is over the rest")
    m = metrics.compute(y, p, votes, rounds=rounds)
    return EvalResult(dataset=name, weights=loaded.name, tta=tta, metrics=m, missing=len(items) - len(present),
                      listed=len(items), paper_accuracy=metrics.PAPER_ACCURACY.get(name), notes=notes)


def comparison_rows(result: EvalResult) -> list[tuple[str, str, str]]:
    """(what, accuracy, note) rows: the paper, the majority baseline and ours, side by side."""
    m = result.metrics
    rows = []
    if result.paper_accuracy is not None:
        rows.append(("paper (Jin et al. 2016)", f"{result.paper_accuracy:.2%}", "as reported; authors' test list"))
    rows.append(("always the majority class", f"{m.majority_baseline:.2%}", "baseline of this test set"))
    lo, hi = m.accuracy_ci
    rows.append((f"ours ({result.weights}, tta {result.tta})", f"{m.accuracy:.2%}", f"95% CI {lo:.2%}–{hi:.2%}"))
    return rows
