"""Read Caffe ``.caffemodel`` files without Caffe, protoc or a full protobuf parse.

The file is memory-mapped and walked at the protobuf wire level; only the fields we need
(layer names, types and parameter blobs) are decoded, and each blob's floats are copied
straight out of the map with numpy. Peak memory is therefore the blobs themselves (1x the
file) plus the page cache, never a Python object per float.

Supported: NetParameter ``layer`` (V2, field 100) and ``layers`` (V1, field 2, the format
ILGNet's authors trained with, including the V0 ``layer`` nested inside V1); BlobProto with
``shape`` or legacy num/channels/height/width; packed and unpacked ``data``; ``double_data``.
Field numbers follow BVLC caffe.proto.
"""

from __future__ import annotations

import mmap
import struct
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ilgnet_cli.errors import IlgnetError
from ilgnet_cli.model.ilgnet import TRUNK_LAYERS, ILGNet, torch_module_name
from ilgnet_cli.runtime.text import clip


class CaffeModelError(IlgnetError, ValueError):
    """The file is not a readable caffemodel (truncated, not protobuf, no layers)."""


class LayerMismatchError(IlgnetError, ValueError):
    """The caffemodel is a different network than the one asked for."""

    def __init__(self, missing: list[str], extra: list[str], mismatched: list[str]) -> None:
        self.missing, self.extra, self.mismatched = missing, extra, mismatched
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} layer(s): {_short(missing)}")
        if mismatched:
            parts.append(f"shape mismatch in {len(mismatched)}: {_short(mismatched)}")
        if extra:
            parts.append(f"{len(extra)} unexpected layer(s) with weights: {_short(extra)}")
        super().__init__("caffemodel does not match ILGNet: " + "; ".join(parts))


def _short(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(clip(n, 60) for n in names[:limit])
    return shown + (f", ... (+{len(names) - limit} more)" if len(names) > limit else "")



# Wire types.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5

# Limits far above any real network (GoogLeNet: ~150 layers, 4-D blobs, 1-3 blobs a layer)
# that keep a hostile file from costing more than its own size in memory and time.
MAX_DIMS = 8
MAX_LAYERS = 10_000
MAX_BLOBS = 64  # per layer
MAX_CHUNKS = 4096  # separate data fields in one blob (writers emit one run)
MAX_NAME = 256  # bytes of a layer name or type kept; longer ones cannot be ILGNet's
MAX_FIELDS = 1_000_000  # fields decoded one by one in a file (ILGNet: ~3000); bounds the time
_FIELDS_LEFT: ContextVar[list[int] | None] = ContextVar("_FIELDS_LEFT", default=None)
_INT32_MAX = 2**31 - 1

# V1LayerParameter.LayerType values that carry parameters (caffe.proto).
V1_LAYER_TYPES = {4: "Convolution", 14: "InnerProduct", 39: "Deconvolution"}


@dataclass
class Blob:
    data: np.ndarray  # float32, flat
    shape: tuple[int, ...]
    legacy_shape: bool  # shape came from num/channels/height/width


@dataclass
class CaffeLayer:
    name: str
    type: str
    blobs: list[Blob] = field(default_factory=list)


def _varint(buf: mmap.mmap | bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise CaffeModelError("truncated file (a varint runs past the end)")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise CaffeModelError("not a caffemodel (malformed varint)")


def _next_field(buf: mmap.mmap | bytes, pos: int, end: int) -> tuple[int, int, int, int, int]:
    """Decode one field at ``pos``: (number, wire type, value or payload start, payload end, next pos)."""
    left = _FIELDS_LEFT.get()
    if left is not None:
        left[0] -= 1
        if left[0] < 0:
            raise CaffeModelError(f"not a caffemodel (more than {MAX_FIELDS} fields)")
    key, pos = _varint(buf, pos, end)
    num, wt = key >> 3, key & 7
    if num == 0:
        raise CaffeModelError("not a caffemodel (field number 0)")
    if wt == _VARINT:
        val, pos = _varint(buf, pos, end)
        return num, wt, val, pos, pos
    if wt == _LEN:
        length, pos = _varint(buf, pos, end)
        width = length
    elif wt in (_I32, _I64):
        width = 4 if wt == _I32 else 8
    else:
        raise CaffeModelError(f"not a caffemodel (invalid protobuf wire type {wt})")
    if pos + width > end:
        raise CaffeModelError("truncated file (a field runs past the end)")
    return num, wt, pos, pos + width, pos + width


def _fields(buf: mmap.mmap | bytes, pos: int, end: int):
    """Yield (field number, wire type, value or payload start, payload end) for one message."""
    while pos < end:
        num, wt, a, b, pos = _next_field(buf, pos, end)
        yield num, wt, a, b


def _unpacked_run(buf: mmap.mmap | bytes, pos: int, end: int, tag: int, width: int) -> int:
    """Number of consecutive unpacked records ``tag`` + ``width`` bytes starting at ``pos``.

    Old Caffe writers emit one tag per float; walking 150M of them in Python would take
    minutes, so the run is found with one vectorised comparison of the tag column.
    """
    stride = width + 1
    n = (end - pos) // stride
    if n == 0:
        return 0
    tags = np.frombuffer(buf, dtype=np.uint8, count=n * stride, offset=pos)[::stride]
    bad = np.flatnonzero(tags != tag)
    return int(bad[0]) if bad.size else n


def _records(buf: mmap.mmap | bytes, pos: int, count: int, width: int, dtype: str) -> np.ndarray:
    raw = np.frombuffer(buf, dtype=np.uint8, count=count * (width + 1), offset=pos)
    return raw.reshape(count, width + 1)[:, 1:].copy().view(dtype).reshape(-1)


def _parse_blob(buf: mmap.mmap | bytes, pos: int, end: int) -> Blob:
    legacy = [0, 0, 0, 0]
    dims: list[int] | None = None
    chunks: list[np.ndarray] = []
    while pos < end:
        if len(chunks) > MAX_CHUNKS:
            raise CaffeModelError(f"corrupt blob (data split into more than {MAX_CHUNKS} pieces)")
        key, _ = _varint(buf, pos, end)
        # A run of unpacked records (field 5 data / field 8 double_data). n == 0 (a partial
        # record at the end, or the tag spelt as a longer varint) falls through to the
        # one-field path below, which either decodes it or fails: the loop always advances.
        if key in (0x2D, 0x41):
            width, dtype = (4, "<f4") if key == 0x2D else (8, "<f8")
            n = _unpacked_run(buf, pos, end, key, width)
            if n:
                chunks.append(_as_float32(_records(buf, pos, n, width, dtype), copy=False))
                pos += n * (width + 1)
                continue
        num, wt, a, b, pos = _next_field(buf, pos, end)
        if 1 <= num <= 4 and wt == _VARINT:
            legacy[num - 1] = a
        elif num in (5, 8) and wt in (_LEN, _I32, _I64):
            width, dtype = (4, "<f4") if num == 5 else (8, "<f8")
            if wt != _LEN and wt != (_I32 if num == 5 else _I64):
                raise CaffeModelError(f"corrupt blob (field {num} has wire type {wt})")
            if (b - a) % width:
                raise CaffeModelError("corrupt blob (packed data length not a multiple of the item size)")
            chunks.append(_as_float32(np.frombuffer(buf, dtype=dtype, count=(b - a) // width, offset=a)))
        elif num == 7 and wt == _LEN:
            dims = _parse_shape(buf, a, b)
    if len(chunks) == 1:
        data = chunks[0]
    else:
        data = np.concatenate(chunks) if chunks else np.empty(0, np.float32)
    if dims is not None:
        return Blob(data=data, shape=_check_shape(dims, data.size, legacy=False), legacy_shape=False)
    return Blob(data=data, shape=_check_shape(legacy, data.size, legacy=True), legacy_shape=True)


def _as_float32(values: np.ndarray, *, copy: bool = True) -> np.ndarray:
    """float32 values, a copy unless ``copy=False`` (views into the map must not outlive it).

    A double beyond float32's range becomes inf, quietly: the store refuses non-finite weights."""
    with np.errstate(over="ignore", invalid="ignore"):
        return values.astype(np.float32, copy=copy)


def _check_shape(dims: list[int], size: int, *, legacy: bool) -> tuple[int, ...]:
    """``dims`` if they describe exactly ``size`` values; any other shape is a corrupt blob.

    BlobShape dims are positive (a parameter blob is never empty) and each fits the data;
    legacy num/channels/height/width are int32 (a negative one arrives as a 10-byte varint)
    and may be 0 only for an empty blob.
    """
    low, high = (0, _INT32_MAX) if legacy else (1, max(size, 1))
    bad = [d for d in dims if not low <= d <= high]
    if bad:
        raise CaffeModelError(f"corrupt blob: dimension {clip(str(bad[0]), 24)} is impossible for {size} values")
    product = 1
    for d in dims:
        product *= d
        if product > size:
            break
    if product != size:
        shown = clip("x".join(map(str, dims)), 60)
        raise CaffeModelError(f"corrupt blob: shape {shown} does not hold the {size} values of its data")
    return tuple(dims)


def _parse_shape(buf: mmap.mmap | bytes, pos: int, end: int) -> list[int]:
    dims: list[int] = []
    for num, wt, a, b in _fields(buf, pos, end):
        if num != 1:
            continue
        if wt == _VARINT:
            dims.append(a)
        elif wt == _LEN:  # packed
            p = a
            while p < b and len(dims) <= MAX_DIMS:
                v, p = _varint(buf, p, b)
                dims.append(v)
        if len(dims) > MAX_DIMS:
            raise CaffeModelError(f"corrupt blob (more than {MAX_DIMS} dims in its shape)")
    return dims


def _parse_layer(buf: mmap.mmap | bytes, pos: int, end: int, version: int) -> CaffeLayer:
    # (name, type, blobs) field numbers: V2 LayerParameter, V1LayerParameter, V0LayerParameter.
    name_f, type_f, blobs_f = {2: (1, 2, 7), 1: (4, 5, 6), 0: (1, 2, 50)}[version]
    layer = CaffeLayer(name="", type="")
    for num, wt, a, b in _fields(buf, pos, end):
        if num == name_f and wt == _LEN:
            layer.name = _text(buf, a, b)
        elif num == type_f and wt == _LEN:
            layer.type = _text(buf, a, b)
        elif num == type_f and wt == _VARINT:
            layer.type = V1_LAYER_TYPES.get(a, f"V1:{a}")
        elif num == blobs_f and wt == _LEN:
            layer.blobs.append(_parse_blob(buf, a, b))
        elif version == 1 and num == 1 and wt == _LEN:  # V0 layer nested in a V1 connection
            inner = _parse_layer(buf, a, b, 0)
            layer.name = layer.name or inner.name
            layer.type = layer.type or inner.type
            layer.blobs.extend(inner.blobs)
        if len(layer.blobs) > MAX_BLOBS:
            raise CaffeModelError(f"not a caffemodel (a layer with more than {MAX_BLOBS} blobs)")
    return layer


def _text(buf: mmap.mmap | bytes, a: int, b: int) -> str:
    # A longer name cannot be one we look for; the marker keeps a cut name from matching one.
    text = bytes(buf[a:min(b, a + MAX_NAME)]).decode("utf-8", "replace")
    return text + "..." if b - a > MAX_NAME else text


def read_caffemodel(path: str | Path) -> list[CaffeLayer]:
    """Every layer of a binary caffemodel (name, type, parameter blobs), in file order."""
    path = Path(path)
    size = path.stat().st_size
    shown = clip(path.name)
    if size == 0:
        raise CaffeModelError(f"{shown}: empty file")
    with path.open("rb") as fh:
        head = fh.read(64).lstrip()
        if head[:5] in (b"name:", b"layer", b"input") or head[:1] == b"#":
            raise CaffeModelError(f"{shown}: a text prototxt, not a binary caffemodel")
        buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    budget = _FIELDS_LEFT.set([MAX_FIELDS])
    try:
        layers: list[CaffeLayer] = []
        for num, wt, a, b in _fields(buf, 0, size):
            if len(layers) >= MAX_LAYERS:
                raise CaffeModelError(f"not a caffemodel (more than {MAX_LAYERS} layers)")
            if num == 100 and wt == _LEN:
                layers.append(_parse_layer(buf, a, b, 2))
            elif num == 2 and wt == _LEN:
                layers.append(_parse_layer(buf, a, b, 1))
    except (CaffeModelError, struct.error, IndexError) as exc:
        raise CaffeModelError(f"{shown}: {clip(str(exc), 200)}") from None
    finally:
        _FIELDS_LEFT.reset(budget)
        # numpy views into the map were copied, so closing is safe.
        buf.close()
    if not layers:
        raise CaffeModelError(f"{shown}: not a caffemodel (no layers found)")
    return layers


def _strip_leading_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    i = 0
    while i < len(shape) - 1 and shape[i] == 1:
        i += 1
    return shape[i:]


def _fits(blob: Blob, expected: tuple[int, ...]) -> bool:
    if blob.shape == expected:
        return True
    # V1 blobs are always 4-D: an InnerProduct weight is (1, 1, out, in), a bias (1, 1, 1, out).
    return _strip_leading_ones(blob.shape) == _strip_leading_ones(expected)


def expected_shapes(layers: tuple[str, ...] | None = None) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Caffe layer name -> (weight shape, bias shape) of ILGNet, optionally only ``layers``."""
    model = ILGNet()
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    for name, m in model.parameterised_layers():
        assert m.bias is not None, name  # every ILGNet layer has a bias (Caffe's bias_term)
        shapes[name] = (tuple(m.weight.shape), tuple(m.bias.shape))
    if layers is not None:
        shapes = {k: v for k, v in shapes.items() if k in layers}
    return shapes


def caffe_to_state_dict(
    layers: list[CaffeLayer], *, trunk_only: bool = False
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Map caffemodel layers onto ILGNet parameter names.

    Every expected layer must be present with matching shapes, else
    :class:`LayerMismatchError` lists what is missing, extra and mismatched. With
    ``trunk_only`` (ImageNet GoogLeNet) only the shared trunk is taken and the rest of the
    file is ignored; returns the state dict and the names of ignored layers.
    """
    expected = expected_shapes(TRUNK_LAYERS if trunk_only else None)
    found = {layer.name: layer for layer in layers if layer.blobs}
    missing = [n for n in expected if n not in found]
    extra = [n for n in found if n not in expected]
    mismatched = []
    state: dict[str, np.ndarray] = {}
    for name, (w_shape, b_shape) in expected.items():
        layer = found.get(name)
        if layer is None:
            continue
        if len(layer.blobs) != 2 or not (_fits(layer.blobs[0], w_shape) and _fits(layer.blobs[1], b_shape)):
            got = " + ".join("x".join(map(str, b.shape)) for b in layer.blobs)
            want = "x".join(map(str, w_shape)) + " + " + "x".join(map(str, b_shape))
            mismatched.append(f"{name} (expected {want}, found {got})")
            continue
        key = torch_module_name(name)
        state[f"{key}.weight"] = layer.blobs[0].data.reshape(w_shape)
        state[f"{key}.bias"] = layer.blobs[1].data.reshape(b_shape)
    if missing or mismatched or (extra and not trunk_only):
        raise LayerMismatchError(missing, [] if trunk_only else extra, mismatched)
    return state, extra if trunk_only else []


def parse_blobproto(data: bytes) -> Blob:
    """A serialised BlobProto (a Caffe ``mean.binaryproto``), with the same checks as a caffemodel's blobs."""
    return _parse_blob(data, 0, len(data))
