"""Scoring a collection (photos/collection.py) and the Python API: ``score_collection`` with the
same defaults as ``ilgnet score`` (discovery, the cache, the fidelity gate, bursts), ``score_files``
under it, and ``ilgnet_cli.load``. On the tiny stand-in, on real photos; the README's example
and the CLI's agreement with the library on real-size weights."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import real_weights, shared_path, tiny_weights
from PIL import Image

import ilgnet_cli
from ilgnet_cli.errors import DataError, IlgnetError, UsageError
from ilgnet_cli.model import store
from ilgnet_cli.model.transform import PREPROCESS_VERSION
from ilgnet_cli.photos.cache import ScoreCache
from ilgnet_cli.photos.collection import CollectionNotes, score_collection, score_files
from ilgnet_cli.predict.predictor import NON_FINITE

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture
def photos(photo_folder) -> Path:
    """~/Photos: four camera photos (small copies, EXIF kept) and a broken file."""
    folder = photo_folder(4, "Photos", size=640)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


def _scores(run) -> dict[str, float]:
    return {r.path: r.score for r in run.results if r.ok}


# --------------------------------------------------------------------------- score_collection


def test_results_come_best_first_then_what_failed_with_exif(photos, tiny):
    run = score_collection([photos], weights=tiny, device="cpu", workers=0, cache=False)
    scores = [r.score for r in run.results if r.ok]
    assert len(scores) == 4 and scores == sorted(scores, reverse=True)  # best first ...
    assert run.results[-1].path.endswith("broken.jpg") and run.results[-1].score is None  # ... failures last
    assert run.results[-1].error == "truncated image data"
    assert all(r.exif.camera for r in run.results[:4])  # EXIF comes with each result
    assert run.weights_name == "tiny" and run.weights_sha256 == tiny.sha256
    assert (run.stats.files, run.stats.scored, run.stats.errors, run.stats.decoded) == (5, 4, 1, 5)
    assert "ava1 mean image" in run.transform and all(r.precision == "fp32" for r in run.results[:4])


def test_a_run_that_fits_in_one_batch_takes_no_shortcut(photos, tiny):
    """Checking a shortcut costs an fp32 pass and a full decode: for one batch that is the
    faithful path itself."""
    small = score_collection([photos], weights=tiny, device="cpu", workers=0, cache=False)
    assert {r.decode for r in small.results if r.ok} == {"reference-800"}
    big = score_collection([photos], weights=tiny, device="cpu", workers=0, cache=False, batch_size=2)
    assert {r.decode for r in big.results if r.ok} == {"fast-800"}  # the default decode, checked by the gate
    assert _scores(big) == pytest.approx(_scores(small), abs=0.01)  # small photos: every pixel either way
    # What is asked for by name is served, small run or not.
    draft = score_collection([photos], weights=tiny, device="cpu", workers=0, cache=False, decode="draft")
    assert {r.decode for r in draft.results if r.ok} == {"draft"}


def test_exact_is_the_authors_pipeline_in_fp32(photos, tiny, monkeypatch):
    monkeypatch.setenv("ILGNET_NATIVE_BF16", "1")
    run = score_collection([photos], weights=tiny, device="cpu", workers=0, cache=False, exact=True, batch_size=2)
    assert {(r.decode, r.precision) for r in run.results if r.ok} == {("exact", "fp32")}
    with pytest.raises(UsageError, match="fp32"):
        score_collection([photos], weights=tiny, device="cpu", exact=True, precision="bf16")
    exact = score_collection([photos], weights=tiny, device="cpu", workers=0, cache=False, decode="exact")
    assert {r.decode for r in exact.results if r.ok} == {"exact"}
    assert _scores(exact) == pytest.approx(_scores(run), abs=1e-6)


def test_the_cache_serves_a_second_run_and_rescores_touched_files(tmp_path, tiny, photo_folder):
    folder = photo_folder(6, size=640)
    files = sorted(str(p) for p in folder.iterdir())
    db = tmp_path / "cache.sqlite"

    def run(**kwargs):
        with ScoreCache(db, tiny.sha256, PREPROCESS_VERSION, "exact") as cache:
            return score_files(files, tiny, cache=cache, batch_size=4, **kwargs)

    first = run()
    assert (first.stats.decoded, first.stats.cache_hits) == (6, 0)
    second = run()
    assert (second.stats.decoded, second.stats.cache_hits) == (0, 6)
    assert [r.score for r in second.results] == [r.score for r in first.results]
    assert [r.exif for r in second.results] == [r.exif for r in first.results]  # typed fields come back
    assert second.results[0].sharpness == first.results[0].sharpness and second.results[0].decode == "exact"
    st = os.stat(files[2])
    os.utime(files[2], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    third = run()
    assert (third.stats.decoded, third.stats.cache_hits) == (1, 5)
    # Other weights or another decode mode never reuse these scores.
    with ScoreCache(db, "other-weights", PREPROCESS_VERSION, "exact") as cache:
        assert score_files(files[:1], tiny, cache=cache).stats.decoded == 1
    with ScoreCache(db, tiny.sha256, PREPROCESS_VERSION, "draft") as cache:
        assert score_files(files[:1], tiny, cache=cache, transform=tiny.transforms("draft")).stats.decoded == 1


def test_cached_faithful_scores_serve_a_fast_run_but_not_the_reverse(tmp_path, tiny, photo_folder):
    files = sorted(str(p) for p in photo_folder(4, size=640).iterdir())
    with ScoreCache(tmp_path / "c.sqlite", tiny.sha256, PREPROCESS_VERSION, "fast-800") as cache:
        reference = score_files(files, tiny, cache=cache, transform=tiny.transforms("reference"), batch_size=2)
        assert reference.stats.decoded == 4
        fast = score_files(files, tiny, cache=cache, transform=tiny.transforms("fast"), batch_size=2, gate=True)
        assert fast.stats.cache_hits == 4  # the reference is what fast is checked against
    with ScoreCache(tmp_path / "d.sqlite", tiny.sha256, PREPROCESS_VERSION, "fast-800") as cache:
        score_files(files, tiny, cache=cache, transform=tiny.transforms("fast"), batch_size=2, gate=True)
        assert score_files(files, tiny, cache=cache, transform=tiny.transforms("reference")).stats.cache_hits == 0


def test_bf16_scores_are_never_served_to_an_fp32_run(photos, tiny):
    def run(precision):
        return score_collection([photos], weights=tiny, device="cpu", workers=0, precision=precision, batch_size=2)

    bf16 = run("bf16")
    assert {r.precision for r in bf16.results if r.ok} == {"bf16"}
    fp32 = run("fp32")
    assert fp32.stats.cache_hits == 1 and {r.precision for r in fp32.results if r.ok} == {"fp32"}  # the error only
    again = run("bf16")
    assert again.stats.cache_hits == 5  # fp32 scores are the better ones: reused
    assert {r.precision for r in again.results if r.ok} == {"fp32"}


def test_auto_takes_bf16_only_where_native_and_the_gate_keeps_it_faithful(photos, monkeypatch):
    monkeypatch.setenv("ILGNET_NATIVE_BF16", "0")
    notes = CollectionNotes()
    run = score_collection([photos], weights=tiny_weights(gain=0.1), device="cpu", workers=0, cache=False,
                           batch_size=2, notes=notes)
    assert {r.precision for r in run.results if r.ok} == {"fp32"} and notes.precision == []
    monkeypatch.setenv("ILGNET_NATIVE_BF16", "1")
    heard = []
    run = score_collection([photos], weights=tiny_weights(gain=0.1), device="cpu", workers=0, cache=False,
                           batch_size=2, notes=notes, on_note=lambda kind, text: heard.append((kind, text)))
    assert {r.precision for r in run.results if r.ok} == {"bf16"}
    fragile = tiny_weights(offset=20.0)
    run = score_collection([photos], weights=fragile, device="cpu", workers=0, cache=False, batch_size=2,
                           notes=notes, on_note=lambda kind, text: heard.append((kind, text)))
    assert {r.precision for r in run.results if r.ok} == {"fp32"} and run.stats.corrected == 0
    assert any("bf16 moved these weights' scores too much" in text for kind, text in heard if kind == "precision")
    assert notes.precision and all(isinstance(n, str) for n in notes.precision)
    verdicts = json.loads((Path(os.environ["ILGNET_HOME"]) / "precision.json").read_text())
    (key,) = [k for k, v in verdicts.items() if not v["ok"]]  # the refusal, remembered under its full key
    assert key.startswith(f"bf16|{fragile.sha256}|") and "cpu:" in key and "torch " in key and "compile=off" in key


def test_nothing_to_score_is_a_data_error_naming_why(tmp_path, tiny):
    with pytest.raises(DataError, match="no images found"):
        score_collection([tmp_path], weights=tiny, device="cpu")
    with pytest.raises(DataError, match="no such file or folder: .*absent"):
        score_collection([tmp_path / "absent"], weights=tiny, device="cpu")


def test_named_paths_that_are_no_file_are_reported_with_the_rest(photos, tiny, tmp_path):
    notes = CollectionNotes()
    run = score_collection([photos, tmp_path / "absent.jpg"], weights=tiny, device="cpu", workers=0, cache=False,
                           notes=notes)
    assert notes.missing == [str(tmp_path / "absent.jpg")]
    assert run.results[-1].path == str(tmp_path / "absent.jpg") and run.results[-1].error == "no such file or folder"
    assert run.stats.files == 6


def test_outputs_of_this_run_are_skipped(photos, tiny):
    (photos / "best").mkdir()
    shutil.copy(next(photos.glob("*.jpg")), photos / "best" / "001_copy.jpg")
    run = score_collection([photos], weights=tiny, device="cpu", workers=0, cache=False, skip=[photos / "best"])
    assert run.stats.files == 5 and not any("/best/" in r.path for r in run.results)


def test_odd_formats_are_scored(tmp_path, tiny, camera):
    ramp = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    Image.fromarray(ramp, "F").save(tmp_path / "float.tiff")
    Image.fromarray((ramp * 65535).astype(np.uint16)).save(tmp_path / "gray16.png")
    base = Image.open(camera(1)[0]).convert("RGB").resize((320, 240))
    base.save(tmp_path / "stereo.mpo", "MPO", save_all=True, append_images=[base.transpose(Image.FLIP_LEFT_RIGHT)])
    frames = [Image.new("RGB", (40, 30), c) for c in ("red", "blue")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    run = score_files([str(tmp_path / n) for n in ("float.tiff", "gray16.png", "stereo.mpo", "anim.gif")], tiny)
    assert run.stats.scored == 4 and [r.format for r in run.results] == ["TIFF", "PNG", "MPO", "GIF"]


def test_non_finite_scores_are_errors_and_stay_errors(tmp_path, tiny):
    photo = tmp_path / "a.png"
    Image.new("RGB", (64, 48), (120, 30, 200)).save(photo)
    with torch.no_grad():  # weights that pass every check but overflow to NaN logits
        tiny.model.fc.weight.fill_(3e38)
    with ScoreCache(tmp_path / "cache.sqlite", tiny.sha256, PREPROCESS_VERSION, "exact") as cache:
        for _ in range(2):  # the second run reads whatever the first one cached
            run = score_files([str(photo)], tiny, cache=cache, extra=None)
            assert [r.ok for r in run.results] == [False] and run.results[0].error == NON_FINITE
            assert run.scored == []


def test_bursts_are_grouped_when_asked(photos, tiny):
    run = score_collection([photos], weights=tiny, device="cpu", workers=0, cache=False, group_bursts=2)
    assert len(run.bursts) == 4 and all(r.burst.size == 1 and r.burst.keeper for r in run.results if r.ok)
    assert score_collection([photos], weights=tiny, device="cpu", workers=0, cache=False).bursts is None


# --------------------------------------------------------------------------- the API


def test_errors_have_one_shape(tmp_path):
    assert issubclass(UsageError, IlgnetError) and issubclass(DataError, IlgnetError)
    assert issubclass(store.WeightsError, IlgnetError)
    with pytest.raises(DataError):
        ilgnet_cli.score_collection([tmp_path], weights="x", device="cpu")  # an empty folder
    with pytest.raises(UsageError):
        ilgnet_cli.score_collection([tmp_path], precision="fp16", device="cpu")
    with pytest.raises(AttributeError):
        ilgnet_cli.no_such_thing  # noqa: B018


def test_load_gives_the_weights_with_their_preprocessing(weights_file, photos):
    model = ilgnet_cli.load(str(weights_file), device="cpu")
    photo = sorted(photos.glob("*.jpg"))[0]
    x = model.preprocess(photo)
    assert tuple(x.shape) == (3, 227, 227) and x.dtype == torch.float32
    assert model.transform.key == "exact" and model.mean.name == "ava1" and model.name == "random"
    [p] = model.score([photo])
    assert model.score(x[None]) == pytest.approx([p], abs=1e-6)
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    assert model.score([rgb]) == pytest.approx([p], abs=1e-6)  # an array is the photo's pixels
    with pytest.raises(DataError, match="truncated"):
        model.score([photos / "broken.jpg"])
    with pytest.raises(DataError, match="not both"):
        model.score([photo, rgb])
    assert ilgnet_cli.load(str(weights_file), device="cpu", decode="fast").transform.key == "fast-800"


def test_score_collection_is_what_the_cli_reports(photos, weights_file, cli):
    run = ilgnet_cli.score_collection([photos], weights=str(weights_file), device="cpu", workers=0, cache=False)
    result = cli("score", photos, "--weights", weights_file, "--device", "cpu", "--workers", "0", "--no-cache",
                 "--json", subprocess=True)
    assert result.code == 0, result.stderr
    assert {r["path"]: r["score"] for r in json.loads(result.stdout)["results"]} == _scores(run)
    [p] = ilgnet_cli.load(str(weights_file), device="cpu").score([run.results[0].path])
    exact = ilgnet_cli.score_collection([run.results[0].path], weights=str(weights_file), device="cpu", workers=0,
                                        cache=False, exact=True)
    assert p == pytest.approx(exact.results[0].score, abs=1e-6)  # load().score is `score --exact`


def test_readme_python_example_runs(photos, weights_file, monkeypatch, capsys):
    """The README's Python API example, as written, against a home folder with ~/Photos."""
    block = re.search(r"## Python API.*?```python\n(.*?)```", README.read_text(), re.S)
    assert block, "README has a Python API section with a python example"
    monkeypatch.setenv("HOME", str(photos.parent))
    store.add_safetensors(weights_file, "ilgnet-ava1")
    exec(compile(block.group(1), "README.md", "exec"), {})  # noqa: S102 - our own README
    printed = capsys.readouterr().out
    assert "Photos/" in printed and "0." in printed


@pytest.mark.slow
def test_orientation_samples_score_the_same(ilgnet, monkeypatch, camera):
    """Scores of the 9 samples vs the spread between different photos.

    With the test's random weights the orientation spread is about 0.006 (JPEG noise through
    an untrained net), under a tenth of the spread between photos. The issue's 1e-3 bound is
    checked with real weights: ILGNET_TEST_WEIGHTS=ilgnet-ava1 (or a .safetensors path).
    Measured with the draft decode, as in ilgnet 0.2 where the bound was set: the samples were
    re-encoded after rotating, and decoding every pixel lets more of that JPEG noise through the
    random net (landscape spread 0.010 exact, 0.012 reference, against 0.104 between photos).
    """
    real = real_weights(monkeypatch)
    model = real or ilgnet
    reference = model.transforms("draft")
    between = np.ptp([r.score for r in score_files([str(p) for p in camera(12)], model, transform=reference).results])
    for kind in ("landscape", "portrait"):
        folder = shared_path("photos", "orientation")
        run = score_files([str(folder / f"{kind}_{i}.jpg") for i in range(9)], model, batch_size=9,
                          transform=reference)
        assert run.stats.scored == 9
        spread = np.ptp([r.score for r in run.results])
        print(f"\n{kind}: orientation spread {spread:.5f}, between-photo spread {between:.5f}")
        assert spread <= (1e-3 if real else 0.1 * between), (kind, spread, between)
