"""The weights store (model/store.py and its records and registry): what a name means, installs
and removal that never reach outside the store, weights that are checked before anything runs
them (names, shapes, finite fp32, the mean they carry), a registry that is input like any other,
first-use fetching and the default weights. Hostile names, records, links, registries and
tensors each end in one line.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_one_line_failure, assert_one_line_message, authors_mean, budget, fuzz_settings, one_line
from hypothesis import given
from hypothesis import strategies as st

from ilgnet_cli.model import store
from ilgnet_cli.model.transform import MEANS_BGR, mean_from_image
from ilgnet_cli.runtime import download as dl
from ilgnet_cli.runtime.download import DownloadError, file_digest


def failed_in_one_line(result, *needles: str) -> str:
    """A CLI run that failed with one line on stderr holding every needle; the line."""
    assert result.code != 0, result.output
    return one_line(result.stderr, *needles)


# --------------------------------------------------------------------------- names and paths


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


def test_remove_never_deletes_outside_the_store(victim, tmp_path, cli):
    for name in victim_names(victim):
        result = cli("weights", "remove", "--", name)
        assert result.code != 0, name
        one_line(result.output)
        assert store.remove(name) is False
    assert sorted(p.name for p in victim.iterdir()) == ["data.json", "data.safetensors"]


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


def _small_set(name: str):
    """An installed set of a few KB: a taste on the tiny stand-in (what these tests need of a set is
    its store files, not 600 MB of ILGNet)."""
    from helpers import tiny_weights

    from ilgnet_cli.model.provenance import UNKNOWN

    return store.install_taste(name, tiny_weights(), np.zeros(1024, np.float32), 0.0, metadata={}, provenance=UNKNOWN)


# Re-installs "mine" with a head bias of 1.0 and is killed (SIGKILL: no cleanup runs) at the Nth
# rename of the install: 1 = the pending record's own atomic write, 2 = weights into place,
# 3 = the pending record becoming the record.
_KILLED_INSTALL = """
import os, signal, sys
sys.path.insert(0, sys.argv[2])
import numpy as np
from helpers import tiny_weights
from ilgnet_cli.model import store
from ilgnet_cli.model.provenance import UNKNOWN
real, calls = os.replace, [0]
def replace(a, b):
    calls[0] += 1
    if calls[0] == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)
    real(a, b)
os.replace = replace
store.install_taste("mine", tiny_weights(), np.zeros(1024, np.float32), 1.0, metadata={}, provenance=UNKNOWN,
                    replace=True)
"""


@pytest.mark.parametrize(("kill_at", "bias", "mended"), [(1, 0.0, "removed"), (2, 0.0, "rolled back"),
                                                         (3, 1.0, "finished")])
def test_an_install_killed_midway_leaves_the_old_or_the_new_weights_never_a_mix(kill_at, bias, mended, cli):
    import subprocess
    import sys

    _small_set("mine")
    tests = Path(__file__).resolve().parent
    child = subprocess.run([sys.executable, "-c", _KILLED_INSTALL, str(kill_at), str(tests)], capture_output=True,
                           text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(tests.parent)})
    assert child.returncode == -signal.SIGKILL, child.stderr
    leftovers = {p.name for p in store.weights_dir().iterdir()} - {"mine.json", "mine.safetensors"}
    assert leftovers  # the kill left work behind: a temp file, a pending record or both
    verified = cli("weights", "verify", "--json")
    assert verified.code == 1  # something was wrong, even though it is mended now
    assert any(mended in line for line in json.loads(verified.stdout)["repaired"]), verified.stdout
    assert {p.name for p in store.weights_dir().iterdir()} == {"mine.json", "mine.safetensors"}
    target = store.weights_dir() / "mine.safetensors"
    assert store.installed("mine").sha256 == file_digest(target)  # record and file: one install, whole
    state, _ = store.read_weights(target)
    assert float(state[store.HEAD_BIAS]) == bias
    assert cli("weights", "verify").code == 0


def test_tampered_record_cannot_point_outside_the_store(victim):
    rec = _small_set("mine")
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


def test_symlink_out_of_the_store_is_refused(victim):
    _small_set("mine")
    link = store.weights_dir() / "mine.safetensors"
    link.unlink()
    link.symlink_to(victim / "data.safetensors")
    with pytest.raises(store.WeightsError, match="outside the weights store"):
        store.load_model("mine")
    assert (victim / "data.safetensors").read_text() == "precious"


def test_a_store_name_means_the_store_entry_never_a_file_in_the_working_folder(tmp_path, monkeypatch):
    rec = _small_set("mine")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").write_bytes(b"planted")  # a file named like the set: never loaded by that name
    assert store.resolve("mine") == ("mine", rec.path)
    for value, name, path in (("./mine", "mine", "mine"), ("run/best.safetensors", "best", "run/best.safetensors"),
                              ("other.safetensors", "other", "other.safetensors")):  # a path is a path
        got = store.resolve(value)
        assert got[0] == name and got[1].resolve() == tmp_path / path
    with pytest.raises(store.WeightsError, match="import it first"):
        store.resolve("ILGnet-AVA1.caffemodel")
    with pytest.raises(store.WeightsError, match="not installed"):
        store.resolve("absent")


def test_the_default_is_the_registrys_until_set_and_never_silently_another(registry, monkeypatch):
    registry({"test-ava1": registry.entry(["http://127.0.0.1:9/x.caffemodel"])})
    assert store.default_name() == "test-ava1"
    monkeypatch.setenv("ILGNET_OFFLINE", "1")
    with pytest.raises(store.NoWeightsError, match="downloads are off"):
        store.ensure_default()
    _small_set("mine")
    with pytest.raises(store.NoWeightsError, match="installed instead: mine .*ilgnet weights default NAME") as info:
        store.ensure_default()  # another set is installed: named, never used unasked
    assert any("weights import" in line for line in info.value.details)  # the ways to get the default stay
    assert store.resolve_weights("mine") == "mine" and store.resolve_weights("some/file.safetensors")
    with pytest.raises(store.WeightsError, match="neither installed nor known"):
        store.set_default("absent")
    assert store.set_default("mine") == "mine" and store.default_name() == "mine" == store.ensure_default()
    store.remove("mine")
    with pytest.raises(store.NoWeightsError, match="not installed any more"):
        store.ensure_default()


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
def test_malformed_registry_is_one_line_error(tmp_path, monkeypatch, content, cli):
    path = tmp_path / "registry.json"
    path.write_text(content)
    monkeypatch.setenv("ILGNET_REGISTRY", str(path))
    with pytest.raises(store.WeightsError, match="cannot read weights registry"):
        store.load_registry()
    for args in (["weights", "list"], ["weights", "fetch", "ok"]):
        result = cli(*args)
        assert result.code != 0
        one_line(result.stderr, "cannot read weights registry")


# --------------------------------------------------------------------------- what is installed is checked


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


@pytest.mark.parametrize("how", ["nan", "inf", "int", "bool", "f64-overflow"])
def test_weights_add_refuses_non_finite_or_non_float_tensors(weights_file, tmp_path, how, cli):
    path = poisoned(weights_file, tmp_path, how)
    result = cli("weights", "add", str(path), "--name", "bad")
    assert result.code != 0
    one_line(result.output, "conv1.7x7_s2.weight")
    assert store.installed_all() == []


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_are_converted_to_fp32(weights_file, tmp_path, dtype, cli):
    from safetensors.torch import save_file

    state, meta = store.read_weights(weights_file)
    path = tmp_path / "half.safetensors"
    save_file({k: v.to(dtype).contiguous() for k, v in state.items()}, str(path), metadata=meta)
    result = cli("weights", "add", str(path), "--name", "half")
    assert result.code == 0, result.output
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


@pytest.mark.parametrize("mean", ["nan,0,0", "inf,1,2", "1e300,0,0", "-5,0,0", "300,0,0"])
def test_non_finite_or_absurd_mean_is_refused(weights_file, caffemodels, tmp_path, mean, cli):
    result = cli("weights", "add", str(weights_file), "--name", "m", "--mean", mean)
    assert result.code != 0
    one_line(result.output, "mean")
    # The same mean arriving in a file's metadata.
    state, meta = store.read_weights(weights_file)
    from safetensors.torch import save_file

    path = tmp_path / "meanmeta.safetensors"
    save_file(state, str(path), metadata={**meta, "mean": "channels", "mean_bgr": mean})
    with pytest.raises(store.WeightsError, match="mean"):
        store.add_safetensors(path, "m")
    assert store.installed_all() == []


@pytest.mark.slow
@pytest.mark.parametrize("bad", [float("nan"), 1e300])  # 1e300 as double_data: inf in fp32
def test_caffemodel_with_non_finite_weights_is_refused(caffemodels, tmp_path, bad, cli):
    from caffe_schema import write_caffemodel

    layers = [(n, t, [a.copy() for a in arrays]) for n, t, arrays in caffemodels["layers"]]
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
        layers[-1][2][1][0] = bad  # the last layer's bias
        write_caffemodel(path, layers)
    failed_in_one_line(cli("weights", "import", path, "--name", "bad"), "non-finite")
    assert store.installed_all() == []


@pytest.mark.slow
def test_weights_add_and_remove(caffemodels, tmp_path, cli):
    rec = store.import_caffemodel(caffemodels["v2"], "source", "ava2")
    result = cli("weights", "add", str(rec.path), "--name", "my-ava2")
    assert result.code == 0, result.output
    mean = store.load_model("my-ava2").mean
    assert mean.name == "ava2" and mean.image is not None and mean.bgr == pytest.approx(MEANS_BGR["ava2"], abs=1e-4)
    assert cli("weights", "remove", "my-ava2").code == 0
    assert store.installed("my-ava2") is None
    assert cli("weights", "remove", "my-ava2").code == 1


def test_bad_mean_is_usage_error(caffemodels, cli):
    result = cli("weights", "import", str(caffemodels["v2"]), "--mean", "1,2")
    assert result.code == 1
    assert "mean must be ava1, ava2, imagenet" in result.output


def _with_mean_tensor(tmp_path, weights_file, tensor):
    from safetensors.numpy import save_file

    state, meta = store.read_weights(weights_file)
    arrays = {k: v.numpy() for k, v in state.items()}
    if tensor is not None:
        arrays["_mean.image"] = tensor
    path = tmp_path / "odd.safetensors"
    save_file(arrays, str(path), metadata={**meta, "mean": "image"})
    return path


@pytest.mark.parametrize("tensor", [None, np.ones((3, 256, 256), bool), np.ones((2, 2), np.float32)])
def test_weights_promising_a_mean_image_they_lack_are_one_line(tmp_path, weights_file, tensor, cli):
    path = _with_mean_tensor(tmp_path, weights_file, tensor)
    out = failed_in_one_line(cli("weights", "add", str(path), "--name", "odd"))
    assert "mean" in out and store.installed("odd") is None


def test_mean_files_are_checked_before_their_data_is_read(tmp_path, weights_file, cli):
    strings = tmp_path / "str.npy"
    np.save(strings, np.array(["1", "abc", "3"]))
    huge = tmp_path / "huge.npy"
    with huge.open("wb") as fh:  # a header declaring 3x100000x100000 float64 and no data
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f8", "fortran_order": False,
                                                  "shape": (3, 100000, 100000)})
    cplx = tmp_path / "complex.npy"
    np.save(cplx, np.full(3, 100 + 1j))
    for mean in (strings, huge, cplx):
        out = failed_in_one_line(cli("weights", "add", str(weights_file), "--name", "m",
                                                 "--mean", str(mean)))
        assert mean.name in out


@pytest.mark.slow
def test_weights_files_follow_the_umask(tmp_path, weights_file):
    old = os.umask(0o022)
    try:
        rec = store.add_safetensors(weights_file, "modes")
        run_best = store.save_weights(tmp_path / "best.safetensors", store.read_weights(weights_file)[0], "ava1")
    finally:
        os.umask(old)
    assert stat.S_IMODE(rec.path.stat().st_mode) == 0o644
    assert stat.S_IMODE(run_best.stat().st_mode) == 0o644
    os.chmod(run_best, 0o640)  # a replaced file keeps its mode
    store.save_weights(run_best, store.read_weights(weights_file)[0], "ava1")
    assert stat.S_IMODE(run_best.stat().st_mode) == 0o640
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    json.dumps(rec.to_json())


# --------------------------------------------------------------------------- weights carry their mean


def _mean_files(tmp_path: Path) -> dict[str, Path]:
    from caffe_schema import MESSAGES

    image = authors_mean("AVA2")
    blob = MESSAGES["BlobProto"](num=1, channels=3, height=256, width=256)
    blob.data.extend(image.reshape(-1).tolist())
    proto = tmp_path / "mean.binaryproto"
    proto.write_bytes(blob.SerializeToString())  # Caffe's compute_image_mean output format
    npy = tmp_path / "mean.npy"
    np.save(npy, image[:, ::-1].copy())  # a different image: mirrored
    return {"binaryproto": proto, "npy": npy, "image": image}


@pytest.mark.slow
def test_import_takes_every_kind_of_mean(tmp_path, caffemodels, cli):
    files = _mean_files(tmp_path)
    same, mirrored = (mean_from_image(image).digest[:12] for image in (files["image"], files["image"][:, ::-1]))
    # A mean image from a file is described by what it is (its digest), not where it came from.
    cases = {"ava1": "ava1 mean image", "ava2": "ava2 mean image", "imagenet": "per-channel 104,117,123 (imagenet)",
             "1.5,2,3": "per-channel 1.5,2,3", str(files["binaryproto"]): f"mean image sha256:{same} (from a file)",
             str(files["npy"]): f"mean image sha256:{mirrored} (from a file)"}
    for n, (mean, described) in enumerate(cases.items()):
        result = cli("weights", "import", str(caffemodels["v2"]), "--name", f"m{n}", "--mean", mean)
        assert result.code == 0, result.output
        loaded = store.load_model(f"m{n}")
        assert loaded.mean.describe() == described
        assert store.installed(f"m{n}").mean == described
    # A mean image read from a file travels inside the weights file, exactly.
    np.testing.assert_array_equal(store.load_model("m4").mean.image, files["image"])
    np.testing.assert_array_equal(store.load_model("m5").mean.image, files["image"][:, ::-1])
    # ... and survives 'weights add' of that file under another name.
    assert cli("weights", "add", str(store.installed("m5").path), "--name", "copy").code == 0
    np.testing.assert_array_equal(store.load_model("copy").mean.image, files["image"][:, ::-1])


@pytest.mark.slow
@pytest.mark.parametrize("content", [b"", b"\x0a\x05hello", b"\x08\x01" * 10, b"not a mean at all" * 100])
def test_unusable_mean_file_is_one_line_error(tmp_path, caffemodels, content, cli):
    for suffix in (".binaryproto", ".npy"):
        path = tmp_path / f"bad{suffix}"
        path.write_bytes(content)
        result = cli("weights", "import", str(caffemodels["v2"]), "--name", "bad", "--mean", str(path))
        assert result.code == 1, result.output
        assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert store.installed("bad") is None


@pytest.mark.slow
def test_non_finite_or_absurd_mean_files_are_refused(tmp_path, caffemodels, cli):
    image = np.full((3, 256, 256), 100, np.float32)
    image[1, 5, 5] = np.nan
    np.save(tmp_path / "nan.npy", image)
    for mean in (str(tmp_path / "nan.npy"), "nan,1,2", "1e9,1,2"):
        result = cli("weights", "import", str(caffemodels["v2"]), "--name", "bad", "--mean", mean)
        assert result.code == 1 and "finite" in result.output, (mean, result.output)


# --------------------------------------------------------------------------- the registry and fetching




def test_packaged_registry_lists_known_weights(cli, registry):
    known = store.load_registry()
    assert known.default == "ilgnet-ava1"
    assert {"ilgnet-ava1", "ilgnet-ava2", "bvlc-googlenet"} <= set(known.weights)
    g = known.get("bvlc-googlenet")
    assert g.checksum == "sha1:405fc5acd08a3bb12de8ee5e23a96bec22f08204" and len(g.sources) >= 2
    assert "0B-wWngvfWr7WekNRX04xSzJEWlE" in known.get("ilgnet-ava1").sources[0]
    assert "0B-wWngvfWr7WRDl4YUFNTmJqenM" in known.get("ilgnet-ava2").sources[0]
    result = cli("weights", "list", "--json")
    assert result.code == 0
    rows = {r["name"]: r for r in json.loads(result.stdout)["weights"]}
    assert rows["ilgnet-ava1"]["default"] and not rows["ilgnet-ava1"]["installed"]


@pytest.mark.slow
def test_fetch_with_mirror_fallback_converts_and_verifies(server, caffemodels, cli, registry, camera):
    server.add("/gone/ILGnet.caffemodel", status=404)
    good = server.add("/mirror/ILGnet.caffemodel", file=caffemodels["v2"])
    sha = "sha256:" + file_digest(caffemodels["v2"])
    registry({"test-ava1": registry.entry(
        [server.url("/gone/ILGnet.caffemodel"), server.url("/mirror/ILGnet.caffemodel")], sha)})

    result = cli("weights", "fetch", "test-ava1")
    assert result.code == 0, result.output
    assert len(good.requests) == 1
    rec = store.installed("test-ava1")
    assert rec is not None and rec.path.suffix == ".safetensors" and rec.source.endswith("/mirror/ILGnet.caffemodel")
    # The caffemodel is converted on arrival; the download itself is not kept.
    assert not any((store.home() / "downloads").iterdir())

    listing = json.loads(cli("weights", "list", "--json").output)
    row = next(r for r in listing["weights"] if r["name"] == "test-ava1")
    assert row["installed"] and row["sha256"] == rec.sha256 and row["size"] == rec.size
    result = cli("weights", "verify", "--json")
    assert result.code == 0 and json.loads(result.stdout)["weights"][0]["ok"]

    photo = camera(1)[0]
    result = cli("score", "--weights", "test-ava1", "--device", "cpu", "--json", str(photo))
    assert result.code == 0, result.output
    scored = json.loads(result.stdout)["results"]
    assert scored[0]["path"] == str(photo) and 0.0 < scored[0]["score"] < 1.0


def test_fetch_checksum_mismatch_installs_nothing(server, tmp_path, monkeypatch, cli, registry):
    server.add("/w.caffemodel", data=b"\x00" * 1000)
    registry({"test-ava1": registry.entry([server.url("/w.caffemodel")], "sha256:" + "0" * 64)})
    result = cli("weights", "fetch", "test-ava1")
    assert result.code == 1
    assert "checksum mismatch" in result.output
    assert store.installed_all() == []
    assert not any(p.is_file() for p in store.home().rglob("*"))


def test_fetch_unknown_name(tmp_path, monkeypatch, cli):
    result = cli("weights", "fetch", "no-such-weights")
    assert result.code == 1 and "unknown weights 'no-such-weights'" in result.output


@pytest.mark.slow
def test_score_fetches_default_weights_on_first_use(server, tmp_path, monkeypatch, caffemodels, cli, registry, camera):
    server.add("/ILGnet-AVA1.caffemodel", file=caffemodels["v1"])
    registry({"test-ava1": registry.entry([server.url("/ILGnet-AVA1.caffemodel")])})
    photos = [str(p) for p in camera(2)]
    result = cli("score", "--device", "cpu", "--json", *photos)
    assert result.code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["weights"] == "test-ava1" and len(payload["results"]) == 2
    assert store.installed("test-ava1") is not None
    # Second run: nothing is downloaded again.
    requests_before = len(server.routes["/ILGnet-AVA1.caffemodel"].requests)
    assert cli("score", "--device", "cpu", *photos).code == 0
    assert len(server.routes["/ILGnet-AVA1.caffemodel"].requests) == requests_before


def test_store_fetch_caps_weights(server, tmp_path, monkeypatch, registry):
    seen = {}

    def spy(urls, dest, **kwargs):
        seen.update(kwargs)
        raise DownloadError("stop here")

    monkeypatch.setattr(store, "download", spy)
    registry({"w": registry.entry([server.url("/w")])}, default="w")
    with pytest.raises(DownloadError):
        store.fetch("w")
    assert seen["max_bytes"] == dl.MAX_WEIGHTS_BYTES


@pytest.mark.slow
def test_unparseable_download_falls_back_to_the_next_mirror(server, tmp_path, monkeypatch, caffemodels, cli, registry):
    server.add("/bad.caffemodel", data=b"<html>not a model</html>")
    server.add("/good.caffemodel", file=caffemodels["v2"])
    registry({"test-ava1": registry.entry([server.url("/bad.caffemodel"),
                                                               server.url("/good.caffemodel")])})
    result = cli("weights", "fetch", "test-ava1", "--retries", "0")
    assert result.code == 0, result.output
    rec = store.installed("test-ava1")
    assert rec is not None and rec.source.endswith("/good.caffemodel")
    assert not any((store.home() / "downloads").iterdir())


def test_unparseable_download_installs_nothing(server, tmp_path, monkeypatch, cli, registry):
    server.add("/bad.caffemodel", data=b"\x0a\x05hello" * 100)
    registry({"test-ava1": registry.entry([server.url("/bad.caffemodel")])})
    assert_one_line_failure(cli("weights", "fetch", "test-ava1", "--retries", "0"))
    assert not any(p.is_file() for p in store.home().rglob("*"))


# --------------------------------------------------------------------------- fuzzed safetensors
# Every input gives a result or the documented one-line error, within a time and memory budget.

FUZZ = fuzz_settings()
WORK = Path(tempfile.mkdtemp(prefix="ilgnet-fuzz-"))


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
    WORK.mkdir(parents=True, exist_ok=True)
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


def test_importing_a_safetensors_file_points_to_weights_add(tmp_path, cli):
    from safetensors.numpy import save_file

    path = tmp_path / "mine.caffemodel"  # a renamed copy of weights ilgnet wrote
    save_file({"fc.weight": np.zeros((2, 2), dtype=np.float32)}, str(path))
    result = cli("weights", "import", path, "--name", "mine")
    assert result.code == 1
    one_line(result.stderr, "safetensors", "ilgnet weights add")
