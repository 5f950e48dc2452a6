"""Property-based fuzzing of what reads untrusted weight files: the caffemodel reader and the
safetensors metadata path. Every input must give a result or the documented one-line error,
within a time and memory budget (no endless loop, no allocation the bytes cannot justify)."""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import struct
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from caffe_schema import write_caffemodel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ilgnet_cli.model import caffe_import, store
from ilgnet_cli.model.caffe_import import CaffeModelError, LayerMismatchError, caffe_to_state_dict, read_caffemodel

TIME_BUDGET_S = 10.0  # CPU seconds: a loaded machine must not fail the test, an endless loop must
MEMORY_BUDGET = 16 << 20  # bytes traced (numpy included) for inputs of a few KB
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

WORK = Path(tempfile.mkdtemp(prefix="ilgnet-fuzz-"))


@contextlib.contextmanager
def budget():
    """Fail (not hang) past TIME_BUDGET_S of CPU time; measure traced peak memory."""
    def timeout(*_):
        raise TimeoutError(f"took more than {TIME_BUDGET_S} CPU seconds")

    old = signal.signal(signal.SIGPROF, timeout)
    signal.setitimer(signal.ITIMER_PROF, TIME_BUDGET_S)
    tracemalloc.start()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, old)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < MEMORY_BUDGET, f"peak {peak} bytes"


def assert_one_line_message(exc: BaseException) -> None:
    text = str(exc)
    assert text and "\n" not in text and "\r" not in text, repr(text[:300])
    assert len(text) <= 600, len(text)


def tiny_models() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    layers = [("conv", "Convolution", [rng.normal(size=(2, 1, 2, 2)).astype(np.float32), np.ones(2, np.float32)]),
              ("fc", "InnerProduct", [rng.normal(size=(2, 3)).astype(np.float32), np.zeros(2, np.float32)])]
    out = {}
    for variant in ({}, {"v1": True}, {"unpacked": True}, {"double": True}):
        path = WORK / "seed.caffemodel"
        write_caffemodel(path, layers, **variant)
        out[",".join(variant) or "v2"] = path.read_bytes()
    return out


SEEDS = tiny_models()


@functools.cache
def _expected_shapes(layers=None):
    return _real_expected_shapes(layers)


_real_expected_shapes = caffe_import.expected_shapes


def read_hostile(data: bytes) -> None:
    path = WORK / "fuzz.caffemodel"
    path.write_bytes(data)
    with budget():
        try:
            layers = read_caffemodel(path)
        except CaffeModelError as exc:
            assert_one_line_message(exc)
            return
        assert layers and all(isinstance(b.data, np.ndarray) and b.data.size == int(np.prod(b.shape))
                              for layer in layers for b in layer.blobs)
        for trunk in (False, True):
            with pytest.raises(LayerMismatchError) as info:  # no fuzzed file is a whole ILGNet
                caffe_to_state_dict(layers, trunk_only=trunk)
            assert_one_line_message(info.value)


@pytest.fixture(autouse=True)
def _cached_shapes(monkeypatch):
    # Building ILGNet for its shapes takes a second; the mapping logic is what is fuzzed.
    monkeypatch.setattr(caffe_import, "expected_shapes", _expected_shapes)


@FUZZ
@given(st.binary(min_size=1, max_size=2048))
def test_random_bytes(data):
    read_hostile(data)


@FUZZ
@given(st.sampled_from(sorted(SEEDS)), st.data())
def test_mutated_small_caffemodels(seed, data):
    blob = bytearray(SEEDS[seed])
    for _ in range(data.draw(st.integers(1, 6), label="mutations")):
        kind = data.draw(st.sampled_from(["flip", "set", "cut", "insert", "delete", "varint"]), label="kind")
        at = data.draw(st.integers(0, max(len(blob) - 1, 0)), label="at")
        if kind == "flip" and blob:
            blob[at] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "set" and blob:
            blob[at] = data.draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF, 0x2D, 0x41, 0x3A, 0x0A, 0x0B, 0x0F]))
        elif kind == "cut":
            del blob[at:]
        elif kind == "insert":
            blob[at:at] = data.draw(st.binary(min_size=1, max_size=12))
        elif kind == "delete":
            del blob[at:at + data.draw(st.integers(1, 8))]
        elif kind == "varint":  # a length or count set to something huge
            blob[at:at] = bytes([0xFF] * data.draw(st.integers(1, 9))) + b"\x01"
    if not blob:
        blob = bytearray(b"\0")
    read_hostile(bytes(blob))


# --------------------------------------------------------------------------- safetensors

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=20))
tensor_info = st.fixed_dictionaries({}, optional={
    "dtype": st.one_of(st.sampled_from(["F32", "F16", "BF16", "F64", "I32", "BOOL", "U8", "F8_E4M3"]), json_scalars),
    "shape": st.one_of(st.lists(st.integers(-2, 2**40), max_size=5), json_scalars),
    "data_offsets": st.one_of(st.lists(st.integers(-2, 2**40), min_size=2, max_size=2), json_scalars),
})
metadata = st.dictionaries(st.sampled_from(["mean", "mean_bgr", "architecture", "format", "x"]),
                           st.one_of(st.sampled_from(["ava1", "ava2", "image", "channels", "nan,0,0", "1,2,3",
                                                      "ilgnet", "ilgnet-trunk"]), st.text(max_size=30), json_scalars),
                           max_size=5)
headers = st.dictionaries(st.sampled_from(["conv1.7x7_s2.weight", "a", "_mean.image", "b"]), tensor_info, max_size=4)


def write_safetensors(header: bytes, body: bytes, declared: int | None = None) -> Path:
    path = WORK / "fuzz.safetensors"
    size = len(header) if declared is None else declared
    path.write_bytes(struct.pack("<Q", size) + header + body)
    return path


def read_weights_hostile(path: Path) -> None:
    with budget():
        try:
            state, meta = store.read_weights(path)
        except store.WeightsError as exc:
            assert_one_line_message(exc)
            return
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
        try:
            store._meta_mean(meta, path)
        except store.WeightsError as exc:
            assert_one_line_message(exc)


@FUZZ
@given(headers, st.one_of(st.none(), metadata), st.binary(max_size=64))
def test_safetensors_hostile_header(tensors, meta, body):
    header = dict(tensors)
    if meta is not None:
        header["__metadata__"] = meta
    text = json.dumps(header, allow_nan=True).encode()
    read_weights_hostile(write_safetensors(text, body))


@FUZZ
@given(st.binary(max_size=256), st.one_of(st.none(), st.integers(0, 2**64 - 1)))
def test_safetensors_random_bytes(data, declared):
    read_weights_hostile(write_safetensors(data, b"", declared))


# --------------------------------------------------------------------------- structured caffemodels
# Random bytes rarely survive the outer length checks; these files are well-formed down to
# the blobs, whose fields are random (partial records, huge dims, wrong wire types...).


def varint(v: int) -> bytes:
    v &= 2**64 - 1
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
        v >>= 7
        if not v:
            return bytes(out)


def ld(num: int, payload: bytes) -> bytes:
    return varint(num << 3 | 2) + varint(len(payload)) + payload


ints = st.one_of(st.integers(0, 16), st.integers(-2**63, 2**64 - 1))
blob_fields = st.one_of(
    st.tuples(st.integers(1, 4), ints).map(lambda t: varint(t[0] << 3) + varint(t[1])),
    st.binary(max_size=40).map(lambda b: ld(5, b)),
    st.binary(max_size=40).map(lambda b: ld(8, b)),
    st.binary(max_size=12).map(lambda b: b"\x2d" + b),  # unpacked float records, maybe partial
    st.binary(max_size=20).map(lambda b: b"\x41" + b),  # unpacked doubles, maybe partial
    st.lists(ints, max_size=12).map(lambda dims: ld(7, ld(1, b"".join(varint(d) for d in dims)))),
    st.lists(ints, max_size=12).map(lambda dims: ld(7, b"".join(b"\x08" + varint(d) for d in dims))),
    st.binary(max_size=8),  # anything at all
)
blobs = st.lists(blob_fields, max_size=6).map(b"".join)
names = st.sampled_from([b"conv1/7x7_s2", b"loss3/classifier", b"temp_cjy", b"", b"x" * 300, b"a\nb\xff"])
v2_layer = st.tuples(names, st.lists(blobs, max_size=3)).map(
    lambda t: ld(100, ld(1, t[0]) + ld(2, b"Convolution") + b"".join(ld(7, b) for b in t[1])))
v0_layer = st.tuples(names, st.lists(blobs, max_size=2)).map(
    lambda t: ld(1, ld(1, t[0]) + b"".join(ld(50, b) for b in t[1])))
v1_layer = st.tuples(names, st.lists(blobs, max_size=3), st.lists(v0_layer, max_size=2)).map(
    lambda t: ld(2, ld(4, t[0]) + b"\x28\x04" + b"".join(ld(6, b) for b in t[1]) + b"".join(t[2])))
models = st.lists(st.one_of(v2_layer, v1_layer), min_size=1, max_size=4).map(b"".join)


@FUZZ
@given(models)
def test_structured_caffemodels(data):
    read_hostile(data)
