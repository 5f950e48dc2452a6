"""``ilgnet score`` as a photographer runs it: what the command line adds to score_collection and
the reports (options, the summary and table it prints, outputs checked before any scoring, exit
codes, the cache across runs, signals). In-process on the tiny stand-in (``--weights tiny``);
the real program on real-size weights where the process itself matters."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import one_line, shared_path, write_dng
from PIL import Image

from ilgnet_cli.predict import gate as gate_module

CPU = ("--device", "cpu", "--workers", "0")


def score(cli, *args, env=None):
    return cli("score", *args, "--weights", "tiny", *CPU, env=env)


# --------------------------------------------------------------------------- what is printed


def test_the_table_the_summary_and_the_distribution(tiny_cli, photo_folder, cli):
    folder = photo_folder(4, size=400)
    Image.new("RGB", (1, 1), (200, 80, 40)).save(folder / "dot.png")
    result = score(cli, folder, "--min-score", "0")
    assert result.code == 0, result.output
    table = result.stdout.splitlines()
    assert table[0].startswith("ILGNet scores — top 5 of 5 (tiny)")
    assert table[1].split()[:3] == ["rank", "score", "file"]
    assert any(line.split()[2] == "Apple_iPhone-4.jpg" for line in table[2:])  # relative to the folder given
    assert "tiny: 1x1, upscaled" in result.stdout
    summary = result.errors
    assert result.stderr.splitlines() == summary  # no blank line (a stopped progress bar left one in logs)
    assert summary[0].startswith("scored 5 of 5 files (0 from cache, 5 decoded)")
    scores = next(line for line in summary if line.startswith("scores: "))
    assert " · median " in scores and " · min-score 0" in scores
    # With XMP ratings, where the stars begin is in the line and on the contact sheet's histogram.
    sheet = folder.parent / "sheet.html"
    rated = score(cli, folder, "--min-score", "0", "-o", sheet, "--xmp", "--stars", "fixed:0.2,0.4,0.6,0.8")
    assert rated.code == 0, rated.output
    assert next(line for line in rated.errors if line.startswith("scores: ")).endswith("★★★★★ ≥ 0.80")
    page = sheet.read_text(encoding="utf-8")
    assert "tiny: 1x1, upscaled" in page and "<svg" in page and "★★★★★" in page


def test_quiet_prints_nothing_but_problems(tiny_cli, photo_folder, cli):
    folder = photo_folder(2, size=400)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    result = score(cli, folder, "-q")
    assert result.code == 0 and result.stdout == ""
    assert not any(line.startswith(("scored ", "scores: ")) for line in result.errors)


def test_with_outputs_the_table_comes_only_with_top(tiny_cli, photo_folder, tmp_path, cli):
    folder = photo_folder(3, size=400)
    for extra in (["-o", tmp_path / "r.csv"], ["--copy-top", tmp_path / "best"], ["--xmp"]):
        assert score(cli, folder, *extra).stdout == "", extra
        assert "ILGNet scores — top 2 of 3" in score(cli, folder, *extra, "--top", "2").stdout, extra


def test_json_goes_to_stdout_and_records_how_each_photo_was_scored(tiny_cli, photo_folder, cli):
    folder = photo_folder(3, size=400)
    data = json.loads(score(cli, folder, "--json").stdout)
    assert [r["rank"] for r in data["results"]] == [1, 2, 3] and data["weights"] == "tiny"
    assert {(r["precision"], r["decode"]) for r in data["results"]} == {("fp32", "reference-800")}
    exact = json.loads(score(cli, folder, "--json", "--decode", "exact", "--no-cache").stdout)
    assert {r["decode"] for r in exact["results"]} == {"exact"}
    fast = json.loads(score(cli, folder, "--json", "--batch-size", "1", "--no-cache").stdout)
    assert {r["decode"] for r in fast["results"]} == {"fast-800"}  # the default, when the run takes shortcuts


def test_the_fidelity_gate_says_what_it_decided(tiny_cli, photo_folder, monkeypatch, cli):
    """auto: bf16 where the device has it natively and the checks keep it faithful; the verdict
    is printed once decided; --exact is fp32 whatever the device."""
    monkeypatch.setattr(gate_module, "BUDGET", 1e9)  # check every batch
    folder = photo_folder(10, size=400)
    native = {"ILGNET_NATIVE_BF16": "1"}
    calm = cli("score", folder, "--weights", "tiny-calm", *CPU, "--batch-size", "2", "--json", "--no-cache", env=native)
    assert {r["precision"] for r in json.loads(calm.stdout)["results"]} == {"bf16"}
    assert any(line.startswith("fidelity: bf16 checked against the faithful path") for line in calm.errors)
    fragile = cli("score", folder, "--weights", "tiny-fragile", *CPU, "--batch-size", "2", "--json", "--no-cache",
                  env=native)
    assert {r["precision"] for r in json.loads(fragile.stdout)["results"]} == {"fp32"}
    verdict = [line for line in fragile.errors if line.startswith("fidelity: bf16")]
    assert len(verdict) == 1 and "moved these weights' scores too much" in verdict[0] and "using fp32" in verdict[0]
    exact = cli("score", folder, "--weights", "tiny-calm", *CPU, "--exact", "--json", "--no-cache", env=native)
    assert {(r["precision"], r["decode"]) for r in json.loads(exact.stdout)["results"]} == {("fp32", "exact")}
    assert not any(line.startswith("fidelity:") for line in exact.errors)


def test_a_second_run_uses_the_cache(tiny_cli, photo_folder, cli):
    folder = photo_folder(3, size=400)
    assert "0 from cache, 3 decoded" in score(cli, folder).stderr
    assert "3 from cache, 0 decoded" in score(cli, folder).stderr
    assert "0 from cache, 3 decoded" in score(cli, folder, "--no-cache").stderr


def test_file_names_that_are_not_utf8_survive_cache_and_reports(tmp_path, tiny_cli, copies, cli):
    """Latin-1 names from old cameras or zips: scored, cached, and written to every report."""
    folder = tmp_path / "latin1"
    try:
        (raw,) = copies([b"caf\xe9_\xff.jpg"], folder)
    except (OSError, UnicodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    copies(["plain.jpg"], folder, source=1)
    for fmt in ("json", "csv", "html"):
        result = score(cli, folder, "-o", tmp_path / f"r.{fmt}")
        assert result.code == 0 and "scored 2 of 2" in result.stderr, result.stderr
        assert ("0 from cache" if fmt == "json" else "2 from cache") in result.stderr
    data = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert sorted(os.fsencode(r["path"]) for r in data["results"]) == sorted(
        [os.fsencode(raw), os.fsencode(folder / "plain.jpg")])
    assert os.fsencode(raw) in (tmp_path / "r.csv").read_bytes()  # the exact bytes on disk: the path opens
    page = (tmp_path / "r.html").read_text(encoding="utf-8")  # valid UTF-8
    assert "caf\ufffd_\ufffd.jpg" in page
    stdout = score(cli, folder, "--json")
    assert stdout.code == 0 and len(json.loads(stdout.stdout)["results"]) == 2


def test_csv_ranks_the_top_and_lists_every_failure(tiny_cli, evil_folder, tmp_path, cli):
    out = tmp_path / "r.csv"
    assert score(cli, evil_folder, "-o", out, "--top", "1").code == 0
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [r["status"] for r in rows] == ["scored", "scored", "error"]
    assert rows[2]["error"] == "not identifiable as an image" and rows[0]["rank"] == "1"


def test_min_score_filters_the_reports(tiny_cli, photo_folder, tmp_path, cli):
    folder = photo_folder(6, size=400)
    scores = sorted(r["score"] for r in json.loads(score(cli, folder, "--json").stdout)["results"])
    out = tmp_path / "r.json"
    assert score(cli, folder, "--min-score", scores[3], "-o", out).code == 0
    assert len(json.loads(out.read_text())["results"]) == 3


def test_dng_is_scored_and_gets_its_sidecar(tmp_path, tiny_cli, camera, cli):
    pytest.importorskip("rawpy")
    rgb = np.asarray(Image.open(camera(1)[0]).convert("RGB").resize((600, 400)))
    write_dng(tmp_path / "IMG_0001.DNG", rgb)
    result = score(cli, tmp_path, "--json", "--xmp")
    assert result.code == 0, result.output
    assert json.loads(result.stdout)["results"][0]["format"] == "RAW (preview)"
    assert (tmp_path / "IMG_0001.xmp").exists()  # sidecars work for RAW too


# --------------------------------------------------------------------------- outputs


def test_unwritable_outputs_fail_before_any_scoring(tmp_path, tiny_cli, photo_folder, cli):
    """A typo in -o or --copy-top must cost seconds, not a finished run (and never a traceback)."""
    photo = next(photo_folder(1, size=400).iterdir())
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    cases = [(("-o", tmp_path, "-f", "csv"), "it is a folder"),
             (("-o", a_file / "report.json"), "cannot write"),
             (("--copy-top", a_file), "a file of that name exists"),
             (("--link-top", a_file / "sub"), "cannot use"),
             (("-o", tmp_path / "r.weird"), "--format"),
             (("--copy-top", photo.parent), "a folder being scored")]
    for args, message in cases:
        result = cli("score", photo.parent if "a folder being scored" in message else photo, "--weights", "tiny", *CPU,
                     "--no-cache", *args)
        assert result.code == 2, (args, result.output)
        assert message in result.stderr and len(result.errors) == 1
        assert not any(line.startswith("scored") for line in result.errors)  # refused before the run
    assert a_file.read_text() == "x" and not (tmp_path / "r.weird").exists()


def test_a_report_never_overwrites_an_image(tiny_cli, photo_folder, cli):
    folder = photo_folder(2, size=400)
    photo = sorted(folder.iterdir())[0]
    before = photo.read_bytes()
    result = score(cli, folder, "-f", "csv", "-o", photo)
    assert result.code == 2 and "it is named like an image (.jpg)" in result.stderr and len(result.errors) == 1
    assert photo.read_bytes() == before
    shutil.copy(photo, folder / "export.dat")  # a photo by its content
    result = score(cli, folder, "-f", "csv", "-o", folder / "export.dat")
    assert result.code == 2 and "it is an image" in result.stderr and (folder / "export.dat").read_bytes() == before
    report = folder / "old-report.jpg"  # a report of ours with an odd name is not an image: replaced
    report.write_text("rank,score\n")
    assert score(cli, folder, "-f", "csv", "-o", report).code == 2  # named like one: refused all the same
    report.rename(folder / "old-report.txt")
    result = score(cli, folder, "-f", "csv", "-o", folder / "old-report.txt")
    assert result.code == 0, result.output
    assert (folder / "old-report.txt").read_text().startswith("rank,score,path")


def test_copy_and_link_top_never_overwrite_and_export_once(tmp_path, tiny_cli, photo_folder, cli):
    folder = photo_folder(4, size=400)
    dest = tmp_path / "best"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    args = (folder, "--top", "2")
    first = score(cli, *args, "--copy-top", dest)
    assert first.code == 0, first.output
    second = score(cli, *args, "--copy-top", dest)
    assert second.code == 0 and f"{dest}: 0 added, 2 already there" in second.stderr
    names = sorted(p.name for p in dest.iterdir() if not p.name.startswith("."))
    assert (dest / "keep.txt").read_text() == "mine"
    assert len([n for n in names if n.startswith(("001_", "002_"))]) == 2  # the second run added nothing
    assert all((folder / n.split("_", 1)[1]).exists() for n in names if n[:3].isdigit())
    links = tmp_path / "links"
    assert score(cli, *args, "--link-top", links).code == 0
    linked = [p for p in links.iterdir() if not p.name.startswith(".")]
    assert len(linked) == 2 and all(p.is_symlink() and p.resolve().parent == folder.resolve() for p in linked)


@pytest.mark.parametrize("planted", ["link", "fifo"])
def test_an_export_mark_that_cannot_be_written_is_refused_before_scoring(tmp_path, tiny_cli, photo_folder, cli,
                                                                         planted):
    folder = photo_folder(3, size=400)
    dest = tmp_path / "best"
    dest.mkdir()
    mark = dest / ".ilgnet-export.json"
    if planted == "link":
        (tmp_path / "victim.txt").write_text("mine")
        mark.symlink_to(tmp_path / "victim.txt")
    else:
        os.mkfifo(mark)
    result = score(cli, folder, "--top", "2", "--copy-top", dest)
    assert result.code == 2
    one_line(result.stderr, ".ilgnet-export.json")
    assert sorted(p.name for p in dest.iterdir()) == [".ilgnet-export.json"]  # nothing copied, nothing scored
    assert "scored" not in result.stderr


def test_an_export_inside_the_scanned_tree_is_not_scored_again(tmp_path, tiny_cli, photo_folder, cli):
    root = photo_folder(2, "photos", size=400)
    args = (root, "--copy-top", root / "best")
    first = score(cli, *args, "--json")
    assert first.code == 0, first.stderr
    assert json.loads(first.stdout)["summary"]["files"] == 2
    second = score(cli, *args, "-o", root / "scores.json")
    assert second.code == 0, second.stderr
    data = json.loads((root / "scores.json").read_text())
    assert data["summary"]["files"] == 2, [r["path"] for r in data["results"]]  # not best/, not the report
    assert len([p for p in (root / "best").iterdir() if not p.name.startswith(".")]) == 2


# --------------------------------------------------------------------------- exit codes


def test_exit_1_when_nothing_could_be_scored(tmp_path, tiny_cli, cli):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    result = score(cli, bad)
    assert result.code == 1 and "skipped" in result.stderr and "truncated image data" in result.stderr
    result = score(cli, tmp_path / "does-not-exist")
    assert result.code == 1 and "no such file or folder" in result.stderr and len(result.errors) == 1


# --------------------------------------------------------------------------- the real program, real-size weights


@pytest.mark.slow
def test_every_shared_photo_scored_or_rejected_with_reason(tmp_path, weights_file, cli):
    from test_decode import expected_reason, manifest

    photos = shared_path("photos")
    report = tmp_path / "report.json"
    result = cli("score", photos, "--weights", weights_file, "--device", "cpu", "--workers", "2", "--no-cache",
                 "-o", report, subprocess=True)
    assert result.code == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "TIFFFillStrip" not in result.stderr  # libtiff's own chatter stays out of the terminal
    data = json.loads(report.read_text())
    scored = {str(Path(r["path"]).relative_to(photos)): r for r in data["results"]}
    errors = {str(Path(e["path"]).relative_to(photos)): e["reason"] for e in data["errors"]}
    for row in manifest():
        if row["expected"] == "score":
            assert row["path"] in scored, f"{row['path']} not scored: {errors.get(row['path'])}"
            assert 0.0 <= scored[row["path"]]["score"] <= 1.0
        else:
            assert row["path"] in errors, f"{row['path']} should be rejected"
            assert errors[row["path"]].startswith(expected_reason(row["expected"])), (row, errors[row["path"]])
    assert data["summary"]["errors"] == len(errors) and f"{len(errors)} not scored" in result.stderr
    keys = [(-r["score"], r["path"]) for r in data["results"]]
    assert keys == sorted(keys)  # sorted by score, ties by path


@pytest.mark.parametrize(("signum", "code"), [pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow),
                                              (signal.SIGTERM, 143),
                                              pytest.param(signal.SIGHUP, 129, marks=pytest.mark.slow)])
def test_a_signal_writes_the_partial_report_and_exits_128_plus_n(tmp_path, weights_file, copies, cli, signum, code):
    """Ctrl-C, and SIGTERM/SIGHUP (systemd, timeout, a closed terminal) alike: what finished is
    reported and cached, the exit code says which signal."""
    folder = tmp_path / "many"
    copies([f"img_{i:03d}.jpg" for i in range(80)], folder)
    home = tmp_path / "home"
    report = tmp_path / "partial.json"
    proc = cli.start("score", folder, "--weights", weights_file, *CPU, "--batch-size", "4", "-o", report,
                     env={"ILGNET_HOME": str(home)})
    db = home / "scores.sqlite"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if db.exists():
            try:
                with sqlite3.connect(db) as conn:
                    if conn.execute("SELECT COUNT(*) FROM scores_v2").fetchone()[0] >= 8:
                        break
            except sqlite3.OperationalError:
                pass
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    data = json.loads(report.read_text())
    assert data["summary"]["interrupted"] is True
    assert 8 <= len(data["results"]) < 80
    # Nothing finished is lost: the cache holds at least what the report holds.
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM scores_v2").fetchone()[0] >= len(data["results"])


@pytest.mark.slow  # subprocesses and torchrun
def test_torchrun_score_shards_files_and_merges_one_report(tmp_path, weights_file, camera, cli):
    photos = [str(p) for p in camera(5)]
    report = tmp_path / "r.json"
    result = cli("score", *photos, "--weights", weights_file, *CPU, "--no-cache", "-o", report,
                 env={"OMP_NUM_THREADS": "1"}, torchrun=2)
    assert result.code == 0, result.stderr[-2000:]
    data = json.loads(report.read_text())
    assert sorted(r["path"] for r in data["results"]) == sorted(photos)
    assert data["summary"]["scored"] == 5
    shutil.rmtree(tmp_path / "r.json", ignore_errors=True)
