"""EXIF for reports and burst grouping, read with exifread.

exifread raises AssertionError, IndexError, ValueError, TypeError, MemoryError... on real
files: any failure loses the EXIF fields only (``ExifInfo.error`` says why), never the score.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO, cast

logging.getLogger("exifread").setLevel(logging.CRITICAL)


@dataclass
class ExifInfo:
    captured: str | None = None  # ISO 8601 with sub-seconds and offset when known
    make: str | None = None
    model: str | None = None
    serial: str | None = None  # camera body serial, to tell two bodies of one model apart
    lens: str | None = None
    exposure: str | None = None  # as photographers write it: "1/200", "2.5"
    exposure_s: float | None = None
    aperture: float | None = None  # f-number
    iso: int | None = None
    focal_length: float | None = None  # mm
    focal_length_35mm: int | None = None
    has_gps: bool = False
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, False) or k == "has_gps"}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> ExifInfo:
        """Fields of the right type only: cached rows come from a file anyone could edit."""
        if not data:
            return cls()
        kinds = {"has_gps": (bool,), "iso": (int,), "focal_length_35mm": (int,),
                 "exposure_s": (int, float), "aperture": (int, float), "focal_length": (int, float)}
        fields: dict[str, Any] = {}
        for k, v in data.items():
            if k not in cls.__dataclass_fields__ or v is None:
                continue
            want = kinds.get(k, (str,))
            if isinstance(v, want) and (want == (bool,) or not isinstance(v, bool)):
                if isinstance(v, float) and not math.isfinite(v):
                    continue  # no NaN/inf in reports: JSON has no such numbers
                fields[k] = cut_text(v) if isinstance(v, str) else v
        return cls(**fields)

    @property
    def camera(self) -> str:
        """"Canon EOS 5D Mark III" rather than "Canon Canon EOS 5D Mark III"."""
        make, model = (self.make or "").strip(), (self.model or "").strip()
        if make and model.lower().startswith(make.split()[0].lower()):
            return model
        return " ".join(p for p in (make, model) if p)

    def timestamp(self) -> float | None:
        """Capture time as seconds (naive times are taken as UTC: only differences matter)."""
        if not self.captured:
            return None
        try:
            dt = datetime.fromisoformat(self.captured)
        except ValueError:
            return None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.timestamp()


# EXIF strings are a camera's make, a lens name, a date: a few dozen characters. Longer ones are
# cut here, marked, so that a 10 MB "Make" costs nothing in reports, the cache or the terminal.
MAX_TEXT = 120
CUT_MARK = " …(cut)"
# No single read of EXIF data is larger than this: exifread follows counts written in the file,
# and a hostile count would make it read (and then walk) a whole 10 MB value.
MAX_READ = 1 << 20
# Nor does one file take more reads than this: a TIFF can chain IFDs without end (200,000 of them
# cost exifread 27 s). Real photos here take at most about 1,600. One shared sample goes past it:
# a BigTIFF, whose EXIF exifread cannot parse anyway (197,000 reads for nothing); it is now
# "EXIF unreadable" at once.
MAX_READS = 100_000


class TooMuchExif(Exception):
    """More EXIF work than any photo needs: the file is built to waste time."""


def cut_text(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + CUT_MARK


class _CappedReader:
    """A file object for exifread whose reads never exceed :data:`MAX_READ` bytes."""

    def __init__(self, fh) -> None:  # noqa: ANN001 - any binary file object
        self.fh = fh
        self.reads = 0

    def read(self, size: int = -1) -> bytes:
        self.reads += 1
        if self.reads > MAX_READS:
            raise TooMuchExif(f"more than {MAX_READS:,} reads")
        return self.fh.read(MAX_READ if size is None or size < 0 or size > MAX_READ else size)

    def __getattr__(self, name: str):  # noqa: ANN204 - seek, tell, ... as the file has them
        return getattr(self.fh, name)


def _text(tags: dict, *keys: str) -> str | None:
    for key in keys:
        tag = tags.get(key)
        if tag is None:
            continue
        text = str(tag.printable if hasattr(tag, "printable") else tag)[:MAX_TEXT * 4].replace("\x00", "").strip()
        if text and text.lower() not in ("unknown", "none", "0000000000"):
            return cut_text(text)
    return None


def _number(tags: dict, key: str) -> float | None:
    tag = tags.get(key)
    if tag is None:
        return None
    values = getattr(tag, "values", None)
    # exifread's values are untyped (int, str, bytes, Ratio...): float() sorts them out, or raises.
    value: Any = values[0] if isinstance(values, list) and values else values
    try:
        if hasattr(value, "num") and hasattr(value, "den"):
            number = None if value.den == 0 else float(Fraction(value.num, value.den))
        else:
            number = float(value) if not isinstance(value, str) or len(value) < 40 else None
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None
    return number if number is not None and math.isfinite(number) else None  # JSON has no NaN or inf


def _captured(tags: dict) -> str | None:
    raw = _text(tags, "EXIF DateTimeOriginal", "EXIF DateTimeDigitized", "Image DateTime")
    if not raw:
        return None
    try:
        dt = datetime.strptime(raw[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    sub = _text(tags, "EXIF SubSecTimeOriginal", "EXIF SubSecTime")
    if sub and sub.isdigit():
        dt += timedelta(seconds=float(f"0.{sub}"))
    offset = _text(tags, "EXIF OffsetTimeOriginal", "EXIF OffsetTime")
    text = dt.isoformat(timespec="milliseconds" if dt.microsecond else "seconds")
    if offset and len(offset) == 6 and offset[0] in "+-" and offset[3] == ":":
        text += offset
    return text


def _exposure(seconds: float | None) -> str | None:
    if seconds is None or seconds <= 0:
        return None
    if seconds >= 1:
        return f"{seconds:g}"
    return f"1/{round(1 / seconds)}"


def read_exif(path: str | Path) -> ExifInfo:
    """EXIF of any file exifread understands (JPEG, TIFF, HEIC, WebP, PNG, RAW)."""
    import exifread

    try:
        with open(path, "rb") as fh:
            tags = exifread.process_file(cast(BinaryIO, _CappedReader(fh)), details=False)
        if not tags:
            return _pillow_exif(path)
        seconds = _number(tags, "EXIF ExposureTime")
        iso = _number(tags, "EXIF ISOSpeedRatings") or _number(tags, "EXIF PhotographicSensitivity")
        f35 = _number(tags, "EXIF FocalLengthIn35mmFilm")
        return ExifInfo(
            captured=_captured(tags),
            make=_text(tags, "Image Make"),
            model=_text(tags, "Image Model"),
            serial=_text(tags, "EXIF BodySerialNumber", "MakerNote SerialNumber", "EXIF CameraSerialNumber"),
            lens=_text(tags, "EXIF LensModel", "MakerNote LensModel", "MakerNote LensType"),
            exposure=_exposure(seconds),
            exposure_s=seconds,
            aperture=_number(tags, "EXIF FNumber"),
            iso=int(iso) if iso else None,
            focal_length=_number(tags, "EXIF FocalLength"),
            focal_length_35mm=int(f35) if f35 else None,
            has_gps=any(k.startswith("GPS GPSLatitude") for k in tags),
        )
    except Exception as exc:  # noqa: BLE001 - exifread's failures are many and untyped
        return ExifInfo(error=f"EXIF unreadable: {type(exc).__name__}: {str(exc)[:80]}")
    except RecursionError as exc:  # pragma: no cover - deeply nested IFDs in fuzzed files
        return ExifInfo(error=f"EXIF unreadable: {type(exc).__name__}")


def _pillow_exif(path: str | Path) -> ExifInfo:
    """Fallback for containers exifread does not parse (WebP, PNG eXIf): Pillow's reader."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            exif = img.getexif()
            sub = exif.get_ifd(0x8769)
            gps = exif.get_ifd(0x8825)
    except Exception:  # noqa: BLE001 - not an image or unreadable EXIF: no fields
        return ExifInfo()
    if not exif and not sub:
        return ExifInfo()

    def num(value: Any) -> float | None:
        try:
            return float(value) if value is not None else None
        except (TypeError, ValueError, ZeroDivisionError):
            return None

    def text(value: Any) -> str | None:
        return cut_text(str(value)[:MAX_TEXT * 4].replace("\x00", "").strip()) or None if value is not None else None

    tags = {"EXIF DateTimeOriginal": sub.get(0x9003) or exif.get(0x0132), "EXIF SubSecTimeOriginal": sub.get(0x9291),
            "EXIF OffsetTimeOriginal": sub.get(0x9011)}
    tags = {k: v for k, v in tags.items() if v}
    seconds, iso = num(sub.get(0x829A)), num(sub.get(0x8827))
    return ExifInfo(
        captured=_captured(tags), make=text(exif.get(0x010F)), model=text(exif.get(0x0110)),
        serial=text(sub.get(0xA431)), lens=text(sub.get(0xA434)), exposure=_exposure(seconds), exposure_s=seconds,
        aperture=num(sub.get(0x829D)), iso=int(iso) if iso else None, focal_length=num(sub.get(0x920A)),
        has_gps=bool(gps),
    )
