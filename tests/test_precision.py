"""bf16 scoring: only where it is native and faithful (the guard), recorded, never mixed up with fp32."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import camera_photos, random_ilgnet_layers
from typer.testing import CliRunner

from ilgnet_cli.cli import app
from ilgnet_cli.data.decode import decode
from ilgnet_cli.model import precision, store
from ilgnet_cli.model.ilgnet import CaffeLRN, ILGNet, score_from_logits
from ilgnet_cli.model.transform import parse_mean, preprocess
from ilgnet_cli.training.metrics import spearman

runner = CliRunner()


def test_ranking_check_tolerates_ties_only():
    assert precision.ranking_kept([0.1, 0.5, 0.9], [0.11, 0.49, 0.91])
    assert not precision.ranking_kept([0.1, 0.5, 0.9], [0.1, 0.95, 0.9])
    assert precision.ranking_kept([0.5, 0.5005], [0.5006, 0.5])  # closer than TIE in fp32: may swap
    v = precision.judge([0.1, 0.5, 0.9], [0.1, 0.5, 0.91])
    assert not v.bf16 and v.max_delta == pytest.approx(0.01) and v.ranking_kept
    assert precision.judge([0.1, 0.5], [0.102, 0.499]).bf16


def test_bf16_copy_is_the_model_in_bf16_and_leaves_the_original_alone():
    model = ILGNet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copy = precision.bf16_model(model)
    assert not copy.training and model.training
    for k, v in copy.state_dict().items():
        assert v.dtype == torch.bfloat16 and torch.equal(v, before[k].to(torch.bfloat16)), k
    for k, v in model.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, before[k]), k
    assert all(a is not b for a, b in zip(copy.parameters(), model.parameters(), strict=True))


def test_a_non_finite_score_is_never_faithful():
    assert not precision.judge([0.50, 0.502, 0.503], [0.501, float("nan"), 0.503]).bf16
    assert not precision.judge([float("nan"), 0.5], [0.5, 0.5]).bf16


def test_verdicts_judged_by_other_bounds_are_judged_again(tmp_path):
    store = precision.VerdictStore(tmp_path / "precision.json")
    now = precision.judge([0.1, 0.5], [0.1, 0.5])
    store.put("abc", "cpu:x", now)
    assert store.get("abc", "cpu:x") == now
    # What an earlier ilgnet stored (tie 0.001, no rule recorded): refused then, maybe faithful now.
    old = {"bf16": False, "max_delta": 0.0014, "ranking_kept": False, "n": 32, "checked_at": "2026-11-30"}
    (tmp_path / "precision.json").write_text(json.dumps({"abc|cpu:x": old}))
    assert store.get("abc", "cpu:x") is None


def test_guard_accepts_faithful_bf16_on_densely_packed_scores():
    """A real collection packs 32 photos within a few hundredths: bf16 noise of 0.0014 (what it
    measures on random weights) swaps neighbours 0.002 apart, which is no change of order a
    photographer can see. Only pairs further apart than the score noise allowed must keep order."""
    p32 = [0.40 + 0.002 * i for i in range(32)]
    p16 = [p + (0.0014 if i % 2 == 0 else -0.0014) for i, p in enumerate(p32)]
    assert precision.judge(p32, p16).bf16
    far = precision.judge([0.500, 0.508], [0.5045, 0.5035])  # each moved < 0.005, but 0.008 apart: swapped
    assert not far.bf16 and not far.ranking_kept


def test_lrn_is_computed_in_fp32_for_bf16_inputs():
    x = torch.rand(2, 64, 28, 28) * 150  # activations reach ~100 after conv1
    lrn = CaffeLRN(5, alpha=1e-4, beta=0.75, k=1.0)
    ref = lrn(x)
    out = lrn(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert float(((out.float() - ref).abs() / ref.abs().clamp(min=1)).max()) < 8e-3  # bf16 rounding of the output only


def _save(tmp_path, layers, name: str):
    state = {}
    for layer, _, (w, b) in layers:
        key = layer.replace("/", ".")
        state[f"{key}.weight"], state[f"{key}.bias"] = w, b
    return store.save_weights(tmp_path / f"{name}.safetensors", state, "ava1")


def _fragile(tmp_path):
    """Weights whose two logits are large and nearly equal: bf16's 3 digits ruin their difference."""
    layers = random_ilgnet_layers(seed=1)
    for i, (layer, kind, (w, b)) in enumerate(layers):
        if layer == "loss1/classifier_cjy":
            rng = np.random.default_rng(0)
            big = rng.normal(size=w.shape[1]).astype(np.float32) * 0.5
            w = np.stack([big, big + w[1] - w[0]])
            layers[i] = (layer, kind, [w, b])
    return _save(tmp_path, layers, "fragile")


def _score(args, env):
    result = runner.invoke(app, ["score", *args, "--device", "cpu", "--workers", "0", "--json"], env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr


@pytest.mark.slow
def test_auto_uses_bf16_only_after_the_guard_and_remembers(tmp_path, weights_file):
    photos = [str(p) for p in camera_photos(10)]
    env = {"ILGNET_NATIVE_BF16": "1"}
    data, stderr = _score([*photos, "--weights", str(weights_file), "--no-cache"], env)
    assert {r["precision"] for r in data["results"]} == {"bf16"}
    assert "precision: bf16 (checked against fp32" in stderr
    assert json.loads((store.home() / "precision.json").read_text())  # the verdict is kept ...
    data2, stderr2 = _score([*photos, "--weights", str(weights_file), "--no-cache"], env)
    assert "precision:" not in stderr2  # ... so the guard runs once
    fp32, _ = _score([*photos, "--weights", str(weights_file), "--no-cache", "--precision", "fp32"], env)
    a = {r["path"]: r["score"] for r in data2["results"]}
    b = {r["path"]: r["score"] for r in fp32["results"]}
    assert max(abs(a[p] - b[p]) for p in photos) <= precision.MAX_DELTA
    assert {r["precision"] for r in fp32["results"]} == {"fp32"}


@pytest.mark.slow
def test_guard_keeps_fp32_for_weights_bf16_cannot_carry(tmp_path):
    weights = _fragile(tmp_path)
    photos = [str(p) for p in camera_photos(10)]
    data, stderr = _score([*photos, "--weights", str(weights), "--no-cache"], {"ILGNET_NATIVE_BF16": "1"})
    assert {r["precision"] for r in data["results"]} == {"fp32"}
    verdict = [line for line in stderr.splitlines() if line.startswith("precision:")]
    assert len(verdict) == 1 and "fp32: bf16 moved scores too much" in verdict[0] and "order changed" in verdict[0]
    ref, _ = _score([*photos, "--weights", str(weights), "--no-cache", "--precision", "fp32"], {})
    assert [r["score"] for r in data["results"]] == [r["score"] for r in ref["results"]]


def test_devices_without_native_bf16_keep_fp32(tmp_path, weights_file):
    photos = [str(p) for p in camera_photos(4)]
    data, stderr = _score([*photos, "--weights", str(weights_file), "--no-cache"], {"ILGNET_NATIVE_BF16": "0"})
    assert {r["precision"] for r in data["results"]} == {"fp32"} and "precision:" not in stderr
    assert not (store.home() / "precision.json").exists()  # no guard ran


def test_exact_means_fp32(weights_file):
    photo = str(camera_photos(1)[0])
    data, _ = _score([photo, "--weights", str(weights_file), "--exact", "--no-cache"], {"ILGNET_NATIVE_BF16": "1"})
    assert data["results"][0]["precision"] == "fp32"
    result = runner.invoke(app, ["score", photo, "--weights", str(weights_file), "--exact", "--precision", "bf16"])
    assert result.exit_code == 2 and "fp32" in result.output


@pytest.mark.slow
def test_cache_never_serves_bf16_scores_to_an_fp32_run(weights_file):
    photos = [str(p) for p in camera_photos(3)]
    base = [*photos, "--weights", str(weights_file)]
    bf16, _ = _score([*base, "--precision", "bf16"], {})
    assert {r["precision"] for r in bf16["results"]} == {"bf16"}
    fp32, _ = _score([*base, "--precision", "fp32"], {})
    assert fp32["summary"]["cache_hits"] == 0 and {r["precision"] for r in fp32["results"]} == {"fp32"}
    again, _ = _score([*base, "--precision", "bf16"], {})
    assert again["summary"]["cache_hits"] == 3  # fp32 scores are the better ones: reused


@pytest.mark.slow
def test_bf16_fidelity_on_the_shared_camera_photos(weights_file):
    """Random weights whose P(high) spreads over the photos: max |dP| and Spearman, bf16 vs fp32."""
    photos = camera_photos(24)
    mean = parse_mean("ava1")
    x = torch.stack([preprocess(decode(p, draft=256).rgb, mean) for p in photos]).contiguous(
        memory_format=torch.channels_last)
    model = store.load_model(str(weights_file)).model.eval()
    with torch.inference_mode():
        p32 = score_from_logits(model(x)).numpy()
        p16 = score_from_logits(precision.bf16_model(model)(x.to(torch.bfloat16))).numpy()
    delta = float(np.abs(p32 - p16).max())
    print(f"\nbf16 vs fp32 on {len(photos)} camera photos: max |dP| {delta:.4f}, "
          f"Spearman {spearman(p32, p16):.4f}, fp32 spread {p32.std():.3f}")
    assert p32.std() > 0.02  # the scores spread, so the ranking check means something
    assert delta <= precision.MAX_DELTA and spearman(p32, p16) >= 0.995


def test_bf16_copy_leaves_the_fp32_model_alone():
    model = ILGNet().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copy = precision.bf16_model(model)
    assert next(copy.parameters()).dtype == torch.bfloat16 and next(model.parameters()).dtype == torch.float32
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
