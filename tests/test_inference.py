"""The one inference loop (model/inference.py) and the one way of sharding by rank."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import camera_photos
from ilgnet_cli.photos.scoring import run_score, score_paths

from ilgnet_cli.model import inference, precision, store
from ilgnet_cli.runtime.distributed import Dist, current
from ilgnet_cli.runtime.forward import COMPILE_MIN_PHOTOS, Forward, eval_mode, infer, should_compile


class Tiny(torch.nn.Module):
    """Two logits from a conv: rows independent, like ILGNet; fast enough for exact checks."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4, 2)
        self.drop = torch.nn.Dropout(0.9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.conv(x).float().mean((2, 3)).to(x.dtype)))


def _p(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), eval_mode(model):
        return torch.softmax(model(x).float(), 1)[:, 1]


def test_tta_batches_average_their_crops():
    model, x = Tiny(), torch.randn(5, 3, 3, 12, 12)  # 5 images, 3 crops each
    p = Forward(model)(x)
    want = _p(model, x.reshape(15, 3, 12, 12)).view(5, 3).mean(1)
    assert p.shape == (5,) and p.dtype == torch.float32
    torch.testing.assert_close(p, want)


def test_infer_keeps_keys_passes_empty_batches_and_scores_a_training_model_in_eval_mode():
    model = Tiny().train()  # training validates mid-run: dropout must be off, then back on
    batches = [("a", torch.randn(2, 3, 8, 8)), ("b", None), ("c", torch.randn(1, 3, 8, 8))]
    out = list(infer(Forward(model), batches, torch.device("cpu")))
    assert model.training
    assert [k for k, _ in out] == ["a", "b", "c"] and out[1][1] is None
    torch.testing.assert_close(out[0][1], _p(model, batches[0][1]))
    with eval_mode(model):
        assert not model.training
    assert model.training


def test_compile_failure_falls_back_to_eager_with_the_same_scores(monkeypatch):
    calls = []

    def broken_compile(model, **_):
        def run(x):
            calls.append(x.shape[0])
            raise RuntimeError("inductor: no C compiler")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    model, x = Tiny(), torch.randn(4, 3, 8, 8)
    fwd = Forward(model, "bf16", compile=True)
    assert fwd.compiled
    p = fwd(x)
    assert calls == [4] and not fwd.compiled  # tried once, then eager for good
    torch.testing.assert_close(p, Forward(model, "bf16")(x))
    fwd(x)
    assert calls == [4]


def test_compiled_graph_sees_one_batch_size_short_batches_are_padded(monkeypatch):
    seen = []

    def fake_compile(model, **_):
        def run(x):
            seen.append(x.shape[0])
            return model(x)
        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = Tiny()
    fwd, eager = Forward(model, "bf16", compile=True), Forward(model, "bf16")
    full, short = torch.randn(6, 3, 8, 8), torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(fwd(full), eager(full))
    torch.testing.assert_close(fwd(short), eager(short))  # padding rows never leak into results
    assert seen == [6, 6]
    # A short FIRST batch (undecodable files left out) must not pin the graph to its size.
    seen.clear()
    fwd = Forward(model, "bf16", compile=True, batch=6)
    fwd(short)
    fwd(full)
    assert seen == [6, 6]


def test_scores_are_ordinary_tensors_and_the_bf16_copy_shares_nothing():
    model = Tiny()
    p = Forward(model)(torch.randn(2, 3, 8, 8))
    p.clamp_(0, 1)  # an inference tensor would refuse this outside inference mode
    half = Tiny().to(torch.bfloat16)
    copy = precision.bf16_model(half)
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(copy.parameters(), half.parameters(), strict=True))


def test_scoring_refuses_precisions_results_cannot_record(weights_file):
    loaded = store.load_model(str(weights_file))
    with pytest.raises(ValueError, match="unknown precision"):
        list(score_paths([str(camera_photos(1)[0])], loaded.model, loaded.mean, precision="autocast"))


def test_compile_where_it_pays():
    assert not should_compile(COMPILE_MIN_PHOTOS - 1, "guard", None)
    assert should_compile(COMPILE_MIN_PHOTOS, "guard", None)
    assert should_compile(COMPILE_MIN_PHOTOS, "bf16", None)
    assert not should_compile(10**9, "fp32", None)  # only the bf16 copy is compiled
    assert should_compile(1, "bf16", True) and not should_compile(10**9, "bf16", False)
    assert not should_compile(1, "fp32", True)


@pytest.mark.slow
def test_real_torch_compile_scores_like_eager(tmp_path, monkeypatch):
    monkeypatch.setenv("ILGNET_HOME", str(tmp_path))
    model, x = Tiny(), torch.randn(4, 3, 16, 16)
    fwd = Forward(model, "bf16", compile=True)
    p = fwd(x)
    assert fwd.compiled, "compiling failed on this machine (fell back to eager)"
    torch.testing.assert_close(p, Forward(model, "bf16")(x), atol=2e-2, rtol=0)
    assert (tmp_path / "compile-cache").is_dir()


@pytest.mark.slow
def test_run_score_compiles_only_when_asked_or_big(weights_file, monkeypatch):
    loaded = store.load_model(str(weights_file))
    compiled = []
    monkeypatch.setattr(inference, "_compiled", lambda m: (compiled.append(m) or m, True))
    files = [str(p) for p in camera_photos(3)]
    base = run_score(files, loaded, precision="bf16", extra=None)
    assert compiled == []  # 3 photos: compiling would not pay
    again = run_score(files, loaded, precision="bf16", extra=None, compile=True)
    assert len(compiled) == 1
    np.testing.assert_allclose([r.score for r in again.results], [r.score for r in base.results], atol=1e-6)
    assert {r.info["precision"] for r in again.results} == {"bf16"}


def test_every_item_goes_to_exactly_one_rank():
    items = list(range(23))
    shards = [Dist(rank=r, world=4).shard(items) for r in range(4)]
    assert sorted(i for s in shards for i in s) == items
    assert shards[1] == [1, 5, 9, 13, 17, 21]
    assert list(Dist(rank=2, world=3).shard(range(8))) == [2, 5]  # ranges stay ranges (eval's indices)
    assert current() == Dist()  # outside torchrun: rank 0 of 1
