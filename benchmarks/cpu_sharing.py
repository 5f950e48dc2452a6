"""Why `ilgnet score` on a small CPU is bounded by decode + model sharing the same cores.

    python benchmarks/cpu_sharing.py [--images 200] [--repeats 5]

Uses the JPEGs of bench_score.py (made on first use in --data). Measures, in one run:
  1. model-only images/s with 1 and with 2 torch threads (does the model leave a core idle?);
  2. the 1/8-scale JPEG decode alone, one core, with Pillow and (if installed) OpenCV: the part
     of decoding no setting removes;
  3. the whole pipeline (bench_score's (a)) with OMP_WAIT_POLICY unset vs PASSIVE, alternating,
     each in a fresh process (the policy is read when torch loads OpenMP).
Random weights: speed does not depend on the values. Prints Markdown tables.
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
    lw = b.loaded_model()
    b.bench_pipeline(files[:40], lw, args.workers, 32, "cpu")  # warm-up: first fork, allocator
    print(json.dumps({"a": b.bench_pipeline(files, lw, args.workers, 32, "cpu")}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)))
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "ilgnet-bench")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    sys.path.insert(0, str(HERE))
    import bench_score as b
    import torch

    files = b.make_images(args.data, args.images)
    lw = b.loaded_model()
    print(f"{len(files)} JPEGs; cores {os.cpu_count()}; decode workers {args.workers}\n")

    print("| model only, batch 32 | images/s |\n| --- | ---: |")
    default_threads = torch.get_num_threads()
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        print(f"| {threads} torch thread(s) | {b.bench_model(lw.model, 32, 'cpu'):.2f} |")
    torch.set_num_threads(default_threads)

    print("\n| 1/8-scale JPEG decode alone, one core | ms per image |\n| --- | ---: |")
    sample = files[:40]
    print(f"| Pillow `draft` (what ilgnet uses) | {b.bench_jpeg_floor(sample):.1f} |")
    try:
        import cv2

        cv2.setNumThreads(1)
        t = time.perf_counter()
        for f in sample:
            cv2.imread(str(f), cv2.IMREAD_REDUCED_COLOR_8)
        print(f"| OpenCV `IMREAD_REDUCED_COLOR_8` | {1000 * (time.perf_counter() - t) / len(sample):.1f} |")
    except ImportError:
        print("| OpenCV | not installed |")

    runs: dict[str, list[float]] = {"unset": [], "PASSIVE": []}
    for _ in range(args.repeats):
        for policy in runs:
            env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
            if policy != "unset":
                env["OMP_WAIT_POLICY"] = policy
            out = subprocess.run([sys.executable, __file__, "--child", "--images", str(args.images),
                                  "--workers", str(args.workers), "--data", str(args.data)],
                                 env=env, capture_output=True, text=True, check=True)
            runs[policy].append(json.loads(out.stdout.strip().splitlines()[-1])["a"])
    print("\n| pipeline (a), OMP_WAIT_POLICY | runs (images/s) | mean |\n| --- | --- | ---: |")
    for policy, values in runs.items():
        print(f"| {policy} | {', '.join(f'{v:.2f}' for v in values)} | {statistics.mean(values):.2f} |")


if __name__ == "__main__":
    main()
