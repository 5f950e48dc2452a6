"""Why `ilgnet score` on a small CPU is bounded by decode + model sharing the same cores.

    python benchmarks/cpu_sharing.py [--images 200] [--repeats 5]
    python benchmarks/cpu_sharing.py --images 4 --repeats 1 --batch-size 2   # smoke test

Uses the JPEGs of bench_score.py (made on first use in --data). Measures, in one run:
  1. model-only images/s (fp32) with 1 and with all torch threads (does the model leave a core idle?);
  2. the JPEG decode alone, one core, with Pillow and (if installed) OpenCV, at the DCT scale the
     default fast decode asks for (long side >= 1600 px: 1/2 for these 12-24 MP JPEGs) and at 1/8
     (the part of decoding no setting removes);
  3. the whole pipeline (bench_score's (a): score_files with the fast decode and the fidelity gate,
     --precision as `ilgnet score`'s) with OMP_WAIT_POLICY unset vs PASSIVE, alternating, each in a
     fresh process (the policy is read when torch loads OpenMP).
Seeded random-spread weights (bench_score.py: speed depends on the values only through the gate,
which accepts these). Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(args: argparse.Namespace) -> None:
    """Run in a subprocess: one pipeline measurement under this process's OMP_WAIT_POLICY."""
    import torch  # noqa: F401 - first: OpenMP reads the policy now, before bench_score sets its default

    sys.path.insert(0, str(HERE))
    import bench_score as b

    files = b.make_images(args.data, args.images)
    lw = b.loaded_model(args.weights)
    b.bench_pipeline(files[:40], lw, args.workers, args.batch_size, "cpu", args.precision)  # warm-up: first fork
    print(json.dumps({"a": b.bench_pipeline(files, lw, args.workers, args.batch_size, "cpu", args.precision)}))


def opencv_ms(files: list[Path], scales: list[int]) -> float:
    """ms per image for OpenCV's reduced decode at each file's scale (1, 2, 4 or 8), one thread."""
    import cv2

    flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
             8: cv2.IMREAD_REDUCED_COLOR_8}
    cv2.setNumThreads(1)
    t = time.perf_counter()
    for f, s in zip(files, scales, strict=True):
        cv2.imread(str(f), flags[s])
    return 1000 * (time.perf_counter() - t) / len(files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"), help="of the pipeline (3)")
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "ilgnet-bench")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    sys.path.insert(0, str(HERE))
    import bench_score as b
    import torch

    files = b.make_images(args.data, args.images)
    work = b.bench_work("ilgnet-bench-cpu-sharing-")
    weights = b.weights_arg("random-spread", work)
    lw = b.loaded_model(weights)
    print(f"{len(files)} JPEGs; cores {os.cpu_count()}; decode workers {args.workers}; batch {args.batch_size}\n")

    print(f"| model only (fp32), batch {args.batch_size} | images/s |\n| --- | ---: |")
    default_threads = torch.get_num_threads()
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        print(f"| {threads} torch thread(s) | {b.bench_model(lw.model, args.batch_size, 'cpu'):.2f} |")
    torch.set_num_threads(default_threads)

    sample = files[:40]
    fast = [b.fast_scale(f) for f in sample]
    fast_text = "/".join(f"1/{s}" for s in sorted(set(fast)))
    print(f"\n| JPEG decode alone, one core | fast decode's DCT scale ({fast_text}), ms per image | "
          "1/8 scale, ms per image |\n| --- | ---: | ---: |")
    print(f"| Pillow `draft` (what ilgnet uses) | {b.bench_jpeg_floor(sample, 'fast'):.1f} | "
          f"{b.bench_jpeg_floor(sample, '1/8'):.1f} |")
    try:
        print(f"| OpenCV `IMREAD_REDUCED_COLOR_N` | {opencv_ms(sample, fast):.1f} | "
              f"{opencv_ms(sample, [8] * len(sample)):.1f} |")
    except ImportError:
        print("| OpenCV | not installed | |")

    runs: dict[str, list[float]] = {"unset": [], "PASSIVE": []}
    for _ in range(args.repeats):
        for policy in runs:
            env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
            env["PYTHONPATH"] = str(HERE.parent)
            if policy != "unset":
                env["OMP_WAIT_POLICY"] = policy
            out = subprocess.run([sys.executable, __file__, "--child", "--images", str(args.images),
                                  "--workers", str(args.workers), "--data", str(args.data), "--batch-size",
                                  str(args.batch_size), "--precision", args.precision, "--weights", weights],
                                 env=env, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"child exited {out.returncode}: {out.stderr[-2000:]}")
            runs[policy].append(json.loads(out.stdout.strip().splitlines()[-1])["a"])
    print(f"\n| pipeline (a), precision {args.precision}, OMP_WAIT_POLICY | runs (images/s) | mean |\n"
          "| --- | --- | ---: |")
    for policy, values in runs.items():
        print(f"| {policy} | {', '.join(f'{v:.2f}' for v in values)} | {statistics.mean(values):.2f} |")


if __name__ == "__main__":
    main()
