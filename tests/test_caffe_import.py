from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from caffe_schema import write_caffemodel

from ilgnet_cli.model import store
from ilgnet_cli.model.caffe_import import CaffeModelError, caffe_to_state_dict, read_caffemodel
from ilgnet_cli.model.ilgnet import TRUNK_LAYERS, ILGNet


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ilgnet_cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in proc.stderr.replace("\n", " "), proc.stderr


def tiny_layers(rng):
    def arr(*shape):
        return rng.normal(size=shape).astype(np.float32)

    return [("conv", "Convolution", [arr(4, 3, 3, 3), arr(4)]), ("fc", "InnerProduct", [arr(2, 16), arr(2)])]


@pytest.mark.parametrize("variant", [{}, {"v1": True}, {"unpacked": True}, {"double": True}])
def test_reader_decodes_every_blob_encoding(tmp_path, variant):
    layers = tiny_layers(np.random.default_rng(1))
    path = tmp_path / "tiny.caffemodel"
    write_caffemodel(path, layers, **variant)
    got = read_caffemodel(path)
    assert [layer.name for layer in got] == ["conv", "fc"]
    for (_name, _, arrays), layer in zip(layers, got, strict=True):
        assert len(layer.blobs) == 2
        for arr, blob in zip(arrays, layer.blobs, strict=True):
            np.testing.assert_array_equal(blob.data.reshape(arr.shape), arr.astype(np.float32))
            # V1 / unpacked writers store legacy 4-D num/channels/height/width shapes.
            assert blob.legacy_shape == bool(variant.get("v1") or variant.get("unpacked"))
    if variant.get("v1") or variant.get("unpacked"):
        assert got[0].type == "Convolution" and got[1].type == "InnerProduct"


@pytest.mark.slow
def test_import_rejects_truncated_caffemodel(tmp_path, caffemodels):
    cut = tmp_path / "cut.caffemodel"
    with caffemodels["v2"].open("rb") as src, cut.open("wb") as dst:
        dst.write(src.read(50_000_000))
    with pytest.raises(CaffeModelError, match="truncated"):
        read_caffemodel(cut)
    proc = run_cli("weights", "import", str(cut))
    assert_one_line_error(proc, "truncated")
    assert store.installed_all() == []


def test_import_rejects_other_network(tmp_path):
    path = tmp_path / "two_layer.caffemodel"
    write_caffemodel(path, tiny_layers(np.random.default_rng(2)))
    proc = run_cli("weights", "import", str(path))
    assert_one_line_error(proc, "does not match ILGNet", "missing 27 layer(s)", "conv1/7x7_s2", "unexpected")


def test_import_reports_shape_mismatch(tmp_path, caffemodels):
    layers = [(n, t, a) for n, t, a in caffemodels["layers"]]
    name, kind, (w, b) = layers[0]
    layers[0] = (name, kind, [w[:32], b[:32]])
    with pytest.raises(ValueError, match=r"shape mismatch in 1: conv1/7x7_s2 \(expected 64x3x7x7"):
        caffe_to_state_dict([_layer(*entry) for entry in layers])


def _layer(name, kind, arrays):
    from ilgnet_cli.model.caffe_import import Blob, CaffeLayer

    return CaffeLayer(name, kind, [Blob(a.reshape(-1), a.shape, False) for a in arrays])


@pytest.mark.parametrize("content", [b"name: \"GoogleNet\"\nlayer {\n", b"hello, this is just a text file\n" * 20,
                                     b""])
@pytest.mark.slow
def test_import_rejects_non_caffemodel(tmp_path, content):
    path = tmp_path / "notes.caffemodel"
    path.write_bytes(content)
    proc = run_cli("weights", "import", str(path))
    assert_one_line_error(proc, "notes.caffemodel")


def test_import_missing_file_is_one_line_error(tmp_path):
    assert_one_line_error(run_cli("weights", "import", str(tmp_path / "nope.caffemodel")), "no such file")


def test_googlenet_trunk_import(tmp_path, caffemodels):
    """bvlc_googlenet.caffemodel: the shared trunk is taken, the ImageNet heads ignored."""
    rng = np.random.default_rng(3)
    trunk = [entry for entry in caffemodels["layers"] if entry[0] in TRUNK_LAYERS]
    extra = [
        ("inception_4b/1x1", "Convolution", [rng.normal(size=(160, 512, 1, 1)).astype(np.float32),
                                             np.zeros(160, np.float32)]),
        ("loss1/fc", "InnerProduct", [rng.normal(size=(1024, 2048)).astype(np.float32), np.zeros(1024, np.float32)]),
        ("loss3/classifier", "InnerProduct", [rng.normal(size=(1000, 1024)).astype(np.float32),
                                              np.zeros(1000, np.float32)]),
    ]
    path = tmp_path / "bvlc_googlenet.caffemodel"
    write_caffemodel(path, trunk + extra, v1=True)
    rec = store.import_caffemodel(path, "bvlc-googlenet")
    assert rec.architecture == store.ARCH_TRUNK
    assert rec.mean_bgr == (104.0, 117.0, 123.0)
    state, meta = store.read_weights(rec.path)
    assert meta["ignored_layers"] == "3"
    assert {k.rsplit(".", 1)[0].replace(".", "/") for k in state} == set(TRUNK_LAYERS)
    np.testing.assert_array_equal(state["inception_3b.5x5.weight"].numpy(),
                                  dict((n, a) for n, _, a in trunk)["inception_3b/5x5"][0])
    # A trunk is for training only: scoring with it is refused with a clear message.
    with pytest.raises(store.WeightsError, match="for training"):
        store.load_model("bvlc-googlenet")
    model = ILGNet()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith(("temp", "loss1.classifier")) for k in missing)


@pytest.mark.slow
def test_corrupt_safetensors_gives_clear_error(caffemodels):
    rec = store.import_caffemodel(caffemodels["v2"], "rand", "ava1")
    assert store.verify("rand").ok
    with rec.path.open("r+b") as fh:
        fh.truncate(rec.size // 2)
    result = store.verify("rand")
    assert not result.ok and "sha256 mismatch" in result.message
    with pytest.raises(store.WeightsError, match="not a valid safetensors file"):
        store.load_model("rand")
    proc = run_cli("score", "--weights", "rand", "--device", "cpu", str(rec.path))
    assert_one_line_error(proc, "not a valid safetensors file")


@pytest.mark.slow
def test_imported_weights_round_trip_exactly(caffemodels):
    rec = store.import_caffemodel(caffemodels["v1"], "rand-v1", "ava2")
    loaded = store.load_model("rand-v1")
    # --mean ava2 is the authors' AVA2 mean image (shipped with ilgnet), not its channel averages.
    assert loaded.mean.name == "ava2" and loaded.mean.image is not None
    np.testing.assert_allclose(loaded.mean.bgr, (90.0504, 98.5853, 107.5091), atol=1e-4)
    sd = loaded.model.state_dict()
    for name, _, (w, b) in caffemodels["layers"]:
        key = name.replace("/", ".")
        assert torch.equal(sd[f"{key}.weight"], torch.from_numpy(w))
        assert torch.equal(sd[f"{key}.bias"], torch.from_numpy(b))
    _, meta = store.read_weights(rec.path)
    assert meta["architecture"] == "ilgnet" and meta["labels"] == "low,high" and meta["input_size"] == "227"
    assert len(meta["source_sha256"]) == 64 and meta["imported_at"]


@pytest.mark.slow
def test_import_memory_stays_near_twice_the_file(caffemodels, tmp_path):
    """Peak RSS growth of a whole import (read, map, write safetensors) vs the caffemodel size.

    Measured: 2.0x (the float blobs, 1x, plus the memory-mapped file's pages, 1x, which the
    kernel can drop at any time)."""
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the (large) parent across exec.
    script = (
        "import os, sys\n"
        "from ilgnet_cli.model import store\n"
        "import torch, numpy, safetensors.numpy\n"
        "def kb(key):\n"
        "    return next(int(x.split()[1]) for x in open('/proc/self/status') if x.startswith(key))\n"
        "base = kb('VmHWM:')\n"
        "store.import_caffemodel(sys.argv[1], 'mem', 'ava1')\n"
        "print((kb('VmHWM:') - base) * 1024 / os.path.getsize(sys.argv[1]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(caffemodels["v2"])], capture_output=True, text=True,
                          env={**os.environ, "ILGNET_HOME": str(tmp_path / "home")}, timeout=600)
    assert proc.returncode == 0, proc.stderr
    ratio = float(proc.stdout.strip().splitlines()[-1])
    print(f"\nimport peak memory growth: {ratio:.2f}x the caffemodel")
    assert ratio < 2.3
