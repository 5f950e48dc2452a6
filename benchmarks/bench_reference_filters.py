"""What the reference decode costs, and why a cheaper anti-aliasing filter is no cheaper reference.

    python benchmarks/bench_reference_filters.py [--jpegs 60] [--keep DIR]
    python benchmarks/bench_reference_filters.py --jpegs 4 --timing 2 --train-iters 2   # smoke test

Part 1, one core, per photo (the first --timing of the real-sized JPEGs): the steps of the
reference decode (full JPEG decode, NumPy to Pillow, Lanczos to 800 px) beside the fast decode's
DCT-scaled decode and the alternatives a faster reference could use (Lanczos with Pillow's
``reducing_gap``, bicubic, bilinear as torchvision's Resize uses, box).
Part 2: the trained blur model of bench_fidelity.py (keys on fine detail, the most sensitive to
resampling) scores --jpegs real-sized JPEGs through each alternative, and through the fast decode
followed by that alternative; max |d log-odds| against the Lanczos reference (the fidelity
gate's measure, accepted up to ACCEPT) and between the fast decode and each alternative.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_fidelity import compare, log_odds, make_jpegs, parse_args, trained  # noqa: E402
from PIL import Image  # noqa: E402

from ilgnet_cli.data.decode import decode  # noqa: E402
from ilgnet_cli.model.transform import REFERENCE_SIDE, resize_bilinear  # noqa: E402
from ilgnet_cli.predict.gate import ACCEPT  # noqa: E402

R = Image.Resampling
# name -> (Pillow filter, reducing_gap); "lanczos" is the reference's own resize.
FILTERS = {"lanczos": (R.LANCZOS, None), "lanczos gap 2": (R.LANCZOS, 2.0), "lanczos gap 3": (R.LANCZOS, 3.0),
           "bicubic": (R.BICUBIC, None), "bilinear": (R.BILINEAR, None), "box": (R.BOX, None)}


def _size(h: int, w: int) -> tuple[int, int]:
    scale = REFERENCE_SIDE / max(h, w)
    return max(1, round(w * scale)), max(1, round(h * scale))


def fit(rgb: np.ndarray, name: str) -> np.ndarray:
    """``rgb`` brought to the reference side with the filter ``name`` (never upscaled)."""
    h, w = rgb.shape[:2]
    if max(h, w) <= REFERENCE_SIDE:
        return rgb
    flt, gap = FILTERS[name]
    return np.asarray(Image.fromarray(rgb).resize(_size(h, w), flt, reducing_gap=gap))


def _inputs(path: str) -> dict[str, np.ndarray]:
    """Every variant's 256x256 image of one JPEG (in a worker process)."""
    full = decode(path).rgb
    fast = decode(path, long_side=2 * REFERENCE_SIDE).rgb  # as Transform(decode=fast) asks
    out = {f"full, {name}": resize_bilinear(fit(full, name)) for name in FILTERS}
    out.update({f"fast, {name}": resize_bilinear(fit(fast, name)) for name in FILTERS})
    return out


def _ms(fn, items) -> float:
    t = time.perf_counter()
    for item in items:
        fn(item)
    return 1000 * (time.perf_counter() - t) / len(items)


def timing(files: list[Path]) -> None:
    paths = [str(f) for f in files]
    fulls = [decode(p).rgb for p in paths]
    images = [Image.fromarray(a) for a in fulls]
    sizes = [_size(*a.shape[:2]) for a in fulls]
    rows = [("full JPEG decode (every pixel, EXIF orientation, to NumPy)", _ms(decode, paths)),
            ("fast decode (DCT-scaled to >= 1600 px)", _ms(lambda p: decode(p, long_side=2 * REFERENCE_SIDE), paths)),
            ("NumPy to Pillow (the reference's copy)", _ms(Image.fromarray, fulls))]
    for name, (flt, gap) in FILTERS.items():
        rows.append((f"{name} to {REFERENCE_SIDE} px from the full image",
                     _ms(lambda i, f=flt, g=gap: images[i].resize(sizes[i], f, reducing_gap=g), range(len(images)))))
    mp = np.mean([a.shape[0] * a.shape[1] for a in fulls]) / 1e6
    print(f"\n### One core, per photo ({len(files)} JPEGs, mean {mp:.1f} MP)\n")
    print("| step | ms |\n| --- | ---: |")
    for name, ms in rows:
        print(f"| {name} | {ms:.0f} |")


def main() -> None:
    args = parse_args(__doc__, (60, "real-sized JPEGs scored through every variant"),
                      ("--timing", 12, "of those, how many are timed (one core)"))
    work = Path(tempfile.mkdtemp(prefix="ilgnet-bench-filters-"))
    models = args.keep or work
    models.mkdir(parents=True, exist_ok=True)
    try:
        jpegs = make_jpegs(work / "jpegs", max(args.jpegs, args.timing))
        timing(jpegs[:args.timing])
        lw, auc = trained("blur", models, args.train_iters)
        by_variant: dict[str, dict[int, np.ndarray]] = {}
        with ProcessPoolExecutor(args.workers) as pool:
            for i, images in enumerate(pool.map(_inputs, [str(f) for f in jpegs[:args.jpegs]], chunksize=2)):
                for variant, img in images.items():
                    by_variant.setdefault(variant, {})[i] = img
        lo = {variant: log_odds(lw, imgs) for variant, imgs in by_variant.items()}
        reference = lo["full, lanczos"]
        print(f"\n### Trained blur model (held-out AUC {auc:.2f}), {args.jpegs} JPEGs: max |d log-odds| "
              f"(the gate accepts up to {ACCEPT})\n")
        print("| filter to 800 px | full decode + filter vs the reference | fast decode + filter vs full decode + "
              "the same filter |\n| --- | ---: | ---: |")
        for name in FILTERS:
            vs_ref = "-" if name == "lanczos" else f"{compare(lo[f'full, {name}'], reference)[3]:.4f}"
            print(f"| {name} | {vs_ref} | {compare(lo[f'fast, {name}'], lo[f'full, {name}'])[3]:.4f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
