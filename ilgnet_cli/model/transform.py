"""What the model is fed, owned by the weights: :class:`Transform` (decode mode, resize, crops,
mean) with :meth:`Transform.describe`. Scoring, evaluation, training and ``ilgnet learn`` all
preprocess through it, and nothing else does.

The authors built their 256x256 LMDB with Caffe's ``convert_imageset`` (OpenCV decode,
``cv::resize`` with the default bilinear interpolation, no aspect preservation) and fed the
net a 227x227 crop of it, BGR, 0-255, minus their mean image (``mean_file`` in train.prototxt
and val.prototxt). The ``exact`` decode mode is exactly that:

1. decode every pixel (:mod:`ilgnet_cli.data.decode`), EXIF orientation applied, any mode -> RGB;
2. resize to 256x256 exactly as ``cv2.resize(..., INTER_LINEAR)`` does (half-pixel centres,
   two taps, no antialiasing, OpenCV's fixed-point rounding: bit-identical uint8 output);
3. centre crop 227 at offset (256 - 227) // 2 = 14, as Caffe's test-phase crop;
4. RGB -> BGR, float32, minus the mean that belongs to the weights: for the authors' models the
   256x256 mean image cropped at the same window (Caffe's DataTransformer), for ImageNet
   GoogLeNet its per-channel constants.

AVA's photos were uploads to dpchallenge.com, whose rules allowed at most 640 pixels a side
(later 720, then 800 until October 2014; dpchallenge.com/challenge_rules.php and its rules
wiki): the model never saw the 19x point-sampled downscale that step 2 makes of a 24 MP camera
photo. The ``reference`` mode therefore first brings a photo larger than :data:`REFERENCE_SIDE`
(800, the largest any AVA image can be) down to it with Pillow's Lanczos resize (every pixel
decoded, no reducing gap), as a photographer resizing for dpchallenge would, then runs the
authors' steps 2-4; on AVA's own images it is the authors' pipeline unchanged. ``fast`` gets
nearly the same picture for less: libjpeg decodes a JPEG at 1/2, 1/4 or 1/8 scale in the DCT,
keeping the long side at least twice :data:`REFERENCE_SIDE`, then the same Lanczos resize; it
is a shortcut, checked against ``reference`` by the fidelity gate. ``draft`` is ilgnet 0.2's
shortcut (DCT-scaled to just over 256 pixels, then step 2). benchmarks/bench_fidelity.py
measures every mode against the reference and against ``exact``.

Training replaces step 3 with a random crop and a random horizontal mirror; the mean image is
cropped at the same window and mirrored with it, as Caffe does.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ilgnet_cli.errors import UsageError

if TYPE_CHECKING:
    import torch

RESIZE = 256
CROP = 227
CENTRE = (RESIZE - CROP) // 2  # Caffe's test-phase crop offset
# The largest side a dpchallenge.com upload could have while AVA was collected (see above).
REFERENCE_SIDE = 800
# Per-channel (B, G, R) averages of the authors' mean images (for reference and old weight files).
MEANS_BGR: dict[str, tuple[float, float, float]] = {
    "ava1": (91.0018, 99.4639, 107.8456),
    "ava2": (90.0504, 98.5853, 107.5091),
    # ImageNet mean of bvlc_googlenet (ilsvrc_2012_mean, per channel).
    "imagenet": (104.0, 117.0, 123.0),
}
# Bumped whenever the pixels fed to the model, or what the cache stores with a score, change
# (part of the score-cache key). 2: cached entries carry the sharpness for best-of-burst;
# 3: sharpness measured on every second pixel; 4: the authors' mean image, not its channel means;
# 5: decode modes (fast/reference/exact/draft) and typed result fields.
PREPROCESS_VERSION = 5


def _taps(src: int, dst: int, clamp: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and 11-bit fixed-point weights of OpenCV's INTER_LINEAR along one axis.

    Positions are computed in float32 from OpenCV's ``scale = 1 / (dst / src)``; each weight is
    rounded to 1/2048 on its own. Along x, OpenCV clamps the position into the image (weight 0
    for the missing neighbour); along y it keeps the unclamped weights and clamps the rows, which
    only matters when upscaling (the two rounded weights need not add up to 2048 there).
    """
    scale = 1.0 / (dst / src)
    pos = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(pos).astype(np.int64)
    frac = (pos - i0).astype(np.float32)
    if clamp:
        low = i0 < 0
        frac[low], i0[low] = 0.0, 0
        high = i0 >= src - 1
        frac[high], i0[high] = 0.0, src - 1
    i1 = np.clip(i0 + 1, 0, src - 1)
    i0 = np.clip(i0, 0, src - 1)
    w1 = np.rint(frac * np.float32(_COEF_SCALE)).astype(np.int32)
    w0 = np.rint((np.float32(1) - frac) * np.float32(_COEF_SCALE)).astype(np.int32)
    return i0, i1, w0, w1


_COEF_SCALE = 2048  # OpenCV's INTER_RESIZE_COEF_SCALE


def resize_bilinear(img: np.ndarray, height: int = RESIZE, width: int = RESIZE) -> np.ndarray:
    """``cv2.resize(img, (width, height))`` (INTER_LINEAR) for HxWxC uint8, bit for bit.

    The integer arithmetic is OpenCV's: an 11-bit fixed-point horizontal pass, then the
    vertical pass of its SIMD path, ``(((b0*(h0>>4))>>16) + ((b1*(h1>>4))>>16) + 2) >> 2``.
    Only two source rows and columns per output pixel are touched, so the cost does not
    depend on the input size (a 24 MP photo costs the same as a 1 MP one).
    """
    h, w = img.shape[:2]
    y0, y1, b0, b1 = _taps(h, height, clamp=False)
    x0, x1, a0, a1 = _taps(w, width, clamp=True)
    a0, a1 = a0[None, :, None], a1[None, :, None]

    def horizontal(rows: np.ndarray) -> np.ndarray:
        rows = rows.astype(np.int32)
        return rows[:, x0] * a0 + rows[:, x1] * a1

    top, bottom = horizontal(img[y0]), horizontal(img[y1])
    b0, b1 = b0[:, None, None], b1[:, None, None]
    out = (((b0 * (top >> 4)) >> 16) + ((b1 * (bottom >> 4)) >> 16) + 2) >> 2
    return np.clip(out, 0, 255).astype(np.uint8)


class MeanError(UsageError):
    """A mean that cannot be used: unknown name, unreadable file, wrong shape, not finite."""


# The authors' mean images ship with the package (ilgnet_cli/data/means, made from their .npy
# files by scripts/package_data.py); ImageNet GoogLeNet was trained with per-channel constants.
MEAN_IMAGES = ("ava1", "ava2")
_MEAN_RANGE = (-1.0, 256.0)  # pixel means live in 0..255; anything else is a corrupt file


@dataclass(frozen=True, eq=False)
class Mean:
    """What is subtracted from the BGR 0-255 input: a 3x256x256 image (cropped and mirrored with
    the input, as Caffe's ``mean_file``) or per-channel constants (Caffe's ``mean_value``).

    ``name`` says where it came from: ``ava1``/``ava2`` (the authors' images), ``imagenet``,
    ``B,G,R`` constants, or ``image`` for a mean image read from a file.
    """

    name: str
    bgr: tuple[float, float, float]  # per-channel average (of the image, when there is one)
    image: np.ndarray | None = None  # 3x256x256 float32 BGR

    @property
    def kind(self) -> str:
        return "image" if self.image is not None else "per-channel"

    def crop(self, top: int, left: int, mirror: bool = False) -> np.ndarray:
        """The CROPxCROP window of the mean (3xHxW, or 3x1x1 constants that broadcast)."""
        if self.image is None:
            return np.asarray(self.bgr, dtype=np.float32)[:, None, None]
        window = self.image[:, top:top + CROP, left:left + CROP]
        return window[:, :, ::-1] if mirror else window

    @property
    def digest(self) -> str:
        """sha256 of what is subtracted (the float32 image, else the three values): two means
        are the same mean exactly when their digests are."""
        import hashlib

        data = self.image if self.image is not None else np.asarray(self.bgr, dtype=np.float32)
        return hashlib.sha256(np.ascontiguousarray(data, dtype=np.float32).tobytes()).hexdigest()

    def describe(self) -> str:
        if self.name in MEAN_IMAGES:
            return f"{self.name} mean image"
        if self.image is not None:
            return f"mean image sha256:{self.digest[:12]} (from a file)"
        values = ",".join(f"{v:g}" for v in self.bgr)
        return f"per-channel {values}" + (" (imagenet)" if self.name == "imagenet" else "")

    def __repr__(self) -> str:
        return f"Mean({self.describe()})"


def _finite_pixels(values: np.ndarray, what: str) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):  # 1e300 becomes inf and is refused below
        values = np.asarray(values, dtype=np.float32)
    if not np.all(np.isfinite(values)) or values.min() < _MEAN_RANGE[0] or values.max() > _MEAN_RANGE[1]:
        raise MeanError(f"{what}: values must be finite pixel means in 0..255")
    return values


def _triple(values: np.ndarray) -> tuple[float, float, float]:
    b, g, r = (float(v) for v in values)  # callers checked there are 3
    return b, g, r


def mean_from_image(image: np.ndarray, name: str = "image") -> Mean:
    """A 3x256x256 BGR mean image (or 3 per-channel values) -> Mean."""
    arr = np.asarray(image)
    if arr.dtype.kind not in "fiu":
        raise MeanError(f"a mean must hold real numbers, not {arr.dtype.str}")
    if arr.shape == (3,):
        vals = _finite_pixels(arr, "mean")
        return Mean(name=name, bgr=_triple(vals))
    if arr.shape != (3, RESIZE, RESIZE):
        raise MeanError(f"a mean image must be 3x{RESIZE}x{RESIZE} (BGR), got shape {tuple(arr.shape)}")
    img = np.ascontiguousarray(_finite_pixels(arr, "mean image"))
    img.setflags(write=False)
    bgr = _triple(img.reshape(3, -1).mean(axis=1, dtype=np.float64))
    return Mean(name=name, bgr=bgr, image=img)


@functools.cache
def shipped_mean(name: str) -> Mean:
    """The authors' AVA1/AVA2 mean image, from the package data."""
    from importlib import resources

    with resources.files("ilgnet_cli").joinpath("data", "means", f"{name}.npz").open("rb") as fh:
        with np.load(fh, allow_pickle=False) as npz:
            return mean_from_image(npz["image"], name)


def channel_mean(bgr: tuple[float, float, float] | list[float], name: str | None = None) -> Mean:
    vals = _finite_pixels(np.asarray(bgr, dtype=np.float64).reshape(-1), "mean")
    if vals.shape != (3,):
        raise MeanError("a per-channel mean needs 3 values (B,G,R)")
    triple = _triple(vals)
    return Mean(name=name or ",".join(repr(v) for v in triple), bgr=triple)


def _read_mean_file(path: Path) -> Mean:
    from ilgnet_cli.model.caffe_import import CaffeModelError, parse_blobproto

    try:
        size = path.stat().st_size
        if size > 64 << 20:
            raise MeanError(f"{path.name}: {size} bytes is far too large for a mean file")
        if path.suffix.lower() == ".binaryproto":
            try:
                blob = parse_blobproto(path.read_bytes())
            except CaffeModelError as exc:
                raise MeanError(f"{path.name}: not a Caffe BlobProto ({exc})") from None
            dims = tuple(d for d in blob.shape if d != 1) if len(blob.shape) > 3 else tuple(blob.shape)
            if int(np.prod(dims)) != blob.data.size:
                raise MeanError(f"{path.name}: mean blob shape {blob.shape} does not match its data")
            return mean_from_image(blob.data.reshape(dims))
        # Memory-mapped first: the header's shape and dtype are checked before any data is read
        # (a 200-byte file may declare 112 GiB).
        arr = np.load(path, mmap_mode="r", allow_pickle=False, encoding="latin1")
        if isinstance(arr, np.lib.npyio.NpzFile):
            raise MeanError(f"{path.name}: give a .npy array, not an .npz archive")
        if arr.shape not in ((3,), (3, RESIZE, RESIZE), (1, 3, RESIZE, RESIZE)):
            raise MeanError(f"{path.name}: a mean must be 3 values or a 3x{RESIZE}x{RESIZE} image, "
                            f"not shape {tuple(arr.shape)[:8]}")
        if arr.dtype.kind not in "fiu":
            raise MeanError(f"{path.name}: a mean must hold real numbers, not {arr.dtype.str}")
        arr = np.array(arr.reshape(arr.shape[-3:]) if arr.ndim == 4 else arr, dtype=np.float64)
    except (OSError, ValueError, EOFError, TypeError) as exc:
        if isinstance(exc, MeanError):
            raise
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise MeanError(f"cannot read mean file {path.name}: {first}") from None
    return mean_from_image(arr)


def parse_mean(value: str | Mean | tuple[float, float, float] | np.ndarray) -> Mean:
    """``ava1``/``ava2`` (the authors' mean images), ``imagenet``, ``B,G,R``, a ``.npy`` or
    ``.binaryproto`` mean file, a 3-tuple or an array -> Mean. Raises MeanError (one line)."""
    if isinstance(value, Mean):
        return value
    if isinstance(value, np.ndarray):
        return mean_from_image(value)
    if isinstance(value, tuple | list):
        return channel_mean(value)
    text = str(value).strip()
    key = text.lower()
    if key in MEAN_IMAGES:
        return shipped_mean(key)
    if key == "imagenet":
        return channel_mean(MEANS_BGR["imagenet"], "imagenet")
    if key.endswith((".npy", ".binaryproto")):
        return _read_mean_file(Path(text).expanduser())
    parts = key.split(",")
    if len(parts) != 3:
        raise MeanError(f"mean must be ava1, ava2, imagenet, B,G,R or a .npy/.binaryproto file (got {text[:80]!r})")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise MeanError(f"mean B,G,R values must be numbers (got {text[:80]!r})") from None
    return channel_mean(values)


def to_blob(resized: np.ndarray, mean: Mean, top: int, left: int, mirror: bool = False) -> np.ndarray:
    """Crop CROPxCROP from a 256x256 RGB uint8 image -> CxHxW float32 BGR minus the mean.

    As Caffe's DataTransformer: the mean image is subtracted at the crop window, and a mirrored
    crop is the mirror of (image - mean) over that window.
    """
    crop = resized[top:top + CROP, left:left + CROP, ::-1].transpose(2, 0, 1)
    blob = crop.astype(np.float32) - mean.crop(top, left)
    return np.ascontiguousarray(blob[:, :, ::-1]) if mirror else blob


def antialias(rgb: np.ndarray, side: int = REFERENCE_SIDE) -> np.ndarray:
    """``rgb`` with its long side brought down to ``side`` by a Lanczos resize (the aspect kept);
    an image already that small is returned as it is (never upscaled)."""
    from PIL import Image

    h, w = rgb.shape[:2]
    if max(h, w) <= side:
        return rgb
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize(size, Image.Resampling.LANCZOS))


class DecodeMode(str, Enum):
    """How a photo becomes the 256x256 image (see the module docstring)."""

    FAST = "fast"  # DCT-scaled JPEG decode to >= 1600 px, then as reference
    REFERENCE = "reference"  # every pixel, anti-aliased to <= 800 px, then the authors' resize
    EXACT = "exact"  # the authors' pipeline: every pixel, INTER_LINEAR to 256
    DRAFT = "draft"  # DCT-scaled to just over 256 px, then INTER_LINEAR (ilgnet 0.2's default)


class Crops(str, Enum):
    """Which 227x227 windows of the 256x256 image the model sees."""

    CENTRE = "centre"  # Caffe's test phase
    MIRROR = "mirror"  # centre and its mirror image (averaged)
    TENCROP = "10crop"  # four corners and centre, each also mirrored (averaged)
    RANDOM = "random"  # training: a random window, mirrored at random


def windows(crops: Crops) -> list[tuple[int, int, bool]]:
    """(top, left, mirror) of each test-time window."""
    c, e = CENTRE, RESIZE - CROP
    if crops is Crops.CENTRE:
        return [(c, c, False)]
    if crops is Crops.MIRROR:
        return [(c, c, False), (c, c, True)]
    if crops is Crops.TENCROP:
        five = [(0, 0), (0, e), (e, 0), (e, e), (c, c)]
        return [(t, left, m) for m in (False, True) for t, left in five]
    raise ValueError("random crops have no fixed windows")


@dataclass(frozen=True)
class Transform:
    """Photo -> model input, as the weights it belongs to expect.

    ``decode`` says how files are decoded (the data layer asks :meth:`decode_request`) and how a
    decoded picture is brought to 256x256 (:meth:`resize`); ``crops`` which windows the model
    sees; ``mean`` what is subtracted. Calling it on a decoded RGB array gives ``(3, 227, 227)``
    for one window, ``(k, 3, 227, 227)`` for k test-time windows.
    """

    mean: Mean
    decode: DecodeMode = DecodeMode.EXACT
    crops: Crops = Crops.CENTRE
    reference_side: int = REFERENCE_SIDE

    def with_(self, **changes: object) -> Transform:
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def faithful(self) -> Transform:
        """The transform a shortcut is checked against: ``reference`` for ``fast``/``draft``."""
        if self.decode in (DecodeMode.FAST, DecodeMode.DRAFT):
            return self.with_(decode=DecodeMode.REFERENCE)
        return self

    @property
    def key(self) -> str:
        """What changes the pixels, for cache keys: ``fast-800``, ``exact``, ``draft``..."""
        if self.decode in (DecodeMode.FAST, DecodeMode.REFERENCE):
            return f"{self.decode.value}-{self.reference_side}"
        return self.decode.value

    def decode_request(self) -> dict[str, int]:
        """Keyword arguments for :func:`ilgnet_cli.data.decode.decode`: how small a JPEG may be
        decoded in the DCT (nothing: every pixel)."""
        if self.decode is DecodeMode.FAST:
            # Twice the reference side: the DCT's own filtering then only touches detail the Lanczos
            # step removes anyway (at 1x, trained weights moved 3x more: benchmarks/bench_fidelity.py).
            return {"long_side": 2 * self.reference_side}
        if self.decode is DecodeMode.DRAFT:
            return {"draft": RESIZE}
        return {}

    def resize(self, rgb: np.ndarray) -> np.ndarray:
        """A decoded RGB image -> the 256x256 image the crops are taken from."""
        if rgb.shape[:2] == (RESIZE, RESIZE) and self.decode is DecodeMode.EXACT:
            return rgb
        if self.decode in (DecodeMode.FAST, DecodeMode.REFERENCE):
            rgb = antialias(rgb, self.reference_side)
        return resize_bilinear(rgb)

    def blobs(self, resized: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """The crops of a 256x256 image, minus the mean: ``(3, H, W)`` or ``(k, 3, H, W)``."""
        if self.crops is Crops.RANDOM:
            if rng is None:
                raise ValueError("random crops need a random generator")
            top, left = (int(v) for v in rng.integers(0, RESIZE - CROP + 1, size=2))
            return to_blob(resized, self.mean, top, left, mirror=bool(rng.integers(0, 2)))
        blobs = [to_blob(resized, self.mean, t, left, m) for t, left, m in windows(self.crops)]
        return blobs[0] if len(blobs) == 1 else np.stack(blobs)

    def __call__(self, rgb: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        """A decoded RGB uint8 image (HxWx3) -> the model input."""
        import torch

        return torch.from_numpy(self.blobs(self.resize(rgb), rng))

    def describe(self) -> str:
        how = {DecodeMode.FAST: f"fast decode (DCT-scaled to >= {2 * self.reference_side} px, Lanczos to "
                                f"{self.reference_side})",
               DecodeMode.REFERENCE: f"full decode, Lanczos to {self.reference_side} px",
               DecodeMode.EXACT: "full decode (the authors' pipeline)",
               DecodeMode.DRAFT: "draft decode (DCT-scaled to >= 256 px)"}[self.decode]
        return (f"{how}, INTER_LINEAR to {RESIZE}x{RESIZE}, {self.crops.value} {CROP}x{CROP} crop"
                f"{'s' if self.crops not in (Crops.CENTRE, Crops.RANDOM) else ''}, BGR minus {self.mean.describe()}")


def preprocess(rgb: np.ndarray, mean: Mean) -> torch.Tensor:
    """The authors' test transform of a decoded RGB image: ``Transform(mean)(rgb)``."""
    return Transform(mean)(rgb)
