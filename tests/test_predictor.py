"""The one prediction loop (predict/predictor.py) on the tiny stand-in: results in input order
whatever the batch size, workers or neighbours; one bad file, one crashing or hanging decoder
costs only that file; test-time crops; features; what each prediction says about how it was made.
The fidelity gate's corrections are in test_gate.py."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ilgnet_cli.data.source import PhotoFiles
from ilgnet_cli.model.transform import Crops, DecodeMode
from ilgnet_cli.photos.collection import photo_extra
from ilgnet_cli.predict import predictor as predictor_module
from ilgnet_cli.predict.predictor import CRASH_REASON, NON_FINITE, Prediction, Predictor, scored
from ilgnet_cli.runtime import forward as forward_module
from ilgnet_cli.runtime.distributed import Dist


def _scores(predictions: list[Prediction]) -> list[float]:
    return [p.score for p in predictions]


@pytest.fixture
def files(photo_folder) -> list[str]:
    return sorted(str(p) for p in photo_folder(10, size=400).iterdir())


def test_scores_do_not_depend_on_batch_size_workers_or_neighbours(tiny, files):
    source = PhotoFiles(files, extra=photo_extra)
    runs = [Predictor(tiny.model, tiny.transforms(), batch_size=bs, workers=w).predict_all(source)
            for bs, w in ((1, 0), (4, 0), (10, 2), (3, 1))]
    base = np.array(_scores(runs[0]))
    assert base.std() > 0.01  # the photos score differently: the comparison means something
    for run in runs:
        assert [p.name for p in run] == files and [p.index for p in run] == list(range(10))
        np.testing.assert_allclose(_scores(run), base, atol=1e-6, rtol=0)
        assert all(p.ok and p.precision == "fp32" and p.decode == "exact" for p in run)
    # Batch neighbours: the same photo next to different photos, or alone.
    alone = Predictor(tiny.model, tiny.transforms(), batch_size=1).predict_all(PhotoFiles(files[3:4]))
    assert abs(alone[0].score - base[3]) <= 1e-6


def test_predictions_say_how_they_were_made_and_carry_what_the_source_adds(tiny, files):
    (pred,) = Predictor(tiny.model, tiny.transforms("fast")).predict(PhotoFiles(files[:1], extra=photo_extra))
    assert pred.ok and pred.decode == "fast-800" and pred.precision == "fp32" and not pred.corrected
    assert pred.shortcuts == frozenset()  # no gate: nothing was taken on trust
    assert len(pred.log_odds) == len(pred.crop_scores) == 1 and pred.features is None
    assert pred.crop_scores[0] == pytest.approx(pred.score) == pytest.approx(1 / (1 + np.exp(-pred.log_odds[0])))
    meta = pred.meta
    assert meta["format"] == "JPEG" and meta["width"] > meta["height"] > 0 or meta["height"] >= meta["width"] > 0
    assert "exif" in meta and meta["sharpness"] > 0


def test_bad_files_are_errors_in_their_place_never_the_end_of_the_run(tiny, files, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "text.jpg").write_text("hello")
    paths = [files[0], str(tmp_path / "broken.jpg"), files[1], str(tmp_path / "text.jpg"), str(tmp_path / "gone.jpg")]
    for workers in (0, 2):
        preds = Predictor(tiny.model, tiny.transforms(), batch_size=2, workers=workers).predict_all(PhotoFiles(paths))
        assert [p.ok for p in preds] == [True, False, True, False, False]
        assert preds[1].error == "truncated image data" and preds[3].error == "not identifiable as an image"
        assert "No such file" in preds[4].error and preds[1].score is None and preds[1].precision is None


def test_indices_pick_the_items_and_scored_keeps_the_last_word(tiny, files):
    predictor = Predictor(tiny.model, tiny.transforms(), batch_size=3)
    some = list(predictor.predict(PhotoFiles(files), indices=[7, 2, 5]))
    assert [p.index for p in some] == [7, 2, 5] and [p.name for p in some] == [files[7], files[2], files[5]]
    first, again = Prediction(1, "a", score=0.2), Prediction(1, "a", score=0.3, corrected=True)
    assert scored([first, Prediction(0, "b"), again]) == {1: again, 0: Prediction(0, "b")}


def test_test_time_crops_are_averaged_and_kept_per_crop(tiny, files):
    source = PhotoFiles(files[:3])
    centre = Predictor(tiny.model, tiny.transforms()).predict_all(source)
    ten = Predictor(tiny.model, tiny.transforms(crops=Crops.TENCROP), batch_size=2).predict_all(source)
    for c, t in zip(centre, ten, strict=True):
        assert len(t.crop_scores) == len(t.log_odds) == 10
        assert t.score == pytest.approx(float(np.mean(t.crop_scores)))
        assert t.crop_scores[4] == pytest.approx(c.score, abs=1e-6)  # the fifth window is the centre crop


def test_features_come_with_each_prediction_when_asked(tiny, files):
    preds = Predictor(tiny.model, tiny.transforms(crops=Crops.MIRROR), features=True).predict_all(PhotoFiles(files[:2]))
    assert all(p.features.shape == (2, 16) and p.features.dtype == np.float32 for p in preds)


def test_a_non_finite_score_is_an_error_not_a_score(tiny, files):
    with torch.no_grad():  # weights that pass every check but overflow to NaN logits
        tiny.model.fc.weight.fill_(3e38)
    preds = Predictor(tiny.model, tiny.transforms()).predict_all(PhotoFiles(files[:2]))
    assert [p.error for p in preds] == [NON_FINITE, NON_FINITE] and all(p.score is None for p in preds)


def test_sharded_runs_give_each_rank_its_share(tiny):
    """Under torchrun each rank predicts every world-th item; one process gets them all."""

    class Numbers:
        def __len__(self):
            return 7

        def name(self, i):
            return str(i)

        def load(self, i, transform, *, extras=True):
            from ilgnet_cli.data.source import Item

            return Item(torch.full((3, 64, 64), float(i)))

    predictor = Predictor(tiny.model, tiny.transforms())
    assert [p.index for p in predictor.predict(Numbers(), Dist(rank=1, world=3).shard(range(7)))] == [1, 4]
    assert [p.index for p in predictor.predict_all(Numbers())] == list(range(7))


def test_compiles_only_when_asked_or_big(tiny, files, monkeypatch):
    compiled = []
    monkeypatch.setattr(forward_module, "_compiled", lambda m, d: (compiled.append(m) or m, True))
    source = PhotoFiles(files[:3])
    base = Predictor(tiny.model, tiny.transforms(), precision="bf16").predict_all(source)
    assert compiled == []  # 3 photos: compiling would not pay
    again = Predictor(tiny.model, tiny.transforms(), precision="bf16", compile=True).predict_all(source)
    assert len(compiled) == 1
    np.testing.assert_allclose(_scores(again), _scores(base), atol=1e-6)
    assert {p.precision for p in again} == {"bf16"}
    Predictor(tiny.model, tiny.transforms(), precision="fp32", compile=True).predict_all(source)
    assert len(compiled) == 1  # fp32 is never compiled


def test_a_training_model_comes_back_training(tiny, files):
    """Training validates mid-run through the predictor: it must give the model back in training
    mode (it once left it in eval mode for good: no dropout after the first validation, and a
    resumed run trained differently from an uninterrupted one)."""
    tiny.model.train()
    preds = Predictor(tiny.model, tiny.transforms()).predict_all(PhotoFiles(files[:2]))
    assert tiny.model.training and all(p.ok for p in preds)
    tiny.model.eval()
    again = Predictor(tiny.model, tiny.transforms()).predict_all(PhotoFiles(files[:2]))
    assert not tiny.model.training and [p.score for p in again] == [p.score for p in preds]


def test_unknown_precisions_are_refused(tiny):
    from ilgnet_cli.errors import UsageError

    with pytest.raises(UsageError, match="precision must be one of"):
        Predictor(tiny.model, tiny.transforms(), precision="autocast")


# --------------------------------------------------------------------------- crash isolation


def _misbehave(path: str, decoded) -> dict:
    """Stands in for native decoder bugs: a segfault on 'boom' files, an endless loop on 'hang'."""
    name = Path(path).name
    if "boom" in name:
        os.kill(os.getpid(), signal.SIGSEGV)
    if "hang" in name:
        time.sleep(3600)
    return {}


@pytest.mark.slow  # torch notices a dead worker by polling every 5 s: each crash costs seconds
@pytest.mark.parametrize(("workers", "bad"), [(1, "boom"), (2, "boom"), (2, "hang")])
def test_a_crashing_or_hanging_decoder_costs_only_its_file(tmp_path, tiny, camera, monkeypatch, workers, bad):
    """Full-size photos: decoding the file after a good one takes long enough for the good one's
    result to reach the main process (see the next test for when it does not)."""
    monkeypatch.setattr(predictor_module, "DECODE_TIMEOUT_S", 2)
    paths = []
    for i, src in enumerate(camera(7)):
        paths.append(str(tmp_path / f"{i}_{bad if i == 3 else 'ok'}.jpg"))
        shutil.copy(src, paths[-1])
    predictor = Predictor(tiny.model, tiny.transforms(), batch_size=2, workers=workers)
    run = predictor.predict_all(PhotoFiles(paths, extra=_misbehave))
    assert [p.name for p in run] == paths
    assert [p.error for p in run] == [None] * 3 + [CRASH_REASON] + [None] * 3
    plain = Predictor(tiny.model, tiny.transforms(), batch_size=2).predict_all(PhotoFiles(paths[:3] + paths[4:]))
    np.testing.assert_allclose([p.score for p in run if p.ok], _scores(plain), atol=1e-6)


def test_decode_modes_reach_the_decoder(tiny, camera):
    """fast asks libjpeg for a DCT-scaled decode of a large JPEG; exact decodes every pixel."""
    big = next(str(p) for p in camera(12) if os.path.getsize(p) > 2_000_000)
    fast = Predictor(tiny.model, tiny.transforms(DecodeMode.FAST)).predict_all(PhotoFiles([big]))[0]
    exact = Predictor(tiny.model, tiny.transforms(DecodeMode.EXACT)).predict_all(PhotoFiles([big]))[0]
    reference = Predictor(tiny.model, tiny.transforms(DecodeMode.REFERENCE)).predict_all(PhotoFiles([big]))[0]
    assert (fast.decode, exact.decode, reference.decode) == ("fast-800", "exact", "reference-800")
    assert fast.score != exact.score and abs(fast.score - reference.score) < abs(fast.score - exact.score) + 0.05


class _Slow(torch.nn.Module):
    """A model as slow as ILGNet on a CPU: decoding workers run ahead of it."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.4)
        return self.model(x)


@pytest.mark.slow  # torch notices a dead worker by polling every 5 s
def test_the_file_before_a_quickly_crashing_one_is_not_blamed(tmp_path, tiny, files, monkeypatch):
    """Small photos decode in milliseconds: the worker dies on 'boom' before the main process has
    taken the previous photo's result. Only the crashing file may get the crash reason."""
    monkeypatch.setattr(predictor_module, "DECODE_TIMEOUT_S", 5)
    paths = []
    for i, src in enumerate(files[:6]):
        paths.append(str(tmp_path / f"{i}_{'boom' if i == 3 else 'ok'}.jpg"))
        shutil.copy(src, paths[-1])
    run = Predictor(_Slow(tiny.model), tiny.transforms(), batch_size=1, workers=1).predict_all(
        PhotoFiles(paths, extra=_misbehave))
    assert [p.error for p in run] == [None] * 3 + [CRASH_REASON] + [None] * 2
