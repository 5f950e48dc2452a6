"""bf16 against fp32, side by side in one run: the model against this machine's own GEMM peak,
the pipeline against its shared-CPU bound, and `ilgnet score` default vs `--precision fp32`.

    python benchmarks/bench_precision.py --images 120 [--compile] [--threads 2]
    python benchmarks/bench_precision.py --images 4 --repeats 1 --batch-size 2 --model-batches 1   # smoke test

Prints Markdown tables:
  1. GEMM peak (2048^3 matmul) per dtype, measured here, now;
  2. model only (preprocessed batches of --batch-size, channels_last, inference mode): fp32 eager,
     bf16 eager (bf16 weights + inputs) and, with --compile, bf16 under torch.compile; images/s
     and the fraction of the dtype's GEMM peak (ILGNet: 1.152 GMAC = 2.30 GFLOP per image);
  3. pipeline (a) = score_files as `ilgnet score` runs it (worker decoding, fast JPEG decode
     checked by the fidelity gate, batches, EXIF) with the precision forced to fp32 and to bf16,
     next to decode-only (c) (the same DataLoader, no model) and the shared-CPU bound
     1/(1/c + 1/d) with d = that precision's model-only speed;
  4. the `ilgnet score` command, default (fast decode; auto: bf16 where native and the fidelity
     gate accepts it, else fp32) vs `--precision fp32` (fast decode), on real-sized JPEGs (12-24
     MP, from ../shared/photos/camera): images/s, what each served (decode/precision), and max
     |dP|, max |d log-odds| (the gate's measure) and Spearman between the two score lists.
Weights: random-spread (tests/helpers.py: seeded, small logits, P(high) spreads) for 3 and 4;
the model-only speeds do not depend on the values. Alternating repeats keep the two sides of
every ratio under the same machine load. More images than --batch-size, or the runs take no
shortcut (score_files scores a run that fits in one batch with the reference decode in fp32).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

from bench_score import (  # noqa: E402
    bench_decode,
    bench_work,
    loaded_model,
    make_images,
    run_pipeline,
    served,
    served_transform,
    spread_file,
)

from ilgnet_cli.model.ilgnet import ILGNet  # noqa: E402
from ilgnet_cli.predict.gate import ACCEPT, BOUND  # noqa: E402
from ilgnet_cli.runtime.device import native_bf16  # noqa: E402
from ilgnet_cli.runtime.precision import bf16_model  # noqa: E402
from ilgnet_cli.training.metrics import spearman  # noqa: E402

GFLOP_PER_IMAGE = 2.304


def gemm_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def model_speed(model: torch.nn.Module, dtype: torch.dtype, batch: int = 32, batches: int = 4) -> float:
    x = (torch.randn(batch, 3, 227, 227) * 60).to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        model(x)
        t = time.perf_counter()
        for _ in range(batches):
            model(x)
    return batch * batches / (time.perf_counter() - t)


def cli_score(files: list[Path], weights: Path, home: Path, batch: int, *extra: str) -> tuple[float, dict, set]:
    """images/s of the whole command, {path: score}, {decode/precision served}."""
    env = {**os.environ, "ILGNET_HOME": str(home), "ILGNET_DATA": str(home / "data"), "ILGNET_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ilgnet_cli", "score", *map(str, files), "--weights", str(weights),
                           "--batch-size", str(batch), "--no-cache", "--json", "--quiet", *extra], env=env,
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode:
        sys.exit(proc.stderr[-2000:])
    results = json.loads(proc.stdout)["results"]
    return (len(files) / elapsed, {r["path"]: r["score"] for r in results},
            {f"{r['decode']}/{r['precision']}" for r in results})


def log_odds(p: np.ndarray) -> np.ndarray:
    """P(high) -> log-odds (one centre crop: the model's logit[high] - logit[low])."""
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return np.log(p / (1 - p))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=120)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32, help="model-only batches, pipeline and `ilgnet score`")
    ap.add_argument("--model-batches", type=int, default=4, help="timed batches per model-only measurement")
    ap.add_argument("--compile", action="store_true", help="also time bf16 under torch.compile")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)))
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "ilgnet-bench-images")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batch = args.batch_size
    print(f"torch {torch.__version__}, {args.threads} threads, native bf16: {native_bf16(torch.device('cpu'))}")

    peaks: dict[str, list[float]] = {"fp32": [], "bf16": []}
    speeds: dict[str, list[float]] = {"fp32": [], "bf16": [], "bf16 compiled": []}
    model32 = ILGNet().eval().to(memory_format=torch.channels_last)
    model16 = bf16_model(model32)
    compiled = None
    if args.compile:
        t = time.perf_counter()
        compiled = torch.compile(model16)
        model_speed(compiled, torch.bfloat16, batch, batches=1)
        print(f"torch.compile (bf16): {time.perf_counter() - t:.1f} s to compile and warm up")
    for _ in range(args.repeats):
        peaks["fp32"].append(gemm_peak(torch.float32))
        peaks["bf16"].append(gemm_peak(torch.bfloat16))
        speeds["fp32"].append(model_speed(model32, torch.float32, batch, args.model_batches))
        speeds["bf16"].append(model_speed(model16, torch.bfloat16, batch, args.model_batches))
        if compiled is not None:
            speeds["bf16 compiled"].append(model_speed(compiled, torch.bfloat16, batch, args.model_batches))
    del model32, model16, compiled
    peak = {k: float(np.median(v)) for k, v in peaks.items()}
    print("\n| GEMM 2048^3 | GFLOP/s |\n| --- | ---: |")
    for k, v in peak.items():
        print(f"| {k} | {v:.0f} |")
    print(f"\n| model only, batch {batch} | images/s | GFLOP/s | fraction of its dtype's GEMM peak | vs fp32 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    d = {k: float(np.median(v)) for k, v in speeds.items() if v}
    for k, v in d.items():
        dtype = "fp32" if k == "fp32" else "bf16"
        print(f"| {k} | {v:.1f} | {v * GFLOP_PER_IMAGE:.0f} | {v * GFLOP_PER_IMAGE / peak[dtype]:.0%} | "
              f"{v / d['fp32']:.2f}x |")

    files = make_images(args.data, args.images)
    if len(files) <= batch:
        print(f"\nnote: {len(files)} images fit in one batch of {batch}: the runs below take no shortcut "
              "(reference decode, fp32), unlike real ones")
    work = bench_work("ilgnet-bench-precision-")  # removed at exit: 600 MB of weights otherwise left behind
    weights = spread_file(work)
    lw = loaded_model("random-spread", work)
    workers = args.workers
    a: dict[str, list[float]] = {"fp32": [], "bf16": []}
    how: dict[str, str] = {}
    c = []
    for _ in range(args.repeats):
        runs = {}
        for prec in ("fp32", "bf16"):
            rate, runs[prec] = run_pipeline(files, lw, workers, batch, "cpu", prec)
            a[prec].append(rate)
            how[prec] = served(runs[prec])
        c.append(bench_decode(files, workers, batch, served_transform(lw, runs["fp32"])))
    cm = float(np.median(c))
    print(f"\n| pipeline (a), {len(files)} JPEGs, {workers} workers, batch {batch} | served as | (a) images/s | "
          f"(c) decode-only | (d) model-only | bound 1/(1/c+1/d) | (a) / bound |\n"
          f"| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for prec in ("fp32", "bf16"):
        am, bound = float(np.median(a[prec])), 1 / (1 / cm + 1 / d[prec])
        print(f"| {prec} | {how[prec]} | {am:.2f} | {cm:.2f} | {d[prec]:.2f} | {bound:.2f} | {am / bound:.2f} |")

    home = work / "cli-home"
    runs_cli: dict[str, list[float]] = {"default": [], "fp32": []}
    scores: dict[str, dict] = {}
    served_cli: dict[str, set] = {"default": set(), "fp32": set()}
    for _ in range(args.repeats):
        for name, extra in (("default", ()), ("fp32", ("--precision", "fp32"))):
            speed, scores[name], kinds = cli_score(files, weights, home, batch, *extra)
            runs_cli[name].append(speed)
            served_cli[name] |= kinds
    p_default = np.array([scores["default"][str(f)] for f in files])
    p_fp32 = np.array([scores["fp32"][str(f)] for f in files])
    sd, sf = float(np.median(runs_cli["default"])), float(np.median(runs_cli["fp32"]))
    print(f"\n| `ilgnet score`, {len(files)} JPEGs (whole command) | served as | images/s |\n| --- | --- | ---: |")
    print(f"| default (auto) | {', '.join(sorted(served_cli['default']))} | {sd:.2f} |")
    print(f"| `--precision fp32` | {', '.join(sorted(served_cli['fp32']))} | {sf:.2f} |")
    dlo = np.abs(log_odds(p_default) - log_odds(p_fp32)).max()
    print(f"\ndefault / fp32 = {sd / sf:.2f}x; max |dP| {np.abs(p_default - p_fp32).max():.4f}; "
          f"max |d log-odds| {dlo:.4f} (gate: accept {ACCEPT} per shortcut, bound {BOUND}); "
          f"Spearman {spearman(p_default, p_fp32):.4f}; fp32 score spread (std) {p_fp32.std():.3f}")


if __name__ == "__main__":
    main()
