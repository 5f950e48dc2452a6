"""How much does JPEG draft decoding (DCT-domain downscale) change the input and the score?

    python benchmarks/draft_vs_exact.py [--weights NAME_OR_FILE]

Over every JPEG in ../shared/photos/camera: the 227x227 model input with draft decoding vs a
full-resolution decode (mean and max |diff| in grey levels), and |score difference| (median
and max). Without --weights a seeded random ILGNet is used, whose score differences only show
the order of magnitude; pass the authors' weights for the real figure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ilgnet_cli.data.decode import decode  # noqa: E402
from ilgnet_cli.model.ilgnet import ILGNet, score_from_logits  # noqa: E402
from ilgnet_cli.model.transform import RESIZE, parse_mean, preprocess  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights")
    args = ap.parse_args()
    if args.weights:
        from ilgnet_cli.model.store import load_model

        lw = load_model(args.weights)
        model, mean = lw.model, lw.mean
    else:
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import random_ilgnet_layers

        torch.manual_seed(0)
        model, mean = ILGNet().eval(), parse_mean("ava1")
        state = {}
        for name, _, (w, b) in random_ilgnet_layers(seed=1):
            key = name.replace("/", ".")
            state[f"{key}.weight"], state[f"{key}.bias"] = torch.from_numpy(w), torch.from_numpy(b)
        model.load_state_dict(state)
    files = sorted((ROOT.parent / "shared" / "photos" / "camera").glob("*.jpg"))
    pix_mean, pix_max, dscore = [], [], []
    with torch.inference_mode():
        for f in files:
            a = preprocess(decode(f, draft=RESIZE).rgb, mean)
            b = preprocess(decode(f).rgb, mean)
            diff = (a - b).abs()
            pix_mean.append(float(diff.mean()))
            pix_max.append(float(diff.max()))
            s = score_from_logits(model(torch.stack([a, b])))
            dscore.append(abs(float(s[0] - s[1])))
    print(f"{len(files)} camera JPEGs; weights: {args.weights or 'random (seed 1)'}")
    print("| quantity | median | max |\n| --- | ---: | ---: |")
    print(f"| mean abs input difference (grey levels) | {np.median(pix_mean):.2f} | {max(pix_mean):.2f} |")
    print(f"| abs score difference | {np.median(dscore):.4f} | {max(dscore):.4f} |")


if __name__ == "__main__":
    main()
