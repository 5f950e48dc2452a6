"""bf16 against fp32, side by side in one run: the model against this machine's own GEMM peak,
the pipeline against its shared-CPU bound, and `ilgnet score` default vs `--precision fp32`.

    python benchmarks/bench_precision.py --images 120 [--compile] [--threads 2]

Prints Markdown tables:
  1. GEMM peak (2048^3 matmul) per dtype, measured here, now;
  2. model only (preprocessed batches of 32, channels_last, inference mode): fp32 eager, bf16
     eager (bf16 weights + inputs) and, with --compile, bf16 under torch.compile; images/s and
     the fraction of the dtype's GEMM peak (ILGNet: 1.152 GMAC = 2.30 GFLOP per image);
  3. pipeline (a) = run_score (worker decoding, draft JPEG) per precision, next to decode-only
     (c) and the shared-CPU bound 1/(1/c + 1/d) with d = that precision's model-only speed;
  4. the `ilgnet score` command, default (auto: guard, then bf16 where native) vs
     `--precision fp32`, on real-sized JPEGs (12-24 MP, from ../shared/photos/camera): images/s,
     max |dP| and Spearman between the two score lists (random weights whose P(high) spreads).
Alternating repeats keep the two sides of every ratio under the same machine load.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
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

from bench_score import bench_decode, make_images  # noqa: E402
from ilgnet_cli.model.precision import bf16_model, native_bf16  # noqa: E402
from ilgnet_cli.photos.scoring import exif_extra, run_score  # noqa: E402

from ilgnet_cli.model.ilgnet import ILGNet  # noqa: E402
from ilgnet_cli.model.store import LoadedWeights, save_weights  # noqa: E402
from ilgnet_cli.model.transform import parse_mean  # noqa: E402
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


def random_weights(folder: Path) -> Path:
    from conftest import random_ilgnet_layers

    state = {}
    for name, _, (w, b) in random_ilgnet_layers(seed=1):
        key = name.replace("/", ".")
        state[f"{key}.weight"], state[f"{key}.bias"] = w, b
    return save_weights(folder / "random.safetensors", state, "ava1")


def cli_score(files: list[Path], weights: Path, home: Path, *extra: str) -> tuple[float, dict[str, float]]:
    env = {**os.environ, "ILGNET_HOME": str(home)}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ilgnet_cli", "score", *map(str, files), "--weights", str(weights),
                           "--no-cache", "--json", "--quiet", *extra], env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode:
        sys.exit(proc.stderr[-2000:])
    results = json.loads(proc.stdout)["results"]
    return len(files) / elapsed, {r["path"]: r["score"] for r in results}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=120)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also time bf16 under torch.compile")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "ilgnet-bench-images")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, native bf16: {native_bf16(torch.device('cpu'))}")

    peaks = {"fp32": [], "bf16": []}
    speeds: dict[str, list[float]] = {"fp32": [], "bf16": [], "bf16 compiled": []}
    model32 = ILGNet().eval().to(memory_format=torch.channels_last)
    model16 = bf16_model(model32)
    compiled = None
    if args.compile:
        t = time.perf_counter()
        compiled = torch.compile(model16)
        model_speed(compiled, torch.bfloat16, batches=1)
        print(f"torch.compile (bf16): {time.perf_counter() - t:.1f} s to compile and warm up")
    for _ in range(args.repeats):
        peaks["fp32"].append(gemm_peak(torch.float32))
        peaks["bf16"].append(gemm_peak(torch.bfloat16))
        speeds["fp32"].append(model_speed(model32, torch.float32))
        speeds["bf16"].append(model_speed(model16, torch.bfloat16))
        if compiled is not None:
            speeds["bf16 compiled"].append(model_speed(compiled, torch.bfloat16))
    peak = {k: float(np.median(v)) for k, v in peaks.items()}
    print("\n| GEMM 2048^3 | GFLOP/s |\n| --- | ---: |")
    for k, v in peak.items():
        print(f"| {k} | {v:.0f} |")
    print("\n| model only, batch 32 | images/s | GFLOP/s | fraction of its dtype's GEMM peak | vs fp32 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    d = {k: float(np.median(v)) for k, v in speeds.items() if v}
    for k, v in d.items():
        dtype = "fp32" if k == "fp32" else "bf16"
        print(f"| {k} | {v:.1f} | {v * GFLOP_PER_IMAGE:.0f} | {v * GFLOP_PER_IMAGE / peak[dtype]:.0%} | "
              f"{v / d['fp32']:.2f}x |")

    files = make_images(args.data, args.images)
    work = Path(tempfile.mkdtemp(prefix="ilgnet-bench-precision-"))
    atexit.register(shutil.rmtree, work, True)  # 600 MB of weights per run otherwise left behind
    weights = random_weights(work)
    workers = max(1, min(8, os.cpu_count() or 1))
    lw = LoadedWeights(model=ILGNet().eval(), mean=parse_mean("ava1"), sha256="bench", name="random", path=weights)
    a = {"fp32": [], "bf16": []}
    c = []
    for _ in range(args.repeats):
        c.append(bench_decode(files, workers, 32))
        for prec in ("fp32", "bf16"):
            t = time.perf_counter()
            run_score([str(f) for f in files], lw, batch_size=32, workers=workers, extra=exif_extra, precision=prec)
            a[prec].append(len(files) / (time.perf_counter() - t))
    cm = float(np.median(c))
    print(f"\n| pipeline (a), {len(files)} JPEGs, {workers} workers | (a) images/s | (c) decode-only | "
          f"(d) model-only | bound 1/(1/c+1/d) | (a) / bound |\n| --- | ---: | ---: | ---: | ---: | ---: |")
    for prec in ("fp32", "bf16"):
        am, bound = float(np.median(a[prec])), 1 / (1 / cm + 1 / d[prec])
        print(f"| {prec} | {am:.2f} | {cm:.2f} | {d[prec]:.2f} | {bound:.2f} | {am / bound:.2f} |")

    home = work / "home"
    runs = {"default": [], "fp32": []}
    scores = {}
    for _ in range(args.repeats):
        for name, extra in (("default", ()), ("fp32", ("--precision", "fp32"))):
            speed, scores[name] = cli_score(files, weights, home, *extra)
            runs[name].append(speed)
    p_default = np.array([scores["default"][str(f)] for f in files])
    p_fp32 = np.array([scores["fp32"][str(f)] for f in files])
    verdicts = json.loads((home / "precision.json").read_text()) if (home / "precision.json").exists() else {}
    chosen = "bf16" if any(v.get("bf16") for v in verdicts.values()) else "fp32"
    sd, sf = float(np.median(runs["default"])), float(np.median(runs["fp32"]))
    print(f"\n| `ilgnet score`, {len(files)} JPEGs (whole command) | images/s |\n| --- | ---: |")
    print(f"| default (auto -> {chosen}) | {sd:.2f} |\n| `--precision fp32` | {sf:.2f} |")
    print(f"\ndefault / fp32 = {sd / sf:.2f}x; max |dP| {np.abs(p_default - p_fp32).max():.4f}; "
          f"Spearman {spearman(p_default, p_fp32):.4f}; fp32 score spread (std) {p_fp32.std():.3f}")


if __name__ == "__main__":
    main()
