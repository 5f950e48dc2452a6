"""The one preprocessing path shared by scoring, evaluation and training.

The authors built their 256x256 LMDB with Caffe's ``convert_imageset`` (OpenCV decode,
``cv::resize`` with the default bilinear interpolation, no aspect preservation) and fed the
net a 227x227 crop of it, BGR, 0-255, minus the mean. We reproduce that:

1. decode (``ilgnet_cli.decode``), EXIF orientation applied, any mode -> 8-bit RGB;
2. resize to 256x256 exactly as ``cv2.resize(..., INTER_LINEAR)`` does (half-pixel centres,
   two taps, no antialiasing, OpenCV's fixed-point rounding: bit-identical uint8 output);
3. centre crop 227 at offset (256 - 227) // 2 = 14, as Caffe's test-phase crop;
4. RGB -> BGR, float32, minus the per-channel mean that belongs to the weights.

Training replaces step 3 with a random crop and a random horizontal mirror.
"""

from __future__ import annotations

import numpy as np
import torch

RESIZE = 256
CROP = 227
# Per-channel (B, G, R) means of the authors' mean images (shared/ilgnet/mean/*.npy).
MEANS_BGR: dict[str, tuple[float, float, float]] = {
    "ava1": (91.0018, 99.4639, 107.8456),
    "ava2": (90.0504, 98.5853, 107.5091),
    # ImageNet mean of bvlc_googlenet (ilsvrc_2012_mean, per channel).
    "imagenet": (104.0, 117.0, 123.0),
}
# Bumped whenever the pixels fed to the model, or what the cache stores with a score, change
# (part of the score-cache key). 2: cached entries carry the sharpness for best-of-burst;
# 3: sharpness measured on every second pixel.
PREPROCESS_VERSION = 3


def _taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and 11-bit fixed-point weights of OpenCV's INTER_LINEAR along one axis.

    Positions are computed in float32 as OpenCV does; weights are rounded to 1/2048.
    """
    pos = ((np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5).astype(np.float32)
    i0 = np.floor(pos).astype(np.int64)
    frac = (pos - i0).astype(np.float32)
    low = i0 < 0
    frac[low], i0[low] = 0.0, 0
    high = i0 >= src - 1
    frac[high], i0[high] = 0.0, src - 1
    i1 = np.minimum(i0 + 1, src - 1)
    w1 = np.rint(frac * _COEF_SCALE).astype(np.int32)
    w0 = np.rint((1 - frac) * _COEF_SCALE).astype(np.int32)
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
    y0, y1, b0, b1 = _taps(h, height)
    x0, x1, a0, a1 = _taps(w, width)
    a0, a1 = a0[None, :, None], a1[None, :, None]

    def horizontal(rows: np.ndarray) -> np.ndarray:
        rows = rows.astype(np.int32)
        return rows[:, x0] * a0 + rows[:, x1] * a1

    top, bottom = horizontal(img[y0]), horizontal(img[y1])
    b0, b1 = b0[:, None, None], b1[:, None, None]
    out = (((b0 * (top >> 4)) >> 16) + ((b1 * (bottom >> 4)) >> 16) + 2) >> 2
    return np.clip(out, 0, 255).astype(np.uint8)


def parse_mean(value: str | tuple[float, float, float] | np.ndarray) -> tuple[float, float, float]:
    """``ava1``/``ava2``/``imagenet``, ``B,G,R``, a 3-tuple, or a CxHxW mean image -> (B, G, R)."""
    if isinstance(value, np.ndarray):
        arr = value.astype(np.float64)
        if arr.ndim == 3 and arr.shape[0] == 3:
            return tuple(float(v) for v in arr.reshape(3, -1).mean(axis=1))  # type: ignore[return-value]
        if arr.shape == (3,):
            return tuple(float(v) for v in arr)  # type: ignore[return-value]
        raise ValueError(f"mean array must be 3xHxW or 3 values, got shape {arr.shape}")
    if isinstance(value, tuple):
        if len(value) != 3:
            raise ValueError("mean needs 3 values (B,G,R)")
        return tuple(float(v) for v in value)  # type: ignore[return-value]
    key = value.strip().lower()
    if key in MEANS_BGR:
        return MEANS_BGR[key]
    parts = key.split(",")
    if len(parts) != 3:
        raise ValueError(f"mean must be one of {', '.join(MEANS_BGR)} or B,G,R (got {value!r})")
    try:
        return tuple(float(p) for p in parts)  # type: ignore[return-value]
    except ValueError:
        raise ValueError(f"mean B,G,R values must be numbers (got {value!r})") from None


def load_mean_file(path: str) -> tuple[float, float, float]:
    """Per-channel mean of a Caffe mean .npy (3x256x256 BGR; Python 2 headers are fine)."""
    arr = np.load(path, allow_pickle=False, encoding="latin1")
    return parse_mean(arr)


def to_blob(resized: np.ndarray, mean_bgr: tuple[float, float, float], top: int, left: int,
            mirror: bool = False) -> np.ndarray:
    """Crop CROPxCROP from a 256x256 RGB uint8 image -> CxHxW float32 BGR minus mean."""
    crop = resized[top:top + CROP, left:left + CROP, ::-1]
    if mirror:
        crop = crop[:, ::-1]
    blob = crop.transpose(2, 0, 1).astype(np.float32)
    blob -= np.asarray(mean_bgr, dtype=np.float32)[:, None, None]
    return blob


def preprocess(rgb: np.ndarray, mean_bgr: tuple[float, float, float]) -> torch.Tensor:
    """Decoded RGB uint8 image (HxWx3) -> model input (3, 227, 227), deterministic centre crop."""
    offset = (RESIZE - CROP) // 2
    return torch.from_numpy(to_blob(resize_bilinear(rgb), mean_bgr, offset, offset))


def preprocess_train(rgb: np.ndarray, mean_bgr: tuple[float, float, float],
                     rng: np.random.Generator) -> torch.Tensor:
    """Training variant: random 227 crop of the 256x256 image and a random mirror (Caffe's)."""
    resized = rgb if rgb.shape[:2] == (RESIZE, RESIZE) else resize_bilinear(rgb)
    top, left = (int(v) for v in rng.integers(0, RESIZE - CROP + 1, size=2))
    return torch.from_numpy(to_blob(resized, mean_bgr, top, left, mirror=bool(rng.integers(0, 2))))
