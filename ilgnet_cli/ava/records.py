"""AVA metadata (AVA.txt) and partition lists.

AVA.txt columns: index, image id, 10 vote counts (scores 1..10), 2 semantic tag ids,
challenge id (README.txt of the June 2012 release).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ilgnet_cli.errors import DataError

if TYPE_CHECKING:  # annotations only
    from ilgnet_cli.ava.prepare import PreparedImages

HIGH_THRESHOLD = 5.0  # AVA1: mean score > 5 -> high (1); verified on 48,604 real images


class AVAFormatError(DataError, ValueError):
    """A malformed AVA.txt line; ``str()`` names the file and line number."""


@dataclass(frozen=True)
class AVARecord:
    id: int
    votes: tuple[int, ...]  # counts for scores 1..10
    tags: tuple[int, int] = (0, 0)
    challenge: int = 0

    @property
    def n_votes(self) -> int:
        return sum(self.votes)

    @property
    def mean(self) -> float:
        return sum(s * c for s, c in zip(range(1, 11), self.votes, strict=True)) / self.n_votes

    @property
    def std(self) -> float:
        m = self.mean
        var = sum(c * (s - m) ** 2 for s, c in zip(range(1, 11), self.votes, strict=True)) / self.n_votes
        return math.sqrt(var)

    @property
    def ava1_label(self) -> int:
        return int(self.mean > HIGH_THRESHOLD)

    def to_line(self, index: int) -> str:
        return " ".join(map(str, (index, self.id, *self.votes, *self.tags, self.challenge)))


@dataclass
class AVAData:
    records: dict[int, AVARecord]
    skipped: list[str] = field(default_factory=list)  # "line N: reason" for skipped lines
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.records)


_INTEGER = re.compile(r"-?[0-9]{1,18}")
_IMAGE_ID = re.compile(r"[0-9]{1,18}")


def parse_line(line: str, lineno: int, source: str = "AVA.txt") -> AVARecord:
    parts = line.split()
    if len(parts) != 15:
        raise AVAFormatError(f"{source} line {lineno}: expected 15 columns, found {len(parts)}")
    # Plain ASCII integers of sane length: int() would take Unicode digits and spend quadratic
    # time (or refuse, past 4,300 digits) on a hostile number.
    bad = next((p for p in parts if not _INTEGER.fullmatch(p)), None)
    if bad is not None:
        raise AVAFormatError(f"{source} line {lineno}: non-numeric value {bad[:40]!r}")
    values = [int(p) for p in parts]
    if values[1] < 0:
        raise AVAFormatError(f"{source} line {lineno}: negative image id")
    votes = tuple(values[2:12])
    if any(v < 0 for v in votes):
        raise AVAFormatError(f"{source} line {lineno}: negative vote count")
    if sum(votes) == 0:
        raise AVAFormatError(f"{source} line {lineno}: image {values[1]} has zero votes")
    return AVARecord(id=values[1], votes=votes, tags=(values[12], values[13]), challenge=values[14])


def read_ava(path: str | Path, *, strict: bool = False) -> AVAData:
    """Parse AVA.txt. Malformed lines raise (``strict``) or are skipped and listed in ``skipped``."""
    path = Path(path)
    data = AVAData(records={}, path=path)
    with path.open(encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = parse_line(line, lineno, path.name)
            except AVAFormatError as exc:
                if strict:
                    raise
                data.skipped.append(str(exc))
                continue
            if rec.id in data.records:
                msg = f"{path.name} line {lineno}: duplicate image id {rec.id}"
                if strict:
                    raise AVAFormatError(msg)
                data.skipped.append(msg)
                continue
            data.records[rec.id] = rec
    if not data.records:
        raise AVAFormatError(f"{path.name}: no valid AVA records")
    return data


def write_ava(path: str | Path, records: Iterable[AVARecord]) -> None:
    from ilgnet_cli.runtime.fsutil import atomic_write_text

    atomic_write_text(path, "".join(r.to_line(i) + "\n" for i, r in enumerate(records, 1)))


def read_id_list(path: str | Path) -> list[int]:
    """A .jpgl list (one id per line) or a Caffe list (``<id>.jpg <label>``) -> ids."""
    ids = []
    path = Path(path)
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        token = line.split()[0].removesuffix(".jpg") if line.strip() else ""
        if not token:
            continue
        if not _IMAGE_ID.fullmatch(token):
            raise AVAFormatError(f"{path.name} line {lineno}: expected an image id, found {token[:40]!r}")
        ids.append(int(token))
    return ids


def parse_label_lines(text: str, source: str) -> list[tuple[int, int]]:
    """Caffe list text ``<id>.jpg <label>`` (last line may lack a newline) -> [(id, label)]."""
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        name = parts[0].removesuffix(".jpg") if parts else ""
        if len(parts) != 2 or not _IMAGE_ID.fullmatch(name) or parts[1] not in ("0", "1"):
            raise AVAFormatError(f"{source} line {lineno}: expected '<id>.jpg <0|1>', found {line.strip()[:60]!r}")
        out.append((int(name), int(parts[1])))
    return out


def read_label_list(path: str | Path) -> list[tuple[int, int]]:
    """A Caffe list file ``<id>.jpg <label>`` -> [(id, label)]."""
    path = Path(path)
    return parse_label_lines(path.read_text(encoding="utf-8", errors="replace"), path.name)


def write_label_list(path: str | Path, items: Iterable[tuple[int, int]]) -> None:
    from ilgnet_cli.runtime.fsutil import atomic_write_text

    atomic_write_text(path, "".join(f"{i}.jpg {label}\n" for i, label in items))


def available(items: list[tuple[int, int]], images: str | Path,
              cache: PreparedImages | None = None) -> list[tuple[int, int]]:
    """The (id, label) items whose image exists: in the prepared cache if given, else as images/<id>.jpg."""
    if cache is not None:
        return [it for it in items if it[0] in cache]
    folder = Path(images)
    return [it for it in items if (folder / f"{it[0]}.jpg").is_file()]
