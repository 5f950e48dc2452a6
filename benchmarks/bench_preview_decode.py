"""Is decoding a camera JPEG's embedded preview a faithful, faster stand-in for the draft decode?

    source /root/venv/bin/activate && python benchmarks/bench_preview_decode.py [--seeds 1,2,3] [--repeat 7]

For every JPEG in ../shared/photos/camera: the embedded images it carries (EXIF IFD1 thumbnail,
other JPEGs inside APPn segments such as MakerNote previews, MPF second images), and for those with a
usable preview (>= 256 px on the short side, fewer pixels than the main image, aspect ratio
within 1% of it) the median time of the scoring decode (``decode(path, draft=RESIZE)``, as
photos/scoring.py calls it) vs decoding the preview (same orientation, same draft), and the
score fidelity of the two through the same preprocess and model: max |dP| (P = P(high)) and
Spearman over the usable photos, with seeded random ILGNet weights whose P(high) spreads
(tests/conftest.py ``random_ilgnet_layers``). Draft vs full decode on the same photos is
printed as a yardstick. Issue #13 targets for a default: max |dP| <= 0.005, Spearman >= 0.995.
"""

from __future__ import annotations

import argparse
import io
import statistics
import struct
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ilgnet_cli.data.decode import _TRANSPOSE, decode  # noqa: E402
from ilgnet_cli.model.ilgnet import ILGNet, score_from_logits  # noqa: E402
from ilgnet_cli.model.transform import RESIZE, parse_mean, preprocess  # noqa: E402
from ilgnet_cli.training.metrics import spearman  # noqa: E402

ASPECT_TOL = 0.01


@dataclass
class Embedded:
    where: str  # "IFD1" (EXIF thumbnail), "APPn" (MakerNote or vendor previews in APP segments), "MPF"
    data: bytes
    size: tuple[int, int]


def _segments(data: bytes) -> list[tuple[int, int, bytes]]:
    """(marker, file offset of the payload, payload) of the JPEG header segments up to the first SOS."""
    out, pos = [], 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        out.append((marker, pos + 4, data[pos + 4:pos + 2 + length]))
        if marker == 0xDA:
            break
        pos += 2 + length
    return out


def _jpeg_size(blob: bytes) -> tuple[int, int] | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(blob)) as img:
                return img.size if img.format in ("JPEG", "MPO") else None
    except Exception:  # noqa: BLE001 - a candidate that does not open is simply not one
        return None


def _mpf_images(data: bytes, base: int) -> list[Embedded]:
    """The images an APP2 MPF index lists after the main one (offsets count from its TIFF header)."""
    tiff = data[base:]
    order = "<" if tiff[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack_from(order + "I", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, ifd)
        entries = b""
        for k in range(count):
            tag, _, n, value = struct.unpack_from(order + "HHII", tiff, ifd + 2 + 12 * k)
            if tag == 0xB002:  # MP Entry: 16 bytes per image
                entries = tiff[value:value + n]
    except struct.error:
        return []
    out = []
    for k in range(1, len(entries) // 16):
        _, size, offset, _, _ = struct.unpack_from(order + "IIIHH", entries, 16 * k)
        blob = data[base + offset:base + offset + size]
        if (dims := _jpeg_size(blob)) is not None:
            out.append(Embedded("MPF", blob, dims))
    return out


def embedded_images(path: Path) -> list[Embedded]:
    """Every JPEG a camera file carries besides its main image."""
    data = path.read_bytes()
    found: list[Embedded] = []
    with Image.open(path) as img:
        ifd1 = img.getexif().get_ifd(ExifTags.IFD.IFD1)
    for marker, at, payload in _segments(data):
        if marker == 0xE2 and payload.startswith(b"MPF\0"):
            found += _mpf_images(data, at + 4)
        if not 0xE0 <= marker <= 0xEF:
            continue
        exif = marker == 0xE1 and payload.startswith(b"Exif\0\0")
        body = payload[6:] if exif else payload  # IFD1 offsets count from the TIFF header
        thumb_at = int(ifd1.get(0x201, -1)) if exif else -1
        pos = 0
        while (i := body.find(b"\xff\xd8\xff", pos)) >= 0:
            pos = i + 3
            if (size := _jpeg_size(body[i:])) is not None:
                where = "IFD1" if i == thumb_at else f"APP{marker - 0xE0}"
                found.append(Embedded(where, body[i:], size))
    return found


def usable_preview(path: Path, main: tuple[int, int]) -> Embedded | None:
    """The largest embedded JPEG that can stand in for the main image at RESIZE, or None."""
    ok = []
    for e in embedded_images(path):
        w, h = e.size
        if min(w, h) < RESIZE or w * h >= main[0] * main[1]:
            continue
        if abs((w / h) / (main[0] / main[1]) - 1) > ASPECT_TOL:
            continue
        ok.append(e)
    return max(ok, key=lambda e: e.size[0] * e.size[1], default=None)


def decode_preview(path: Path, where: str) -> np.ndarray:
    """What a preview decode would cost: read the file, find the preview, decode it with draft,
    apply the main image's EXIF orientation."""
    with Image.open(path) as img:
        orientation = int(img.getexif().get(0x0112, 1))
        main = img.size
    preview = usable_preview(path, main)
    assert preview is not None and preview.where == where
    with Image.open(io.BytesIO(preview.data)) as pim:
        pim.draft("RGB", (RESIZE, RESIZE))
        pim.load()
        out = pim.convert("RGB")
        for op in _TRANSPOSE.get(orientation, ()):
            out = out.transpose(op)
        return np.asarray(out, dtype=np.uint8)


def _median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _random_model(seed: int) -> ILGNet:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import random_ilgnet_layers

    model = ILGNet().eval()
    state = {}
    for name, _, (w, b) in random_ilgnet_layers(seed=seed):
        key = name.replace("/", ".")
        state[f"{key}.weight"], state[f"{key}.bias"] = torch.from_numpy(w), torch.from_numpy(b)
    model.load_state_dict(state)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="1,2,3", help="random-weight seeds (comma separated)")
    ap.add_argument("--repeat", type=int, default=7, help="timing repetitions per decode (median)")
    args = ap.parse_args()
    files = sorted((ROOT.parent / "shared" / "photos" / "camera").glob("*.jpg"))
    if not files:
        sys.exit("no camera JPEGs in ../shared/photos/camera")
    warnings.simplefilter("ignore")
    print(f"## Embedded images in {len(files)} camera JPEGs\n")
    print("| photo | main | embedded (where: size) | usable preview |\n| --- | --- | --- | --- |")
    rows = []
    for f in files:
        with Image.open(f) as img:
            main = img.size
        emb = embedded_images(f)
        pv = usable_preview(f, main)
        listing = ", ".join(f"{e.where}: {e.size[0]}x{e.size[1]}" for e in emb) or "-"
        print(f"| {f.name} | {main[0]}x{main[1]} | {listing} | "
              f"{f'{pv.where} {pv.size[0]}x{pv.size[1]}' if pv else '-'} |")
        if pv:
            rows.append((f, main, pv))
    print(f"\n{len(rows)} of {len(files)} JPEGs carry a usable preview "
          f"(>= {RESIZE} px short side, aspect within {ASPECT_TOL:.0%}).\n")
    if len(rows) < 2:
        return
    mean = parse_mean("ava1")
    draft_x, prev_x, full_x, t_draft, t_prev = [], [], [], [], []
    for f, _, pv in rows:
        a = decode(f, draft=RESIZE).rgb
        b = decode_preview(f, pv.where)
        if abs((a.shape[1] / a.shape[0]) / (b.shape[1] / b.shape[0]) - 1) > ASPECT_TOL:
            sys.exit(f"{f.name}: preview orientation differs from the decode")
        draft_x.append(preprocess(a, mean))
        prev_x.append(preprocess(b, mean))
        full_x.append(preprocess(decode(f).rgb, mean))
        t_draft.append(_median_ms(lambda f=f: decode(f, draft=RESIZE), args.repeat))
        t_prev.append(_median_ms(lambda f=f, w=pv.where: decode_preview(f, w), args.repeat))
    seeds = [int(s) for s in args.seeds.split(",")]
    results = []
    with torch.inference_mode():
        for seed in seeds:
            model = _random_model(seed)
            p_d = score_from_logits(model(torch.stack(draft_x))).numpy()
            p_p = score_from_logits(model(torch.stack(prev_x))).numpy()
            p_f = score_from_logits(model(torch.stack(full_x))).numpy()
            results.append((seed, p_d, p_p, p_f))
        t_model = _median_ms(lambda: model(torch.stack(draft_x)), 3) / len(rows)
    first = results[0]
    print(f"## Draft decode vs embedded preview (median of {args.repeat}; |dP| for seed {first[0]})\n")
    # The input difference shows the preview is the same picture (a letterboxed or unrotated one
    # would differ by tens of grey levels), the score differences what that costs.
    print("| photo | main | preview | draft ms | preview ms | speed-up | input diff (grey levels) "
          "| \\|dP\\| preview-draft | \\|dP\\| full-draft |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for i, (f, main, pv) in enumerate(rows):
        diff = float((draft_x[i] - prev_x[i]).abs().mean())
        print(f"| {f.name} | {main[0]}x{main[1]} | {pv.where} {pv.size[0]}x{pv.size[1]} | {t_draft[i]:.1f} | "
              f"{t_prev[i]:.1f} | {t_draft[i] / t_prev[i]:.1f}x | {diff:.2f} | {abs(first[1][i] - first[2][i]):.4f} | "
              f"{abs(first[1][i] - first[3][i]):.4f} |")
    print(f"| **all {len(rows)}** | | | {sum(t_draft):.1f} | {sum(t_prev):.1f} | "
          f"{sum(t_draft) / sum(t_prev):.1f}x | | | |")
    print(f"\nFor scale: the model's forward pass costs {t_model:.1f} ms per photo here "
          f"(batch of {len(rows)}, {torch.get_num_threads()} threads).")
    print("\n## Score fidelity (targets against the draft decode: max |dP| <= 0.005, Spearman >= 0.995)\n")
    # Scaling the logits would not help the ranking check: Spearman is blind to a monotone rescale.
    print("Random weights as in tests/conftest.py; 'full' = decode without draft.\n")
    print("| seed | P(high) std | preview vs draft: max \\|dP\\| | Spearman | full vs draft: max \\|dP\\| | Spearman "
          "| preview vs full: max \\|dP\\| | Spearman |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for seed, p_d, p_p, p_f in results:
        print(f"| {seed} | {p_d.std():.3f} | {np.abs(p_d - p_p).max():.4f} | {spearman(p_d, p_p):.4f} | "
              f"{np.abs(p_d - p_f).max():.4f} | {spearman(p_d, p_f):.4f} | "
              f"{np.abs(p_p - p_f).max():.4f} | {spearman(p_p, p_f):.4f} |")


if __name__ == "__main__":
    main()
