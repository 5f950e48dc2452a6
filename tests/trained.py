"""Small learnable image tasks from real photos, and ILGNet trained on them here: weights that
behave like a trained model (confident, large logits), which random weights do not.

* ``blur``: sharp (1) vs heavily blurred (0) crops: the model keys on fine detail, the part of a
  picture that resizing and decoding shortcuts change most.
* ``exposure``: well exposed (1) vs the same crop 1.5 stops too bright or too dark (0): the model
  keys on global tone, the part aesthetics models weigh heavily and resizing hardly changes.

Not aesthetics results: they prove that gradients, labels and preprocessing line up, and give
fidelity checks trained weights to work on. Training and test crops come from different photos.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

TASKS = ("blur", "exposure")


def _variant(crop: Image.Image, task: str, label: int, rng: np.random.Generator) -> Image.Image:
    if label == 1:
        return crop
    if task == "blur":
        return crop.filter(ImageFilter.GaussianBlur(radius=8))
    stops = 1.5 if rng.random() < 0.5 else -1.5
    arr = np.asarray(crop, dtype=np.float32) / 255.0
    arr = np.clip((arr ** 2.2 * 2.0 ** stops) ** (1 / 2.2), 0, 1)  # exposure in linear light
    return Image.fromarray((arr * 255 + 0.5).astype(np.uint8))


def make_task(photos: list[Path], out: Path, task: str = "blur", crops_per_photo: int = 4, test_photos: int = 3,
              seed: int = 0) -> Path:
    """A partition folder (train.txt, test.txt, images/) of 300x300 crops and their variants."""
    if task not in TASKS:
        raise ValueError(task)
    rng = np.random.default_rng(seed)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[str]] = {"train": [], "test": []}
    next_id = 1
    for n, photo in enumerate(photos):
        split = "test" if n < test_photos else "train"
        with Image.open(photo) as src:
            img = src.convert("RGB")
        scale = 640 / max(img.size)
        img = img.resize((max(300, int(img.width * scale)), max(300, int(img.height * scale))))
        for _ in range(crops_per_photo):
            x = int(rng.integers(0, img.width - 300 + 1))
            y = int(rng.integers(0, img.height - 300 + 1))
            crop = img.crop((x, y, x + 300, y + 300))
            for label in (1, 0):
                _variant(crop, task, label, rng).save(images / f"{next_id}.jpg", quality=92)
                lines[split].append(f"{next_id}.jpg {label}\n")
                next_id += 1
    for split, rows in lines.items():
        order = rng.permutation(len(rows))
        (out / f"{split}.txt").write_text("".join(rows[i] for i in order))
    return out


def make_blur_task(photos: list[Path], out: Path, crops_per_photo: int = 4, test_photos: int = 3,
                   seed: int = 0) -> Path:
    return make_task(photos, out, "blur", crops_per_photo, test_photos, seed)


def train_task(task: Path, out: Path, iters: int = 20, seed: int = 0, device: str = "cpu") -> Path:
    """ILGNet trained on ``task`` from random init (the fast recipe, batch 8, no dropout: about a
    minute on 2 cores for 20 steps); the path of its weights."""
    from ilgnet_cli.training.train import TrainConfig, train

    train(TrainConfig(partition=task, out=out, images=task / "images", init="random", recipe="fast", lr=1e-3,
                      iters=iters, batch_size=8, dropout=0.0, workers=0, device=device,
                      checkpoint_every=max(1, iters // 2), seed=seed))
    return out / "checkpoints" / "last" / "model.safetensors"
