"""Plain helpers the tests import (pytest's default import mode puts tests/ on sys.path): where
the shared reference data is, stand-in models, and results built by hand for the report tests.
Fixtures built on them live in conftest.py."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import signal
import subprocess
import tracemalloc
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

TESTS = Path(__file__).resolve().parent
SHARED = TESTS.parent.parent / "shared"
# The user's own store, read before the autouse fixture points ILGNET_HOME at an empty one:
# ILGNET_TEST_WEIGHTS=ilgnet-ava1 names weights installed there.
USER_HOME = os.environ.get("ILGNET_HOME")


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with the reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared reference data not available: {path}")
    return path


def camera_photos(n: int = 8) -> list[Path]:
    """The first ``n`` shared camera JPEGs (sorted by name), or skip."""
    folder = shared_path("photos", "camera")
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".jpg")
    if len(photos) < n:
        pytest.skip(f"need {n} camera photos in {folder}")
    return photos[:n]


def real_weights(monkeypatch):
    """The real weights ILGNET_TEST_WEIGHTS names (a store name or a .safetensors path), or None."""
    from ilgnet_cli.model import store

    name = os.environ.get("ILGNET_TEST_WEIGHTS")
    if not name:
        return None
    if USER_HOME is None:
        monkeypatch.delenv("ILGNET_HOME")
    else:
        monkeypatch.setenv("ILGNET_HOME", USER_HOME)
    return store.load_model(name)


# --------------------------------------------------------------------------- Caffe, independently

_CROP = 227  # Caffe's crop in train/val.prototxt (written here, not imported: this is the reference)


def authors_mean(which: str = "AVA1") -> np.ndarray:
    """The authors' mean image straight from their release (not ilgnet's shipped copy)."""
    with warnings.catch_warnings():  # their .npy was written by Python 2: numpy says so
        warnings.simplefilter("ignore", UserWarning)
        return np.load(shared_path("ilgnet", "mean", f"{which}_mean.npy"), allow_pickle=False,
                       encoding="latin1").astype(np.float32)


def caffe_transform(bgr256: np.ndarray, mean: np.ndarray, h_off: int, w_off: int, mirror: bool) -> np.ndarray:
    """Caffe's DataTransformer::Transform(Datum) for uint8 data with a mean file, loop for loop."""
    height, width = bgr256.shape[:2]
    datum = bgr256.transpose(2, 0, 1).reshape(-1).astype(np.float32)  # Datum: C,H,W
    flat_mean = mean.reshape(-1)
    out = np.empty(3 * _CROP * _CROP, np.float32)
    for c in range(3):
        for h in range(_CROP):
            for w in range(_CROP):
                data_index = (c * height + h_off + h) * width + w_off + w
                top_index = (c * _CROP + h) * _CROP + ((_CROP - 1 - w) if mirror else w)
                out[top_index] = datum[data_index] - flat_mean[data_index]
    return out.reshape(3, _CROP, _CROP)


# --------------------------------------------------------------------------- real-size ILGNet


def random_ilgnet_layers(seed: int = 0) -> list[tuple[str, str, list[np.ndarray]]]:
    """Random ILGNet weights as (caffe layer, type, [weight, bias]), logits kept unsaturated.

    Weights are Xavier-like; the classifier is scaled down (x0.05) so that softmax probabilities
    on real photos stay far from 0 and 1, where a probability comparison is meaningful.
    """
    from ilgnet_cli.model.ilgnet import ILGNet

    torch.manual_seed(seed)
    model = ILGNet()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in model.parameterised_layers():
            m.bias.uniform_(-0.1, 0.3, generator=gen)
        cls = model.loss1["classifier_cjy"]
        cls.weight.mul_(0.05)
    layers = []
    for name, m in model.parameterised_layers():
        kind = "Convolution" if m.weight.ndim == 4 else "InnerProduct"
        layers.append((name, kind, [m.weight.detach().numpy().copy(), m.bias.detach().numpy().copy()]))
    return layers


def layers_state(layers) -> dict[str, np.ndarray]:
    """(caffe layer, type, [weight, bias]) -> a state dict of ILGNet's keys."""
    state = {}
    for name, _, (w, b) in layers:
        key = name.replace("/", ".")
        state[f"{key}.weight"], state[f"{key}.bias"] = w, b
    return state


# --------------------------------------------------------------------------- the tiny stand-in


class TinyNet(nn.Module):
    """A stand-in for ILGNet on the scoring path: the same input (n, 3, 227, 227), two logits
    (index 1 = high), ``forward_features`` returning (logits, features) as ILGNet's does, every
    image an independent row. About 2,000 parameters: a forward pass over 32 crops takes
    milliseconds, so reports, the predictor and the gate run on real photos in the default suite.

    ``gain`` scales the logits; ``offset`` adds the same large vector to both logit rows, which
    changes no fp32 probability (softmax ignores a common shift) but leaves bf16's three digits
    too few for their difference: weights bf16 cannot carry.
    """

    def __init__(self, seed: int = 0, gain: float = 1.0, offset: float = 0.0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 8, 7, stride=4)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2)
        self.fc = nn.Linear(16, 2)
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) / conv.weight[0].numel() ** 0.5)
                conv.bias.zero_()
            self.fc.weight.zero_()
            self.fc.bias.zero_()
            self.fc.weight[1] = torch.randn(16, generator=gen) * gain / 4  # gain 1: log-odds std ~0.6 on photos
            if offset:
                self.fc.weight.add_(torch.randn(16, generator=gen).abs() * offset)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.conv1(x / 64))
        h = torch.relu(self.conv2(h))
        feats = h.mean(dim=(2, 3))
        # Each image's features against their own mean and spread (rows stay independent): the
        # logits then follow what differs between photos, and P(high) spreads over 0..1.
        centred = (feats - feats.mean(dim=1, keepdim=True)) / (feats.std(dim=1, keepdim=True) + 1e-3)
        return self.fc(centred), feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


def tiny_weights(seed: int = 0, gain: float = 0.5, offset: float = 0.0, *, name: str = "tiny",
                 mean: str = "ava1"):
    """A :class:`TinyNet` as loaded weights (what ``score_collection(weights=...)``, ``score_files``
    and the reports take); its sha256 is that of its tensors, so two different stand-ins never
    share cache rows or verdicts."""
    from ilgnet_cli.model.store import LoadedWeights
    from ilgnet_cli.model.transform import parse_mean

    model = TinyNet(seed, gain, offset).eval()
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(value.numpy().tobytes())
    return LoadedWeights(model=model, mean=parse_mean(mean), sha256=digest.hexdigest(), name=name,
                         path=Path(f"/nonexistent/{name}.safetensors"))


# --------------------------------------------------------------------------- files


def write_dng(path, rgb: np.ndarray, preview_scale: int = 1, orientation: int = 1) -> None:
    """A minimal DNG 1.4: IFD0 = RGB preview, SubIFD = 16-bit RGGB CFA data of the same scene
    (tifffile; the test is skipped without it)."""
    tifffile = pytest.importorskip("tifffile")
    h, w = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
    rgb = rgb[:h, :w]
    cfa = np.zeros((h, w), np.uint16)
    cfa[0::2, 0::2] = rgb[0::2, 0::2, 0]
    cfa[0::2, 1::2] = rgb[0::2, 1::2, 1]
    cfa[1::2, 0::2] = rgb[1::2, 0::2, 1]
    cfa[1::2, 1::2] = rgb[1::2, 1::2, 2]
    cfa = cfa * 256
    preview = np.ascontiguousarray(rgb[::preview_scale, ::preview_scale])
    with tifffile.TiffWriter(path) as tw:
        tw.write(preview, photometric="rgb", subfiletype=1, subifds=1, extratags=[
            (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
            (50707, "B", 4, (1, 1, 0, 0), True),  # DNGBackwardVersion
            (50708, "s", 0, "ilgnet TestCam", True),  # UniqueCameraModel
            (271, "s", 0, "ilgnet", True), (272, "s", 0, "TestCam", True),
            (274, "H", 1, orientation, True),
            (50721, "2i", 9, (1, 1, 0, 1, 0, 1) * 3, True),  # ColorMatrix1 (identity)
            (50778, "H", 1, 21, True),  # CalibrationIlluminant1 = D65
            (50728, "2I", 3, (1, 1, 1, 1, 1, 1), True),  # AsShotNeutral
        ])
        tw.write(cfa, photometric=32803, subfiletype=0, extratags=[
            (33421, "H", 2, (2, 2), True),  # CFARepeatPatternDim
            (33422, "B", 4, (0, 1, 1, 2), True),  # CFAPattern RGGB
            (50717, "I", 1, 65535, True),  # WhiteLevel
        ])


# --------------------------------------------------------------------------- a tiny AVA


@functools.cache
def _thumbnail(src: Path):
    """A camera photo at 320 px (decoded once per session: decoding the original is what costs)."""
    from PIL import Image

    with Image.open(src) as img:
        img = img.convert("RGB")
        img.thumbnail((320, 320))
        return img


def _write_photo(src: Path, dest: Path, blur: bool) -> None:
    from PIL import ImageFilter

    img = _thumbnail(src)
    if blur:
        img = img.filter(ImageFilter.GaussianBlur(radius=6))
    img.save(dest, quality=90)


def make_tiny_ava(root: Path, which: str = "AVA1", n_train: int = 16, n_test: int = 6) -> dict[str, list]:
    """AVA as 'ilgnet download ava' leaves it, for a few ids of the authors' lists: AVA.txt
    (votes agreeing with their labels) and images/<id>.jpg (real photos, blurred when low)."""
    from ilgnet_cli.ava.partition import shipped_list
    from ilgnet_cli.ava.records import AVARecord, write_ava

    photos = camera_photos(8)
    train = shipped_list(which, "train")[:n_train]
    test = shipped_list(which, "val")[:n_test]
    (root / "images").mkdir(parents=True)
    records = []
    for n, (image_id, label) in enumerate(train + test):
        _write_photo(photos[n % len(photos)], root / "images" / f"{image_id}.jpg", blur=label == 0)
        votes = (0, 0, 0, 0, 2, 3, 8, 3, 1, 0) if label else (0, 1, 3, 8, 3, 2, 0, 0, 0, 0)
        records.append(AVARecord(id=image_id, votes=votes))
    write_ava(root / "AVA.txt", records)
    return {"train": train, "test": test}


def tiny_partition(root: Path, kind: str | None, which: str = "AVA2") -> Path:
    """A partition folder over a tiny AVA in ``root/ava`` (partition.json records ``kind``)."""
    import json

    from ilgnet_cli.ava.records import write_label_list

    lists = make_tiny_ava(root / "ava", which)
    folder = root / "part"
    folder.mkdir()
    write_label_list(folder / "train.txt", lists["train"])
    write_label_list(folder / "test.txt", lists["test"])
    if kind:
        (folder / "partition.json").write_text(json.dumps({"kind": kind}))
    return folder


# --------------------------------------------------------------------------- ratings as editors write them

XMP = ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
       '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       '<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
       'xmlns:ilgnet="https://github.com/ilgnet/ilgnet-cli/ns/1.0/" {attrs}/></rdf:RDF></x:xmpmeta>\n'
       '<?xpacket end="w"?>')


def xmp(rating: float | None = None, ours: float | None = None) -> str:
    """An XMP packet with ``xmp:Rating`` (and ilgnet's own ``ilgnet:Rating``) as attributes."""
    attrs = []
    if rating is not None:
        attrs.append(f'xmp:Rating="{rating:g}"')
    if ours is not None:
        attrs.append(f'ilgnet:Rating="{ours:g}"')
    return XMP.format(attrs=" ".join(attrs))


# A sidecar as darktable writes it, edited by hand since (keywords, a comment, its history).
DARKTABLE_XMP = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:darktable="http://darktable.sf.net/"
    xmp:Rating="{rating}"
    darktable:xmp_version="5">
   <!-- edited by hand -->
   <dc:subject><rdf:Bag><rdf:li>holiday</rdf:li><rdf:li>beach</rdf:li></rdf:Bag></dc:subject>
   <darktable:history><rdf:Seq>
    <rdf:li darktable:operation="exposure" darktable:enabled="1" darktable:params="0000803f"/>
   </rdf:Seq></darktable:history>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>"""


def write_sidecar(image: Path, rating: float, style: str, ours: float | None = None) -> Path:
    """A rating sidecar beside ``image``: Adobe style (IMG.xmp) or darktable style (IMG.JPG.xmp);
    ``ours``: also the rating ilgnet itself would have written."""
    side = image.with_suffix(".xmp") if style == "adobe" else image.with_name(image.name + ".xmp")
    side.write_text(xmp(rating, ours), encoding="utf-8")
    return side


# --------------------------------------------------------------------------- results by hand


def result(path: str, score: float | None = 0.5, error: str | None = None, *, width: int = 10, height: int = 10,
           **exif):
    """A :class:`ScoreResult` as a run leaves it (``exif``: ExifInfo fields)."""
    from ilgnet_cli.photos.exif import ExifInfo
    from ilgnet_cli.photos.results import ScoreResult

    return ScoreResult(path=path, score=None if error else score, error=error, width=width, height=height,
                       format=None if error else "JPEG", exif=ExifInfo(**exif))


def run_of(*results, weights: str = "random"):
    """A finished :class:`ScoreRun` over ``results``."""
    from ilgnet_cli.photos.results import RunStats, ScoreRun

    ok = sum(r.ok for r in results)
    stats = RunStats(files=len(results), scored=ok, errors=len(results) - ok)
    return ScoreRun(list(results), stats, weights, "0" * 64)


def grouped(run, groups: list[list]) -> None:
    """Give ``run`` bursts as best-of-burst leaves them: ``groups`` of results (keeper first),
    ordered best keeper first, each member marked with its place."""
    from ilgnet_cli.photos.bursts import Burst
    from ilgnet_cli.photos.results import BurstMark

    groups = sorted(groups, key=lambda g: -g[0].score)
    run.bursts = []
    for i, members in enumerate(groups, 1):
        for j, m in enumerate(members):
            m.burst = BurstMark(i, len(members), j == 0)
        run.bursts.append(Burst(i, members))


def one_line(text: str, *needles: str, limit: int = 400) -> str:
    """``text`` is exactly one non-blank line, holds every needle and no traceback; the line."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text[:2000]
    assert "Traceback" not in text
    assert len(lines[0]) <= limit, f"{len(lines[0])} chars: {lines[0][:300]}"
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# Parsers of hostile input: a loaded machine must not fail a test, an endless loop must; inputs of
# a few KB must not cost more than this much traced memory (numpy included).
TIME_BUDGET_S = 10.0  # CPU seconds
MEMORY_BUDGET = 16 << 20  # bytes


def fuzz_settings():
    """Hypothesis settings of the fuzz tests: many examples, no per-example deadline."""
    from hypothesis import HealthCheck, settings

    return settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@contextlib.contextmanager
def budget() -> Iterator[None]:
    """Fail (not hang) past TIME_BUDGET_S of CPU time; measure traced peak memory."""
    def timeout(*_):
        raise TimeoutError(f"took more than {TIME_BUDGET_S} CPU seconds")

    old = signal.signal(signal.SIGPROF, timeout)
    signal.setitimer(signal.ITIMER_PROF, TIME_BUDGET_S)
    tracemalloc.start()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, old)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < MEMORY_BUDGET, f"peak {peak} bytes"


def assert_one_line_message(exc: BaseException) -> None:
    text = str(exc)
    assert text and "\n" not in text and "\r" not in text, repr(text[:300])
    assert len(text) <= 600, len(text)


def assert_one_line_failure(result) -> None:
    """A failed fetch: one error line, then only the documented help block (each source, then
    the three ways to get weights); nothing installed."""
    from ilgnet_cli.model import store

    assert result.code != 0
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: "), result.output
    heading = store.ways_to_get_weights()[0]
    assert all(line.startswith("  ") or line == heading for line in lines[1:]), result.output
    assert store.installed_all() == []


# --------------------------------------------------------------------------- a real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None,
                                    reason="headless Chromium not installed (apt-get install chromium)")


def chromium_flags(tmp_path: Path, width: int, height: int) -> list[str]:
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'chrome'}", "--hide-scrollbars", f"--window-size={width},{height}"]


def render_in_chromium(page: Path, tmp_path: Path, width: int, height: int) -> tuple[Path, str]:
    """A screenshot of ``page`` and its DOM as headless Chromium builds it (scripts run)."""
    assert CHROMIUM is not None
    shot = tmp_path / f"{page.stem}.png"
    flags = chromium_flags(tmp_path, width, height)
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    return shot, dom
