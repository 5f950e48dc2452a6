"""On a CUDA machine: bf16 (and TF32) fidelity with trained weights, the fidelity gate's cost,
scoring throughput per decode mode and precision, model-only throughput, and training throughput.

    bash scripts/gpu_check.sh                     # on a CUDA machine; prints Markdown tables
    python benchmarks/bench_gpu.py --device cpu --jpegs 8 --train-iters 2 --model-batches 2   # smoke test

Weights: a blur model and an exposure model trained here on crops of real camera photos
(tests/trained.py; on the GPU in seconds) and random-spread weights. Photos: --jpegs real-sized
(12-24 MP) JPEGs made from the camera photos in --photos (default ../shared/photos/camera).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_fidelity import SIZES, compare, spread_weights  # noqa: E402

from ilgnet_cli.data.decode import decode  # noqa: E402
from ilgnet_cli.model import store  # noqa: E402
from ilgnet_cli.model.transform import CENTRE, REFERENCE_SIDE, antialias, resize_bilinear, to_blob  # noqa: E402
from ilgnet_cli.runtime.forward import Forward  # noqa: E402


def _one_jpeg(job: tuple[str, str, int]) -> str:
    from PIL import Image

    source, path, seed = job
    rng = np.random.default_rng(seed)
    w, h = SIZES[int(rng.integers(len(SIZES)))]
    with Image.open(source) as src:
        img = src.convert("RGB")
    fit = min(img.width / w, img.height / h) * float(rng.uniform(0.5, 1.0))
    cw, ch = max(1, int(w * fit)), max(1, int(h * fit))
    left, top = int(rng.integers(0, img.width - cw + 1)), int(rng.integers(0, img.height - ch + 1))
    frame = img.crop((left, top, left + cw, top + ch)).resize((w, h), Image.Resampling.BICUBIC)
    frame.save(path, "JPEG", quality=int(rng.integers(85, 96)))
    return path


def make_jpegs(sources: list[Path], folder: Path, count: int, workers: int) -> list[Path]:
    """``count`` 12-24 MP JPEGs, each a random window of a camera photo at a camera frame size."""
    from concurrent.futures import ProcessPoolExecutor

    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(str(sources[i % len(sources)]), str(folder / f"g_{i:04d}.jpg"), i) for i in range(count)]
    with ProcessPoolExecutor(workers) as pool:
        return [Path(p) for p in pool.map(_one_jpeg, jobs, chunksize=2)]


def _inputs(path: str) -> tuple[np.ndarray, np.ndarray]:
    full = decode(path).rgb
    fast = decode(path, long_side=2 * REFERENCE_SIDE).rgb
    return resize_bilinear(antialias(fast)), resize_bilinear(antialias(full))


def log_odds(lw: store.LoadedWeights, images: list[np.ndarray], device: torch.device, *, bf16: bool,
             tf32: bool = False) -> dict[int, float]:
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    forward = Forward(lw.model.to(device), bf16=bf16)
    out: dict[int, float] = {}
    for start in range(0, len(images), 64):
        x = torch.from_numpy(np.stack([to_blob(im, lw.mean, CENTRE, CENTRE) for im in images[start:start + 64]]))
        for k, v in enumerate(forward(x.to(device)).log_odds[:, 0].tolist()):
            out[start + k] = v
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    return out


def row(*cells: object) -> str:
    return "| " + " | ".join(f"{c:.4f}" if isinstance(c, float) else str(c).replace("|", "\\|") for c in cells) + " |"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def model_speed(lw: store.LoadedWeights, device: torch.device, batch: int, batches: int) -> dict[str, float]:
    x = torch.randn(batch, 3, 227, 227, device=device)
    out = {}
    variants: tuple[tuple[str, dict], ...] = (("fp32", {}), ("bf16", {"bf16": True}),
                                              ("bf16 + torch.compile", {"bf16": True, "compile": True}))
    for label, kw in variants:
        forward = Forward(lw.model.to(device), batch=batch, **kw)
        for _ in range(3):
            forward(x)
        sync(device)
        t = time.perf_counter()
        for _ in range(batches):
            forward(x)
        sync(device)
        out[label] = batch * batches / (time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--photos", type=Path, default=ROOT.parent / "shared" / "photos" / "camera")
    ap.add_argument("--jpegs", type=int, default=400)
    ap.add_argument("--train-iters", type=int, default=40)
    ap.add_argument("--model-batches", type=int, default=30)
    ap.add_argument("--workers", type=int, default=min(14, os.cpu_count() or 1))
    args = ap.parse_args()
    device = torch.device(args.device)
    work = Path(tempfile.mkdtemp(prefix="ilgnet-bench-gpu-"))
    os.environ.setdefault("ILGNET_HOME", str(work / "home"))
    os.environ.setdefault("ILGNET_DATA", str(work / "data"))
    try:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        print(f"{name}; torch {torch.__version__}; {os.cpu_count()} CPUs; {args.workers} decode workers", flush=True)
        sources = sorted(args.photos.glob("*.jpg"))
        from trained import make_task, train_task

        from ilgnet_cli.training.evaluate import predict

        models: dict[str, store.LoadedWeights] = {}
        for task, iters in (("blur", args.train_iters), ("exposure", 4 * args.train_iters)):
            t = time.perf_counter()
            folder = make_task(sources[:16], work / task, task, crops_per_photo=4, test_photos=4)
            lw = store.load_model(str(train_task(folder, work / f"{task}-run", iters, device=args.device)), device)
            from ilgnet_cli.ava.records import read_label_list
            from ilgnet_cli.training.metrics import roc_auc

            items = read_label_list(folder / "test.txt")
            p = predict(lw.model, items, folder / "images", lw.transforms(), device=device)
            auc = roc_auc(np.array([label for _, label in items]), p)
            models[f"trained {task} (AUC {auc:.2f})"] = lw
            print(f"trained {task}: {iters} steps in {time.perf_counter() - t:.0f} s, held-out AUC {auc:.3f}",
                  flush=True)
        models["random-spread"] = spread_weights(work)
        t = time.perf_counter()
        jpegs = make_jpegs(sources, work / "jpegs", args.jpegs, args.workers)
        print(f"{len(jpegs)} JPEGs of 12-24 MP made in {time.perf_counter() - t:.0f} s", flush=True)
        from concurrent.futures import ProcessPoolExecutor

        t = time.perf_counter()
        with ProcessPoolExecutor(args.workers) as pool:
            pairs = list(pool.map(_inputs, [str(j) for j in jpegs], chunksize=4))
        fast, ref = [f for f, _ in pairs], [r for _, r in pairs]
        print(f"decoded fast and reference in {time.perf_counter() - t:.0f} s", flush=True)

        print("\n### fp32 alternatives against fp32 on this GPU (same decoded input)\n")
        print("| weights | compared | input | n | max abs dP | median abs dP | max abs d log-odds | Spearman |")
        print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for kind, lw in models.items():
            for label, images in (("fast", fast), ("reference", ref)):
                exact = log_odds(lw, images, device, bf16=False)
                print(row(kind, "bf16 vs fp32", label, *compare(log_odds(lw, images, device, bf16=True), exact)))
                if label == "reference":
                    print(row(kind, "TF32 vs fp32", label,
                              *compare(log_odds(lw, images, device, bf16=False, tf32=True), exact)))
            print(row(kind, "fast vs reference (fp32)", "-",
                      *compare(log_odds(lw, fast, device, bf16=False), log_odds(lw, ref, device, bf16=False))),
                  flush=True)

        from ilgnet_cli.photos.collection import score_files

        print("\n### Scoring throughput (score_files: workers decoding, batches of 64, EXIF, fidelity gate)\n")
        print("| weights | decode | precision | gate | images/s | served as | verdicts |")
        print("| --- | --- | --- | --- | ---: | --- | --- |")
        os.environ["ILGNET_NATIVE_BF16"] = "1" if device.type == "cuda" else os.environ.get("ILGNET_NATIVE_BF16", "0")
        for kind in (next(iter(models)), "random-spread"):
            lw = models[kind]
            for decode_mode, precision, gate in (("fast", "fp32", False), ("reference", "fp32", False),
                                                 ("fast", "bf16", False), ("fast", "auto", True)):
                (Path(os.environ["ILGNET_HOME"]) / "precision.json").unlink(missing_ok=True)  # judged afresh
                t = time.perf_counter()
                run = score_files([str(j) for j in jpegs], lw, transform=lw.transforms(decode_mode), device=device,
                                  batch_size=64, workers=args.workers, precision=precision, gate=gate)
                rate = len(jpegs) / (time.perf_counter() - t)
                served = sorted({f"{r.decode}/{r.precision}" for r in run.results if r.ok})
                print(row(kind, decode_mode, precision, "on" if gate else "off", f"{rate:.1f}", ", ".join(served),
                          "; ".join(run.notes) or "-"), flush=True)

        print("\n### Model only (random inputs, images/s)\n")
        lw = models["random-spread"]
        print("| batch | fp32 | bf16 | bf16 + torch.compile |")
        print("| ---: | ---: | ---: | ---: |")
        for batch in (32, 128):
            s = model_speed(lw, device, batch, args.model_batches)
            print(f"| {batch} | {s['fp32']:.0f} | {s['bf16']:.0f} | {s['bf16 + torch.compile']:.0f} |", flush=True)
        if device.type == "cuda":
            print(f"\npeak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
