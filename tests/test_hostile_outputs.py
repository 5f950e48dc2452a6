"""What ``ilgnet score`` writes when file names, EXIF text and the output folders are hostile:
temp files and final names never follow planted links or overwrite anything, file modes follow
the umask, CSV cells cannot start a formula, control characters and Rich markup print literally,
and exported copies are not scored again."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from conftest import camera_photos
from hypothesis import given, settings
from hypothesis import strategies as st
from ilgnet_cli.photos.scoring import RunStats, ScoreResult, ScoreRun
from rich.console import Console

from ilgnet_cli.photos import reports
from ilgnet_cli.photos.discover import Selection, find_images
from ilgnet_cli.runtime.fsutil import atomic_write_text
from ilgnet_cli.runtime.text import display

# Names that try to drive a terminal: colour, title change, bell, carriage return (overprint),
# a right-to-left override (``gpj.exe`` shows as ``exe.jpg``), a newline (a fake CSV row) and 8-bit CSI.
HOSTILE = "a\x1b[31mred\x1b]0;pwned\x07\r\u202egpj.exe\nfake,row\x9b2J\x7f.jpg"
RAW_CONTROLS = ("\x1b", "\x07", "\r", "\u202e", "\x9b", "\x7f")


def _result(path: str, score: float | None = 0.5, error: str | None = None, **exif: str) -> ScoreResult:
    return ScoreResult(path=path, score=None if error else score, error=error, width=10, height=10,
                       format=None if error else "JPEG", info={"exif": exif})


def _run(*results: ScoreResult, weights: str = "random") -> ScoreRun:
    ok = sum(r.ok for r in results)
    stats = RunStats(files=len(results), scored=ok, errors=len(results) - ok)
    return ScoreRun(list(results), stats, weights, "0" * 64)


def _rendered(renderable) -> str:
    console = Console(file=io.StringIO(), width=400, color_system=None)
    console.print(renderable)
    return console.file.getvalue()


# --------------------------------------------------------------------------- A: temp names, no overwrite


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
    written = reports.export_top([_result(str(photo))], dest)
    assert victim.read_text() == "precious"
    assert [p.name for p in written] == ["001_a.jpg"]
    assert (dest / "001_a.jpg").read_bytes() == b"photo bytes" and not (dest / "001_a.jpg").is_symlink()
    assert sorted(p.name for p in dest.iterdir()) == sorted([".001_a.jpg.tmp", ".001_a.jpg.part", "001_a.jpg.tmp",
                                                             "001_a.jpg"])  # no temp file left behind


@pytest.mark.parametrize("link", [False, True])
def test_export_never_replaces_a_name_that_appears_after_the_check(tmp_path, monkeypatch, link):
    """The free-name check and the write are not one step: a file (or dangling link) created in
    between must survive, and the export takes the next free name instead."""
    photo, dest = _shoot(tmp_path)
    (dest / "001_a.jpg").write_text("mine")
    os.symlink(tmp_path / "nowhere", dest / "001_a-1.jpg")  # dangling: exists() is False
    monkeypatch.setattr(Path, "exists", lambda self: False)  # every check races and loses
    monkeypatch.setattr(Path, "is_symlink", lambda self: False)
    written = reports.export_top([_result(str(photo))], dest, link=link)
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
    written = reports.export_top([_result(str(src / long_name))] * 2, dest)
    assert len(written) == 2 and all(len(os.fsencode(p.name)) <= 255 and p.suffix == ".jpg" for p in written)
    assert all(p.read_bytes() == b"photo bytes" for p in written)


# --------------------------------------------------------------------------- B: modes


@pytest.fixture
def umask():
    old = os.umask(0o022)
    os.umask(old)

    def set_(mask: int) -> None:
        os.umask(mask)

    yield set_
    os.umask(old)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600), (0o002, 0o664)])
def test_new_reports_follow_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    atomic_write_text(tmp_path / "r.csv", "x\n")
    reports.write_report(_run(_result("a.jpg")), "html", tmp_path / "r.html")
    assert (tmp_path / "r.csv").stat().st_mode & 0o7777 == mode
    assert (tmp_path / "r.html").stat().st_mode & 0o7777 == mode


@pytest.mark.parametrize("existing", [0o644, 0o640, 0o600, 0o664])
def test_replacing_a_file_keeps_its_mode(tmp_path, umask, existing):
    umask(0o077)
    path = tmp_path / "IMG_0001.xmp"
    path.write_text("old")
    path.chmod(existing)
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and path.stat().st_mode & 0o7777 == existing


def test_replacing_a_symlink_replaces_the_link_not_its_target(tmp_path, umask):
    umask(0o022)
    target = tmp_path / "target.txt"
    target.write_text("keep")
    target.chmod(0o600)
    link = tmp_path / "report.csv"
    os.symlink(target, link)
    atomic_write_text(link, "new")
    assert target.read_text() == "keep" and not link.is_symlink() and link.stat().st_mode & 0o777 == 0o644


# --------------------------------------------------------------------------- C: CSV formulas

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def test_csv_text_cells_cannot_start_a_formula():
    rows = [_result(f"{c}HYPERLINK(1).jpg", score=0.9 - i / 10) for i, c in enumerate(FORMULA_STARTS)]
    rows.append(_result("cam.jpg", score=0.1, make="=cmd|' /C calc'!A0", model="+Model", lens="@SUM(A1)",
                        exposure="-1", captured="=NOW()"))
    rows.append(_result("-broken.jpg", error="=decode failed"))
    text = reports.to_csv(_run(*rows))
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


# --------------------------------------------------------------------------- D: control characters


def test_display_escapes_controls_and_bidi_but_keeps_text():
    assert display("a\x1b[31mb") == "a\\x1b[31mb"
    assert display("x\u202ey\u2066z") == "x\\u202ey\\u2066z"
    assert display("l\nr\tc\rd") == "l\\nr\\tc\\rd"
    assert display("\x9b\x7f") == "\\x9b\\x7f"
    assert display("ç_日本_🌸 👩\u200d💻 caf\udce9") == "ç_日本_🌸 👩\u200d💻 caf\ufffd"


def test_terminal_table_shows_control_characters_escaped():
    run = _run(_result(f"shoot/{HOSTILE}", make="Evil\x1b[2J", model="Cam\u202e"))
    out = _rendered(reports.terminal_table(run, 20))
    assert not any(c in out for c in RAW_CONTROLS)
    assert "\\x1b[31mred" in out.replace("\n", "") and "\\u202egpj" in out and "Evil\\x1b[2J" in out


def test_rich_markup_in_names_exif_and_weights_prints_literally():
    run = _run(_result("[red]x[/red] [link=http://evil]y[/link].jpg", make="[bold]Canon[/bold]"),
               weights="[blink]w[/blink]")
    out = _rendered(reports.terminal_table(run, 20))
    assert "[red]x[/red]" in out and "[link=http://evil]y[/link]" in out
    assert "[bold]Canon[/bold]" in out and "[blink]w[/blink]" in out


def test_html_shows_control_characters_escaped(tmp_path):
    run = _run(_result(f"shoot/{HOSTILE}", make="Evil\x1b[2J"), _result(f"bad/{HOSTILE}", error="broken \x1b[1m"))
    page = reports.to_html(run, thumbnails=False)
    assert not any(c in page for c in RAW_CONTROLS)
    assert "a\\x1b[31mred" in page and "\\u202egpj.exe\\nfake,row" in page and "Evil\\x1b[2J" in page
    assert "broken \\x1b[1m" in page


def test_csv_shows_control_characters_escaped_one_line_per_row():
    run = _run(_result(HOSTILE, make="Evil\x1b[2J"), _result(f"{HOSTILE}2", score=0.1),
               _result("bad\n.jpg", error="line1\nline2"))
    text = reports.to_csv(run)
    assert not any(c in text for c in RAW_CONTROLS)
    assert len(text.splitlines()) == 4  # header + 3 rows: a newline in a name is not a new row
    assert list(csv.reader(io.StringIO(text)))[1][2] == display(HOSTILE)


def test_json_keeps_exact_names_without_raw_control_characters():
    names = [HOSTILE, "x\u2028y\u2029z\u200f\u061c\U000e0001.jpg", "caf\udce9.jpg"]
    text = reports.to_json(_run(*[_result(n) for n in names]))
    assert not any(c in text for c in (*RAW_CONTROLS, "\u2028", "\u2029", "\u200f", "\u061c", "\U000e0001"))
    assert sorted(r["path"] for r in json.loads(text)["results"]) == sorted(
        n.encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape") for n in names)


def _cli(*args: object, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ilgnet_cli", *map(str, args)], capture_output=True,
                          text=True, errors="surrogateescape", timeout=timeout,
                          env={**os.environ, "COLUMNS": "300", "NO_COLOR": "1"})


@pytest.mark.slow
def test_one_line_errors_show_hostile_paths_literally_and_escaped(tmp_path):
    missing = tmp_path / "[red]gone[/red]\x1b]0;pwned\x07\u202e"
    proc = _cli("score", missing, "--device", "cpu", "--offline")
    assert proc.returncode == 1
    assert "[red]gone[/red]\\x1b]0;pwned\\x07\\u202e" in proc.stderr
    assert not any(c in proc.stderr for c in RAW_CONTROLS) and len(proc.stderr.strip().splitlines()) == 1
    folder = tmp_path / "[bold]dir[blink]\x1b[2J"
    folder.mkdir()
    proc = _cli("score", tmp_path, "--device", "cpu", "--offline", "-f", "csv", "-o", folder)  # a folder
    assert proc.returncode == 2 and "[bold]dir[blink]\\x1b[2J" in proc.stderr
    assert not any(c in proc.stderr for c in RAW_CONTROLS)


# --------------------------------------------------------------------------- E: outputs inside the tree


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    root.mkdir()
    jpg = camera_photos(1)[0]
    for name in ("a.jpg", "b.jpg"):
        shutil.copy2(jpg, root / name)
    (root / "best").mkdir()
    shutil.copy2(jpg, root / "best" / "001_a.jpg")
    shutil.copy2(jpg, root / "report.jpg")  # an -o report given an image extension
    return root


def test_discovery_skips_export_folders_and_the_report_file(tmp_path):
    root = _tree(tmp_path)
    sel = Selection(skip=[str(root / "best"), str(root / "report.jpg"), str(tmp_path / "not-there")])
    found = sorted(os.path.relpath(p, root) for p in find_images([root], sel))
    assert found == ["a.jpg", "b.jpg"]


def test_discovery_skip_matches_the_folder_however_it_is_spelled(tmp_path, monkeypatch):
    root = _tree(tmp_path)
    os.symlink(root / "best", root / "alias")  # the same folder under another name
    monkeypatch.chdir(tmp_path)
    found = sorted(os.path.relpath(p, root) for p in find_images([root], Selection(skip=["photos/best"])))
    assert found == ["a.jpg", "b.jpg", "report.jpg"]


@pytest.mark.slow
def test_copy_top_inside_the_scanned_tree_is_not_scored_again(tmp_path, weights_file):
    root = tmp_path / "photos"
    root.mkdir()
    for p in camera_photos(2):
        shutil.copy2(p, root / p.name)
    args = ["score", root, "--weights", weights_file, "--device", "cpu", "--workers", "0", "--copy-top", root / "best"]
    first = _cli(*args, "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["summary"]["files"] == 2
    second = _cli(*args, "-o", root / "scores.jpg", "-f", "json")
    assert second.returncode == 0, second.stderr
    data = json.loads((root / "scores.jpg").read_text())
    assert data["summary"]["files"] == 2, [r["path"] for r in data["results"]]  # not best/, not scores.jpg
    assert len(list((root / "best").iterdir())) == 4


# --------------------------------------------------------------------------- F: the same class, elsewhere


@pytest.mark.parametrize(("source", "mask", "mode"), [(0o666, 0o022, 0o644), (0o777, 0o027, 0o750),
                                                      (0o600, 0o022, 0o600), (0o4755, 0o022, 0o755)])
def test_exported_copies_keep_the_source_mode_within_the_umask(tmp_path, umask, source, mask, mode):
    """A world-writable (or setuid) photo in someone else's tree must not become a file others
    can change (or run as us) in our export folder: the mode is the source's, as cp makes it."""
    photo, dest = _shoot(tmp_path)
    photo.chmod(source)
    umask(mask)
    (written,) = reports.export_top([_result(str(photo))], dest)
    assert written.stat().st_mode & 0o7777 == mode


@pytest.mark.slow
def test_report_output_never_overwrites_an_image(tmp_path, weights_file):
    folder = tmp_path / "shoot"
    folder.mkdir()
    for p in camera_photos(2):
        shutil.copy2(p, folder / p.name)
    photo = folder / camera_photos(2)[0].name
    before = photo.read_bytes()
    proc = _cli("score", folder, "--weights", weights_file, "--device", "cpu", "--workers", "0",
                "-f", "csv", "-o", photo)
    assert proc.returncode == 2 and "is an image" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert photo.read_bytes() == before
    report = folder / "old-report.jpg"  # a report of ours with an odd name is not an image: replaced
    report.write_text("rank,score\n")
    proc = _cli("score", folder, "--weights", weights_file, "--device", "cpu", "--workers", "0",
                "-f", "csv", "-o", report)
    assert proc.returncode == 0, proc.stderr
    assert report.read_text().startswith("rank,score,path")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40), st.text(max_size=20))
def test_any_name_and_camera_give_safe_csv_and_table_cells(name, make):
    run = _run(_result(name, make=make))
    rows = list(csv.reader(io.StringIO(reports.to_csv(run))))
    assert len(rows) == 2  # header + one row, whatever the name holds
    for cell in rows[1]:
        assert not cell.startswith(FORMULA_STARTS)
        assert not any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in cell)
    shown = display(name)
    assert "\n" not in shown and not any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs")
                                         and c not in "\u200c\u200d" for c in shown)
