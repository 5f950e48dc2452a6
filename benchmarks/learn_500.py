"""`ilgnet learn` on 500 rated photos, end to end (ratings, decoding, features, grouped CV, install).

    python benchmarks/learn_500.py [--photos 500] [--data /tmp/ilgnet-learn-500] [--threads 2]
    python benchmarks/learn_500.py --photos 12 --data /tmp/ilgnet-learn-smoke   # smoke test

The photos are byte copies of the real camera JPEGs in ../shared/photos/camera (full size, so
decoding costs what it costs on a real shoot), each with an Adobe-style XMP sidecar: the scenes
of every other camera are liked (4-5 stars), the rest disliked (1-2 stars, some rejects). The
copies of one original are one scene for the grouping. `ilgnet learn` reads each photo once as
`ilgnet score` does (the fast decode: DCT-scaled to >= 1600 px, Lanczos to 800, the authors'
resize) with its mirror image, and fits a head on the pooled trunk features
(ILGNet.forward_features). Random base weights: the time does not depend on their values. The
command runs with this checkout's ilgnet_cli, ILGNET_HOME and ILGNET_DATA under --data, offline.
The issue's budget: under 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

SIDECAR = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           '<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="{r}"/>'
           '</rdf:RDF></x:xmpmeta>')


def make(data: Path, n: int) -> tuple[Path, Path]:
    from helpers import random_ilgnet_layers

    from ilgnet_cli.model.store import save_weights

    photos = sorted(p for p in (ROOT.parent / "shared" / "photos" / "camera").iterdir() if p.suffix.lower() == ".jpg")
    if not photos:
        sys.exit("needs ../shared/photos/camera")
    shoot = data / "rated"
    if shoot.exists():
        shutil.rmtree(shoot)
    shoot.mkdir(parents=True)
    for i in range(n):
        scene = i % len(photos)
        target = shoot / f"IMG_{i:04d}.jpg"
        shutil.copyfile(photos[scene], target)
        liked = scene % 2 == 0
        rating = (4 + i % 2) if liked else (-1 if i % 7 == 0 else 1 + i % 2)
        target.with_suffix(".xmp").write_text(SIDECAR.format(r=rating), encoding="utf-8")
    weights = data / "random.safetensors"
    if not weights.exists():
        state = {}
        for name, _, (w, b) in random_ilgnet_layers(seed=1):
            key = name.replace("/", ".")
            state[f"{key}.weight"], state[f"{key}.bias"] = w, b
        save_weights(weights, state, "ava1")
    return shoot, weights


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=500)
    ap.add_argument("--data", type=Path, default=Path("/tmp/ilgnet-learn-500"))
    ap.add_argument("--threads", type=int, default=2, help="CPU cores to pin the run to (taskset), 0: all")
    args = ap.parse_args()
    shoot, weights = make(args.data, args.photos)
    env = {**os.environ, "ILGNET_HOME": str(args.data / "home"), "ILGNET_DATA": str(args.data / "data"),
           "ILGNET_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "ilgnet_cli", "learn", str(shoot), "--name", "bench", "--base", str(weights),
           "--device", "cpu", "--force"]
    if args.threads and shutil.which("taskset"):
        cmd = ["taskset", "-c", ",".join(str(c) for c in range(args.threads))] + cmd
    started = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    print(proc.stdout[-3000:])
    print(proc.stderr[-2000:], file=sys.stderr)
    print(f"| photos | cores | wall time | exit |\n|---|---|---|---|\n"
          f"| {args.photos} | {args.threads or os.cpu_count()} | {elapsed:.1f} s | {proc.returncode} |")


if __name__ == "__main__":
    main()
