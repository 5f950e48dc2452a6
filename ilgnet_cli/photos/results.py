"""What scoring a collection gives: one :class:`ScoreResult` per file, and the run around them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ilgnet_cli.photos.exif import ExifInfo


@dataclass(frozen=True)
class BurstMark:
    """A result's place in its burst (``--group-bursts``): burst number (best first), frames in
    it, and whether it is the burst's keeper."""

    id: int
    size: int
    keeper: bool


@dataclass
class ScoreResult:
    path: str
    score: float | None = None  # P(high), or None when the file could not be scored
    error: str | None = None  # why not, in one line
    width: int | None = None  # as stored, before orientation
    height: int | None = None
    format: str | None = None
    exif: ExifInfo = field(default_factory=ExifInfo)
    sharpness: float | None = None  # variance of the Laplacian of the scoring decode
    precision: str | None = None  # fp32 or bf16
    decode: str | None = None  # how it was decoded (fast-800, reference-800, exact, draft)
    burst: BurstMark | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_cache(self) -> dict[str, Any]:
        """Everything but path, score and error, as the score cache stores it (JSON)."""
        return {"width": self.width, "height": self.height, "format": self.format, "exif": self.exif.to_json(),
                "sharpness": self.sharpness, "precision": self.precision, "decode": self.decode}

    @classmethod
    def from_cache(cls, path: str, score: float | None, error: str | None, meta: dict[str, Any]) -> ScoreResult:
        """The inverse of :meth:`to_cache`; fields of the wrong type (an edited or foreign row)
        are dropped, never trusted."""
        return cls(path=path, score=score, error=error, width=_int(meta.get("width")),
                   height=_int(meta.get("height")), format=_str(meta.get("format")),
                   exif=ExifInfo.from_json(meta.get("exif") if isinstance(meta.get("exif"), dict) else None),
                   sharpness=_float(meta.get("sharpness")), precision=_str(meta.get("precision")),
                   decode=_str(meta.get("decode")))


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: object) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None  # type: ignore[arg-type]


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


@dataclass
class RunStats:
    files: int = 0
    cache_hits: int = 0
    decoded: int = 0  # files that went through decoding in this run
    scored: int = 0
    errors: int = 0
    corrected: int = 0  # scores served with a shortcut that failed its check, scored again
    interrupted: bool = False
    signal: int | None = None  # the signal that ended the run (SIGTERM, SIGHUP, SIGINT)


@dataclass
class ScoreRun:
    results: list[ScoreResult]  # every file that finished (scored or failed)
    stats: RunStats
    weights_name: str
    weights_sha256: str
    bursts: list | None = None  # set by group_bursts(): report rows are bursts, keeper first
    transform: str = ""  # the weights' transform as it ran (Transform.describe())
    notes: list[str] = field(default_factory=list)  # what the user may want to know (gate verdicts)

    @property
    def scored(self) -> list[ScoreResult]:
        """Scored results, best first; ties broken by path so reports are stable."""
        return sorted((r for r in self.results if r.ok), key=lambda r: (-(r.score or 0.0), r.path))

    @property
    def errors(self) -> list[ScoreResult]:
        return sorted((r for r in self.results if not r.ok), key=lambda r: r.path)
