"""bf16 fidelity, measured: bf16 vs fp32 scores of the same photos through ``run_score``.

    python benchmarks/bench_fidelity.py [--jpegs 200] [--train-iters 20]
    ILGNET_TEST_WEIGHTS=ilgnet-ava1 python benchmarks/bench_fidelity.py   # also the real weights

For each weights kind
  - random-spread: random ILGNet weights calibrated so that P(high) spreads over real photos
    (tests/conftest.py::random_ilgnet_layers, seed 1, as the scoring tests use);
  - trained blur: ILGNet trained here from random init, on CPU, on the sharp-vs-blurred task
    (tests/blur_task.py; the recipe of tests/test_train.py), its held-out AUC printed;
  - fragile control: the trained model with one large vector added to both classifier rows.
    In exact arithmetic this changes no probability (softmax ignores a common shift), but bf16
    keeps 3 digits of the two large logits and loses their difference: the guard must refuse it;
  - real: the weights ILGNET_TEST_WEIGHTS names (a store name or a .safetensors path), if set;
and each photo set
  (a) every photo in ../shared/photos/camera (real camera files, 0.3-24 MP, JPEG and HEIC);
  (b) --jpegs real-sized JPEGs (12-24 MP), each a different crop / scale / flip / quality
      (85-95) of a camera photo, written to a temp dir and removed afterwards;
  (c) the blur task's held-out crops (sharp and blurred, from photos never trained on);
it prints max |dP| and mean |dP| (P = P(high)), Spearman between the two score lists, the
fp32 spread (std of P) so a reader can tell whether ranking means anything, and the verdict of
the guard's judge (ilgnet_cli.model.precision.judge) on the whole set (stricter: more pairs
whose order can flip) and on the first 32 photos, the batch a real run's guard judges.
ILGNET_NATIVE_BF16=1 is set so that precision.plan chooses the guard on any CPU
(bf16 is then exercised even where it is emulated and slow).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["ILGNET_NATIVE_BF16"] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CAMERA = ROOT.parent / "shared" / "photos" / "camera"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from ilgnet_cli.ava.records import read_label_list  # noqa: E402
from ilgnet_cli.model import precision, store  # noqa: E402
from ilgnet_cli.photos.scoring import run_score  # noqa: E402
from ilgnet_cli.training.evaluate import predict  # noqa: E402
from ilgnet_cli.training.metrics import roc_auc, spearman  # noqa: E402
from ilgnet_cli.training.train import TrainConfig, train  # noqa: E402

# 12-24 MP frames, landscape and portrait, in the aspect ratios cameras and phones write.
SIZES = [(4000, 3000), (4896, 3264), (5472, 3648), (6000, 4000), (4240, 2832), (3024, 4032), (3000, 4000),
         (4608, 3456), (5184, 3456), (4032, 3024), (3648, 5472), (5760, 3240)]


@dataclass(frozen=True)
class Fidelity:
    n: int
    max_delta: float
    mean_delta: float
    spearman: float
    spread: float  # std of the fp32 scores
    verdict: precision.Verdict  # the judge on all n
    first_batch: precision.Verdict  # on the first 32: what a real run's guard decides


def measure(p32: np.ndarray, p16: np.ndarray, batch: int = 32) -> Fidelity:
    delta = np.abs(p32 - p16)
    return Fidelity(n=len(p32), max_delta=float(delta.max()), mean_delta=float(delta.mean()),
                    spearman=spearman(p32, p16), spread=float(p32.std()),
                    verdict=precision.judge(p32.tolist(), p16.tolist()),
                    first_batch=precision.judge(p32[:batch].tolist(), p16[:batch].tolist()))


def scores(files: list[Path], lw: store.LoadedWeights, prec: str, workers: int) -> np.ndarray:
    run = run_score([str(f) for f in files], lw, batch_size=32, workers=workers, extra=None, precision=prec)
    got = {r.path: r.score for r in run.results if r.ok}
    return np.array([got[str(f)] for f in files if str(f) in got])


def camera_files() -> list[Path]:
    files = sorted(p for p in CAMERA.iterdir() if p.is_file()) if CAMERA.is_dir() else []
    if not files:
        sys.exit(f"needs the shared camera photos in {CAMERA}")
    return files


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
        # The largest window of the frame's aspect that fits, then a random fraction of it.
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
    from conftest import random_ilgnet_layers

    state = {}
    for name, _, (w, b) in random_ilgnet_layers(seed=1):
        key = name.replace("/", ".")
        state[f"{key}.weight"], state[f"{key}.bias"] = w, b
    return store.load_model(str(store.save_weights(folder / "random-spread.safetensors", state, "ava1")))


def train_blur(folder: Path, iters: int) -> tuple[store.LoadedWeights, Path, float]:
    """The blur model of tests/test_train.py (16 photos, 4 held out); returns it, the task, its AUC."""
    from blur_task import make_blur_task

    task = make_blur_task(sorted(CAMERA.glob("*.jpg"))[:16], folder / "blur", crops_per_photo=4, test_photos=4)
    cfg = TrainConfig(partition=task, out=folder / "run", images=task / "images", init="random", recipe="fast",
                      lr=1e-3, iters=iters, batch_size=8, dropout=0.0, workers=0, device="cpu",
                      checkpoint_every=max(1, iters // 2), seed=0)
    train(cfg)
    lw = store.load_model(str(folder / "run" / "checkpoints" / "last" / "model.safetensors"))
    items = read_label_list(task / "test.txt")
    p = predict(lw.model, items, task / "images", lw.mean, device=torch.device("cpu"))
    return lw, task, roc_auc(np.array([label for _, label in items]), p)


def fragile(lw: store.LoadedWeights, folder: Path) -> store.LoadedWeights:
    """``lw`` with a common vector of size ~1000x its classifier rows added to both rows."""
    state = {k: v.detach().clone() for k, v in lw.model.state_dict().items()}
    key = "loss1.classifier_cjy.weight"
    common = torch.from_numpy(np.random.default_rng(0).normal(size=state[key].shape[1]).astype(np.float32))
    state[key] = state[key] + common * 0.5
    path = store.save_weights(folder / "fragile.safetensors", {k: v.numpy() for k, v in state.items()}, lw.mean)
    return store.load_model(str(path))


def crop_files(task: Path) -> list[Path]:
    return [task / "images" / f"{i}.jpg" for i, _ in read_label_list(task / "test.txt")]


def says(v: precision.Verdict) -> str:
    why = [w for w, bad in ((f"dP > {precision.MAX_DELTA}", v.max_delta > precision.MAX_DELTA),
                            ("order changed", not v.ranking_kept)) if bad]
    return "accepts" if v.bf16 else f"refuses ({', '.join(why)})"


def row(kind: str, photos: str, f: Fidelity) -> str:
    return (f"| {kind} | {photos} | {f.n} | {f.max_delta:.5f} | {f.mean_delta:.5f} | {f.spearman:.4f} | "
            f"{f.spread:.3f} | {says(f.verdict)} | {says(f.first_batch)} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jpegs", type=int, default=200, help="real-sized JPEGs made from the camera photos")
    ap.add_argument("--train-iters", type=int, default=20, help="SGD steps for the blur model (batch 8)")
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    args = ap.parse_args()
    started = time.perf_counter()
    cpu = torch.device("cpu")
    work = Path(tempfile.mkdtemp(prefix="ilgnet-bench-fidelity-"))
    try:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {precision.device_kind(cpu)}, "
              f"native bf16 detected without the override: {'avx512_bf16' in precision._cpu_flags()}; "
              f"precision.plan('auto') -> {precision.plan('auto', cpu, exact=False)}")
        t = time.perf_counter()
        blur, task, auc = train_blur(work, args.train_iters)
        print(f"trained blur model: {args.train_iters} steps of batch 8 from random init, "
              f"{time.perf_counter() - t:.0f} s; held-out AUC {auc:.3f} on {len(crop_files(task))} crops (chance 0.5)")
        kinds = {"random-spread": spread_weights(work), f"trained blur (AUC {auc:.2f})": blur,
                 "fragile control (blur + common logit shift)": fragile(blur, work)}
        real = os.environ.get("ILGNET_TEST_WEIGHTS")
        if real:
            kinds[f"real: {store.resolve(real)[0]}"] = store.load_model(real)
        t = time.perf_counter()
        jpegs = make_jpegs(work / "jpegs", args.jpegs)
        print(f"made {len(jpegs)} JPEGs of 12-24 MP in {time.perf_counter() - t:.0f} s")
        sets = {f"(a) camera photos ({CAMERA.name}/)": camera_files(),
                f"(b) {len(jpegs)} real-sized JPEGs": jpegs,
                "(c) blur held-out crops": crop_files(task)}
        lines = []
        for kind, lw in kinds.items():
            for name, files in sets.items():
                p32 = scores(files, lw, "fp32", args.workers)
                p16 = scores(files, lw, "bf16", args.workers)
                lines.append(row(kind, name, measure(p32, p16)))
                print(lines[-1], flush=True)
        print(f"\nbf16 vs fp32 through run_score (draft decode, batch 32); guard bounds: max |dP| <= "
              f"{precision.MAX_DELTA}, order kept except fp32 ties closer than {precision.TIE}.\n")
        print("| weights | photos | n | max abs dP | mean abs dP | Spearman | fp32 std of P | judge on all n | "
              "guard (first 32) |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |")
        print("\n".join(lines))
        print(f"\ntotal {time.perf_counter() - started:.0f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
