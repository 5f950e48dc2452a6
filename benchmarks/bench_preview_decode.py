"""Is decoding a camera JPEG's embedded preview a faithful, faster stand-in for the default decode?

    python benchmarks/bench_preview_decode.py [--seeds 1,2,3] [--repeat 7]
    python benchmarks/bench_preview_decode.py --seeds 1 --repeat 1   # smoke test

For every JPEG in ../shared/photos/camera: the embedded images it carries (EXIF IFD1 thumbnail,
other JPEGs inside APPn segments such as MakerNote previews, MPF second images), and for those with a
usable preview (>= 256 px on the short side, fewer pixels than the main image, aspect ratio
within 1% of it) the median time from file to model input of the default ``fast`` decode
(``weights.transforms("fast")``: libjpeg's DCT scaling to >= 1600 px on the long side, Lanczos to
800 px, the authors' INTER_LINEAR to 256 and centre crop, as ``ilgnet score`` runs it) vs the
preview (same orientation, the DCT scaling fast would ask for, then the same resize), and the
score fidelity of the two through the same model: max |dP| (P = P(high)), max |d log-odds|
(the fidelity gate's measure) and Spearman over the usable photos, with seeded random ILGNet
weights whose P(high) spreads (tests/helpers.py ``random_ilgnet_layers``). The ``reference``
decode (every pixel, Lanczos to 800: what the gate checks ``fast`` against) is printed as a
yardstick. A default decode must pass the gate: |d log-odds| <= 0.008 (ACCEPT) against the
reference, 0.02 (BOUND, |dP| <= 0.005) in all.
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

from ilgnet_cli.data.decode import _TRANSPOSE, decode, draft_size  # noqa: E402
from ilgnet_cli.model.ilgnet import ILGNet  # noqa: E402
from ilgnet_cli.model.transform import RESIZE, DecodeMode, Transform, parse_mean  # noqa: E402
from ilgnet_cli.predict.gate import ACCEPT, BOUND  # noqa: E402
from ilgnet_cli.runtime.forward import Forward  # noqa: E402
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


def decode_preview(path: Path, where: str, transform: Transform) -> np.ndarray:
    """What a preview decode would cost: read the file, find the preview, decode it with the DCT
    scaling ``transform`` asks for (fast: long side >= 1600 px), apply the main image's EXIF
    orientation."""
    with Image.open(path) as img:
        orientation = int(img.getexif().get(0x0112, 1))
        main = img.size
    preview = usable_preview(path, main)
    assert preview is not None and preview.where == where
    with Image.open(io.BytesIO(preview.data)) as pim:
        asked = transform.decode_request()
        request = draft_size(pim.size, asked.get("draft"), asked.get("long_side"))
        if request is not None:
            pim.draft("RGB", request)
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
    from helpers import random_ilgnet_layers

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
    ap.add_argument("--photos", type=int, help="only the first N camera JPEGs (default: all)")
    args = ap.parse_args()
    files = sorted((ROOT.parent / "shared" / "photos" / "camera").glob("*.jpg"))[:args.photos]
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
    fast = Transform(parse_mean("ava1"), decode=DecodeMode.FAST)  # what `ilgnet score` feeds by default
    ref = fast.faithful  # what the fidelity gate checks it against

    def scoring_input(f: Path) -> torch.Tensor:
        return fast(decode(f, **fast.decode_request()).rgb)

    def preview_input(f: Path, where: str) -> torch.Tensor:
        return fast(decode_preview(f, where, fast))

    fast_x, prev_x, ref_x, t_fast, t_prev = [], [], [], [], []
    for f, _, pv in rows:
        a = decode(f, **fast.decode_request()).rgb
        b = decode_preview(f, pv.where, fast)
        if abs((a.shape[1] / a.shape[0]) / (b.shape[1] / b.shape[0]) - 1) > ASPECT_TOL:
            sys.exit(f"{f.name}: preview orientation differs from the decode")
        fast_x.append(fast(a))
        prev_x.append(fast(b))
        ref_x.append(ref(decode(f).rgb))
        t_fast.append(_median_ms(lambda f=f: scoring_input(f), args.repeat))
        t_prev.append(_median_ms(lambda f=f, w=pv.where: preview_input(f, w), args.repeat))
    seeds = [int(s) for s in args.seeds.split(",")]
    results = []
    for seed in seeds:
        forward = Forward(_random_model(seed))
        outs = [forward(torch.stack(x)) for x in (fast_x, prev_x, ref_x)]
        results.append((seed, *((o.p_high.numpy(), o.log_odds[:, 0].numpy()) for o in outs)))
    t_model = _median_ms(lambda: forward(torch.stack(fast_x)), 3) / len(rows)
    seed0, (p_f, _), (p_p, _), (p_r, _) = results[0]
    print(f"## Fast decode vs embedded preview, file to model input (median of {args.repeat}; |dP| for seed "
          f"{seed0})\n")
    # The input difference shows the preview is the same picture (a letterboxed or unrotated one
    # would differ by tens of grey levels), the score differences what that costs.
    print("| photo | main | preview | fast ms | preview ms | speed-up | input diff (grey levels) "
          "| \\|dP\\| preview-fast | \\|dP\\| reference-fast |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for i, (f, main, pv) in enumerate(rows):
        diff = float((fast_x[i] - prev_x[i]).abs().mean())
        print(f"| {f.name} | {main[0]}x{main[1]} | {pv.where} {pv.size[0]}x{pv.size[1]} | {t_fast[i]:.1f} | "
              f"{t_prev[i]:.1f} | {t_fast[i] / t_prev[i]:.1f}x | {diff:.2f} | {abs(p_f[i] - p_p[i]):.4f} | "
              f"{abs(p_f[i] - p_r[i]):.4f} |")
    print(f"| **all {len(rows)}** | | | {sum(t_fast):.1f} | {sum(t_prev):.1f} | "
          f"{sum(t_fast) / sum(t_prev):.1f}x | | | |")
    print(f"\nFor scale: the model's forward pass costs {t_model:.1f} ms per photo here "
          f"(batch of {len(rows)}, {torch.get_num_threads()} threads).")
    print(f"\n## Score fidelity (the fidelity gate: max |d log-odds| <= {ACCEPT} per shortcut, {BOUND} in all, "
          f"i.e. |dP| <= {BOUND / 4})\n")
    # Scaling the logits would not help the ranking check: Spearman is blind to a monotone rescale.
    print("Random weights as in tests/helpers.py; 'reference' = every pixel decoded, Lanczos to 800 px.\n")
    print("| seed | P(high) std | compared | max \\|dP\\| | max \\|d log-odds\\| | Spearman |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    for seed, f_, p_, r_ in results:
        for label, (pa, la), (pb, lb) in (("preview vs fast", p_, f_), ("fast vs reference", f_, r_),
                                          ("preview vs reference", p_, r_)):
            print(f"| {seed} | {f_[0].std():.3f} | {label} | {np.abs(pa - pb).max():.4f} | "
                  f"{np.abs(la - lb).max():.4f} | {spearman(pa, pb):.4f} |")


if __name__ == "__main__":
    main()
