"""Reports of a run (photos/reports.py): the terminal table, CSV, JSON, the HTML contact sheet
(bursts among single shots, thumbnails that open the photo, the score distribution, tiny photos)
and --copy-top/--link-top export, from results built by hand or scored here on the tiny
stand-in. File names and EXIF text are attacker-controlled: nothing in any report may run,
drive a terminal, start a spreadsheet formula, or be overwritten."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import string
import subprocess
import unicodedata
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote_to_bytes, urljoin, urlsplit

import numpy as np
import pytest
from helpers import CHROMIUM, chromium_flags, grouped, needs_chromium, render_in_chromium, result, run_of
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from rich.cells import cell_len
from rich.console import Console

from ilgnet_cli.photos import reports
from ilgnet_cli.photos.collection import score_collection
from ilgnet_cli.photos.discover import EXPORT_MANIFEST
from ilgnet_cli.photos.results import BurstMark, ScoreResult
from ilgnet_cli.photos.xmp import stars_for
from ilgnet_cli.runtime.text import display

# Names that try to drive a terminal: colour, title change, bell, carriage return (overprint),
# a right-to-left override (``gpj.exe`` shows as ``exe.jpg``), a newline (a fake CSV row) and 8-bit CSI.
HOSTILE = "a\x1b[31mred\x1b]0;pwned\x07\r\u202egpj.exe\nfake,row\x9b2J\x7f.jpg"
RAW_CONTROLS = ("\x1b", "\x07", "\r", "\u202e", "\x9b", "\x7f")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _run(singles: list[tuple[str, float]], bursts: list[list[tuple[str, float]]] = (), *,
         bursts_on: bool = True, size: tuple[int, int] = (320, 240)):
    """A finished run over known scores; ``bursts`` as best-of-burst would group them (keeper first)."""
    groups = [[result(p, s, width=size[0], height=size[1])] for p, s in singles]
    groups += [[result(p, s, width=size[0], height=size[1]) for p, s in b] for b in bursts]
    run = run_of(*[r for g in groups for r in g])
    if bursts_on:
        grouped(run, groups)
    return run


@pytest.fixture
def ten_and_a_burst(copies, camera, tmp_path):
    photos = camera(11)
    singles = [(copies([f"single_{i:02d}.jpg"], tmp_path / "photos", source=p)[0], 0.9 - 0.05 * i)
               for i, p in enumerate(photos[:10])]
    frames = copies(["burst_a.jpg", "burst_b.jpg", "burst_c.jpg"], tmp_path / "photos", source=photos[10])
    return _run(singles, [list(zip(frames, (0.78, 0.7, 0.6), strict=True))])


def _rendered(renderable, width: int = 400) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(renderable)
    return console.file.getvalue()


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(page: str) -> _Tags:
    parser = _Tags()
    parser.feed(page)
    return parser


# --------------------------------------------------------------------------- the terminal table


def test_the_table_is_one_plain_line_per_photo_named_relative_to_the_folder_given(tmp_path):
    shoot = tmp_path / "shoot"
    (shoot / "2024" / "trip").mkdir(parents=True)
    long_name = "IMG_" + "x" * 120 + "_0042.JPG"
    run = _run([(str(shoot / "2024" / "trip" / long_name), 0.91), (str(shoot / "a.jpg"), 0.52),
                (str(tmp_path / "elsewhere.jpg"), 0.3)], bursts_on=False)
    text = reports.terminal_table(run, 20, roots=[str(shoot)], width=80).plain
    lines = text.splitlines()
    assert lines[0].startswith("ILGNet scores — top 3 of 3 (random)")
    assert lines[1].split()[:3] == ["rank", "score", "file"]
    assert len(lines) == 5 and all(len(line) <= 80 for line in lines)  # never wrapped, never wider
    assert "2024/trip/IMG_x" in lines[2] and lines[2].rstrip().endswith("_0042.JPG")  # cut in the middle ...
    assert "…" in lines[2]
    assert lines[3].endswith(" a.jpg")
    assert lines[4].rstrip().endswith("elsewhere.jpg") and lines[4].split()[2].startswith("/")  # outside: as given
    assert [line.split()[1] for line in lines[2:]] == ["0.9100", "0.5200", "0.3000"]
    narrow = reports.terminal_table(run, 2, width=40).plain.splitlines()
    assert len(narrow) == 4 and all(len(line) <= 40 for line in narrow) and "top 2 of 3" in narrow[0]


def test_middle_keeps_the_ends_of_a_name(tmp_path):
    assert reports.middle("IMG_0001.JPG", 20) == "IMG_0001.JPG"
    cut = reports.middle("holiday-2024/IMG_0001.JPG", 12)
    assert len(cut) == 12 and cut.startswith("holid") and cut.endswith("01.JPG") and "…" in cut
    wide = reports.middle("日本日本日本日本日本", 7)  # wide characters take two cells
    assert cell_len(wide) <= 7 and wide[0] == "日" and wide[-1] == "本" and "…" in wide
    (tmp_path / "b").mkdir()
    photo = str(tmp_path / "b" / "c.jpg")
    assert reports.shown_path(photo, [str(tmp_path), str(tmp_path / "b")]) == "c.jpg"  # the closest folder given
    assert reports.shown_path(photo, [str(tmp_path)]) == "b/c.jpg" and reports.shown_path(photo, []) == photo


def test_terminal_table_shows_control_characters_escaped():
    run = run_of(result(f"shoot/{HOSTILE}", make="Evil\x1b[2J", model="Cam\u202e"))
    out = _rendered(reports.terminal_table(run, 20, width=400))
    assert not any(c in out for c in RAW_CONTROLS)
    assert "\\x1b[31mred" in out.replace("\n", "") and "\\u202egpj" in out and "Evil\\x1b[2J" in out


def test_rich_markup_in_names_exif_and_weights_prints_literally():
    run = run_of(result("[red]x[/red] [link=http://evil]y[/link].jpg", make="[bold]Canon[/bold]"),
               weights="[blink]w[/blink]")
    out = _rendered(reports.terminal_table(run, 20, width=400))
    assert "[red]x[/red]" in out and "[link=http://evil]y[/link]" in out
    assert "[bold]Canon[/bold]" in out and "[blink]w[/blink]" in out


def test_terminal_table_calls_only_real_bursts_bursts(tmp_path, ten_and_a_burst):
    run = ten_and_a_burst
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(reports.terminal_table(run, 20))
    text = console.export_text()
    assert text.count("keeper of 3") == 1 and "keeper of 1" not in text
    assert "11 shots and bursts" in text or "of 11" in text


# --------------------------------------------------------------------------- the contact sheet


def test_single_shots_flow_as_a_grid_and_only_real_bursts_get_a_strip(tmp_path, ten_and_a_burst):
    run = ten_and_a_burst
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


def test_a_tiny_frame_inside_a_burst_strip_is_marked(tmp_path, copies):
    keeper, small = copies(["keeper.jpg", "small.jpg"], tmp_path)
    run = _run([], [[(keeper, 0.8), (small, 0.9)]])
    run.bursts[0].members[1].width = run.bursts[0].members[1].height = 32
    titles = [a["title"] for t, a in _parse(reports.to_html(run)).tags if t == "a"]
    assert titles == [keeper, f"{small} (tiny: 32x32, upscaled)"]
    assert "0.9000 ⚠" in reports.to_html(run, thumbnails=False)


# --------------------------------------------------------------------------- links to the originals

LINK_NAMES = ['say "cheese".jpg', "#1 best?.jpg", "100% sure & <b>.jpg", "javascript:alert(1).jpg",
           "it's a space .jpg", "ünïcødé.jpg", "a%2F..%2Fb.jpg"]


def _href_target(href: str, page_uri: str) -> bytes:
    url = urljoin(page_uri, href)
    parts = urlsplit(url)
    assert parts.scheme == "file" and not parts.query and not parts.fragment, url
    return unquote_to_bytes(parts.path)


@pytest.mark.parametrize("relative", [True, False])
def test_every_thumbnail_links_to_its_original_file(tmp_path, relative, copies):
    names: list = list(LINK_NAMES)
    try:
        (tmp_path / "probe").mkdir()
        open(os.path.join(os.fsencode(tmp_path / "probe"), b"caf\xe9.jpg"), "wb").close()
        names.append(b"caf\xe9 #x.jpg")  # not UTF-8: only the bytes on disk open it
    except (OSError, UnicodeError):
        pass
    paths = copies(names, tmp_path / "shoot" / "day 1")
    run = _run([(p, 0.5 + i / 100) for i, p in enumerate(paths)], bursts_on=False)
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


def test_distribution_line_and_histogram_show_top_min_score_and_stars(tmp_path, copies):
    scores = [0.12, 0.3, 0.41, 0.55, 0.55, 0.6, 0.71, 0.8, 0.91]
    paths = copies([f"p{i}.jpg" for i in range(len(scores))], tmp_path)
    run = _run(list(zip(paths, scores, strict=True)), bursts_on=False)
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


def test_distribution_with_bursts_counts_bursts_for_top(tmp_path, ten_and_a_burst):
    run = ten_and_a_burst
    dist = reports.distribution(run, top=4)
    assert len(dist.scores) == 13 and dist.top_at == pytest.approx(0.78)  # the burst is 4th, one place


# --------------------------------------------------------------------------- tiny photos


def test_tiny_photos_are_marked_in_csv_json_table_and_sheet(tmp_path, copies):
    big, tiny = copies(["big.jpg", "tiny.jpg"], tmp_path)
    run = _run([(big, 0.5)], bursts_on=False)
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
    square = _run([(big, 0.5)], bursts_on=False, size=(64, 64))
    assert reports.note_for(square.results[0]) is None  # 64 px is enough


# --------------------------------------------------------------------------- CSV and JSON


def test_csv_and_json_hold_every_file_how_it_was_scored_and_the_errors(evil_folder, tiny):
    run = score_collection([evil_folder], weights=tiny, device="cpu", workers=0, cache=False)
    rows = list(csv.DictReader(io.StringIO(reports.to_csv(run))))
    assert [r["status"] for r in rows] == ["scored", "scored", "error"] and rows[0]["rank"] == "1"
    assert rows[2]["error"] == "not identifiable as an image" and rows[2]["rank"] == ""
    assert {(r["precision"], r["decode"]) for r in rows[:2]} == {("fp32", "reference-800")}
    assert list(rows[0]) == list(reports.CSV_FIELDS)
    data = json.loads(reports.to_json(run))
    assert len(data["results"]) == 2 and data["errors"][0]["path"].endswith("broken <i>.jpg")
    maker = next(r for r in data["results"] if r["path"].endswith("maker.jpg"))
    assert maker["camera"].startswith("</script>") and maker["precision"] == "fp32"
    assert data["weights"] == "tiny" and data["summary"]["files"] == 3 and data["summary"]["errors"] == 1
    assert len(json.loads(reports.to_json(run, top=1))["results"]) == 1


def test_json_is_strict_whatever_the_numbers():
    r = result("a.jpg", 0.5)
    r.sharpness = float("nan")
    r.exif.aperture = float("inf")
    text = reports.to_json(run_of(r))
    assert "NaN" not in text and "Infinity" not in text
    row = json.loads(text)["results"][0]
    assert row["sharpness"] is None and row["aperture"] is None


# --------------------------------------------------------------------------- attacker-controlled text


def test_html_report_escapes_attacker_controlled_text(evil_folder, tiny, tmp_path):
    run = score_collection([evil_folder], weights=tiny, device="cpu", workers=0, cache=False)
    report = reports.write_report(run, "html", tmp_path / "sheet.html")
    page = report.read_text(encoding="utf-8")
    parser = _parse(page)
    tags = [t for t, _ in parser.tags]
    assert "script" not in tags and "b" not in tags and "i" not in tags
    imgs = [a for t, a in parser.tags if t == "img"]
    assert len(imgs) == 2 and all(a["src"].startswith("data:image/jpeg;base64,") for a in imgs)
    assert not any(k.startswith("on") for _, a in parser.tags for k in a)
    text = "".join(parser.text)
    assert "<img src=x onerror=alert(1)>.jpg" in text
    assert "</script><script>alert(2)</script>" in text
    assert "broken <i>.jpg" in text
    assert "Content-Security-Policy" in page and "http://" not in page and "https://" not in page


def test_html_shows_control_characters_escaped(tmp_path):
    run = run_of(result(f"shoot/{HOSTILE}", make="Evil\x1b[2J"), result(f"bad/{HOSTILE}", error="broken \x1b[1m"))
    page = reports.to_html(run, thumbnails=False)
    assert not any(c in page for c in RAW_CONTROLS)
    assert "a\\x1b[31mred" in page and "\\u202egpj.exe\\nfake,row" in page and "Evil\\x1b[2J" in page
    assert "broken \\x1b[1m" in page


def test_csv_shows_control_characters_escaped_one_line_per_row():
    run = run_of(result(HOSTILE, make="Evil\x1b[2J"), result(f"{HOSTILE}2", score=0.1),
               result("bad\n.jpg", error="line1\nline2"))
    text = reports.to_csv(run)
    assert not any(c in text for c in RAW_CONTROLS)
    assert len(text.splitlines()) == 4  # header + 3 rows: a newline in a name is not a new row
    assert list(csv.reader(io.StringIO(text)))[1][2] == display(HOSTILE)


def test_json_keeps_exact_names_without_raw_control_characters():
    names = [HOSTILE, "x\u2028y\u2029z\u200f\u061c\U000e0001.jpg", "caf\udce9.jpg"]
    text = reports.to_json(run_of(*[result(n) for n in names]))
    assert not any(c in text for c in (*RAW_CONTROLS, "\u2028", "\u2029", "\u200f", "\u061c", "\U000e0001"))
    assert sorted(r["path"] for r in json.loads(text)["results"]) == sorted(
        n.encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape") for n in names)


def test_csv_text_cells_cannot_start_a_formula():
    rows = [result(f"{c}HYPERLINK(1).jpg", score=0.9 - i / 10) for i, c in enumerate(FORMULA_STARTS)]
    rows.append(result("cam.jpg", score=0.1, make="=cmd|' /C calc'!A0", model="+Model", lens="@SUM(A1)",
                        exposure="-1", captured="=NOW()"))
    rows.append(result("-broken.jpg", error="=decode failed"))
    text = reports.to_csv(run_of(*rows))
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert len(parsed) == len(rows)
    numeric = {"rank", "score", "width", "height", "aperture", "iso", "focal_length", "sharpness"}
    for row in parsed:
        for key, value in row.items():
            if key not in numeric:
                assert not value.startswith(FORMULA_STARTS), (key, value)
    assert parsed[0]["path"] == "'=HYPERLINK(1).jpg"
    cam = next(r for r in parsed if r["path"] == "cam.jpg")
    assert (cam["camera"], cam["lens"], cam["exposure"]) == ("'=cmd|' /C calc'!A0 +Model", "'@SUM(A1)", "'-1")
    assert float(parsed[0]["score"]) == pytest.approx(0.9)  # numbers stay numbers


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40), st.text(max_size=20))
def test_any_name_and_camera_give_safe_csv_and_table_cells(name, make):
    run = run_of(result(name, make=make))
    rows = list(csv.reader(io.StringIO(reports.to_csv(run))))
    assert len(rows) == 2  # header + one row, whatever the name holds
    for cell in rows[1]:
        assert not cell.startswith(FORMULA_STARTS)
        assert not any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in cell)
    shown = display(name)
    assert "\n" not in shown and not any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs")
                                         and c not in "\u200c\u200d" for c in shown)


# --------------------------------------------------------------------------- --copy-top and --link-top


def _shoot(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "shoot"
    src.mkdir()
    (src / "a.jpg").write_bytes(b"photo bytes")
    dest = tmp_path / "best"
    dest.mkdir()
    return src / "a.jpg", dest


def test_copy_top_does_not_write_through_a_planted_temp_symlink(tmp_path):
    photo, dest = _shoot(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for name in (".001_a.jpg.tmp", ".001_a.jpg.part", "001_a.jpg.tmp"):
        os.symlink(victim, dest / name)
    written = reports.export_top([result(str(photo))], dest).added
    assert victim.read_text() == "precious"
    assert [p.name for p in written] == ["001_a.jpg"]
    assert (dest / "001_a.jpg").read_bytes() == b"photo bytes" and not (dest / "001_a.jpg").is_symlink()
    assert sorted(p.name for p in dest.iterdir()) == sorted([".001_a.jpg.tmp", ".001_a.jpg.part", "001_a.jpg.tmp",
                                                             "001_a.jpg", EXPORT_MANIFEST])  # no temp file left


@pytest.mark.parametrize("link", [False, True])
def test_export_never_replaces_a_name_that_appears_after_the_check(tmp_path, monkeypatch, link):
    """The free-name check and the write are not one step: a file (or dangling link) created in
    between must survive, and the export takes the next free name instead."""
    photo, dest = _shoot(tmp_path)
    (dest / "001_a.jpg").write_text("mine")
    os.symlink(tmp_path / "nowhere", dest / "001_a-1.jpg")  # dangling: exists() is False
    monkeypatch.setattr(Path, "exists", lambda self: False)  # every check races and loses
    monkeypatch.setattr(Path, "is_symlink", lambda self: False)
    written = reports.export_top([result(str(photo))], dest, link=link).added
    monkeypatch.undo()
    assert (dest / "001_a.jpg").read_text() == "mine"
    assert os.readlink(dest / "001_a-1.jpg") == str(tmp_path / "nowhere")
    assert [p.name for p in written] == ["001_a-2.jpg"]
    assert (dest / "001_a-2.jpg").read_bytes() == b"photo bytes"


def test_export_of_a_name_at_the_length_limit(tmp_path):
    src = tmp_path / "shoot"
    src.mkdir()
    long_name = "x" * 251 + ".jpg"  # 255 bytes: the NNN_ prefix would pass NAME_MAX
    try:
        (src / long_name).write_bytes(b"photo bytes")
    except OSError:
        pytest.skip("this file system refuses 255-byte names")
    dest = tmp_path / "best"
    written = reports.export_top([result(str(src / long_name))] * 2, dest).added
    assert len(written) == 2 and all(len(os.fsencode(p.name)) <= 255 and p.suffix == ".jpg" for p in written)
    assert all(p.read_bytes() == b"photo bytes" for p in written)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_new_reports_follow_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    for fmt in ("csv", "json", "html"):
        reports.write_report(run_of(result("a.jpg")), fmt, tmp_path / f"r.{fmt}")
        assert (tmp_path / f"r.{fmt}").stat().st_mode & 0o7777 == mode, fmt


@pytest.mark.parametrize(("source", "mask", "mode"), [(0o666, 0o022, 0o644), (0o4755, 0o022, 0o755)])
def test_exported_copies_keep_the_source_mode_within_the_umask(tmp_path, umask, source, mask, mode):
    """A world-writable (or setuid) photo in someone else's tree must not become a file others
    can change (or run as us) in our export folder: the mode is the source's, as cp makes it."""
    photo, dest = _shoot(tmp_path)
    photo.chmod(source)
    umask(mask)
    (written,) = reports.export_top([result(str(photo))], dest).added
    assert written.stat().st_mode & 0o7777 == mode


def test_export_is_idempotent_and_follows_the_ranking(tmp_path, copies):
    """A second run over the same photos adds nothing; a photo whose rank changed is renamed
    when the name is free; one that left the ranking is left in place and counted."""
    a, b, c = copies(["a.jpg", "b.jpg", "c.jpg"], tmp_path / "shoot")
    dest = tmp_path / "best"
    first = reports.export_top([result(a, 0.9), result(b, 0.8)], dest)
    assert [p.name for p in first.added] == ["001_a.jpg", "002_b.jpg"] and first.kept == []
    again = reports.export_top([result(a, 0.9), result(b, 0.8)], dest)
    assert again.added == [] and [p.name for p in again.kept] == ["001_a.jpg", "002_b.jpg"]
    moved = reports.export_top([result(b, 0.95), result(c, 0.85)], dest)
    assert [p.name for p in moved.added] == ["002_c.jpg"]
    assert [p.name for p in moved.kept] == ["001_b.jpg"]  # b moved up: renamed to its new rank, not copied again
    assert [p.name for p in moved.removed_from_ranking] == ["001_a.jpg"]
    manifest = json.loads((dest / EXPORT_MANIFEST).read_text())
    assert set(manifest["files"]) == {"001_a.jpg", "001_b.jpg", "002_c.jpg"}
    assert sorted(p.name for p in dest.iterdir()) == sorted([EXPORT_MANIFEST, *manifest["files"]])


def test_an_export_cut_short_leaves_no_temp_file_behind(tmp_path):
    photo, dest = _shoot(tmp_path)
    (dest / ".ilgnet-copy.abc123.tmp").write_bytes(b"half a copy")  # kill -9 in the middle of a copy
    reports.export_top([result(str(photo))], dest)
    assert not list(dest.glob(".ilgnet-copy.*.tmp"))


def test_keepers_are_the_ranked_photos_and_only_each_bursts_keeper(tmp_path):
    run = _run([("/p/single.jpg", 0.5)], [[("/p/k.jpg", 0.9), ("/p/blurred.jpg", 0.95)]])
    assert [r.path for r in reports.keepers(run)] == ["/p/k.jpg", "/p/single.jpg"]
    assert [r.path for r in reports.keepers(run, top=1)] == ["/p/k.jpg"]
    assert [r.path for r in reports.keepers(run, min_score=0.6)] == ["/p/k.jpg"]
    plain = _run([("/p/a.jpg", 0.2), ("/p/b.jpg", 0.7)], bursts_on=False)
    assert [r.path for r in reports.keepers(plain, top=1)] == ["/p/b.jpg"]
    assert isinstance(run.results[0].burst, BurstMark) and isinstance(run.results[0], ScoreResult)


# --------------------------------------------------------------------------- in a real browser

BODY, CARD, STRIP = (0x15, 0x17, 0x1A), (0x22, 0x26, 0x2B), (0x2A, 0x2E, 0x34)


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
def test_sheet_with_single_shots_and_a_burst_is_laid_out_as_a_grid(tmp_path, ten_and_a_burst):
    run = ten_and_a_burst
    sheet = reports.write_report(run, "html", tmp_path / "sheet.html", top=None)
    shot_png = tmp_path / "sheet.png"
    subprocess.run([CHROMIUM, *chromium_flags(tmp_path, 1100, 1600), f"--screenshot={shot_png}", sheet.as_uri()],
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
def test_burst_strip_keeps_its_frames_on_a_phone_sized_sheet(tmp_path, ten_and_a_burst):
    run = ten_and_a_burst
    burst = next(b for b in run.bursts if len(b.members) == 3)
    run.bursts = run.bursts[:2] + [burst]  # two single shots and the burst
    run.results = [m for b in run.bursts for m in b.members]
    sheet = reports.write_report(run, "html", tmp_path / "sheet.html")
    shot_png = tmp_path / "sheet.png"
    subprocess.run([CHROMIUM, *chromium_flags(tmp_path, 480, 1800), f"--screenshot={shot_png}", sheet.as_uri()],
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

    proc = subprocess.Popen([CHROMIUM, *chromium_flags(tmp_path, 1100, 900), "--remote-debugging-pipe",
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
def test_clicking_a_thumbnail_opens_the_photo_in_chromium(tmp_path, copies):
    """The CSP (default-src 'none') must not block a click's top-level navigation to the file."""
    import time

    name = "#1 it's 100% ?.jpg"
    (path,) = copies([name], tmp_path / "shoot")
    sheet = reports.write_report(_run([(path, 0.7)], bursts_on=False), "html", tmp_path / "out" / "sheet.html")
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


@needs_chromium
def test_html_report_renders_in_headless_chromium(tmp_path, evil_folder, camera, tiny):
    for p in camera(6):
        shutil.copy2(p, evil_folder / p.name)
    run = score_collection([evil_folder], weights=tiny, device="cpu", workers=0, cache=False)
    report = reports.write_report(run, "html", tmp_path / "sheet.html")
    shot, dom = render_in_chromium(report, tmp_path, 1100, 900)
    assert "&lt;img src=x onerror=alert(1)&gt;.jpg" in dom and "<script" not in dom
    img = np.asarray(Image.open(shot).convert("RGB"))
    # Thumbnails are photos: thousands of distinct colours; an empty page has a handful.
    colours = len(np.unique(img.reshape(-1, 3), axis=0))
    assert colours > 5000, colours
    if os.environ.get("ILGNET_KEEP_SCREENSHOT"):
        shutil.copy2(shot, os.environ["ILGNET_KEEP_SCREENSHOT"])
