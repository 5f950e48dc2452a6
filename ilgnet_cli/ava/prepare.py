"""`ilgnet prepare`: resize AVA once to 256x256, like the authors' LMDB, into one compact file.

``DIR/images_256.u8`` is a raw uint8 array (N, 256, 256, 3) RGB, memory-mapped for reading;
``DIR/index.json`` maps image id -> row; ``DIR/done.u8`` marks finished rows, so an interrupted
run resumes. Raw storage keeps the pixels exactly as our preprocessing makes them (the LMDB
stored raw pixels too): 196,608 bytes an image, about 50 GB for all of AVA.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from ilgnet_cli.model.transform import RESIZE

SHAPE = (RESIZE, RESIZE, 3)


def _load(job: tuple[str, bool]) -> tuple[np.ndarray | None, str | None]:
    from ilgnet_cli.data.decode import DecodeError, decode
    from ilgnet_cli.model.transform import resize_bilinear

    path, draft = job
    try:
        return resize_bilinear(decode(path, draft=RESIZE if draft else None).rgb), None
    except (DecodeError, OSError) as exc:
        return None, str(exc)


def decode_mode(draft: bool) -> str:
    return "draft" if draft else "exact"


def _read_mode(folder: Path) -> str:
    # Caches made before the mode was recorded were always decoded in full.
    try:
        return str(json.loads((folder / "prepare.json").read_text()).get("decode", "exact"))
    except (OSError, ValueError, AttributeError):
        return "exact"


class PreparedImages:
    """Read side of the cache: ``get(id)`` -> 256x256x3 uint8 (RGB)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.decode = _read_mode(self.folder)
        index = {int(k): v for k, v in json.loads((self.folder / "index.json").read_text()).items()}
        self.rows = len(index)
        done = np.fromfile(self.folder / "done.u8", dtype=np.uint8)
        # Rows that failed to decode are not in the cache (their pixels are zeros).
        self.index = {k: v for k, v in index.items() if done[v]}
        self._data: np.memmap | None = None

    def _array(self) -> np.memmap:
        # Opened lazily so that each DataLoader worker maps the file itself.
        if self._data is None:
            self._data = np.memmap(self.folder / "images_256.u8", dtype=np.uint8, mode="r",
                                   shape=(self.rows, *SHAPE))
        return self._data

    def __contains__(self, image_id: int) -> bool:
        return image_id in self.index

    def get(self, image_id: int) -> np.ndarray:
        return np.asarray(self._array()[self.index[image_id]])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_data": None}


def prepare(ids: list[int], images: str | Path, out: str | Path, *, jobs: int = 4, draft: bool = False,
            progress: Callable[[int, int], None] | None = None) -> dict[str, int]:
    """Decode + resize every id once into ``out``; resumable; returns counts.

    ``draft=False`` decodes every JPEG in full, as the authors' ``convert_imageset``; the mode is
    recorded in ``prepare.json`` so that training and evaluation can insist on the same pixels.
    """
    from ilgnet_cli.errors import UsageError

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ids = sorted(set(ids))
    index_path = out / "index.json"
    mode = decode_mode(draft)
    if index_path.exists():
        old = json.loads(index_path.read_text())
        if sorted(int(k) for k in old) != ids:
            raise UsageError(f"{out} holds a cache for other images; use another output folder")
        if (old_mode := _read_mode(out)) != mode:
            raise UsageError(f"{out} was prepared with {old_mode} decoding, not {mode}; use another output folder")
    from ilgnet_cli.runtime.fsutil import atomic_write_text

    atomic_write_text(out / "prepare.json", json.dumps({"decode": mode}) + "\n")
    index = {i: row for row, i in enumerate(ids)}
    array = np.memmap(out / "images_256.u8", dtype=np.uint8, mode="r+" if (out / "images_256.u8").exists() else "w+",
                      shape=(len(ids), *SHAPE))
    done = np.memmap(out / "done.u8", dtype=np.uint8, mode="r+" if (out / "done.u8").exists() else "w+",
                     shape=(len(ids),))
    todo = [i for i in ids if not done[index[i]]]
    failed: list[str] = []
    finished = len(ids) - len(todo)
    with ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
        jobs_ = [(str(Path(images) / f"{i}.jpg"), draft) for i in todo]
        for n, (image_id, (img, error)) in enumerate(zip(todo, pool.map(_load, jobs_, chunksize=16), strict=True), 1):
            if img is None:
                failed.append(f"{image_id}: {error}")
                continue
            array[index[image_id]] = img
            done[index[image_id]] = 1
            if n % 1000 == 0:
                array.flush()
                done.flush()
            if progress:
                progress(finished + n, len(ids))
    array.flush()
    done.flush()
    tmp = index_path.with_suffix(".tmp")
    tmp.write_text(json.dumps({str(k): v for k, v in index.items()}))
    os.replace(tmp, index_path)
    (out / "failed.txt").write_text("".join(f + "\n" for f in failed))
    return {"images": len(ids), "prepared": int(done.sum()), "failed": len(failed)}
