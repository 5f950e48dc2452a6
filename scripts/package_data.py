"""Rebuild the reference data shipped inside the package from ../shared (the authors' release).

    python scripts/package_data.py [--shared ../shared]

Writes ilgnet_cli/data/means/{ava1,ava2}.npz (the authors' 3x256x256 BGR mean images, float32,
exactly as in their .npy files) and ilgnet_cli/data/lists/{AVA1,AVA2}/{train,val}.txt.xz (their
partition lists, byte for byte). tests/test_transform.py and tests/test_partition.py check the shipped files against
../shared whenever it is present.
"""

from __future__ import annotations

import argparse
import lzma
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "ilgnet_cli" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    args = parser.parse_args()
    src = args.shared / "ilgnet"
    (DATA / "means").mkdir(parents=True, exist_ok=True)
    for which in ("AVA1", "AVA2"):
        mean = np.load(src / "mean" / f"{which}_mean.npy", allow_pickle=False, encoding="latin1")
        image = mean.astype(np.float32)
        if not np.array_equal(image.astype(mean.dtype), mean):
            raise SystemExit(f"{which} mean is not float32-exact")
        np.savez_compressed(DATA / "means" / f"{which.lower()}.npz", image=image)
        for split in ("train", "val"):
            out = DATA / "lists" / which / f"{split}.txt.xz"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(lzma.compress((src / "data" / which / f"{split}.txt").read_bytes(),
                                          preset=9 | lzma.PRESET_EXTREME))
    print(f"wrote {DATA}")


if __name__ == "__main__":
    main()
