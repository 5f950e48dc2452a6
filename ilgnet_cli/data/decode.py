"""Decode any photo a user is likely to have into an 8-bit RGB array, or say why not.

Every failure is a :class:`DecodeError` with a short, stable reason (used in reports and
tests): "truncated image data", "not identifiable as an image", "decompression bomb (...)".
"""

from __future__ import annotations

import io
import math
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageFile

from ilgnet_cli.errors import IlgnetError
from ilgnet_cli.runtime.formats import RAW_EXTENSIONS

try:  # HEIC/HEIF/AVIF; a regular dependency, but decoding the rest must not need it.
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIF_SUPPORT = True
except ImportError:  # pragma: no cover
    HEIF_SUPPORT = False

# Refuse images that declare more pixels than this by default: a 102 MP medium-format frame is
# fine, a 57-byte BMP declaring 151 MP is not. `ilgnet score --max-pixels` raises it.
MAX_PIXELS = 120_000_000
# Never decode half a file: a truncated photo gets a reason, not a grey bottom half.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# We enforce our own limit; Pillow's warning/error would fire at a different size.
Image.MAX_IMAGE_PIXELS = None

_ORIENTATION = 0x0112
_TRANSPOSE = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}


# LibRaw's flip: 3 = 180 degrees, 5 = 90 counter-clockwise, 6 = 90 clockwise.
_RAW_ROT90 = {3: 2, 5: 1, 6: -1}


class DecodeError(IlgnetError):
    """An image that cannot be scored; ``str()`` is a one-line reason."""


@dataclass
class Decoded:
    rgb: np.ndarray  # HxWx3 uint8, orientation applied
    format: str
    size: tuple[int, int]  # full (width, height) as stored, before draft and orientation
    orientation: int
    scale: int = 1  # libjpeg's DCT reduction (1, 2, 4 or 8): 1 = every pixel decoded


def _orientation(img: Image.Image) -> int:
    try:
        value = int(img.getexif().get(_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block must not cost the picture
        return 1
    return value if value in range(1, 9) else 1


def _grey8(arr: np.ndarray, is_float: bool) -> np.ndarray:
    """One-channel float or wide-integer pixels -> uint8, visible as an image viewer shows them.

    Floats inside 0..1 and non-negative integers keep their meaning (x255, /257 for 16 bit);
    anything else (phase maps in -pi..pi, signed data, HDR) is stretched min..max -> 0..255.
    NaN is 0; +-inf sit at the ends; the finite pixels set the range."""
    # float32 and no copy of the finite pixels keep a 120 MP frame affordable.
    finite = np.isfinite(arr)
    lo, hi = (float(np.min(arr, where=finite, initial=np.inf)), float(np.max(arr, where=finite, initial=-np.inf)))
    if lo > hi:  # no finite pixel at all
        lo = hi = 0.0
    scaled: np.ndarray
    if is_float and 0.0 <= lo and hi <= 1.0:
        scaled = arr * 255.0  # the usual 0..1 floats: without this they turn black
    elif not is_float and lo >= 0.0:
        scaled = arr / (1.0 if hi <= 255.0 else 257.0 if hi <= 65535.0 else hi / 255.0)
    elif hi > lo:
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow to inf still clips right
            scaled = (arr - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    else:  # a constant outside 0..1: saturated, as a 0..1 float would be
        scaled = np.full(arr.shape, 255.0 if lo > 0 else 0.0)
    scaled = np.where(np.isposinf(arr), 255.0, np.where(finite, scaled, 0.0))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB, keeping the picture visible (alpha over white, HDR scaled)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return Image.fromarray(_grey8(np.asarray(img, dtype=np.float32), mode == "F"), "L").convert("RGB")
    if mode == "LAB" or (mode == "CMYK" and img.info.get("icc_profile")):
        try:
            src = (ImageCms.ImageCmsProfile(io.BytesIO(img.info["icc_profile"]))
                   if img.info.get("icc_profile") else ImageCms.createProfile("LAB"))
            converted = ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
            if converted is not None:  # None only with inPlace=True
                return converted
        except Exception:  # noqa: BLE001 - fall back to Pillow's naive conversion
            if mode == "LAB":
                raise DecodeError("unsupported colour space (LAB without a usable profile)") from None
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def open_image(path: str | os.PathLike[str], max_pixels: int | None = None) -> Image.Image:
    """Open (header only) with a pixel limit checked before any pixel is decoded."""
    limit = max_pixels or MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's per-file warnings become our reasons
            img = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"decompression bomb ({exc})") from None
    except (Image.UnidentifiedImageError, SyntaxError):
        raise DecodeError("not identifiable as an image") from None
    except OSError as exc:
        raise DecodeError(_reason(exc)) from None
    w, h = img.size
    if w <= 0 or h <= 0:
        img.close()
        raise DecodeError("not identifiable as an image (zero size)")
    if w * h > limit:
        img.close()
        raise DecodeError(f"decompression bomb ({w * h:.3g} pixels declared, limit {limit:.3g})")
    return img


# A progressive JPEG decodes each scan over the whole picture: real ones have about ten (at most a
# few dozen); a hostile file with thousands costs minutes of CPU per decode. More than this is refused.
MAX_SCANS = 256
_SCAN_CHUNK = 1 << 20


def check_scans(path: str | os.PathLike[str]) -> None:
    """Raise DecodeError when a JPEG holds more than :data:`MAX_SCANS` scans (SOS markers).

    Counted on the bytes: inside entropy-coded data a 0xFF byte is always followed by 0x00 or a
    restart marker, so ``FF DA`` occurs only as a marker (embedded thumbnails add their own few)."""
    count, tail = 0, b""
    with open(path, "rb") as fh:
        while chunk := fh.read(_SCAN_CHUNK):
            data = tail + chunk
            count += data.count(b"\xff\xda")
            if count > MAX_SCANS:
                raise DecodeError(f"too many JPEG scans (more than {MAX_SCANS}): refused, decoding would take minutes")
            tail = data[-1:]  # a marker split over two reads is counted once, in the next


def _reason(exc: BaseException) -> str:
    text = str(exc).lower()
    if "truncated" in text or "premature end" in text or "unexpected end" in text:
        return "truncated image data"
    if "decoder error" in text:
        return "decoder error (corrupt or unsupported compression)"
    if "broken data stream" in text or "corrupt" in text:
        return "corrupt compressed data"
    if "cannot identify" in text:
        return "not identifiable as an image"
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"cannot decode: {first[:120]}"


def draft_size(size: tuple[int, int], draft: int | None, long_side: int | None) -> tuple[int, int] | None:
    """The smallest (width, height) libjpeg may decode a ``size`` JPEG to, or None (every pixel)."""
    w, h = size
    if long_side is not None:
        if max(w, h) < 2 * long_side:  # no DCT scale keeps the long side: decode it all
            return None
        f = long_side / max(w, h)
        return max(1, math.ceil(w * f)), max(1, math.ceil(h * f))
    if draft:
        return draft, draft
    return None


def decode(path: str | os.PathLike[str], draft: int | None = None, max_pixels: int | None = None, *,
           long_side: int | None = None) -> Decoded:
    """Decode ``path`` to RGB with EXIF orientation applied.

    For JPEGs, libjpeg may downscale by 1/2, 1/4 or 1/8 in the DCT (much faster on big photos):
    ``draft`` keeps both sides >= ``draft`` pixels, ``long_side`` keeps the long side >=
    ``long_side``; with neither, every pixel is decoded. Only the first frame of animated or
    multi-page files is used.
    """
    if Path(path).suffix.lower() in RAW_EXTENSIONS:
        return decode_raw(path, draft, max_pixels, long_side=long_side)
    img = open_image(path, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's per-file warnings become our reasons
            fmt = img.format or "?"
            if fmt in ("JPEG", "MPO"):
                check_scans(path)
            size = img.size
            orientation = _orientation(img)
            request = draft_size(size, draft, long_side) if fmt in ("JPEG", "MPO") else None
            if request is not None:
                img.draft("RGB", request)
            scale = max(1, round(size[0] / max(1, img.size[0])))
            img.load()
            rotated = img
            for op in _TRANSPOSE.get(orientation, ()):
                rotated = rotated.transpose(op)
            rgb = np.asarray(_to_rgb(rotated), dtype=np.uint8)
    except DecodeError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise DecodeError(_reason(exc)) from None
    except MemoryError:
        raise DecodeError("image too large to decode in memory") from None
    finally:
        img.close()
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise DecodeError(f"unexpected decoded shape {rgb.shape}")
    return Decoded(rgb=rgb, format=fmt, size=size, orientation=orientation, scale=scale)


def decode_raw(path: str | os.PathLike[str], draft: int | None = None, max_pixels: int | None = None, *,
               long_side: int | None = None) -> Decoded:
    """A camera RAW: its embedded preview when one is at least ``draft`` (or 256) px on the short
    side and ``long_side`` on the long side (fast), else a half-size demosaic; the RAW's
    orientation applied."""
    import rawpy

    target = draft or 256
    try:
        with rawpy.imread(os.fspath(path)) as raw:  # str() of a DirEntry is its repr
            width, height = raw.sizes.width, raw.sizes.height
            limit = max_pixels or MAX_PIXELS
            if width * height > limit:
                raise DecodeError(f"decompression bomb ({width * height:.3g} pixels declared, limit {limit:.3g})")
            flip = raw.sizes.flip
            rgb, how = None, "demosaic"
            try:
                thumb = raw.extract_thumb()
            except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
                thumb = None
            if thumb is not None:
                if thumb.format == rawpy.ThumbFormat.JPEG and isinstance(thumb.data, bytes):
                    with Image.open(io.BytesIO(thumb.data)) as img:
                        img.draft("RGB", (target, target))
                        preview = np.asarray(img.convert("RGB"))
                else:
                    preview = np.asarray(thumb.data)
                if (preview.ndim == 3 and preview.shape[2] == 3 and min(preview.shape[:2]) >= target
                        and max(preview.shape[:2]) >= (long_side or 0)):
                    rgb, how = preview, "preview"
            if rgb is None:
                rgb = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8)
                flip = 0  # LibRaw's processing already applied the orientation
    except DecodeError:
        raise
    except (rawpy.LibRawError, OSError, ValueError) as exc:
        raise DecodeError(f"cannot decode RAW: {type(exc).__name__}: {str(exc)[:100]}") from None
    if flip in _RAW_ROT90:
        rgb = np.rot90(rgb, _RAW_ROT90[flip])
    return Decoded(rgb=np.ascontiguousarray(rgb, dtype=np.uint8), format=f"RAW ({how})",
                   size=(width, height), orientation={3: 3, 5: 8, 6: 6}.get(flip, 1))
