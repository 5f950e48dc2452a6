"""One forward pass for every caller (runtime/forward.py): test-time crops averaged, eval mode
for the pass only, the bf16 copy, torch.compile with its fallbacks; and what a run is executed
on: the precision names, the device, and each rank's share of the work."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from helpers import TinyNet

from ilgnet_cli.errors import UsageError
from ilgnet_cli.runtime.device import backend_versions, device_kind, native_bf16, pick_device
from ilgnet_cli.runtime.distributed import Dist, current
from ilgnet_cli.runtime.forward import COMPILE_MIN_PHOTOS, Forward, eval_mode, p_high, private_folder, should_compile
from ilgnet_cli.runtime.precision import Precision, bf16_model


class Dropping(torch.nn.Module):
    """Two logits from a conv with heavy dropout: rows independent, like ILGNet; a training-mode
    pass would give different numbers every time."""

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


@pytest.fixture(autouse=True)
def compile_cache(tmp_path, monkeypatch):
    """Forward sets TORCHINDUCTOR_CACHE_DIR when it compiles; a value already there is kept, so
    this keeps every test's choice out of the process environment."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))


# --------------------------------------------------------------------------- the pass


def test_tta_batches_average_their_crops():
    model, x = Dropping(), torch.randn(5, 3, 3, 12, 12)  # 5 images, 3 crops each
    out = Forward(model)(x)
    assert out.logits.shape == (5, 3, 2) and out.log_odds.shape == (5, 3) and out.features is None
    want = _p(model, x.reshape(15, 3, 12, 12)).view(5, 3).mean(1)
    assert out.p_high.shape == (5,) and out.p_high.dtype == torch.float32
    torch.testing.assert_close(out.p_high, want)
    torch.testing.assert_close(out.log_odds, out.logits[..., 1] - out.logits[..., 0])
    plain = Forward(model)(x[:, 0])  # (n, 3, H, W): one crop each
    assert plain.logits.shape == (5, 1, 2)
    torch.testing.assert_close(p_high(plain.logits[:, 0]), _p(model, x[:, 0]))


def test_a_training_model_is_scored_in_eval_mode_and_left_training():
    """Training validates mid-run: dropout must be off for the pass, then back on."""
    model = Dropping().train()
    x = torch.randn(2, 3, 8, 8)
    a, b = Forward(model)(x), Forward(model)(x)
    assert model.training
    torch.testing.assert_close(a.logits, b.logits)
    torch.testing.assert_close(a.p_high, _p(model, x))
    with eval_mode(model):
        assert not model.training
    assert model.training


def test_outputs_are_ordinary_tensors_and_the_bf16_copy_shares_nothing():
    model = Dropping()
    out = Forward(model)(torch.randn(2, 3, 8, 8))
    out.logits.clamp_(0, 1)  # an inference tensor would refuse this outside inference mode
    half = Dropping().to(torch.bfloat16)
    copy = bf16_model(half)
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(copy.parameters(), half.parameters(), strict=True))


def test_features_come_with_the_logits_when_asked():
    model = TinyNet()
    x = torch.randn(3, 2, 3, 64, 64)
    out = Forward(model, features=True)(x)
    logits, feats = model.forward_features(x.reshape(6, 3, 64, 64))
    assert out.features.shape == (3, 2, 16)
    torch.testing.assert_close(out.features, feats.detach().reshape(3, 2, 16))
    torch.testing.assert_close(out.logits, logits.detach().reshape(3, 2, 2))


# --------------------------------------------------------------------------- bf16


def test_bf16_copy_is_the_model_in_bf16_and_leaves_the_original_alone():
    model = TinyNet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copy = bf16_model(model)
    assert not copy.training and model.training
    for k, v in copy.state_dict().items():
        assert v.dtype == torch.bfloat16 and torch.equal(v, before[k].to(torch.bfloat16)), k
    for k, v in model.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, before[k]), k
    assert all(a is not b for a, b in zip(copy.parameters(), model.parameters(), strict=True))


def test_bf16_pass_can_be_checked_against_fp32_and_dropped():
    model, x = TinyNet(gain=2.0), torch.randn(4, 3, 64, 64) * 60
    fp32 = Forward(model)(x)
    both = Forward(model, bf16=True)
    assert both.precision == "bf16"
    served = both(x)
    assert served.logits.dtype == torch.float32  # results are float32 whatever ran
    assert not torch.equal(served.logits, fp32.logits)  # bf16 rounds ...
    torch.testing.assert_close(served.logits, fp32.logits, atol=0.1, rtol=0.05)  # ... a little
    torch.testing.assert_close(both(x, fp32=True).logits, fp32.logits)  # a check sees the fp32 model
    both.drop_bf16()
    assert both.precision == "fp32" and both.bf16 is None
    torch.testing.assert_close(both(x).logits, fp32.logits)


# --------------------------------------------------------------------------- torch.compile


def test_compile_where_it_pays():
    assert not should_compile(COMPILE_MIN_PHOTOS - 1, True, None)
    assert should_compile(COMPILE_MIN_PHOTOS, True, None)
    assert not should_compile(10**9, False, None)  # only the bf16 copy is compiled
    assert should_compile(1, True, True) and not should_compile(10**9, True, False)
    assert not should_compile(1, False, True)


def test_compile_failure_falls_back_to_eager_with_the_same_scores(monkeypatch):
    calls = []

    def broken_compile(model, **_):
        def run(x):
            calls.append(x.shape[0])
            raise RuntimeError("inductor: no C compiler")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    model, x = Dropping(), torch.randn(4, 3, 8, 8)
    fwd = Forward(model, bf16=True, compile=True)
    assert fwd.compiled
    out = fwd(x)
    assert calls == [4] and not fwd.compiled  # tried once, then eager for good
    torch.testing.assert_close(out.logits, Forward(model, bf16=True)(x).logits)
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
    model = Dropping()
    fwd, eager = Forward(model, bf16=True, compile=True), Forward(model, bf16=True)
    full, short = torch.randn(6, 3, 8, 8), torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(fwd(full).logits, eager(full).logits)
    torch.testing.assert_close(fwd(short).logits, eager(short).logits)  # padding rows never leak into results
    assert seen == [6, 6]
    # A short FIRST batch (undecodable files left out) must not pin the graph to its size.
    seen.clear()
    fwd = Forward(model, bf16=True, compile=True, batch=6)
    fwd(short)
    fwd(full)
    assert seen == [6, 6]
    longer = torch.randn(9, 3, 8, 8)
    torch.testing.assert_close(fwd(longer).logits, eager(longer).logits)  # longer than the graph: eager
    assert seen == [6, 6]


def test_only_the_bf16_copy_is_compiled_and_never_with_features(monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, **_: compiled.append(model) or model)
    assert not Forward(TinyNet(), compile=True).compiled
    assert not Forward(TinyNet(), bf16=True, compile=True, features=True).compiled
    assert compiled == []


def test_compiled_graphs_are_kept_only_in_a_private_folder(tmp_path, monkeypatch):
    """Compiled graphs are code that runs: a folder others can write could be planted."""
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)
    assert private_folder(shared) and stat.S_IMODE(shared.stat().st_mode) == 0o700
    new = tmp_path / "new" / "cache"
    assert private_folder(new) and stat.S_IMODE(new.stat().st_mode) == 0o700
    os.symlink(shared, tmp_path / "link")
    assert not private_folder(tmp_path / "link")
    (tmp_path / "file").write_text("x")
    assert not private_folder(tmp_path / "file")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.setattr(torch, "compile", lambda model, **_: model)
    Forward(TinyNet(), bf16=True, compile=True, compile_dir=tmp_path / "link")
    chosen = os.environ["TORCHINDUCTOR_CACHE_DIR"]  # not the planted link: a fresh private folder
    assert chosen != str(tmp_path / "link") and stat.S_IMODE(os.stat(chosen).st_mode) == 0o700
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))  # a user's own choice stands
    Forward(TinyNet(), bf16=True, compile=True, compile_dir=tmp_path / "cache")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


@pytest.mark.slow
def test_real_torch_compile_scores_like_eager(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    model, x = Dropping(), torch.randn(4, 3, 16, 16)
    fwd = Forward(model, bf16=True, compile=True, compile_dir=tmp_path / "compile-cache")
    out = fwd(x)
    assert fwd.compiled, "compiling failed on this machine (fell back to eager)"
    torch.testing.assert_close(out.p_high, Forward(model, bf16=True)(x).p_high, atol=2e-2, rtol=0)
    assert (tmp_path / "compile-cache").is_dir()


# --------------------------------------------------------------------------- precision, device, ranks


def test_precision_names():
    assert Precision.parse("auto") is Precision.AUTO and Precision.parse(Precision.BF16) is Precision.BF16
    with pytest.raises(UsageError, match="precision must be one of auto, fp32, bf16") as info:
        Precision.parse("fp16")
    assert "\n" not in str(info.value)


def test_devices(monkeypatch):
    assert pick_device("cpu") == torch.device("cpu") and pick_device("CPU").type == "cpu"
    if not torch.cuda.is_available():
        assert pick_device("auto").type in ("cpu", "mps")
        with pytest.raises(UsageError, match="no CUDA device"):
            pick_device("cuda:0")
    for name in ("tpu", "cuda:x", "cpu:0", "../x"):
        with pytest.raises(UsageError):
            pick_device(name)
    assert device_kind(torch.device("cpu")).startswith("cpu:")
    assert f"torch {torch.__version__}" in backend_versions()
    monkeypatch.setenv("ILGNET_NATIVE_BF16", "1")
    assert native_bf16(torch.device("cpu"))
    monkeypatch.setenv("ILGNET_NATIVE_BF16", "0")
    assert not native_bf16(torch.device("cpu"))


def test_every_item_goes_to_exactly_one_rank():
    items = list(range(23))
    shards = [Dist(rank=r, world=4).shard(items) for r in range(4)]
    assert sorted(i for s in shards for i in s) == items
    assert shards[1] == [1, 5, 9, 13, 17, 21]
    assert list(Dist(rank=2, world=3).shard(range(8))) == [2, 5]  # ranges stay ranges (eval's indices)
    assert current() == Dist()  # outside torchrun: rank 0 of 1
    assert Dist().gather({"a": 1}) == [{"a": 1}] and Dist().main


def test_a_rank_leaves_the_job_after_a_barrier(monkeypatch):
    # A gloo rank exiting with its group alive aborted about every other torchrun eval (SIGABRT,
    # "terminate called without an active exception"): every sharded command ends with Dist.end.
    import torch.distributed as dist

    calls: list[str] = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append("destroy"))
    Dist().end()  # alone: nothing to leave
    assert calls == []
    Dist(rank=1, world=2).end()
    assert calls == ["barrier", "destroy"]
