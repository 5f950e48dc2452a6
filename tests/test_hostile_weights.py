"""Hostile inputs to the caffemodel reader and the weights store: each must end in one line, fast.

Reading runs in a subprocess under an address-space-independent data limit (RLIMIT_DATA), so
a reader that loops or balloons fails the test instead of taking the machine down.
"""

from __future__ import annotations

import json
import math
import os
import resource
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ilgnet_cli.cli import app
from ilgnet_cli.model import store
from ilgnet_cli.photos.cache import FileKey, ScoreCache

runner = CliRunner()
DATA_LIMIT = 1_600_000_000  # importing torch alone takes ~0.8 GB of data segment


def varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def ld(field: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def run_limited(args: list[str], timeout: float = 60, data_limit: int = DATA_LIMIT) -> subprocess.CompletedProcess:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (data_limit, data_limit))

    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, preexec_fn=limit,
                          env={**os.environ})


READ_SCRIPT = (
    "import sys\n"
    "from ilgnet_cli.model.caffe_import import CaffeModelError, read_caffemodel\n"
    "def kb():\n"
    "    return next(int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('VmHWM:'))\n"
    "base = kb()\n"
    "try:\n"
    "    read_caffemodel(sys.argv[1])\n"
    "    print('OK')\n"
    "except CaffeModelError as exc:\n"
    "    print('ERR', exc)\n"
    "print('GROWTH_KB', kb() - base)\n"
)


def read_in_subprocess(path) -> tuple[str, int]:
    proc = run_limited([sys.executable, "-c", READ_SCRIPT, str(path)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    growth = int(lines[-1].split()[1])
    return "\n".join(lines[:-1]), growth * 1024


def cli_import(path, *extra: str, data_limit: int = DATA_LIMIT) -> subprocess.CompletedProcess:
    return run_limited([sys.executable, "-m", "ilgnet_cli", "weights", "import", str(path), *extra],
                       timeout=300, data_limit=data_limit)


def assert_one_line(text: str, *needles: str, limit: int = 400) -> None:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text[:2000]
    assert "Traceback" not in text
    assert len(lines[0]) <= limit, f"{len(lines[0])} chars: {lines[0][:300]}"
    for needle in needles:
        assert needle in lines[0], lines[0]


def assert_cli_one_line(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0, proc.stdout
    assert_one_line(proc.stderr, *needles)


# --------------------------------------------------------------------------- A: endless loops


@pytest.mark.parametrize("payload", [
    b"\x2d\x00",  # a trailing partial unpacked float record (the review's 7-byte file)
    b"\x41\x00\x00\x00",  # the same for an unpacked double
    b"\xad\x00\x00\x00\x00\x00",  # tag 0x2D written as a two-byte varint
])
@pytest.mark.slow
def test_partial_fixed_record_in_blob_fails_fast(tmp_path, payload):
    path = tmp_path / "x.caffemodel"
    path.write_bytes(ld(100, ld(7, payload)))
    message, growth = read_in_subprocess(path)
    assert message.startswith("ERR x.caffemodel:"), message
    assert_one_line(message)
    assert growth < 50e6


def test_review_seven_byte_file_cli(tmp_path):
    path = tmp_path / "x.caffemodel"
    path.write_bytes(b"\xa2\x06\x04\x3a\x02\x2d\x00")
    assert_cli_one_line(cli_import(path, "--name", "t"), "x.caffemodel", "truncated")
    assert store.installed_all() == []


# --------------------------------------------------------------------------- B: huge counts


def test_twenty_million_dims_are_refused_in_bounded_memory(tmp_path):
    path = tmp_path / "dims.caffemodel"
    shape = ld(1, b"\x01" * 20_000_000)  # packed BlobShape.dim: 20M dims of 1
    path.write_bytes(ld(100, ld(1, b"conv") + ld(7, ld(7, shape))))
    message, growth = read_in_subprocess(path)
    assert message.startswith("ERR"), message
    assert_one_line(message, "dims")
    assert growth < 100e6, growth


@pytest.mark.slow
@pytest.mark.parametrize("dims", [[0], [2**40, 2**40], [2**63, 2], [-1 & (2**64 - 1)], [3, 0, 5]])
def test_absurd_dims_are_refused(tmp_path, dims):
    path = tmp_path / "dims.caffemodel"
    shape = ld(1, b"".join(varint(d) for d in dims))
    path.write_bytes(ld(100, ld(7, ld(7, shape) + ld(5, b"\0" * 8))))
    message, _ = read_in_subprocess(path)
    assert message.startswith("ERR"), message
    assert_one_line(message)


def test_huge_legacy_dims_are_refused(tmp_path):
    path = tmp_path / "legacy.caffemodel"
    blob = b"".join(varint(f << 3) + varint(v) for f, v in ((1, 2**63), (2, 2**63), (3, 1), (4, 1)))
    path.write_bytes(ld(2, ld(6, blob)))
    message, _ = read_in_subprocess(path)
    assert message.startswith("ERR"), message
    assert_one_line(message)


def test_many_tiny_layers_are_refused_in_bounded_memory(tmp_path):
    path = tmp_path / "layers.caffemodel"
    path.write_bytes(ld(100, b"") * 7_000_000)  # 21 MB of empty layers
    message, growth = read_in_subprocess(path)
    assert message.startswith("ERR"), message
    assert_one_line(message, "layers")
    assert growth < 200e6, growth


def test_long_or_multiline_layer_names_are_cut_in_messages(tmp_path):
    from caffe_schema import write_caffemodel

    path = tmp_path / "names.caffemodel"
    blobs = [np.zeros((2, 2), np.float32), np.zeros(2, np.float32)]
    write_caffemodel(path, [("x" * 100_000, "InnerProduct", blobs), ("a\nb\x1b[31m", "InnerProduct", blobs)])
    proc = cli_import(path, "--name", "t")
    assert_cli_one_line(proc, "does not match ILGNet")
    assert "\x1b" not in proc.stderr


# --------------------------------------------------------------------------- C: names and paths


@pytest.fixture
def victim(tmp_path):
    folder = tmp_path / "victim"
    folder.mkdir()
    for suffix in (".safetensors", ".json"):
        (folder / f"data{suffix}").write_text("precious")
    return folder


def victim_names(victim) -> list[str]:
    relative = os.path.relpath(victim / "data", store.weights_dir())  # ../../victim/data
    return [relative, str(victim / "data"), "../victim/data", ".", "..", "a/b", "ok\n", "ok\n\n",
            "", "x" * 65, "-lead"]


def test_remove_never_deletes_outside_the_store(victim, tmp_path):
    for name in victim_names(victim):
        result = runner.invoke(app, ["weights", "remove", "--", name])
        assert result.exit_code != 0, name
        assert_one_line(result.output)
        assert store.remove(name) is False
    assert sorted(p.name for p in victim.iterdir()) == ["data.json", "data.safetensors"]


@pytest.mark.slow
def test_store_functions_refuse_bad_names(victim, caffemodels, weights_file):
    for name in victim_names(victim):
        with pytest.raises(store.WeightsError, match="invalid weights name"):
            store._check_name(name)
        assert store.installed(name) is None
        assert not store.verify(name).ok
        with pytest.raises(store.WeightsError):
            store.add_safetensors(weights_file, name)
        if name.strip() and "/" not in name and not os.path.exists(name):
            with pytest.raises(store.WeightsError):
                store.resolve(name)
    with pytest.raises(store.WeightsError, match="invalid weights name"):
        store.import_caffemodel(caffemodels["v2"], "ok\n")
    assert store.installed_all() == []


def test_tampered_record_cannot_point_outside_the_store(victim, weights_file):
    rec = store.add_safetensors(weights_file, "mine")
    record = store.weights_dir() / "mine.json"
    data = json.loads(record.read_text())
    data["path"] = str(victim / "data.safetensors")
    record.write_text(json.dumps(data))
    got = store.installed("mine")
    assert got is None or got.path == rec.path
    store.remove("mine")
    assert sorted(p.name for p in victim.iterdir()) == ["data.json", "data.safetensors"]
    # A record whose name is not its file's name is not trusted either.
    (store.weights_dir() / "other.json").write_text(json.dumps({**data, "name": "../../victim/data"}))
    assert store.installed("other") is None


def test_symlink_out_of_the_store_is_refused(victim, weights_file):
    store.add_safetensors(weights_file, "mine")
    link = store.weights_dir() / "mine.safetensors"
    link.unlink()
    link.symlink_to(victim / "data.safetensors")
    with pytest.raises(store.WeightsError, match="outside the weights store"):
        store.load_model("mine")
    assert (victim / "data.safetensors").read_text() == "precious"


@pytest.mark.parametrize("content", [
    '"just a string"', "[1, 2]", '{"weights": "x"}', '{"weights": {"a": "not an object"}}',
    '{"weights": {"a": {"description": 1}}}', '{"default": 3, "weights": {}}',
    '{"weights": {"../../evil": {"description": "d", "kind": "caffemodel", "architecture": "ilgnet",'
    ' "file": "x.caffemodel", "sources": ["http://127.0.0.1/x"]}}}',
    '{"weights": {"ok": {"description": "d", "kind": "caffemodel", "architecture": "ilgnet",'
    ' "file": "../../x.caffemodel", "sources": ["http://127.0.0.1/x"]}}}',
    '{"weights": {"ok": {"description": "d", "kind": "caffemodel", "architecture": "ilgnet",'
    ' "file": "x.caffemodel", "sources": "http://127.0.0.1/x"}}}',
    '{"weights": {"ok": {"description": "d", "kind": "caffemodel", "architecture": "ilgnet",'
    ' "file": "x.caffemodel", "sources": ["http://127.0.0.1/x"], "size": "big"}}}',
    '{"weights": {"ok": {"description": "d", "kind": "exe", "architecture": "ilgnet",'
    ' "file": "x.caffemodel", "sources": ["http://127.0.0.1/x"]}}}',
    '{"weights": {"ok": {"description": "d", "kind": "caffemodel", "architecture": "ilgnet",'
    ' "file": "x.caffemodel", "sources": ["http://127.0.0.1/x"], "bogus\\nkey": 1}}}',
    "{" * 100_000,
])
def test_malformed_registry_is_one_line_error(tmp_path, monkeypatch, content):
    path = tmp_path / "registry.json"
    path.write_text(content)
    monkeypatch.setenv("ILGNET_REGISTRY", str(path))
    with pytest.raises(store.WeightsError, match="cannot read weights registry"):
        store.load_registry()
    for args in (["weights", "list"], ["weights", "fetch", "ok"]):
        result = runner.invoke(app, args)
        assert result.exit_code != 0 and isinstance(result.exception, SystemExit), result.exception
        assert_one_line(result.output, "cannot read weights registry")


# --------------------------------------------------------------------------- D: non-finite weights


def poisoned(weights_file, tmp_path, how: str):
    state, meta = store.read_weights(weights_file)
    key = "conv1.7x7_s2.weight"
    if how == "nan":
        state[key][0, 0, 0, 0] = float("nan")
    elif how == "inf":
        state[key][0, 0, 0, 0] = float("inf")
    elif how == "int":
        state[key] = state[key].to(torch.int32)
    elif how == "bool":
        state[key] = state[key] > 0
    elif how == "f64-overflow":
        state[key] = state[key].double()
        state[key][0, 0, 0, 0] = 1e300
    from safetensors.torch import save_file

    path = tmp_path / f"{how}.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=meta)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("how", ["nan", "inf", "int", "bool", "f64-overflow"])
def test_weights_add_refuses_non_finite_or_non_float_tensors(weights_file, tmp_path, how):
    path = poisoned(weights_file, tmp_path, how)
    result = runner.invoke(app, ["weights", "add", str(path), "--name", "bad"])
    assert result.exit_code != 0
    assert_one_line(result.output, "conv1.7x7_s2.weight")
    assert store.installed_all() == []


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_are_converted_to_fp32(weights_file, tmp_path, dtype):
    from safetensors.torch import save_file

    state, meta = store.read_weights(weights_file)
    path = tmp_path / "half.safetensors"
    save_file({k: v.to(dtype).contiguous() for k, v in state.items()}, str(path), metadata=meta)
    result = runner.invoke(app, ["weights", "add", str(path), "--name", "half"])
    assert result.exit_code == 0, result.output
    loaded = store.load_model("half")
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())


@pytest.mark.slow
def test_poisoned_file_in_the_store_is_refused_at_load(weights_file, tmp_path):
    store.add_safetensors(weights_file, "mine")
    target = store.weights_dir() / "mine.safetensors"
    target.write_bytes(poisoned(weights_file, tmp_path, "nan").read_bytes())
    with pytest.raises(store.WeightsError, match="non-finite"):
        store.load_model("mine")
    assert not store.verify("mine").ok


@pytest.mark.slow
@pytest.mark.parametrize("mean", ["nan,0,0", "inf,1,2", "1e300,0,0", "-5,0,0", "300,0,0"])
def test_non_finite_or_absurd_mean_is_refused(weights_file, caffemodels, tmp_path, mean):
    result = runner.invoke(app, ["weights", "add", str(weights_file), "--name", "m", "--mean", mean])
    assert result.exit_code != 0
    assert_one_line(result.output, "mean")
    # The same mean arriving in a file's metadata.
    state, meta = store.read_weights(weights_file)
    from safetensors.torch import save_file

    path = tmp_path / "meanmeta.safetensors"
    save_file(state, str(path), metadata={**meta, "mean": "channels", "mean_bgr": mean})
    with pytest.raises(store.WeightsError, match="mean"):
        store.add_safetensors(path, "m")
    assert store.installed_all() == []


def test_nan_in_cache_is_a_miss_and_never_stored(tmp_path):
    db = tmp_path / "cache.sqlite"
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"x")
    key = FileKey.of(photo)
    with ScoreCache(db, "sha", 1, "draft") as cache:
        cache.put_many([(key, float("nan"), None, {"width": 1})])
        assert cache.get(key) is None
        cache.put_many([(key, float("inf"), None, {})])
        assert cache.get(key) is None
        cache.put_many([(key, None, None, {})])
        assert cache.get(key) is None
    # Rows written by an older version (NULL score, no error; broken meta) are misses too.
    conn = sqlite3.connect(db)
    for score, meta in ((None, "{}"), (0.5, "not json"), (0.5, "[1]"), ("text", "{}")):
        conn.execute("INSERT OR REPLACE INTO scores VALUES (?,?,?,?,?,?,?,?,?,?)",
                     (key.path, key.size, key.mtime_ns, "sha", 1, "draft", score, None, meta, 0.0))
        conn.commit()
        with ScoreCache(db, "sha", 1, "draft") as cache:
            assert cache.get(key) is None, (score, meta)
    conn.close()
    with ScoreCache(db, "sha", 1, "draft") as cache:
        cache.put_many([(key, 0.25, None, {})])
        hit = cache.get(key)
        assert hit is not None and math.isclose(hit.score, 0.25)


def test_nan_scores_are_errors_never_cached(weights_file, tmp_path):
    from ilgnet_cli.photos.scoring import run_score
    from PIL import Image

    from ilgnet_cli.photos.cache import open_cache

    photo = tmp_path / "a.png"
    Image.new("RGB", (64, 48), (120, 30, 200)).save(photo)
    loaded = store.load_model(str(weights_file))
    with torch.no_grad():  # weights that pass every check but overflow to NaN logits
        loaded.model.loss1["classifier_cjy"].weight.fill_(3e38)
    cache, _ = open_cache(tmp_path / "cache.sqlite", loaded.sha256, 1, "draft")
    for _ in range(2):  # the second run reads whatever the first one cached
        run = run_score([str(photo)], loaded, cache=cache, extra=None)
        assert [r.ok for r in run.results] == [False]
        assert "non-finite" in run.results[0].error
        assert run.scored == []
    cache.close()


@pytest.mark.slow
@pytest.mark.parametrize("bad", [float("nan"), 1e300])  # 1e300 as double_data: inf in fp32
def test_caffemodel_with_non_finite_weights_is_refused(caffemodels, tmp_path, bad):
    from caffe_schema import write_caffemodel

    layers = [(n, t, [a.copy() for a in arrays]) for n, t, arrays in caffemodels["layers"]]
    layers[-1][2][1][0] = bad  # the last layer's bias
    path = tmp_path / "bad.caffemodel"
    if bad == 1e300:  # only double_data can hold it; keep the file small: every other layer as float
        write_caffemodel(path, layers, double=False)
        from caffe_schema import NetParameter

        net = NetParameter()
        net.ParseFromString(path.read_bytes())
        b = net.layer[-1].blobs[1]
        values = list(b.data)
        del b.data[:]
        b.double_data.extend([float(v) for v in values[:0]] + [1e300] + values[1:])
        path.write_bytes(net.SerializeToString())
    else:
        write_caffemodel(path, layers)
    proc = cli_import(path, "--name", "bad", data_limit=resource.RLIM_INFINITY)  # a whole ILGNet: 2x 600 MB
    assert_cli_one_line(proc, "non-finite")
    assert store.installed_all() == []


def test_millions_of_junk_fields_are_refused(tmp_path):
    from ilgnet_cli.model.caffe_import import MAX_FIELDS, CaffeModelError, read_caffemodel

    path = tmp_path / "junk.caffemodel"
    path.write_bytes(ld(100, b"\x08\x00" * 10) + b"\x08\x00" * MAX_FIELDS)  # a real file has a few thousand
    with pytest.raises(CaffeModelError, match="fields"):
        read_caffemodel(path)
