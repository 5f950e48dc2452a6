"""The fidelity gate (issue #19): every shortcut a run takes by default (bf16, fast JPEG decoding) is
checked against the faithful path on a bound that does not depend on the photos' confidence, on
sampled batches through the whole run, and a shortcut that fails a check is taken back: no score
served with it stays in the results."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from ilgnet_cli.data.source import Item, PhotoFiles
from ilgnet_cli.model.transform import DecodeMode, Transform, parse_mean
from ilgnet_cli.predict import gate as gate_module
from ilgnet_cli.predict.gate import ACCEPT, Gate, Shortcut, Verdict, VerdictStore, verdict_key
from ilgnet_cli.predict.predictor import Predictor

MEAN = parse_mean("ava1")


class Gain(nn.Module):
    """logits (0, gain * mean(x)): bf16 keeps 3 significant digits of the log-odds, so its error
    grows with their size, as in a trained model's large logits."""

    def __init__(self, gain: float) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(gain))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.float().mean(dim=(1, 2, 3)).to(x.dtype) * self.gain
        return torch.stack([torch.zeros_like(z), z], dim=1)


class Detail(nn.Module):
    """log-odds proportional to the fine detail of the picture (the energy of its Laplacian), like the
    blur model trained in the tests: the quantity decoding shortcuts change most."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = x.float().mean(dim=1)
        lap = 4 * g[:, 1:-1, 1:-1] - g[:, :-2, 1:-1] - g[:, 2:, 1:-1] - g[:, 1:-1, :-2] - g[:, 1:-1, 2:]
        z = lap.square().mean(dim=(1, 2)).sqrt() / 10
        return torch.stack([torch.zeros_like(z), z], dim=1).to(x.dtype)


class Tensors:
    """Ready model inputs as a source."""

    def __init__(self, values: list[float]) -> None:
        self.values = values

    def __len__(self) -> int:
        return len(self.values)

    def name(self, i: int) -> str:
        return f"item {i}"

    def load(self, i: int, transform: Transform, *, extras: bool = True) -> Item:
        return Item(torch.full((3, 8, 8), self.values[i]))


def _gate(tmp_path: Path, **keys: str) -> Gate:
    return Gate({Shortcut(k): v for k, v in keys.items()}, VerdictStore(tmp_path / "precision.json"))


def _final(preds) -> dict:
    out = {}
    for p in preds:
        out[p.index] = p
    return out


def test_the_bound_is_on_log_odds_so_confident_photos_cannot_hide_an_error(tmp_path):
    g = _gate(tmp_path, bf16="k")
    # P = 0.99995 both ways (dP ~ 1e-6) but log-odds 10.0 vs 10.05: a trained model's mid-range photo
    # would move by 0.05 / 4 = 0.0125 in P with the same error.
    assert not g.judge(Shortcut.BF16, [10.05, -9.0], [10.0, -9.0])
    assert g.verdicts[-1].shortcut is Shortcut.BF16 and not g.verdicts[-1].ok
    assert _gate(tmp_path / "b", bf16="k").judge(Shortcut.BF16, [0.004, 3.0], [0.0, 3.002])
    assert not _gate(tmp_path / "c", bf16="k").judge(Shortcut.BF16, [float("nan")], [0.0])


def test_confident_first_batch_does_not_let_bf16_through(tmp_path, monkeypatch):
    """The first batch holds only confident items; bf16 must still be judged on their log-odds."""
    monkeypatch.setenv("ILGNET_NATIVE_BF16", "1")
    values = [3.0] * 8 + [0.01] * 24  # log-odds ~300 (P = 1.0 in fp32 and bf16) first, mid-range after
    model = Gain(100.3)  # bf16 holds 100.5: the first batch's log-odds move by 0.6, its P by nothing
    ref = _final(Predictor(model, Transform(MEAN), precision="fp32", batch_size=8).predict(Tensors(values)))
    run = Predictor(model, Transform(MEAN), precision="auto", batch_size=8, gate=_gate(tmp_path, bf16="k"))
    got = _final(run.predict(Tensors(values)))
    assert {p.precision for p in got.values()} == {"fp32"}
    assert max(abs(got[i].score - ref[i].score) for i in ref) <= 0.005


def test_a_shortcut_failing_mid_run_is_taken_back_and_what_it_served_is_scored_again(tmp_path, monkeypatch):
    monkeypatch.setenv("ILGNET_NATIVE_BF16", "1")
    monkeypatch.setattr(gate_module, "BUDGET", 10.0)  # check every batch
    values = [0.002] * 16 + [0.6] * 16  # small log-odds (bf16 faithful) first, large ones after
    model = Gain(50.0)
    ref = _final(Predictor(model, Transform(MEAN), precision="fp32", batch_size=8).predict(Tensors(values)))
    gate = _gate(tmp_path, bf16="k")
    preds = list(Predictor(model, Transform(MEAN), precision="auto", batch_size=8, gate=gate).predict(Tensors(values)))
    first = [p for p in preds if not p.corrected]
    assert {p.precision for p in first[:16]} == {"bf16"}  # served in bf16 while the checks passed
    corrected = [p for p in preds if p.corrected]
    assert sorted(p.index for p in corrected) == list(range(16))  # every bf16 score is scored again
    final = _final(preds)
    assert {p.precision for p in final.values()} == {"fp32"}
    assert max(abs(final[i].score - ref[i].score) for i in ref) == 0.0
    assert [v.ok for v in gate.verdicts] == [False]


def test_a_stored_refusal_switches_the_shortcut_off_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("ILGNET_NATIVE_BF16", "1")
    store = VerdictStore(tmp_path / "precision.json")
    store.put("k", Verdict(Shortcut.BF16, False, 0.05, 8))
    p = Predictor(Gain(1.0), Transform(MEAN), precision="auto", gate=Gate({Shortcut.BF16: "k"}, store))
    assert p.served_precision == "fp32" and "bf16" in p.notes[0]


def test_verdicts_are_keyed_by_everything_that_can_change_them(tmp_path):
    base = dict(weights_sha256="ab" * 32, device="cpu:X", versions="torch 2.14.1, onednn 3.12.0")
    key = verdict_key(Shortcut.BF16, **base)
    store = VerdictStore(tmp_path / "precision.json")
    store.put(key, Verdict(Shortcut.BF16, False, 0.05, 8))
    assert Gate({Shortcut.BF16: key}, store).refused(Shortcut.BF16) is not None
    for other in (verdict_key(Shortcut.BF16, **{**base, "versions": "torch 2.15.0, onednn 3.13.0"}),
                  verdict_key(Shortcut.BF16, **base, compile=True),
                  verdict_key(Shortcut.BF16, **{**base, "device": "cuda:NVIDIA H200"}),
                  verdict_key(Shortcut.BF16, **{**base, "weights_sha256": "cd" * 32})):
        assert other != key
        assert Gate({Shortcut.BF16: other}, store).refused(Shortcut.BF16) is None
    assert gate_module.RULE in key  # a verdict judged by other bounds is judged again


def test_verdict_store_is_input_like_any_other(tmp_path):
    path = tmp_path / "precision.json"
    entry = {"shortcut": "bf16", "ok": "false", "max_error": 0.0, "checked": 9, "rule": gate_module.RULE}
    path.write_text(__import__("json").dumps({"k": entry}))
    assert VerdictStore(path).get("k") is None  # "false" is not false
    path.write_text("[" * 200_000)
    assert VerdictStore(path).get("k") is None  # nesting: no RecursionError
    path.unlink()
    import os

    os.mkfifo(path)
    assert VerdictStore(path).get("k") is None  # a FIFO is never read (it would block)


def test_fast_decoding_is_checked_and_taken_back_where_it_moves_scores(tmp_path, shared):
    """Small photos decode every pixel in fast mode too (nothing to check); the first large one is
    checked against the full-decode reference, and a detail-sensitive model refuses the shortcut."""
    camera = shared("photos", "camera")
    small = sorted(p for p in camera.glob("*.jpg") if p.stat().st_size < 400_000)[:3]
    large = [camera / "Canon_EOS-5D-Mark-III.jpg", camera / "Nikon_D90.jpg"]
    files = []
    for i, p in enumerate(small + large):
        files.append(tmp_path / f"{i:02d}_{p.name}")
        shutil.copy(p, files[-1])
    gate = _gate(tmp_path, decode="k")
    run = Predictor(Detail(), Transform(MEAN, decode=DecodeMode.FAST), batch_size=2, gate=gate)
    final = _final(run.predict(PhotoFiles(files)))
    ref = _final(Predictor(Detail(), Transform(MEAN, decode=DecodeMode.REFERENCE), batch_size=2)
                 .predict(PhotoFiles(files)))
    assert [v.shortcut for v in gate.verdicts] == [Shortcut.DECODE] and not gate.verdicts[0].ok
    assert gate.verdicts[0].max_error > ACCEPT
    for i in ref:
        assert final[i].score == pytest.approx(ref[i].score, abs=1e-6)
    assert run.transform.decode is DecodeMode.REFERENCE


def test_checks_keep_within_their_budget(tmp_path, monkeypatch):
    """After the first batch, a check runs only while checking has taken under 5% of the run."""
    monkeypatch.setenv("ILGNET_NATIVE_BF16", "1")
    gate = _gate(tmp_path, bf16="k")
    list(Predictor(Gain(0.01), Transform(MEAN), precision="auto", batch_size=4, gate=gate)
         .predict(Tensors([0.1] * 400)))
    tally = gate.tallies[Shortcut.BF16]
    assert 4 <= tally.checked < 400
    elapsed = max(1e-9, __import__("time").monotonic() - gate.started)
    assert gate.check_seconds <= gate_module.BUDGET * elapsed + 0.05


@pytest.mark.slow  # trains the blur model (about a minute on 2 cores)
def test_trained_model_confident_photos_first_default_stays_within_0005_of_fp32(tmp_path, monkeypatch, shared):
    """The held-out scenario: weights trained here, the camera photos renamed so that the most
    confident come first, batch 8: every default score within 0.005 of fp32."""
    from trained import make_task, train_task

    from ilgnet_cli.model import store
    from ilgnet_cli.photos.collection import score_collection

    monkeypatch.setenv("ILGNET_NATIVE_BF16", "1")
    camera = sorted(shared("photos", "camera").glob("*.jpg"))
    task = make_task(camera[:16], tmp_path / "task", "blur", crops_per_photo=4, test_photos=4)
    weights = store.load_model(str(train_task(task, tmp_path / "run", iters=20)))
    fp32 = score_collection(camera, weights=weights, precision="fp32", cache=False, workers=0)
    order = sorted(fp32.results, key=lambda r: -abs((r.score or 0.5) - 0.5))  # most confident first
    folder = tmp_path / "photos"
    folder.mkdir()
    names = {}
    for i, r in enumerate(order):
        target = folder / f"{i:03d}_{Path(r.path).name}"
        shutil.copy(r.path, target)
        names[str(target)] = r.score
    default = score_collection([folder], weights=weights, batch_size=8, cache=False, workers=0)
    reference = score_collection([folder], weights=weights, batch_size=8, cache=False, workers=0, precision="fp32")
    ref = {r.path: r.score for r in reference.results}
    assert len(ref) == len(camera)
    assert max(abs(r.score - ref[r.path]) for r in default.results) <= 0.005
