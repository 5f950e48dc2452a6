"""bf16 fidelity measured on weights that learned something, not only on random ones (issue #13).

Random weights calibrated to spread P(high) (tests/test_precision.py) keep bf16 within 0.0012 of
fp32, but their classifier is scaled down 20x, which shrinks bf16's logit error with it. The blur
model trained here (sharp vs blurred crops, tests/blur_task.py; AUC about 0.98 after 20 steps)
is the honest case: measured max |dP| 0.009 on its held-out crops, 0.018 on the camera photos and
0.020 on 200 real-sized JPEGs, Spearman 0.9995-0.9998 (benchmarks/bench_fidelity.py).
Keeping its classifier in fp32 does not help (one probe: 0.015 on the camera photos): the error
comes from the bf16 trunk. So bf16 keeps the order but not the 0.005 bound, and what protects
users is the guard, which must then refuse bf16 and serve fp32 scores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import camera_photos, real_weights, shared_path
from ilgnet_cli.photos.scoring import run_score
from trained import make_blur_task

from ilgnet_cli.ava.records import read_label_list
from ilgnet_cli.model import precision, store
from ilgnet_cli.training.evaluate import predict
from ilgnet_cli.training.metrics import roc_auc, spearman
from ilgnet_cli.training.train import TrainConfig, train

MIN_SPEARMAN = 0.995


def _scores(files: list[Path], lw: store.LoadedWeights, prec: str) -> np.ndarray:
    run = run_score([str(f) for f in files], lw, batch_size=32, workers=0, extra=None, precision=prec)
    assert run.stats.scored == len(files)
    return np.array([r.score for r in run.results])


def _both(files: list[Path], lw: store.LoadedWeights) -> tuple[np.ndarray, np.ndarray]:
    return _scores(files, lw, "fp32"), _scores(files, lw, "bf16")


def _faithful(p32: np.ndarray, p16: np.ndarray) -> bool:
    return float(np.abs(p32 - p16).max()) <= precision.MAX_DELTA and spearman(p32, p16) >= MIN_SPEARMAN


@pytest.fixture(scope="module")
def blur_model(tmp_path_factory):
    """The blur model of tests/test_train.py: 20 steps of batch 8 from random init (about a minute)."""
    task = make_blur_task(camera_photos(16), tmp_path_factory.mktemp("blur"), crops_per_photo=4, test_photos=4)
    out = tmp_path_factory.mktemp("run")
    train(TrainConfig(partition=task, out=out, images=task / "images", init="random", recipe="fast", lr=1e-3,
                      iters=20, batch_size=8, dropout=0.0, workers=0, device="cpu", checkpoint_every=10, seed=0))
    lw = store.load_model(str(out / "checkpoints" / "last" / "model.safetensors"))
    items = read_label_list(task / "test.txt")
    files = [task / "images" / f"{i}.jpg" for i, _ in items]
    return lw, files, np.array([label for _, label in items]), task


def _fragile(lw: store.LoadedWeights, folder: Path) -> store.LoadedWeights:
    """``lw`` plus one large vector on both classifier rows: the same fp32 probabilities (softmax
    ignores a common shift), but large logits whose difference bf16's 3 digits cannot carry."""
    state = {k: v.detach().numpy().copy() for k, v in lw.model.state_dict().items()}
    key = "loss1.classifier_cjy.weight"
    state[key] = state[key] + np.random.default_rng(0).normal(size=state[key].shape[1]).astype(np.float32) * 0.5
    return store.load_model(str(store.save_weights(folder / "fragile.safetensors", state, lw.mean)))


@pytest.mark.slow  # trains the blur model (about a minute on 2 cores)
def test_trained_model_is_clearly_better_than_chance(blur_model):
    lw, _, labels, task = blur_model
    p = predict(lw.model, read_label_list(task / "test.txt"), task / "images", lw.mean, device=torch.device("cpu"))
    auc = roc_auc(labels, np.asarray(p))
    assert auc >= 0.7, auc  # held-out crops from 4 photos never trained on; measured 0.98


@pytest.mark.slow
def test_bf16_keeps_the_order_of_a_trained_model(blur_model):
    lw, files, _, _ = blur_model
    p32, p16 = _both(files, lw)
    assert p32.std() > 0.1  # sharp and blurred crops spread P, so the order means something
    assert spearman(p32, p16) >= MIN_SPEARMAN, spearman(p32, p16)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="measured: bf16 moves the trained blur model's P by up to 0.009 on held-out "
                   "crops (0.018 on camera photos), over MAX_DELTA 0.005; the guard refuses it (issue #13)")
def test_bf16_moves_a_trained_models_scores_less_than_the_guard_bound(blur_model):
    lw, files, _, _ = blur_model
    p32, p16 = _both(files, lw)
    assert _faithful(p32, p16), float(np.abs(p32 - p16).max())
    assert precision.judge(p32.tolist(), p16.tolist()).bf16


@pytest.mark.slow
def test_guard_serves_only_faithful_scores_for_a_trained_model(blur_model, monkeypatch):
    """Whatever bf16 does to these weights, `auto` must serve scores within MAX_DELTA of fp32."""
    monkeypatch.setenv("ILGNET_NATIVE_BF16", "1")
    assert precision.plan("auto", torch.device("cpu"), exact=False) == "guard"
    lw, files, _, _ = blur_model
    p32, p16 = _both(files, lw)
    verdicts: list[precision.Verdict] = []
    run = run_score([str(f) for f in files], lw, batch_size=len(files), workers=0, extra=None, precision="guard",
                    on_verdict=verdicts.append)
    served = np.array([r.score for r in run.results])
    (verdict,) = verdicts
    assert verdict.bf16 == (float(np.abs(p32 - p16).max()) <= precision.MAX_DELTA
                            and precision.ranking_kept(p32.tolist(), p16.tolist()))
    assert {r.info["precision"] for r in run.results} == {"bf16" if verdict.bf16 else "fp32"}
    assert float(np.abs(served - p32).max()) <= precision.MAX_DELTA


@pytest.mark.slow
def test_fidelity_check_tells_faithful_from_fragile_weights(blur_model, weights_file, tmp_path):
    lw, files, _, _ = blur_model
    spread = store.load_model(str(weights_file))  # the random weights whose P(high) spreads
    p32, p16 = _both(files, spread)
    assert _faithful(p32, p16) and precision.judge(p32.tolist(), p16.tolist()).bf16  # measured max |dP| 0.0012
    fragile = _fragile(lw, tmp_path)
    f32, f16 = _both(files, fragile)
    np.testing.assert_allclose(f32, _scores(files, lw, "fp32"), atol=1e-4)  # fp32 cannot tell them apart ...
    assert float(np.abs(f32 - f16).max()) > 2 * precision.MAX_DELTA  # ... bf16 can (measured 0.09)
    assert not _faithful(f32, f16) and not precision.judge(f32.tolist(), f16.tolist()).bf16


def test_real_weights_bf16_fidelity_on_the_camera_photos(monkeypatch):
    """The issue's bounds with the real ILGNet weights: ILGNET_TEST_WEIGHTS=ilgnet-ava1 (or a .safetensors path)."""
    lw = real_weights(monkeypatch)
    if lw is None:
        pytest.skip("real weights not given: set ILGNET_TEST_WEIGHTS to a store name or a .safetensors path")
    files = sorted(p for p in shared_path("photos", "camera").iterdir() if p.suffix.lower() == ".jpg")
    p32, p16 = _both(files, lw)
    delta, rho = float(np.abs(p32 - p16).max()), spearman(p32, p16)
    print(f"\n{lw.name}: bf16 vs fp32 on {len(files)} camera photos: max |dP| {delta:.5f}, Spearman {rho:.4f}")
    assert delta <= precision.MAX_DELTA and rho >= MIN_SPEARMAN, (delta, rho)
    assert precision.judge(p32.tolist(), p16.tolist()).bf16
