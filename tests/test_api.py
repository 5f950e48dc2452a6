"""The Python API: `score_collection` (what `ilgnet score` runs) and `load` (weights + preprocessing)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import camera_photos
from typer.testing import CliRunner

import ilgnet_cli
from ilgnet_cli.cli import app
from ilgnet_cli.errors import DataError, IlgnetError, UsageError
from ilgnet_cli.model import store

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "Photos"
    folder.mkdir()
    for p in camera_photos(4):
        shutil.copy2(p, folder / p.name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


@pytest.mark.slow
def test_score_collection_is_what_the_cli_reports(photos, weights_file):
    run = ilgnet_cli.score_collection([photos], weights=str(weights_file), device="cpu", workers=0, cache=False)
    scores = [r.score for r in run.results if r.error is None]
    assert len(scores) == 4 and scores == sorted(scores, reverse=True)  # best first ...
    assert run.results[-1].path.endswith("broken.jpg") and run.results[-1].score is None  # ... failures last
    assert run.results[-1].error
    assert all(r.exif.camera for r in run.results[:4])  # EXIF comes with each result
    result = CliRunner().invoke(app, ["score", str(photos), "--weights", str(weights_file), "--device", "cpu",
                                      "--workers", "0", "--no-cache", "--json"])
    cli = {r["path"]: r["score"] for r in json.loads(result.stdout)["results"]}
    assert cli == {r.path: r.score for r in run.results if r.error is None}


@pytest.mark.slow
def test_load_gives_the_model_and_its_preprocessing(weights_file):
    model = ilgnet_cli.load(str(weights_file), device="cpu")
    photo = camera_photos(1)[0]
    x = model.preprocess(photo)
    assert tuple(x.shape) == (3, 227, 227) and x.dtype == torch.float32
    [p] = model.score([photo])
    run = ilgnet_cli.score_collection([photo], weights=str(weights_file), device="cpu", workers=0, cache=False,
                                      exact=True)
    assert p == pytest.approx(run.results[0].score, abs=1e-6)  # load().score is `score --exact`
    assert model.score(x[None]) == pytest.approx([p], abs=1e-6)


def test_errors_have_one_shape(tmp_path):
    assert issubclass(UsageError, IlgnetError) and issubclass(DataError, IlgnetError)
    with pytest.raises(DataError):
        ilgnet_cli.score_collection([tmp_path], weights="x", device="cpu")  # an empty folder
    with pytest.raises(UsageError):
        ilgnet_cli.score_collection([tmp_path], precision="fp16", device="cpu")
    for error_class in (store.WeightsError,):
        assert issubclass(error_class, IlgnetError)


@pytest.mark.slow
def test_readme_python_example_runs(photos, weights_file, monkeypatch, capsys):
    """The README's Python API example, as written, against a home folder with ~/Photos."""
    block = re.search(r"## Python API.*?```python\n(.*?)```", README.read_text(), re.S)
    assert block, "README has a Python API section with a python example"
    monkeypatch.setenv("HOME", str(photos.parent))
    store.add_safetensors(weights_file, "ilgnet-ava1")
    exec(compile(block.group(1), "README.md", "exec"), {})  # noqa: S102 - our own README
    printed = capsys.readouterr().out
    assert "Photos/" in printed and "0." in printed
