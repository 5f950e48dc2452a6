"""Where bf16 loses a trained ILGNet's fidelity, and which mixed-precision variant keeps it.

    python benchmarks/bench_bf16_layers.py [--train-iters 20] [--repeats 5] [--threads 2]
    python benchmarks/bench_bf16_layers.py --train-iters 1 --repeats 1 --images 4   # smoke test

Trains the sharp-vs-blurred ILGNet of benchmarks/bench_fidelity.py (its ``trained("blur")``:
tests/trained.py on crops of 16 camera photos, 4 held out), then on the blur task's held-out
crops and on the shared camera photos (the fast decode and centre crop, as ``ilgnet score`` feeds
the model by default: ``weights.transforms("fast")``) prints Markdown tables:

  1. per stage: relative error ||a_bf16 - a_fp32|| / ||a_fp32|| per image (mean, max) of the
     pre-ReLU output of each major layer, as it accumulates through the all-bf16 model; next to
     it the error the layer adds alone (fed the fp32 model's input, rounded to bf16), and the
     same layer emulated in fp32 on bf16-rounded operands (what an fp32-accumulating bf16 GEMM
     with an fp32 output would give): their gap is the cost of the bf16 output / accumulation;
     The last row is the absolute error of the log-odds (logit[high] - logit[low]), what the
     fidelity gate bounds (ilgnet_cli.predict.gate: BOUND 0.02, so |dP| <= 0.005);
  2. variants: all-bf16 except a set of modules run in fp32 (activations cast at their
     boundaries by a wrapper), fp32 with a few bf16 "islands", plus fp32 emulations that round
     only the weights or only the activations to bf16 (to attribute the error; not timed):
     max / mean |dP|, max |d log-odds| (the gate's measure) and Spearman per photo set, and
     model-only images/s (a batch of up to 32 held-out crops, preprocessed, inference_mode,
     channels_last) against fp32 and all-bf16 in the same run, alternating repeats (the machine
     is shared).

Mixed variants share their weights with one fp32 and one bf16 copy of the model (only the
module tree is rebuilt), so many variants fit in memory at once.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_fidelity import CAMERA, trained  # noqa: E402

from ilgnet_cli.ava.records import read_label_list  # noqa: E402
from ilgnet_cli.data.decode import DecodeError, decode  # noqa: E402
from ilgnet_cli.model.ilgnet import _Scope  # noqa: E402
from ilgnet_cli.model.transform import Transform  # noqa: E402
from ilgnet_cli.predict.gate import ACCEPT, BOUND  # noqa: E402
from ilgnet_cli.runtime.device import device_kind  # noqa: E402
from ilgnet_cli.runtime.forward import p_high  # noqa: E402
from ilgnet_cli.runtime.precision import bf16_model  # noqa: E402
from ilgnet_cli.training.metrics import spearman  # noqa: E402

BF16 = torch.bfloat16
CL = torch.channels_last
# The layers whose outputs the per-stage table follows, in forward order.
STAGES = ("conv1.7x7_s2", "conv2.3x3_reduce", "conv2.3x3", "inception_3a", "inception_3b", "inception_4a",
          "loss1.conv", "temp1", "temp2", "temp3", "temp_cjy", "loss1.classifier_cjy")
LOCAL_FC = ("temp1", "temp2")
HEAD = ("temp1", "temp2", "temp3", "temp_cjy", "loss1.classifier_cjy")
TRUNK = ("conv1", "conv2", "inception_3a", "inception_3b", "inception_4a", "loss1.conv")


class Cast(nn.Module):
    """Runs ``inner`` in fp32 inside a bf16 model: bf16 in, fp32 maths, bf16 out."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.float()).to(BF16)


class Island(nn.Module):
    """Runs the bf16 ``inner`` inside an fp32 model: fp32 in, bf16 maths, fp32 out."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.to(BF16)).float()


class Round(nn.Module):
    """Runs ``inner`` (fp32) on a bf16-rounded input and rounds its output: bf16 activations
    with fp32 weights and fp32 accumulation, emulated."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.to(BF16).float()).to(BF16).float()


def assemble(base: nn.Module, other: nn.Module, chosen: tuple[str, ...],
             wrap: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """``base``'s module tree with each module named in ``chosen`` (or under one) replaced by
    ``wrap(other's module of that name)``. Leaves are shared, not copied. A chosen name scope
    (``conv1``: the model indexes it, so it cannot be wrapped) passes the choice to its children."""

    def build(path: str, b: nn.Module, o: nn.Module, picked: bool = False) -> nn.Module:
        picked = picked or path in chosen
        if picked and not isinstance(b, _Scope):
            return wrap(o)
        if not b._modules:
            return b
        shell = copy.copy(b)
        shell._modules = {n: build(f"{path}.{n}" if path else n, c, o._modules[n], picked)  # type: ignore[arg-type]
                          for n, c in b._modules.items()}
        return shell

    return build("", base, other)


def rounded_weights(model: nn.Module, only: tuple[str, ...] | None = None) -> nn.Module:
    """An fp32 copy of ``model`` whose weights (of the modules under ``only``, or all) are
    rounded to bf16: the weight-quantisation error alone."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in out.named_parameters():
            if only is None or name.startswith(only):
                p.copy_(p.to(BF16).float())
    return out


@dataclass
class Variant:
    name: str
    model: nn.Module
    dtype: torch.dtype
    timed: bool


def logits(v: Variant, x: torch.Tensor, batch: int = 32) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([v.model(x[i:i + batch].to(v.dtype).contiguous(memory_format=CL)).float()
                          for i in range(0, len(x), batch)])


def scores(v: Variant, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(P(high), log-odds logit[high] - logit[low]) per image (one centre crop)."""
    out = logits(v, x)
    return p_high(out).numpy(), (out[:, 1] - out[:, 0]).numpy()


def load(files: list[Path], transform: Transform) -> torch.Tensor:
    """Model inputs as `ilgnet score` makes them with ``transform`` (decoded as its decode mode
    asks, centre crop); undecodable files skipped."""
    blobs = []
    for f in files:
        try:
            blobs.append(transform(decode(f, **transform.decode_request()).rgb))
        except DecodeError:
            continue
    return torch.stack(blobs)


def capture(model: nn.Module, x: torch.Tensor, dtype: torch.dtype) -> tuple[dict, dict]:
    """Inputs and outputs (fp32, pre-ReLU) of every STAGES module for the whole ``x``."""
    ins: dict[str, list] = {s: [] for s in STAGES}
    outs: dict[str, list] = {s: [] for s in STAGES}
    handles = []
    for s in STAGES:
        m = model.get_submodule(s)
        handles.append(m.register_forward_pre_hook(lambda _m, a, s=s: ins[s].append(a[0].float().clone())))
        handles.append(m.register_forward_hook(lambda _m, a, o, s=s: outs[s].append(o.float().clone())))
    try:
        logits(Variant("", model, dtype, False), x)
    finally:
        for h in handles:
            h.remove()
    return ({s: torch.cat(v) for s, v in ins.items()}, {s: torch.cat(v) for s, v in outs.items()})


def rel(a: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-image relative L2 error."""
    d = (a - ref).flatten(1).norm(dim=1)
    return d / ref.flatten(1).norm(dim=1).clamp_min(1e-30)


def local(module: nn.Module, x: torch.Tensor, batch: int = 32) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([module(x[i:i + batch].contiguous(memory_format=CL) if x.dim() == 4 else x[i:i + batch])
                          .float() for i in range(0, len(x), batch)])


def stage_table(m32: nn.Module, m16: nn.Module, x: torch.Tensor) -> list[str]:
    in32, out32 = capture(m32, x, torch.float32)
    _, out16 = capture(m16, x, BF16)
    rows = []
    for s in STAGES:
        acc = rel(out16[s], out32[s])
        alone = rel(local(m16.get_submodule(s), in32[s].to(BF16)), out32[s])
        emu = rel(local(emulate(m32.get_submodule(s)), in32[s]), out32[s])
        floor = rel(out32[s].to(BF16).float(), out32[s])
        rows.append(f"| {s} | {tuple(out32[s].shape[1:])} | {acc.mean():.2e} | {acc.max():.2e} | "
                    f"{alone.mean():.2e} | {alone.max():.2e} | {emu.mean():.2e} | {emu.max():.2e} | "
                    f"{floor.mean():.2e} |")
    diff32 = out32["loss1.classifier_cjy"] @ torch.tensor([-1.0, 1.0])
    diff16 = out16["loss1.classifier_cjy"] @ torch.tensor([-1.0, 1.0])
    d = (diff16 - diff32).abs()
    # Absolute, not relative: dP = P(1-P) * this <= this / 4, so the gate's bound of 0.02 here is
    # dP <= 0.005 at any P.
    rows.append(f"| log-odds l_high - l_low (absolute error; gate bound {BOUND}) | fp32 max abs "
                f"{diff32.abs().max():.2f} | {d.mean():.2e} | {d.max():.2e} | | | | | |")
    return rows


def emulate(module: nn.Module) -> nn.Module:
    """``module`` in fp32 maths on bf16 weights and bf16-rounded inputs and outputs of each of
    its convs / FCs (an inception block keeps its internal fp32 pooling and concat)."""
    rw = rounded_weights(module)
    leaves = tuple(n for n, m in rw.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    return assemble(rw, rw, leaves, Round)


def variants(m32: nn.Module, m16: nn.Module) -> list[Variant]:
    def mixed(name: str, keep: tuple[str, ...]) -> Variant:
        # An fp32 first layer is fed the fp32 input: bf16 would round the pixels (0-255) by up to 0.5.
        return Variant(name, assemble(m16, m32, keep, Cast), torch.float32 if "conv1" in keep else BF16, True)

    def island(name: str, only: tuple[str, ...]) -> Variant:
        return Variant(name, assemble(m32, m16, only, Island), torch.float32, True)

    def emulated(name: str, model: nn.Module, act: tuple[str, ...] = ()) -> Variant:
        return Variant(name, assemble(model, model, act, Round) if act else model, torch.float32, False)

    leaves = tuple(n for n, m in m32.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    fc = tuple(n for n in leaves if n in HEAD)
    return [
        Variant("fp32", m32, torch.float32, True),
        Variant("bf16 everywhere", m16, BF16, True),
        mixed("bf16, classifier fp32", ("loss1.classifier_cjy",)),
        mixed("bf16, FC head fp32 (temp1-3, temp_cjy, classifier)", HEAD),
        mixed("bf16, local FCs fp32 (temp1, temp2)", LOCAL_FC),
        mixed("bf16, conv1 fp32", ("conv1",)),
        mixed("bf16, conv1 + FC head fp32", ("conv1", *HEAD)),
        mixed("bf16, conv1 + conv2 fp32", ("conv1", "conv2")),
        mixed("bf16, conv1 + conv2 + FC head fp32", ("conv1", "conv2", *HEAD)),
        mixed("bf16 only in inception_3a/3b/4a", ("conv1", "conv2", "loss1.conv", *HEAD)),
        mixed("bf16, trunk fp32 (FC head bf16)", TRUNK),
        island("fp32, bf16 only in conv2 (3x3_reduce, 3x3)", ("conv2",)),
        island("fp32, bf16 only in local FCs (temp1, temp2)", LOCAL_FC),
        island("fp32, bf16 only in conv2 + local FCs", ("conv2", *LOCAL_FC)),
        emulated("emul: weights bf16 everywhere, fp32 maths", rounded_weights(m32)),
        emulated("emul: weights bf16 in FC head only", rounded_weights(m32, fc)),
        emulated("emul: weights bf16 in trunk only", rounded_weights(m32, tuple(n for n in leaves if n not in fc))),
        emulated("emul: activations bf16 at every conv/FC (fp32 weights)", m32, leaves),
        emulated("emul: activations bf16 at FC inputs/outputs only", m32, fc),
        emulated("emul: activations bf16 in trunk only", m32, tuple(n for n in leaves if n not in fc)),
    ]


def speeds(timed: list[Variant], x: torch.Tensor, repeats: int) -> dict[str, list[float]]:
    """images/s per variant, one batch each per repeat, variants interleaved (and rotated so none
    always runs right after the same neighbour)."""
    got: dict[str, list[float]] = {v.name: [] for v in timed}
    batch = [x.to(v.dtype).contiguous(memory_format=CL) for v in timed]
    with torch.inference_mode():
        for v, b in zip(timed, batch, strict=True):
            v.model(b)  # warm-up: oneDNN primitive creation, weight reorders
        for r in range(repeats):
            order = list(range(len(timed)))
            order = order[r % len(order):] + order[:r % len(order)]
            for i in order:
                t = time.perf_counter()
                timed[i].model(batch[i])
                got[timed[i].name].append(len(x) / (time.perf_counter() - t))
    return got


def fidelity(ref: tuple[np.ndarray, np.ndarray], got: tuple[np.ndarray, np.ndarray]) -> str:
    """max |dP|, mean |dP|, max |d log-odds| and Spearman of a variant's scores against fp32's."""
    (p32, lo32), (p, lo) = ref, got
    d = np.abs(p - p32)
    return f"{d.max():.5f} | {d.mean():.5f} | {np.abs(lo - lo32).max():.4f} | {spearman(p32, p):.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-iters", type=int, default=20, help="SGD steps for the blur model (batch 8)")
    ap.add_argument("--repeats", type=int, default=5, help="timed batches of 32 per variant")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, help="at most this many images per set (default: all)")
    args = ap.parse_args()
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="ilgnet-bench-bf16-layers-"))
    try:
        t = time.perf_counter()
        lw, auc = trained("blur", work, args.train_iters)
        task = work / "blur-task"
        torch.set_num_threads(args.threads)
        cpu = device_kind(torch.device("cpu"))
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}")
        print(f"trained blur model: {args.train_iters} steps, {time.perf_counter() - t:.0f} s, held-out AUC {auc:.3f}")
        crops = [task / "images" / f"{k}.jpg" for k, _ in read_label_list(task / "test.txt")]
        camera = sorted(CAMERA.glob("*.jpg"))
        transform = lw.transforms("fast")
        sets = {"held-out crops": load(crops[:args.images], transform),
                "camera photos": load(camera[:args.images], transform)}
        m32 = copy.deepcopy(lw.model).eval().to(memory_format=CL)
        m16 = bf16_model(lw.model)
        both = torch.cat(list(sets.values()))

        print(f"\n## 1. Per stage, all-bf16 vs fp32 ({len(both)} images: {', '.join(sets)})\n")
        print("| output of | shape | accumulated mean | accumulated max | layer alone mean | layer alone max | "
              "emulated fp32-acc mean | emulated fp32-acc max | fp32 output rounded to bf16, mean |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        print("\n".join(stage_table(m32, m16, both)), flush=True)

        vs = variants(m32, m16)
        ref = {k: scores(vs[0], x) for k, x in sets.items()}
        spread = ", ".join(f"{k} {p.std():.3f}" for k, (p, _) in ref.items())
        rows = {v.name: " | ".join(fidelity(ref[k], scores(v, x)) for k, x in sets.items()) for v in vs[1:]}
        timed = [v for v in vs if v.timed]
        sp = speeds(timed, sets["held-out crops"][:32], args.repeats)
        base = sp["fp32"]
        print(f"\n## 2. Variants (fp32 std of P: {spread}; fidelity gate: accept max |d log-odds| <= {ACCEPT} "
              f"per shortcut, bound {BOUND}, i.e. |dP| <= {BOUND / 4})\n")
        print("| variant | crops max dP | crops mean dP | crops max d log-odds | crops Spearman | camera max dP | "
              "camera mean dP | camera max d log-odds | camera Spearman | img/s (median) | "
              "x fp32 (median of per-repeat ratios) |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        print(f"| fp32 | 0 | 0 | 0 | 1 | 0 | 0 | 0 | 1 | {statistics.median(base):.1f} | 1.00 |")
        for v in vs[1:]:
            speed = "| n/a | n/a"
            if v.timed:
                ratio = statistics.median(a / b for a, b in zip(sp[v.name], base, strict=True))
                speed = f"| {statistics.median(sp[v.name]):.1f} | {ratio:.2f}"
            print(f"| {v.name} | {rows[v.name]} {speed} |")
        print(f"\ntotal {time.perf_counter() - started:.0f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
