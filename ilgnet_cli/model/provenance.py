"""What a set of weights was trained on, so that ``ilgnet eval`` can refuse a test list they saw.

Every weights file ilgnet writes carries a ``provenance`` entry in its safetensors metadata:
which data it learned from, a digest and count of the AVA image ids it trained on, where those ids
are (``list:AVA1`` / ``list:AVA2``: the authors' lists shipped with ilgnet; ``tensor``: inside the
file, as ``_provenance.train_ids``), its mean, and the provenance of what it started from
(``bases``: ImageNet GoogLeNet, other weights). A training run's ids tensor holds every AVA id the
weights have seen, its own and its bases'. Registry entries state it for the authors' weights;
an import of a known file inherits it. Anything else is ``unknown`` and is never assumed clean.
"""

from __future__ import annotations

import hashlib
import json
import lzma
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources

import numpy as np

IDS_TENSOR = "_provenance.train_ids"
DATASETS = ("ava1", "ava2", "imagenet", "partition", "photos", "unknown")
LISTS = {"list:AVA1": ("AVA1", "train.txt.xz"), "list:AVA2": ("AVA2", "train.txt.xz")}
AVA_DATASETS = ("ava1", "ava2", "partition")  # trained on AVA images: where their ids are must be said
MAX_BASES = 8  # a chain deeper than this is not ours
MAX_JSON = 64 << 10


def ids_digest(ids: Iterable[int]) -> str:
    """sha256 of the sorted, distinct ids (one per line): the same set always gives the same digest."""
    text = "".join(f"{i}\n" for i in sorted(set(ids)))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Provenance:
    dataset: str = "unknown"  # ava1 | ava2 | imagenet | partition | photos | unknown
    summary: str = "unknown (not recorded for these weights)"
    ids_sha256: str | None = None  # of the AVA ids these weights saw (bases included)
    ids_count: int | None = None
    ids_ref: str | None = None  # list:AVA1, list:AVA2, tensor, or None (no AVA ids)
    partition: str | None = None
    mean: str | None = None  # digest of the mean image or values
    declared: bool = False  # the user said so (``weights import --trained-on``); not checked
    bases: tuple[Provenance, ...] = field(default_factory=tuple)

    @property
    def known(self) -> bool:
        return self.dataset in DATASETS and self.dataset != "unknown" and all(b.known for b in self.bases)

    def describe(self) -> str:
        text = self.summary
        if self.declared:
            text += " (declared at import)"
        for base in self.bases:
            text += f"; started from {base.describe()}"
        return text

    def to_json(self) -> dict:
        return {"dataset": self.dataset, "summary": self.summary, "ids_sha256": self.ids_sha256,
                "ids_count": self.ids_count, "ids_ref": self.ids_ref, "partition": self.partition,
                "mean": self.mean, "declared": self.declared, "bases": [b.to_json() for b in self.bases]}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)

    @classmethod
    def from_json(cls, data: object, depth: int = 0) -> Provenance:
        """Checked field by field; anything malformed is ``unknown`` (never an error, never clean)."""
        if not isinstance(data, dict) or depth > MAX_BASES:
            return UNKNOWN
        dataset = data.get("dataset")
        if dataset not in DATASETS:
            return UNKNOWN

        def text(key: str, limit: int = 400) -> str | None:
            value = data.get(key)
            return value[:limit] if isinstance(value, str) else None

        count = data.get("ids_count")
        ref = text("ids_ref", 40)
        ref = ref if ref in (*LISTS, "tensor") else None
        if ref is None and (dataset in AVA_DATASETS or data.get("ids_count") is not None
                            or data.get("ids_sha256") is not None):
            return UNKNOWN  # AVA images seen, but nowhere to read which: as good as not recorded
        raw_bases = data.get("bases")
        bases: list = raw_bases if isinstance(raw_bases, list) else []
        return cls(dataset=dataset, summary=text("summary") or dataset,
                   ids_sha256=text("ids_sha256", 64), ids_count=count if isinstance(count, int) else None,
                   ids_ref=ref, partition=text("partition", 200),
                   mean=text("mean", 64), declared=data.get("declared") is True,
                   bases=tuple(cls.from_json(b, depth + 1) for b in bases[:MAX_BASES]))

    @classmethod
    def loads(cls, text: str | None) -> Provenance:
        if not text or len(text) > MAX_JSON:
            return UNKNOWN
        try:
            return cls.from_json(json.loads(text))
        except (ValueError, RecursionError):
            return UNKNOWN


UNKNOWN = Provenance()
IMAGENET = Provenance(dataset="imagenet", summary="ImageNet (ILSVRC 2012 classification, no AVA images)")


def authors_list_ids(ref: str) -> set[int]:
    """The ids of one of the authors' training lists shipped with ilgnet (``list:AVA1``...)."""
    folder, name = LISTS[ref]
    with resources.files("ilgnet_cli").joinpath("data", "lists", folder, name).open("rb") as fh:
        text = lzma.decompress(fh.read()).decode("utf-8")
    return {int(line.split()[0].removesuffix(".jpg")) for line in text.splitlines() if line.strip()}


def _matches(p: Provenance, ids: set[int]) -> bool:
    """The ids read agree with the count and digest recorded beside them (a tensor's digest is
    required: ilgnet always writes it)."""
    if p.ids_count is not None and p.ids_count != len(ids):
        return False
    if p.ids_sha256 is None:
        return p.ids_ref != "tensor"
    return p.ids_sha256 == ids_digest(ids)


def training_ids(prov: Provenance, tensor_ids: np.ndarray | None) -> set[int] | None:
    """Every AVA id the weights trained on (their own and their bases'), or None when unknown.
    ``tensor_ids``: the file's ``_provenance.train_ids`` (needed when ``ids_ref`` is ``tensor``).
    Ids that disagree with the count or digest recorded with them (an edited file) are unknown."""
    if not prov.known:
        return None
    ids: set[int] = set()
    stack = [(prov, True)]
    while stack:
        p, top = stack.pop()
        if p.ids_ref in LISTS:
            listed = authors_list_ids(p.ids_ref)
            if not _matches(p, listed):
                return None
            ids |= listed
        elif p.ids_ref == "tensor":
            if tensor_ids is None:
                return None
            if top:  # a run's tensor holds its bases' ids too: checked once, against its own digest
                own = {int(v) for v in np.asarray(tensor_ids).reshape(-1).tolist()}
                if not _matches(p, own):
                    return None
                ids |= own
            elif prov.ids_ref != "tensor":  # a base's ids in a tensor this file does not vouch for
                return None
        stack.extend((b, False) for b in p.bases)
    return ids
