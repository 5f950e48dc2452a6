"""How far each speed shortcut moves scores, measured on trained weights (issue #19).

    python benchmarks/bench_fidelity.py [--jpegs 200] [--train-iters 20] [--keep DIR]
    ILGNET_TEST_WEIGHTS=ilgnet-ava1 python benchmarks/bench_fidelity.py   # also the real weights

Weights:
  - trained blur: ILGNet trained here from random init on sharp vs blurred crops of the camera
    photos (tests/trained.py; keys on fine detail, what decoding shortcuts change most);
  - trained exposure: the same on well vs badly exposed crops (keys on global tone);
  - random-spread: random weights whose classifier is scaled down (tests/helpers.py): a lower
    bound, as their small logits hide errors that trained logits amplify;
  - real: the weights ILGNET_TEST_WEIGHTS names, if set.
Photos:
  (a) the JPEGs in ../shared/photos/camera (real camera files, 0.3-22 MP);
  (b) --jpegs real-sized JPEGs (12-24 MP), each a different window / scale / flip / quality
      (85-95) of a camera photo, written to a temp folder and removed afterwards.
Decode modes (ilgnet_cli.model.transform), each fed to the model in fp32:
  reference  every pixel, Lanczos to 800 px on the long side (AVA's largest), then the authors'
             INTER_LINEAR to 256x256 and centre crop;
  exact      the authors' pipeline (every pixel, INTER_LINEAR to 256x256: a 19x point-sampled
             downscale of a 24 MP photo);
  fast       libjpeg's DCT scaling to the smallest scale keeping >= 1600 px, then as reference
             (the default of `ilgnet score`, checked there by the fidelity gate);
  draft      DCT-scaled to just over 256 px, then INTER_LINEAR (ilgnet 0.2's default);
  fast@1/s   the same at a forced DCT scale 1/2, 1/4, 1/8 (Lanczos to 800 when larger);
  draft@1/s  the DCT scale straight into INTER_LINEAR (draft@1/8 ~ ilgnet 0.2's default);
and bf16 against fp32 on the fast and reference inputs.
For every pair it prints max and median |dP| (P = P(high)), max |d log-odds| (the fidelity
gate's measure: |dP| <= |d log-odds| / 4), and Spearman between the two score lists.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CAMERA = ROOT.parent / "shared" / "photos" / "camera"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from ilgnet_cli.ava.records import read_label_list  # noqa: E402
from ilgnet_cli.data.decode import decode  # noqa: E402
from ilgnet_cli.model import store  # noqa: E402
from ilgnet_cli.model.transform import CENTRE, REFERENCE_SIDE, antialias, resize_bilinear  # noqa: E402
from ilgnet_cli.predict.gate import ACCEPT, BOUND  # noqa: E402
from ilgnet_cli.runtime.forward import Forward  # noqa: E402
from ilgnet_cli.training.metrics import roc_auc, spearman  # noqa: E402

# 12-24 MP frames, landscape and portrait, in the aspect ratios cameras and phones write.
SIZES = [(4000, 3000), (4896, 3264), (5472, 3648), (6000, 4000), (4240, 2832), (3024, 4032), (3000, 4000),
         (4608, 3456), (5184, 3456), (4032, 3024), (3648, 5472), (5760, 3240)]
SCALES = (2, 4, 8)


def _resized(path: str) -> dict[str, np.ndarray]:
    """Every mode's 256x256 image of one JPEG (in a worker process)."""
    full = decode(path).rgb
    out = {"exact": resize_bilinear(full), "reference": resize_bilinear(antialias(full, REFERENCE_SIDE))}
    fast = decode(path, long_side=2 * REFERENCE_SIDE)  # as Transform(decode=fast) asks
    out["fast"] = resize_bilinear(antialias(fast.rgb, REFERENCE_SIDE))
    out["draft"] = resize_bilinear(decode(path, draft=256).rgb)  # ilgnet 0.2's default
    h, w = full.shape[:2]
    for s in SCALES:
        d = decode(path, draft=max(1, min(w, h) // s))  # both sides >= full/s: libjpeg picks 1/s
        if d.scale != s:
            continue  # too small a picture for this scale
        out[f"draft@1/{s}"] = resize_bilinear(d.rgb)
        out[f"fast@1/{s}"] = resize_bilinear(antialias(d.rgb, REFERENCE_SIDE))
    return out


def model_inputs(files: list[Path], workers: int) -> dict[str, dict[int, np.ndarray]]:
    """mode -> {photo index: 256x256 image}, decoded in ``workers`` processes."""
    by_mode: dict[str, dict[int, np.ndarray]] = {}
    with ProcessPoolExecutor(workers) as pool:
        for i, images in enumerate(pool.map(_resized, [str(f) for f in files], chunksize=2)):
            for mode, img in images.items():
                by_mode.setdefault(mode, {})[i] = img
    return by_mode


def log_odds(lw: store.LoadedWeights, images: dict[int, np.ndarray], bf16: bool = False) -> dict[int, float]:
    from ilgnet_cli.model.transform import to_blob

    keys = sorted(images)
    forward = Forward(lw.model, bf16=bf16)
    out: dict[int, float] = {}
    for start in range(0, len(keys), 32):
        chunk = keys[start:start + 32]
        x = torch.from_numpy(np.stack([to_blob(images[k], lw.mean, CENTRE, CENTRE) for k in chunk]))
        for k, v in zip(chunk, forward(x).log_odds[:, 0].tolist(), strict=True):
            out[k] = v
    return out


def compare(a: dict[int, float], b: dict[int, float]) -> tuple[int, float, float, float, float]:
    """(n, max |dP|, median |dP|, max |d log-odds|, Spearman) over the photos both have."""
    keys = sorted(set(a) & set(b))
    la, lb = np.array([a[k] for k in keys]), np.array([b[k] for k in keys])
    pa, pb = 1 / (1 + np.exp(-la)), 1 / (1 + np.exp(-lb))
    dp = np.abs(pa - pb)
    return len(keys), float(dp.max()), float(np.median(dp)), float(np.abs(la - lb).max()), spearman(pa, pb)


def make_jpegs(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` different 12-24 MP JPEGs: a random window of a camera photo (at least half of
    its width), rescaled to a camera frame size, flipped half the time, quality 85-95."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted(CAMERA.glob("*.jpg"))
    out = []
    for i in range(count):
        w, h = SIZES[int(rng.integers(len(SIZES)))]
        with Image.open(sources[i % len(sources)]) as src:
            img = src.convert("RGB")
        fit = min(img.width / w, img.height / h) * float(rng.uniform(0.5, 1.0))
        cw, ch = max(1, int(w * fit)), max(1, int(h * fit))
        left, top = int(rng.integers(0, img.width - cw + 1)), int(rng.integers(0, img.height - ch + 1))
        frame = img.crop((left, top, left + cw, top + ch)).resize((w, h), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            frame = frame.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path = folder / f"fid_{i:04d}.jpg"
        frame.save(path, "JPEG", quality=int(rng.integers(85, 96)))
        out.append(path)
    return out


def spread_weights(folder: Path) -> store.LoadedWeights:
    from helpers import random_ilgnet_layers

    state = {}
    for name, _, (w, b) in random_ilgnet_layers(seed=1):
        key = name.replace("/", ".")
        state[f"{key}.weight"], state[f"{key}.bias"] = w, b
    return store.load_model(str(store.save_weights(folder / "random-spread.safetensors", state, "ava1")))


def trained(task_name: str, folder: Path, iters: int) -> tuple[store.LoadedWeights, float]:
    """A model trained here on ``task_name`` (16 photos, 4 held out), and its held-out AUC."""
    from trained import make_task, train_task

    weights = folder / f"{task_name}.safetensors"
    task = folder / f"{task_name}-task"
    if not weights.exists():
        make_task(sorted(CAMERA.glob("*.jpg"))[:16], task, task_name, crops_per_photo=4, test_photos=4)
        shutil.copy(train_task(task, folder / f"{task_name}-run", iters), weights)
    lw = store.load_model(str(weights))
    items = read_label_list(task / "test.txt")
    images = {i: resize_bilinear(decode(task / "images" / f"{k}.jpg").rgb) for i, (k, _) in enumerate(items)}
    lo = log_odds(lw, images)
    return lw, roc_auc(np.array([label for _, label in items]), np.array([lo[i] for i in range(len(items))]))


def row(*cells: object) -> str:
    return "| " + " | ".join(f"{c:.4f}" if isinstance(c, float) else str(c) for c in cells) + " |"


def parse_args(doc: str | None, jpegs: tuple[int, str], *extra: tuple[str, int, str]) -> argparse.Namespace:
    """The options every fidelity benchmark shares (camera photos, the blur model, workers, a
    folder to keep the trained models in), plus ``extra`` integer options; exits without the photos."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jpegs", type=int, default=jpegs[0], help=jpegs[1])
    for flag, default, text in extra:
        ap.add_argument(flag, type=int, default=default, help=text)
    ap.add_argument("--train-iters", type=int, default=20, help="SGD steps for the blur model (batch 8)")
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--keep", type=Path, help="keep (and reuse) the trained models in this folder")
    args = ap.parse_args()
    if not CAMERA.is_dir():
        sys.exit(f"needs the shared camera photos in {CAMERA}")
    return args


def main() -> None:
    args = parse_args(__doc__, (200, "real-sized JPEGs made from the camera photos"),
                      ("--exposure-iters", 80, "SGD steps for the exposure model (batch 8)"))
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="ilgnet-bench-fidelity-"))
    models = args.keep or work
    models.mkdir(parents=True, exist_ok=True)
    try:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; decode-check bound: accept "
              f"|d log-odds| <= {ACCEPT} per shortcut, {BOUND} in all (|dP| <= {BOUND / 4})")
        kinds: dict[str, store.LoadedWeights] = {}
        for task, iters in (("blur", args.train_iters), ("exposure", args.exposure_iters)):
            t = time.perf_counter()
            lw, auc = trained(task, models, iters)
            kinds[f"trained {task} (AUC {auc:.2f})"] = lw
            print(f"trained {task}: held-out AUC {auc:.3f} ({time.perf_counter() - t:.0f} s)", flush=True)
        kinds["random-spread"] = spread_weights(work)
        real = os.environ.get("ILGNET_TEST_WEIGHTS")
        if real:
            kinds[f"real: {store.resolve(real)[0]}"] = store.load_model(real)
        jpegs = make_jpegs(work / "jpegs", args.jpegs)
        sets = {"camera photos": sorted(CAMERA.glob("*.jpg")), f"{len(jpegs)} JPEGs of 12-24 MP": jpegs}
        decode_rows, bf16_rows = [], []
        for set_name, files in sets.items():
            t = time.perf_counter()
            by_mode = model_inputs(files, args.workers)
            print(f"{set_name}: {len(files)} photos decoded every way in {time.perf_counter() - t:.0f} s", flush=True)
            for kind, lw in kinds.items():
                lo = {mode: log_odds(lw, imgs) for mode, imgs in by_mode.items()}
                for mode in lo:
                    if mode == "reference":
                        continue
                    vs_ref = compare(lo[mode], lo["reference"])
                    vs_exact = compare(lo[mode], lo["exact"]) if mode != "exact" else None
                    decode_rows.append(row(kind, set_name, mode, vs_ref[0], *vs_ref[1:],
                                           *(vs_exact[1:3] + vs_exact[4:] if vs_exact else ("-", "-", "-"))))
                    print(decode_rows[-1], flush=True)
                for mode in ("fast", "reference"):
                    b = log_odds(lw, by_mode[mode], bf16=True)
                    bf16_rows.append(row(kind, set_name, mode, *compare(b, lo[mode])))
                    print(bf16_rows[-1], flush=True)
        print("\n### Decode modes against the reference (and against --exact), fp32\n")
        print("| weights | photos | mode | n | max abs dP | median abs dP | max abs d log-odds | Spearman | "
              "vs exact: max abs dP | median abs dP | Spearman |")
        print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        print("\n".join(decode_rows))
        print("\n### bf16 against fp32 (same decoded input)\n")
        print("| weights | photos | decode | n | max abs dP | median abs dP | max abs d log-odds | Spearman |")
        print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
        print("\n".join(bf16_rows))
        print(f"\ntotal {time.perf_counter() - started:.0f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
