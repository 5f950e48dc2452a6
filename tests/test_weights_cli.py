"""`ilgnet weights ...` and first-use fetching, end to end against a local HTTP server."""

from __future__ import annotations

import json

import pytest
from conftest import camera_photos
from typer.testing import CliRunner

from ilgnet_cli import __version__
from ilgnet_cli.cli import app
from ilgnet_cli.model import store
from ilgnet_cli.model.transform import MEANS_BGR
from ilgnet_cli.runtime.download import file_digest

runner = CliRunner()


def write_registry(tmp_path, monkeypatch, entries: dict, default: str = "test-ava1"):
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"default": default, "weights": entries}))
    monkeypatch.setenv("ILGNET_REGISTRY", str(path))
    return path


def entry(sources, checksum=None, kind="caffemodel", arch="ilgnet", mean="ava1", file="ILGnet-test.caffemodel"):
    return {"description": "test weights", "kind": kind, "architecture": arch, "file": file,
            "sources": sources, "checksum": checksum, "size": None, "mean": mean}


def test_version_and_help_list_real_commands():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("score", "weights"):
        assert command in result.output
    result = runner.invoke(app, ["weights", "--help"])
    for command in ("list", "fetch", "import", "add", "verify", "remove"):
        assert command in result.output


def test_packaged_registry_lists_known_weights():
    registry = store.load_registry()
    assert registry.default == "ilgnet-ava1"
    assert {"ilgnet-ava1", "ilgnet-ava2", "bvlc-googlenet"} <= set(registry.weights)
    g = registry.get("bvlc-googlenet")
    assert g.checksum == "sha1:405fc5acd08a3bb12de8ee5e23a96bec22f08204" and len(g.sources) >= 2
    assert "0B-wWngvfWr7WekNRX04xSzJEWlE" in registry.get("ilgnet-ava1").sources[0]
    assert "0B-wWngvfWr7WRDl4YUFNTmJqenM" in registry.get("ilgnet-ava2").sources[0]
    result = runner.invoke(app, ["weights", "list", "--json"])
    assert result.exit_code == 0
    rows = {r["name"]: r for r in json.loads(result.stdout)["weights"]}
    assert rows["ilgnet-ava1"]["default"] and not rows["ilgnet-ava1"]["installed"]


@pytest.mark.slow
def test_fetch_with_mirror_fallback_converts_and_verifies(server, tmp_path, monkeypatch, caffemodels):
    server.add("/gone/ILGnet.caffemodel", status=404)
    good = server.add("/mirror/ILGnet.caffemodel", file=caffemodels["v2"])
    sha = "sha256:" + file_digest(caffemodels["v2"])
    write_registry(tmp_path, monkeypatch, {"test-ava1": entry(
        [server.url("/gone/ILGnet.caffemodel"), server.url("/mirror/ILGnet.caffemodel")], sha)})

    result = runner.invoke(app, ["weights", "fetch", "test-ava1"])
    assert result.exit_code == 0, result.output
    assert len(good.requests) == 1
    rec = store.installed("test-ava1")
    assert rec is not None and rec.path.suffix == ".safetensors" and rec.source.endswith("/mirror/ILGnet.caffemodel")
    # The caffemodel is converted on arrival; the download itself is not kept.
    assert not any((store.home() / "downloads").iterdir())

    listing = json.loads(runner.invoke(app, ["weights", "list", "--json"]).output)
    row = next(r for r in listing["weights"] if r["name"] == "test-ava1")
    assert row["installed"] and row["sha256"] == rec.sha256 and row["size"] == rec.size
    result = runner.invoke(app, ["weights", "verify", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)[0]["ok"]

    photo = camera_photos(1)[0]
    result = runner.invoke(app, ["score", "--weights", "test-ava1", "--device", "cpu", "--json", str(photo)])
    assert result.exit_code == 0, result.output
    scored = json.loads(result.stdout)["results"]
    assert scored[0]["path"] == str(photo) and 0.0 < scored[0]["score"] < 1.0


def test_fetch_checksum_mismatch_installs_nothing(server, tmp_path, monkeypatch):
    server.add("/w.caffemodel", data=b"\x00" * 1000)
    write_registry(tmp_path, monkeypatch, {"test-ava1": entry([server.url("/w.caffemodel")], "sha256:" + "0" * 64)})
    result = runner.invoke(app, ["weights", "fetch", "test-ava1"])
    assert result.exit_code == 1
    assert "checksum mismatch" in result.output
    assert store.installed_all() == []
    assert not any(p.is_file() for p in store.home().rglob("*"))


def test_fetch_unknown_name(tmp_path, monkeypatch):
    result = runner.invoke(app, ["weights", "fetch", "no-such-weights"])
    assert result.exit_code == 1 and "unknown weights 'no-such-weights'" in result.output


@pytest.mark.slow
def test_score_fetches_default_weights_on_first_use(server, tmp_path, monkeypatch, caffemodels):
    server.add("/ILGnet-AVA1.caffemodel", file=caffemodels["v1"])
    write_registry(tmp_path, monkeypatch, {"test-ava1": entry([server.url("/ILGnet-AVA1.caffemodel")])})
    photos = [str(p) for p in camera_photos(2)]
    result = runner.invoke(app, ["score", "--device", "cpu", "--json", *photos])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["weights"] == "test-ava1" and len(payload["results"]) == 2
    assert store.installed("test-ava1") is not None
    # Second run: nothing is downloaded again.
    requests_before = len(server.routes["/ILGnet-AVA1.caffemodel"].requests)
    assert runner.invoke(app, ["score", "--device", "cpu", *photos]).exit_code == 0
    assert len(server.routes["/ILGnet-AVA1.caffemodel"].requests) == requests_before


@pytest.mark.parametrize("how", ["flag", "env"])
def test_offline_without_weights_names_the_three_ways(monkeypatch, how):
    args = ["score", "--device", "cpu", str(camera_photos(1)[0])]
    if how == "flag":
        args.insert(1, "--offline")
    else:
        monkeypatch.setenv("ILGNET_OFFLINE", "1")
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    for way in ("ilgnet weights fetch", "ilgnet weights import", "ilgnet train"):
        assert way in text


def test_unreachable_default_weights_names_the_three_ways(tmp_path, monkeypatch):
    write_registry(tmp_path, monkeypatch, {"test-ava1": entry(["http://127.0.0.1:9/ILGnet.caffemodel"])})
    monkeypatch.setattr(store, "fetch", _fast_fetch(store.fetch))
    result = runner.invoke(app, ["score", "--device", "cpu", str(camera_photos(1)[0])])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "could not download test-ava1" in text and "ilgnet weights import" in text


def _fast_fetch(fetch):
    def wrapper(name, **kwargs):
        return fetch(name, **{**kwargs, "retries": 0, "backoff": 0})
    return wrapper


@pytest.mark.slow
def test_weights_add_and_remove(caffemodels, tmp_path):
    rec = store.import_caffemodel(caffemodels["v2"], "source", "ava2")
    result = runner.invoke(app, ["weights", "add", str(rec.path), "--name", "my-ava2"])
    assert result.exit_code == 0, result.output
    mean = store.load_model("my-ava2").mean
    assert mean.name == "ava2" and mean.image is not None and mean.bgr == pytest.approx(MEANS_BGR["ava2"], abs=1e-4)
    assert runner.invoke(app, ["weights", "remove", "my-ava2"]).exit_code == 0
    assert store.installed("my-ava2") is None
    assert runner.invoke(app, ["weights", "remove", "my-ava2"]).exit_code == 1


def test_bad_mean_is_usage_error(caffemodels):
    result = runner.invoke(app, ["weights", "import", str(caffemodels["v2"]), "--mean", "1,2"])
    assert result.exit_code == 1
    assert "mean must be ava1, ava2, imagenet" in result.output
