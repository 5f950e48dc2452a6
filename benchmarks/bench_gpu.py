"""GPU check: training throughput at batch 48 and 256 (bf16), data-loader share, peak memory,
and scoring 2,000 synthetic JPEGs. Runs on CPU too with small sizes (a smoke test).

    python benchmarks/bench_gpu.py                       # on a CUDA machine (scripts/gpu_check.sh)
    python benchmarks/bench_gpu.py --iters 2 --batches 4 --jpegs 8 --device cpu   # smoke test
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ilgnet_cli.model.ilgnet import ILGNet  # noqa: E402
from ilgnet_cli.model.transform import parse_mean  # noqa: E402
from ilgnet_cli.model.store import LoadedWeights  # noqa: E402
from ilgnet_cli.photos.scoring import run_score  # noqa: E402
from ilgnet_cli.training.train import TrainConfig, train  # noqa: E402


def synthetic_jpegs(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    for i in range(n):
        base = (np.sin(xx / rng.uniform(5, 60)) + np.cos(yy / rng.uniform(5, 60))) * 60 + 128
        img = np.clip(base[..., None] + rng.normal(0, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
        path = folder / f"{i + 1}.jpg"
        Image.fromarray(img).save(path, quality=90)
        out.append(path)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--batches", type=int, nargs="+", default=[48, 256])
    ap.add_argument("--jpegs", type=int, default=2000)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and args.device in ("auto", "cuda")
    tmp = Path(tempfile.mkdtemp(prefix="ilgnet-gpu-"))
    atexit.register(shutil.rmtree, tmp, True)  # 600 MB of weights per run otherwise left behind
    print(f"device {'cuda: ' + torch.cuda.get_device_name() if cuda else 'cpu'}; torch {torch.__version__}; "
          f"workers {args.workers}")
    n_train = max(args.batches) * 4
    images = synthetic_jpegs(tmp / "train" / "images", n_train, (256, 256))
    (tmp / "train" / "train.txt").write_text("".join(f"{p.stem}.jpg {int(p.stem) % 2}\n" for p in images))
    rows = []
    for batch in args.batches:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        cfg = TrainConfig(partition=tmp / "train", out=tmp / f"run{batch}", images=tmp / "train" / "images",
                          init="random", recipe="paper", iters=args.iters, batch_size=batch, workers=args.workers,
                          device="cuda" if cuda else "cpu", checkpoint_every=10**9, val_size=0, amp=True)
        t = time.perf_counter()
        summary = train(cfg)
        wall = time.perf_counter() - t
        last = json.loads((tmp / f"run{batch}" / "metrics.jsonl").read_text().splitlines()[-1])
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        rows.append((batch, summary["images_per_s"], last["data_wait_share"], peak, wall))
    print("\n| train batch (bf16) | images/s | data-loader share of step time | peak GPU memory (GiB) |")
    print("| ---: | ---: | ---: | ---: |")
    for batch, ips, share, peak, _ in rows:
        print(f"| {batch} | {ips:.1f} | {share:.1%} | {peak:.1f} |")
    files = synthetic_jpegs(tmp / "score", args.jpegs, (4000, 3000), seed=1)
    model = ILGNet().eval().to("cuda" if cuda else "cpu")
    lw = LoadedWeights(model=model, mean=parse_mean("ava1"), sha256="bench", name="random", path=Path("-"))
    t = time.perf_counter()
    run = run_score([str(f) for f in files], lw, device="cuda" if cuda else "cpu", batch_size=128,
                    workers=args.workers)
    dt = time.perf_counter() - t
    print(f"\nscored {run.stats.scored} synthetic 12 MP JPEGs in {dt:.1f}s: {run.stats.scored / dt:.1f} images/s")


if __name__ == "__main__":
    main()
