"""Train/test partitions of AVA: AVA1, AVA2, the official split, and the ILGNet authors' lists.

Every partition writes ``train.txt``/``test.txt`` (``<id>.jpg <label>``, Caffe's format) and
``partition.json`` (counts per class, majority-class baseline of the test set, seed, sha256 of
the inputs, excluded and missing ids). Random splits are seeded and reproducible.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ilgnet_cli.ava.records import AVAData, parse_label_lines, read_ava, read_id_list, read_label_list, write_label_list
from ilgnet_cli.errors import DataError
from ilgnet_cli.runtime.fsutil import atomic_write_text

KINDS = ("ava1", "ava2", "standard", "ilgnet-ava1", "ilgnet-ava2")
AUTHORS_KINDS = ("ilgnet-ava1", "ilgnet-ava2")
# Which of the authors' two protocols (solver, mean image) a partition kind belongs to.
PROTOCOL = {"ava1": "ava1", "standard": "ava1", "ilgnet-ava1": "ava1", "ava2": "ava2", "ilgnet-ava2": "ava2"}
AVA1_TEST_SIZE = 20_000
AVA2_FRACTION = 0.10


class PartitionError(DataError, ValueError):
    """A partition cannot be built from the given inputs (one line)."""


@dataclass
class Partition:
    kind: str
    train: list[tuple[int, int]]
    test: list[tuple[int, int]]
    seed: int | None = None
    delta: float = 0.0
    inputs: dict[str, str] = field(default_factory=dict)  # name -> sha256
    excluded: dict[str, list[int]] = field(default_factory=dict)  # reason -> ids
    missing: list[int] = field(default_factory=list)  # listed ids absent from AVA.txt / images
    notes: list[str] = field(default_factory=list)

    def counts(self, split: str) -> dict[str, int]:
        labels = [label for _, label in getattr(self, split)]
        return {"0": labels.count(0), "1": labels.count(1)}

    def majority_baseline(self) -> float:
        c = self.counts("test")
        total = c["0"] + c["1"]
        return max(c.values()) / total if total else 0.0

    def summary(self) -> dict:
        test_counts = self.counts("test")
        return {
            "kind": self.kind,
            "seed": self.seed,
            "delta": self.delta,
            "train": {"total": len(self.train), "per_class": self.counts("train")},
            "test": {"total": len(self.test), "per_class": test_counts},
            "test_majority_class": int(test_counts["1"] >= test_counts["0"]),
            "test_majority_baseline": round(self.majority_baseline(), 6),
            "inputs_sha256": self.inputs,
            "excluded": {k: {"count": len(v), "ids": sorted(v)} for k, v in self.excluded.items()},
            "missing": {"count": len(self.missing), "ids": sorted(self.missing)},
            "notes": self.notes,
        }


def sha256_file(path: str | Path) -> str:
    from ilgnet_cli.runtime.download import file_digest

    return file_digest(Path(path))


def _present(ava: AVAData, unavailable: set[int]) -> list[int]:
    return sorted(i for i in ava.records if i not in unavailable)


def ava1(ava: AVAData, *, seed: int = 0, delta: float = 0.0, test_size: int = AVA1_TEST_SIZE,
         unavailable: set[int] | None = None) -> Partition:
    """Label mean > 5 -> 1; a random ``test_size`` test set; δ margin applied to training only."""
    unavailable = unavailable or set()
    ids = _present(ava, unavailable)
    if test_size >= len(ids):
        raise PartitionError(f"test size {test_size} needs more than the {len(ids)} available images")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ids))
    test_ids = sorted(ids[i] for i in order[:test_size])
    test_set = set(test_ids)
    train, dropped = [], []
    for i in ids:
        if i in test_set:
            continue
        rec = ava.records[i]
        if delta > 0 and abs(rec.mean - 5.0) < delta:
            dropped.append(i)
            continue
        train.append((i, rec.ava1_label))
    part = Partition("ava1", train, [(i, ava.records[i].ava1_label) for i in test_ids], seed=seed, delta=delta)
    if dropped:
        part.excluded[f"train |mean-5| < delta={delta}"] = dropped
    return part


def ava2(ava: AVAData, *, seed: int = 0, fraction: float = AVA2_FRACTION,
         unavailable: set[int] | None = None) -> Partition:
    """Top ``fraction`` by mean -> 1, bottom -> 0, split 50/50 at random.

    Ranks are by (mean, id): ties at a boundary are broken by image id, deterministically,
    and the number of images sharing a boundary mean is reported in ``notes``.
    """
    unavailable = unavailable or set()
    ids = sorted(ava.records)  # the class sizes come from the full AVA.txt, as in the paper
    n = int(len(ids) * fraction)
    if n == 0:
        raise PartitionError(f"AVA2 needs at least {int(1 / fraction)} images, AVA.txt has {len(ids)}")
    ranked = sorted(ids, key=lambda i: (ava.records[i].mean, i))
    low, high = ranked[:n], ranked[-n:]
    part = Partition("ava2", [], [], seed=seed)
    for name, group, edge, rule in (("low", low, ava.records[low[-1]].mean, "lowest ids"),
                                    ("high", high, ava.records[high[0]].mean, "highest ids")):
        tied = sum(1 for i in ids if ava.records[i].mean == edge)
        inside = sum(1 for i in group if ava.records[i].mean == edge)
        if tied > inside:
            part.notes.append(f"{name} boundary at mean {edge:.6f}: {tied} images tie, {inside} taken ({rule})")
    labelled = [(i, 0) for i in low] + [(i, 1) for i in high]
    missing = [i for i, _ in labelled if i in unavailable]
    labelled = sorted(x for x in labelled if x[0] not in unavailable)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labelled))
    half = len(labelled) // 2
    part.test = sorted(labelled[i] for i in order[:half])
    part.train = sorted(labelled[i] for i in order[half:])
    part.missing = missing
    part.notes.append(f"high: mean >= {ava.records[high[0]].mean:.4f}; low: mean <= {ava.records[low[-1]].mean:.4f}")
    return part


def standard(ava: AVAData, test_list: str | Path, *, unavailable: set[int] | None = None) -> Partition:
    """The official split: test = generic_test.jpgl, train = every other image; AVA1 labels."""
    unavailable = unavailable or set()
    listed = read_id_list(test_list)
    missing = sorted(i for i in listed if i not in ava.records or i in unavailable)
    test_ids = set(listed) - set(missing)
    train = [(i, ava.records[i].ava1_label) for i in _present(ava, unavailable) if i not in test_ids]
    test = [(i, ava.records[i].ava1_label) for i in sorted(test_ids)]
    part = Partition("standard", train, test, missing=missing)
    part.inputs[Path(test_list).name] = sha256_file(test_list)
    return part


def shipped_list(which: str, split: str) -> list[tuple[int, int]]:
    """The authors' list ``which`` (AVA1/AVA2), ``split`` (train/val), from the package data.

    Shipped (xz-compressed, byte for byte; scripts/package_data.py) so that the paper's protocol
    works offline; their ``val.txt`` is the test set the paper's accuracies were measured on.
    """
    import lzma
    from importlib import resources

    data = resources.files("ilgnet_cli").joinpath("data", "lists", which, f"{split}.txt.xz").read_bytes()
    return parse_label_lines(lzma.decompress(data).decode("ascii"), f"{which}/{split}.txt")


def authors(kind: str, lists_dir: str | Path | None, ava: AVAData | None = None,
            unavailable: set[int] | None = None) -> Partition:
    """The ILGNet authors' exact lists (their labels kept): shipped with ilgnet, or from ``lists_dir``."""
    which = {"ilgnet-ava1": "AVA1", "ilgnet-ava2": "AVA2"}[kind]
    lists: dict[str, list[tuple[int, int]]] = {}
    part = Partition(kind, [], [])
    for split in ("train", "val"):
        if lists_dir is None:
            lists[split] = shipped_list(which, split)
            part.inputs[f"{which}/{split}.txt"] = "shipped with ilgnet"
            continue
        path = Path(lists_dir) / which / f"{split}.txt"
        if not path.exists():
            path = Path(lists_dir) / f"{split}.txt"
        if not path.exists():
            raise PartitionError(f"authors' list not found: {path}")
        lists[split] = read_label_list(path)
        part.inputs[f"{which}/{path.name}"] = sha256_file(path)
    part.train, part.test = lists["train"], lists["val"]
    if ava is not None:
        unavailable = unavailable or set()
        part.missing = sorted(i for i, _ in part.train + part.test if i not in ava.records or i in unavailable)
        if kind == "ilgnet-ava1":
            disagree = sum(1 for i, label in part.train + part.test
                           if i in ava.records and ava.records[i].ava1_label != label)
            part.notes.append(f"labels that disagree with mean > 5 on AVA.txt: {disagree}")
    return part


def is_authors_test_list(kind: str | None, test: list[tuple[int, int]]) -> bool:
    """True when ``test`` is exactly the authors' test list of ``kind`` (what the paper measured on)."""
    if kind not in AUTHORS_KINDS:
        return False
    which = {"ilgnet-ava1": "AVA1", "ilgnet-ava2": "AVA2"}[kind]
    return sorted(test) == sorted(shipped_list(which, "val"))


def holdout(items: list[tuple[int, int]], size: int, seed: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Split ``size`` validation items off ``items``, stratified by label and seeded -> (train, val).

    Each class gives its share of ``size`` (rounded, at least one item of every class that has
    two or more); the order of ``items`` is kept on both sides.
    """
    if size <= 0 or not items:
        return list(items), []
    size = min(size, len(items) - 1)
    rng = np.random.default_rng(seed)
    by_label: dict[int, list[int]] = {}
    for n, (_, label) in enumerate(items):
        by_label.setdefault(label, []).append(n)
    picked: set[int] = set()
    for label in sorted(by_label):
        members = by_label[label]
        share = round(size * len(members) / len(items))
        share = min(len(members) - 1, max(1 if len(members) > 1 else 0, share))
        picked.update(members[i] for i in rng.permutation(len(members))[:share])
    train = [it for n, it in enumerate(items) if n not in picked]
    val = [it for n, it in enumerate(items) if n in picked]
    return train, val


def read_kind(folder: str | Path) -> str | None:
    """The kind recorded in a partition folder's partition.json (None if there is none)."""
    path = Path(folder) / "partition.json"
    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if kind in KINDS else None


def unavailable_ids(ava_dir: Path) -> set[int]:
    """Ids listed in ``missing.txt``/``corrupt.txt`` of a verified download."""
    out: set[int] = set()
    for name in ("missing.txt", "corrupt.txt"):
        path = ava_dir / name
        if path.exists():
            out.update(read_id_list(path))
    return out


def make_partition(kind: str, ava_dir: str | Path | None, out_dir: str | Path, *, seed: int = 0,
                   delta: float = 0.0, lists_dir: str | Path | None = None, ava_file: str | Path | None = None,
                   test_list: str | Path | None = None) -> Partition:
    """Build partition ``kind`` from the AVA folder and write it to ``out_dir``."""
    if kind not in KINDS:
        raise PartitionError(f"unknown partition {kind!r} (choose {', '.join(KINDS)})")
    ava_dir = Path(ava_dir) if ava_dir else None
    ava_path = Path(ava_file) if ava_file else (ava_dir / "AVA.txt" if ava_dir else None)
    ava = None
    if ava_path is not None and ava_path.exists():
        ava = read_ava(ava_path)
    elif kind not in ("ilgnet-ava1", "ilgnet-ava2"):
        raise PartitionError(f"AVA.txt not found at {ava_path} (use --ava DIR from 'ilgnet download ava')")
    unavailable = unavailable_ids(ava_dir) if ava_dir else set()
    if kind == "ava1":
        assert ava is not None  # only the authors' lists go without AVA.txt (raised above)
        part = ava1(ava, seed=seed, delta=delta, unavailable=unavailable)
    elif kind == "ava2":
        assert ava is not None
        part = ava2(ava, seed=seed, unavailable=unavailable)
    elif kind == "standard":
        assert ava is not None
        if test_list:
            test_list = Path(test_list)
        elif ava_dir is not None:
            test_list = ava_dir / "aesthetics_image_lists" / "generic_test.jpgl"
        else:
            raise PartitionError("standard needs the official test list (test_list) or the AVA folder holding it")
        if not test_list.exists():
            raise PartitionError(f"official test list not found: {test_list}")
        part = standard(ava, test_list, unavailable=unavailable)
    else:
        part = authors(kind, lists_dir, ava, unavailable)
    if ava is not None and ava_path is not None:
        part.inputs["AVA.txt"] = sha256_file(ava_path)
        if ava.skipped:
            part.notes.append(f"AVA.txt: {len(ava.skipped)} malformed line(s) skipped: {ava.skipped[:5]}")
    if unavailable and kind in ("ava1", "standard"):
        part.excluded["missing or corrupt images"] = sorted(i for i in unavailable if ava and i in ava.records)
    write_partition(part, out_dir)
    return part


# ``--dataset ava1|ava2`` is the paper's protocol: the authors' own lists.
DATASET_ALIASES = {"ava1": "ilgnet-ava1", "ava2": "ilgnet-ava2"}


def resolve_partition(dataset: str, ava_dir: str | Path) -> Path:
    """A dataset name or a partition folder -> a partition folder with train.txt and test.txt.

    ``ava1``/``ava2`` mean the authors' AVA1/AVA2 lists (``ilgnet-ava1``/``ilgnet-ava2``); those,
    and ``standard``, are built on demand under ``AVA/partitions/``. Anything else must be a
    folder written by ``ilgnet partition``.
    """
    from ilgnet_cli.errors import DataError, UsageError
    from ilgnet_cli.runtime.paths import missing_ava_hint

    kind = DATASET_ALIASES.get(dataset, dataset)
    if kind in KINDS:
        ava_dir = Path(ava_dir)
        folder = ava_dir / "partitions" / kind
        if (folder / "train.txt").exists() and (folder / "test.txt").exists():
            return folder
        if not ava_dir.is_dir():
            raise DataError(f"no AVA data in {ava_dir}: {missing_ava_hint(ava_dir)}")
        if kind not in AUTHORS_KINDS + ("standard",):
            raise UsageError(f"{kind} is a random split: make it first with 'ilgnet partition {kind}', "
                             "then pass its folder")
        try:
            make_partition(kind, ava_dir, folder)
        except PartitionError as exc:
            raise DataError(f"{exc}; {missing_ava_hint(ava_dir)}") from None
        return folder
    folder = Path(dataset).expanduser()
    if not (folder / "test.txt").exists() and not (folder / "train.txt").exists():
        names = ", ".join(["ava1", "ava2", "standard", *AUTHORS_KINDS])
        raise UsageError(f"dataset {dataset!r} is neither one of {names} nor a partition folder (train.txt, test.txt)")
    return folder


def write_partition(part: Partition, out_dir: str | Path) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        write_label_list(out / f"{split}.txt", getattr(part, split))
    atomic_write_text(out / "partition.json", json.dumps(part.summary(), indent=2) + "\n")
