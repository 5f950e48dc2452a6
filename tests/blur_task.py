"""A small learnable image task from real photos: sharp (1) vs heavily blurred (0) crops.

Not an aesthetics result: it proves that gradients, labels and preprocessing line up.
Training and test crops come from different photos.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter


def make_blur_task(photos: list[Path], out: Path, crops_per_photo: int = 4, test_photos: int = 3,
                   seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = {"train": [], "test": []}
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
                version = crop.filter(ImageFilter.GaussianBlur(radius=8)) if label == 0 else crop
                version.save(images / f"{next_id}.jpg", quality=92)
                lines[split].append(f"{next_id}.jpg {label}\n")
                next_id += 1
    for split, rows in lines.items():
        order = rng.permutation(len(rows))
        (out / f"{split}.txt").write_text("".join(rows[i] for i in order))
    return out
