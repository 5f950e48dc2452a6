"""The contact sheet and the first run as a photographer meets them: bursts among single shots,
thumbnails that open the photo, the score distribution, float images, tiny photos."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import string
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote_to_bytes, urljoin, urlsplit

import numpy as np
import pytest
import tifffile
from conftest import camera_photos
from hypothesis import given, settings
from hypothesis import strategies as st
from ilgnet_cli.photos.scoring import RunStats, ScoreResult, ScoreRun
from PIL import Image
from rich.console import Console

from ilgnet_cli.data.decode import decode
from ilgnet_cli.photos import reports
from ilgnet_cli.photos.bursts import Burst
from ilgnet_cli.photos.xmp import stars_for

# --------------------------------------------------------------------------- float and integer images


def _tiff(tmp_path, name: str, data: np.ndarray):
    path = tmp_path / name
    tifffile.imwrite(path, data)
    return path


def test_float_tiff_outside_unit_range_is_scaled_by_its_own_range(tmp_path):
    ramp = np.linspace(-3.14, 3.14, 64 * 64, dtype=np.float32).reshape(64, 64)
    rgb = decode(_tiff(tmp_path, "phase.tif", ramp)).rgb
    grey = rgb[..., 0].astype(int)
    assert grey.min() == 0 and grey.max() == 255  # was 0..3: an all-black picture
    assert abs(int(grey[32, 0]) - 128) <= 2  # the middle of the range is mid-grey
    assert (np.diff(grey.ravel()) >= 0).all()  # order kept


def test_float_tiff_in_unit_range_is_scaled_as_before(tmp_path):
    ramp = np.linspace(0.0, 1.0, 64 * 64, dtype=np.float32).reshape(64, 64)
    ramp[0, 0], ramp[-1, -1] = 0.25, 0.75  # a 0..1 image that does not use the whole range
    grey = decode(_tiff(tmp_path, "unit.tif", ramp)).rgb[..., 0]
    assert grey[0, 0] == 64 and grey[-1, -1] == 191  # not stretched to 0..255
    dim = np.full((16, 16), 0.2, dtype=np.float32)
    assert (decode(_tiff(tmp_path, "dim.tif", dim)).rgb == 51).all()


@pytest.mark.parametrize("value", [0.0, 7.5, -2.0, 1e30])
def test_constant_float_tiff_decodes(tmp_path, value):
    rgb = decode(_tiff(tmp_path, "flat.tif", np.full((16, 16), value, dtype=np.float32))).rgb
    assert rgb.shape == (16, 16, 3) and len(np.unique(rgb)) == 1


def test_float_tiff_with_nan_and_inf_pixels_decodes(tmp_path):
    data = np.linspace(-10, 10, 32 * 32, dtype=np.float32).reshape(32, 32)
    data[0, :4] = [np.nan, np.inf, -np.inf, np.nan]
    grey = decode(_tiff(tmp_path, "holes.tif", data)).rgb[..., 0]
    assert grey[0, 0] == 0 and grey[0, 3] == 0  # NaN -> 0
    assert grey[0, 1] == 255 and grey[0, 2] == 0  # +inf at the top, -inf at the bottom
    finite = grey[np.isfinite(data)]
    assert finite.min() <= 1 and finite.max() == 255  # the finite pixels set the range
    allnan = np.full((8, 8), np.nan, dtype=np.float32)
    assert (decode(_tiff(tmp_path, "nan.tif", allnan)).rgb == 0).all()


def test_signed_integer_tiff_with_negative_values_is_visible(tmp_path):
    data = np.linspace(-30000, 30000, 64 * 64).astype(np.int32).reshape(64, 64)
    with Image.open(_tiff(tmp_path, "signed.tif", data)) as img:
        assert img.mode == "I"
    grey = decode(tmp_path / "signed.tif").rgb[..., 0].astype(int)
    assert grey.min() == 0 and grey.max() == 255 and abs(int(grey[32, 0]) - 128) <= 2


# --------------------------------------------------------------------------- sheets from known results


def _photo_copies(folder: Path, names: list, source: Path | None = None) -> list[str]:
    """Copies of one real photo (downscaled: fast thumbnails) under ``names`` (str or bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / ".src.jpg"
    with Image.open(source or camera_photos(1)[0]) as img:
        img.convert("RGB").resize((320, 240)).save(src, quality=85)
    paths = []
    for name in names:
        target = os.path.join(os.fsencode(folder), name) if isinstance(name, bytes) else str(folder / name)
        shutil.copy(src, target)
        paths.append(os.fsdecode(target))
    src.unlink()
    return paths


def _run(singles: list[tuple[str, float]], bursts: list[list[tuple[str, float]]] = (), *,
         grouped: bool = True, size: tuple[int, int] = (320, 240)) -> ScoreRun:
    """A finished run over known scores; ``bursts`` as best-of-burst would group them (keeper first)."""
    def result(path: str, score: float) -> ScoreResult:
        return ScoreResult(path=path, score=score, width=size[0], height=size[1], format="JPEG")

    groups = [[result(*s)] for s in singles] + [[result(*m) for m in b] for b in bursts]
    results = [r for g in groups for r in g]
    run = ScoreRun(results=results, stats=RunStats(files=len(results), scored=len(results)),
                   weights_name="random", weights_sha256="0" * 64)
    if grouped:
        groups.sort(key=lambda g: -g[0].score)
        run.bursts = []
        for i, members in enumerate(groups, 1):
            for j, m in enumerate(members):
                m.info.update(burst=i, burst_size=len(members), keeper=j == 0)
            run.bursts.append(Burst(i, members))
    return run


def _ten_and_a_burst(tmp_path: Path) -> ScoreRun:
    photos = camera_photos(11)
    singles = [(_photo_copies(tmp_path / "photos", [f"single_{i:02d}.jpg"], p)[0], 0.9 - 0.05 * i)
               for i, p in enumerate(photos[:10])]
    frames = _photo_copies(tmp_path / "photos", ["burst_a.jpg", "burst_b.jpg", "burst_c.jpg"], photos[10])
    return _run(singles, [list(zip(frames, (0.78, 0.7, 0.6), strict=True))])


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.stack: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(page: str) -> _Tags:
    parser = _Tags()
    parser.feed(page)
    return parser


def test_single_shots_flow_as_a_grid_and_only_real_bursts_get_a_strip(tmp_path):
    run = _ten_and_a_burst(tmp_path)
    page = reports.to_html(run)
    tags = _parse(page).tags
    figures = [a.get("class") for t, a in tags if t == "figure"]
    assert figures.count("shot") == 10 and figures.count("strip") == 1 and len(figures) == 11
    assert sum(t == "div" and a.get("class", "").startswith("grid") for t, a in tags) == 1  # one grid
    strip = page[page.index('<figure class="strip"'):]
    strip = strip[:strip.index("</figure>", strip.index("<figcaption"))]
    assert strip.count("<img") == 3 and "burst of 3 frames" in strip and "keeper" in strip
    burst = next(b for b in run.bursts if len(b.members) == 3)
    assert [a["href"] for t, a in _parse(strip).tags if t == "a"] == [Path(m.path).as_uri() for m in burst.members]
    assert strip.index("burst_a.jpg") < strip.index("burst_b.jpg") < strip.index("burst_c.jpg")  # keeper first
    assert "keeper of 1" not in page and "burst of 1" not in page


# --------------------------------------------------------------------------- links to the originals

HOSTILE = ['say "cheese".jpg', "#1 best?.jpg", "100% sure & <b>.jpg", "javascript:alert(1).jpg",
           "it's a space .jpg", "ünïcødé.jpg", "a%2F..%2Fb.jpg"]


def _href_target(href: str, page_uri: str) -> bytes:
    url = urljoin(page_uri, href)
    parts = urlsplit(url)
    assert parts.scheme == "file" and not parts.query and not parts.fragment, url
    return unquote_to_bytes(parts.path)


@pytest.mark.parametrize("relative", [True, False])
def test_every_thumbnail_links_to_its_original_file(tmp_path, relative):
    names: list = list(HOSTILE)
    try:
        (tmp_path / "probe").mkdir()
        open(os.path.join(os.fsencode(tmp_path / "probe"), b"caf\xe9.jpg"), "wb").close()
        names.append(b"caf\xe9 #x.jpg")  # not UTF-8: only the bytes on disk open it
    except (OSError, UnicodeError):
        pass
    paths = _photo_copies(tmp_path / "shoot" / "day 1", names)
    run = _run([(p, 0.5 + i / 100) for i, p in enumerate(paths)], grouped=False)
    sheet = tmp_path / "reports" / "sheet.html"
    sheet.parent.mkdir()
    if relative:
        reports.write_report(run, "html", sheet)
    else:
        sheet.write_text(reports.to_html(run), encoding="utf-8")
    links = [a["href"] for t, a in _parse(sheet.read_text(encoding="utf-8")).tags if t == "a"]
    assert len(links) == len(paths)
    for href in links:
        assert href.startswith("../shoot/day%201/") if relative else href.startswith("file:///")
    targets = sorted(_href_target(h, sheet.as_uri()) for h in links)
    assert targets == sorted(os.fsencode(p) for p in paths)
    assert all(os.path.exists(t) for t in targets)


@settings(max_examples=200, deadline=None)
@given(name=st.binary(min_size=1, max_size=40).filter(lambda b: b"/" not in b and b"\0" not in b
                                                      and b not in (b".", b"..")),
       depth=st.integers(0, 3))
def test_file_href_is_always_one_plain_path(name, depth):
    base = "/tmp/reports/" + "sub/" * depth
    path = os.fsdecode(b"/tmp/shoot/" + name)
    for href in (reports.file_href(path, base), reports.file_href(path)):
        assert set(href) <= set(string.ascii_letters + string.digits + "_.-~/%:") and '"' not in href
        assert _href_target(href, Path(base, "sheet.html").as_uri()) == os.fsencode(path)


def test_link_falls_back_to_a_file_url_without_a_relative_path(monkeypatch, tmp_path):
    def other_drive(*_):
        raise ValueError("path is on mount 'D:', start on mount 'C:'")

    monkeypatch.setattr(reports.os.path, "relpath", other_drive)
    href = reports.file_href(str(tmp_path / "a b.jpg"), tmp_path / "out")
    assert href == (tmp_path / "a b.jpg").as_uri() and "%20" in href


# --------------------------------------------------------------------------- distribution


def test_star_thresholds_agree_with_xmp_stars():
    rng = np.random.default_rng(0)
    for n in (1, 2, 4, 5, 9, 50, 333):
        scores = [float(s) for s in rng.random(n)]
        for spec in ("quantile", "fixed:0.3,0.45,0.6,0.75", "fixed:0,0,0.5,1"):
            bounds = reports.star_thresholds(scores, spec)
            assert [k for k, _ in bounds] == list(range(2, 2 + len(bounds)))
            for s, stars in zip(scores, stars_for(scores, spec), strict=True):
                assert stars == 1 + sum(s >= t for _, t in bounds), (spec, s, bounds)
    assert reports.star_thresholds([], "fixed:0.3,0.45,0.6,0.75")[-1] == (5, 0.75)
    with pytest.raises(ValueError, match="--stars"):
        reports.star_thresholds([0.5], "fixed:1,2")


def test_distribution_line_and_histogram_show_top_min_score_and_stars(tmp_path):
    scores = [0.12, 0.3, 0.41, 0.55, 0.55, 0.6, 0.71, 0.8, 0.91]
    paths = _photo_copies(tmp_path, [f"p{i}.jpg" for i in range(len(scores))])
    run = _run(list(zip(paths, scores, strict=True)), grouped=False)
    dist = reports.distribution(run, top=3, min_score=0.2, stars="fixed:0.3,0.45,0.6,0.83")
    line = dist.line()
    assert line.startswith("scores: min 0.12 · median 0.55 · max 0.91 · top 3 ≥ 0.71 · min-score 0.2")
    assert line.endswith("★★ ≥ 0.30 · ★★★ ≥ 0.45 · ★★★★ ≥ 0.60 · ★★★★★ ≥ 0.83")
    assert "top" not in reports.distribution(run, top=50).line()  # nothing cut: no mark
    page = reports.to_html(run, top=3, min_score=0.2, stars="fixed:0.3,0.45,0.6,0.83", thumbnails=False)
    svg = page[page.index("<svg"):page.index("</svg>")]
    tags = _parse(svg + "</svg>").tags
    assert sum(t == "rect" for t, _ in tags) == 8  # 0.55 twice: one bar of two
    labels = "".join(_parse(svg).text)
    for label in ("top 3", "min-score 0.2", "★★★★★", "★★"):
        assert label in labels
    assert line in page
    assert "top 3" not in reports.to_html(run, min_score=0.2, thumbnails=False)


def test_distribution_with_bursts_counts_bursts_for_top(tmp_path):
    run = _ten_and_a_burst(tmp_path)
    dist = reports.distribution(run, top=4)
    assert len(dist.scores) == 13 and dist.top_at == pytest.approx(0.78)  # the burst is 4th, one place


# --------------------------------------------------------------------------- tiny photos


def test_tiny_photos_are_marked_in_csv_json_table_and_sheet(tmp_path):
    big, tiny = _photo_copies(tmp_path, ["big.jpg", "tiny.jpg"])
    run = _run([(big, 0.5)], grouped=False)
    run.results.append(ScoreResult(path=tiny, score=0.99, width=1, height=1, format="PNG"))
    run.results.append(ScoreResult(path=str(tmp_path / "thin.png"), score=0.4, width=4000, height=63, format="PNG"))
    run.stats.scored = 3
    reports.write_report(run, "csv", tmp_path / "r.csv")
    rows = {Path(r["path"]).name: r for r in csv.DictReader((tmp_path / "r.csv").open(encoding="utf-8"))}
    assert rows["tiny.jpg"]["note"] == "tiny: 1x1, upscaled" and rows["big.jpg"]["note"] == ""
    assert rows["thin.png"]["note"] == "tiny: 4000x63, upscaled"
    data = json.loads(reports.to_json(run))
    assert {Path(r["path"]).name: r["note"] for r in data["results"]} == {
        "tiny.jpg": "tiny: 1x1, upscaled", "big.jpg": None, "thin.png": "tiny: 4000x63, upscaled"}
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(reports.terminal_table(run, 10))
    text = console.export_text()
    assert "tiny: 1x1, upscaled" in text and "note" in text
    assert "tiny: 1x1, upscaled" in reports.to_html(run, thumbnails=False)
    square = _run([(big, 0.5)], grouped=False, size=(64, 64))
    assert reports.note_for(square.results[0]) is None  # 64 px is enough


@pytest.mark.slow
def test_cli_first_run_marks_tiny_photos_and_prints_the_distribution(tmp_path, weights_file):
    shoot = tmp_path / "shoot"
    _photo_copies(shoot, ["a.jpg", "b.jpg", "c.jpg"])
    Image.new("RGB", (1, 1), (200, 80, 40)).save(shoot / "dot.png")
    sheet = tmp_path / "sheet.html"
    proc = subprocess.run([sys.executable, "-m", "ilgnet_cli", "score", str(shoot), "--weights", str(weights_file),
                           "--device", "cpu", "--workers", "0", "--no-cache", "-o", str(sheet), "--min-score", "0",
                           "--xmp", "--stars", "fixed:0.2,0.4,0.6,0.8"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stderr.splitlines() if x.startswith("scores: "))
    assert " · median " in line and " · min-score 0 · " in line and line.endswith("★★★★★ ≥ 0.80")
    assert "tiny: 1x1, upscaled" in proc.stdout
    page = sheet.read_text(encoding="utf-8")
    assert "tiny: 1x1, upscaled" in page and "<svg" in page and "★★★★★" in page


# --------------------------------------------------------------------------- in a real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed")
BODY, CARD, STRIP = (0x15, 0x17, 0x1A), (0x22, 0x26, 0x2B), (0x2A, 0x2E, 0x34)


def _chromium_flags(tmp_path: Path, width: int, height: int) -> list[str]:
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'chrome'}", "--hide-scrollbars", f"--window-size={width},{height}"]


def _card_rows(shot: np.ndarray) -> list[list[int]]:
    """The sheet's card rows as seen on screen: for each band of rows holding card background,
    the widths of the cards in it (cards are separated by columns of page background)."""
    is_card = (shot == CARD).all(axis=2) | (shot == STRIP).all(axis=2)
    ys = np.flatnonzero(is_card.sum(axis=1) > 20)
    bands = np.split(ys, np.flatnonzero(np.diff(ys) > 1) + 1) if ys.size else []
    rows = []
    for band in bands:
        if band.size < 40:  # not a card: a stray line
            continue
        gap = (shot[band[0]:band[-1] + 1] == BODY).all(axis=2).all(axis=0)
        xs = np.flatnonzero(~gap)
        runs = np.split(xs, np.flatnonzero(np.diff(xs) > 1) + 1)
        rows.append([len(r) for r in runs if len(r) > 40])
    return rows


@needs_chromium
def test_sheet_with_single_shots_and_a_burst_is_laid_out_as_a_grid(tmp_path):
    run = _ten_and_a_burst(tmp_path)
    sheet = reports.write_report(run, "html", tmp_path / "sheet.html", top=None)
    shot_png = tmp_path / "sheet.png"
    subprocess.run([CHROMIUM, *_chromium_flags(tmp_path, 1100, 1600), f"--screenshot={shot_png}", sheet.as_uri()],
                   capture_output=True, timeout=120)
    shot = np.asarray(Image.open(shot_png).convert("RGB"))
    if os.environ.get("ILGNET_KEEP_SCREENSHOT"):
        shutil.copy2(shot_png, os.environ["ILGNET_KEEP_SCREENSHOT"])
    rows = _card_rows(shot)
    # 1100 px: four columns; ten single shots and one strip two columns wide fill three rows.
    assert len(rows) == 3, rows
    assert sum(len(r) for r in rows) == 11 and max(len(r) for r in rows) == 4, rows
    widths = sorted(w for r in rows for w in r)
    single = widths[0]
    assert all(abs(w - single) <= 2 for w in widths[:-1]) and abs(widths[-1] - (2 * single + 14)) <= 3, widths


@needs_chromium
def test_burst_strip_keeps_its_frames_on_a_phone_sized_sheet(tmp_path):
    run = _ten_and_a_burst(tmp_path)
    burst = next(b for b in run.bursts if len(b.members) == 3)
    run.bursts = run.bursts[:2] + [burst]  # two single shots and the burst
    run.results = [m for b in run.bursts for m in b.members]
    sheet = reports.write_report(run, "html", tmp_path / "sheet.html")
    shot_png = tmp_path / "sheet.png"
    subprocess.run([CHROMIUM, *_chromium_flags(tmp_path, 480, 1800), f"--screenshot={shot_png}", sheet.as_uri()],
                   capture_output=True, timeout=120)
    shot = np.asarray(Image.open(shot_png).convert("RGB"))
    is_card = (shot == CARD).all(axis=2) | (shot == STRIP).all(axis=2)
    # One card a row: beside a thumbnail only the card's padding shows (less, by the keeper's outline).
    ys = np.flatnonzero(is_card.sum(axis=1) > 6)
    heights = sorted(len(b) for b in np.split(ys, np.flatnonzero(np.diff(ys) > 1) + 1) if len(b) > 40)
    assert len(heights) == 3, heights  # one column: two single shots and the strip
    assert heights[-1] > heights[0] + 80, heights  # the strip shows its other frames below the keeper


def _cdp(tmp_path: Path):
    """Chromium driven over --remote-debugging-pipe (fd 3 in, fd 4 out; NUL-framed JSON)."""
    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()

    # In the child the pipes become fds 3 and 4 (kept open: pass_fds applies after preexec_fn).
    def wire() -> None:
        os.dup2(to_chrome_r, 3)
        os.dup2(from_chrome_w, 4)

    proc = subprocess.Popen([CHROMIUM, *_chromium_flags(tmp_path, 1100, 900), "--remote-debugging-pipe",
                             "about:blank"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, pass_fds=(3, 4), preexec_fn=wire)
    os.close(to_chrome_r)
    os.close(from_chrome_w)
    reader = os.fdopen(from_chrome_r, "rb")
    writer = os.fdopen(to_chrome_w, "wb")
    counter = iter(range(1, 10**6))

    def call(method: str, session: str | None = None, **params):
        msg_id = next(counter)
        msg = {"id": msg_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        writer.write(json.dumps(msg).encode() + b"\0")
        writer.flush()
        buf = b""
        while True:
            chunk = reader.read1(65536)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == msg_id:
                    if "error" in reply:
                        raise RuntimeError(reply["error"])
                    return reply["result"]

    proc.pipes = (reader, writer)  # closed with the process
    return proc, call


@needs_chromium
def test_clicking_a_thumbnail_opens_the_photo_in_chromium(tmp_path):
    """The CSP (default-src 'none') must not block a click's top-level navigation to the file."""
    import time

    name = "#1 it's 100% ?.jpg"
    (path,) = _photo_copies(tmp_path / "shoot", [name])
    sheet = reports.write_report(_run([(path, 0.7)], grouped=False), "html", tmp_path / "out" / "sheet.html")
    proc, call = _cdp(tmp_path)
    try:
        target = call("Target.createTarget", url=sheet.as_uri())["targetId"]
        session = call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

        def evaluate(expr: str):
            return call("Runtime.evaluate", session, expression=expr, returnByValue=True)["result"].get("value")

        deadline = time.monotonic() + 30
        while evaluate("document.readyState") != "complete" or not evaluate("document.images.length"):
            assert time.monotonic() < deadline, "the sheet did not load"
            time.sleep(0.1)
        box = evaluate("(r => [r.x + r.width / 2, r.y + r.height / 2])"
                       "(document.querySelector('a').getBoundingClientRect())")
        for kind in ("mousePressed", "mouseReleased"):
            call("Input.dispatchMouseEvent", session, type=kind, x=box[0], y=box[1], button="left", clickCount=1)
        while evaluate("location.href") == sheet.as_uri():
            assert time.monotonic() < deadline, "the click did not navigate"
            time.sleep(0.1)
        opened = evaluate("location.href")
        while evaluate("document.images.length && document.images[0].complete") is not True:
            assert time.monotonic() < deadline, "the photo did not load"
            time.sleep(0.1)
        shown = evaluate("document.images[0].naturalWidth")
    finally:
        proc.kill()
        proc.wait(timeout=30)
        for pipe in proc.pipes:
            pipe.close()
    assert opened == Path(path).as_uri() and unquote_to_bytes(urlsplit(opened).path) == os.fsencode(path)
    assert shown == 320  # the full photo, not the thumbnail


def test_terminal_table_calls_only_real_bursts_bursts(tmp_path):
    run = _ten_and_a_burst(tmp_path)
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(reports.terminal_table(run, 20))
    text = console.export_text()
    assert text.count("keeper of 3") == 1 and "keeper of 1" not in text
    assert "11 shots and bursts" in text or "of 11" in text


def test_a_tiny_frame_inside_a_burst_strip_is_marked(tmp_path):
    keeper, small = _photo_copies(tmp_path, ["keeper.jpg", "small.jpg"])
    run = _run([], [[(keeper, 0.8), (small, 0.9)]])
    run.bursts[0].members[1].width = run.bursts[0].members[1].height = 32
    titles = [a["title"] for t, a in _parse(reports.to_html(run)).tags if t == "a"]
    assert titles == [keeper, f"{small} (tiny: 32x32, upscaled)"]
    assert "0.9000 ⚠" in reports.to_html(run, thumbnails=False)
