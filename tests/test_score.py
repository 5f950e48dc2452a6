"""`ilgnet score` as a photographer runs it: folders, odd files, reports, cache, determinism."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import camera_photos, real_weights, shared_path
from ilgnet_cli.photos.scoring import run_score
from PIL import Image

from ilgnet_cli.model import store
from ilgnet_cli.photos.cache import ScoreCache


def cli(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ilgnet_cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def loaded(weights_file):
    return store.load_model(str(weights_file))


def manifest() -> list[dict]:
    with shared_path("photos", "manifest.tsv").open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def expected_reason(expected: str) -> str:
    """Manifest 'reject: X' -> the prefix our reason must start with."""
    return expected.removeprefix("reject: ").replace(" by Pillow", "").rstrip(")")


@pytest.mark.slow
def test_every_shared_photo_scored_or_rejected_with_reason(tmp_path, weights_file):
    photos = shared_path("photos")
    report = tmp_path / "report.json"
    proc = cli("score", photos, "--weights", weights_file, "--device", "cpu", "--workers", "2", "--no-cache",
               "-o", report)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "TIFFFillStrip" not in proc.stderr  # libtiff's own chatter stays out of the terminal
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
    assert data["summary"]["errors"] == len(errors) and "warning(s)" in proc.stderr
    # Sorted by score, ties by path.
    keys = [(-r["score"], r["path"]) for r in data["results"]]
    assert keys == sorted(keys)


def _orientation_files(kind: str) -> list[str]:
    folder = shared_path("photos", "orientation")
    return [str(folder / f"{kind}_{i}.jpg") for i in range(9)]


@pytest.mark.parametrize("kind", ["landscape", "portrait"])
def test_orientation_samples_are_the_same_picture(kind):
    """Weight-independent: after EXIF orientation every sample is the upright picture.

    The samples were re-encoded after rotating, so they differ by JPEG noise (measured: mean
    |diff| 0.3-1.8 grey levels of the 256x256 input); a wrong or missing rotation gives > 20.
    """
    from ilgnet_cli.data.decode import decode
    from ilgnet_cli.model.transform import resize_bilinear

    files = _orientation_files(kind)
    ref = resize_bilinear(decode(files[1], draft=256).rgb).astype(float)
    for f in files:
        diff = np.abs(resize_bilinear(decode(f, draft=256).rgb).astype(float) - ref).mean()
        assert diff < 2.5, (f, diff)
    wrong = np.abs(np.rot90(ref, 2) - ref).mean()
    assert wrong > 20


@pytest.mark.slow
def test_orientation_samples_score_the_same(loaded, monkeypatch):
    """Scores of the 9 samples vs the spread between different photos.

    With the test's random weights the orientation spread is about 0.006 (JPEG noise through
    an untrained net), under a tenth of the spread between photos. The issue's 1e-3 bound is
    checked with real weights: ILGNET_TEST_WEIGHTS=ilgnet-ava1 (or a .safetensors path).
    """
    real = real_weights(monkeypatch)
    model = real or loaded
    between = np.ptp([r.score for r in run_score([str(p) for p in camera_photos(12)], model).results])
    for kind in ("landscape", "portrait"):
        run = run_score(_orientation_files(kind), model, batch_size=9)
        assert run.stats.scored == 9
        spread = np.ptp([r.score for r in run.results])
        print(f"\n{kind}: orientation spread {spread:.5f}, between-photo spread {between:.5f}")
        assert spread <= (1e-3 if real else 0.1 * between), (kind, spread, between)


@pytest.mark.slow
def test_scores_do_not_depend_on_batch_workers_or_run(loaded):
    files = [str(p) for p in camera_photos(10)]
    runs = [run_score(files, loaded, batch_size=bs, workers=w) for bs, w in ((1, 0), (4, 0), (10, 2), (3, 1))]
    base = np.array([r.score for r in runs[0].results])
    for run in runs[1:]:
        assert [r.path for r in run.results] == files
        np.testing.assert_allclose([r.score for r in run.results], base, atol=1e-5, rtol=0)
    # Batch neighbours: the same photo next to different photos.
    alone = run_score(files[3:4], loaded, batch_size=1).results[0].score
    assert abs(alone - base[3]) <= 1e-5


def _misbehave(path: str, decoded) -> dict:
    """Stands in for native decoder bugs: a segfault on 'boom' files, an endless loop on 'hang'."""
    name = Path(path).name
    if "boom" in name:
        os.kill(os.getpid(), signal.SIGSEGV)
    if "hang" in name:
        time.sleep(3600)
    return {}


@pytest.mark.slow
@pytest.mark.parametrize(("workers", "bad"), [(1, "boom"), (2, "boom"), (2, "hang")])
def test_a_crashing_or_hanging_decoder_costs_only_its_file(tmp_path, loaded, monkeypatch, workers, bad):
    from ilgnet_cli.photos import scoring

    monkeypatch.setattr(scoring, "DECODE_TIMEOUT_S", 2)
    files = []
    for i, src in enumerate(camera_photos(7)):
        name = f"{bad}.jpg" if i == 3 else f"{i}.jpg"
        files.append(str(tmp_path / f"{i}_{name}"))
        shutil.copy(src, files[-1])
    run = run_score(files, loaded, batch_size=2, workers=workers, extra=_misbehave)
    assert [r.path for r in run.results] == files
    assert [r.error for r in run.results] == [None] * 3 + [scoring.CRASH_REASON] + [None] * 3
    plain = run_score(files[:3] + files[4:], loaded, batch_size=2, workers=0, extra=None)
    np.testing.assert_allclose([r.score for r in run.results if r.ok], [r.score for r in plain.results], atol=1e-5)


def test_cache_skips_unchanged_files_and_rescores_touched_ones(tmp_path, loaded):
    folder = tmp_path / "shoot"
    folder.mkdir()
    for p in camera_photos(6):
        shutil.copy2(p, folder / p.name)
    files = sorted(str(p) for p in folder.iterdir())
    db = tmp_path / "cache.sqlite"

    def run():
        with ScoreCache(db, loaded.sha256, 1, "draft") as cache:
            return run_score(files, loaded, cache=cache, batch_size=4)

    first = run()
    assert (first.stats.decoded, first.stats.cache_hits) == (6, 0)
    second = run()
    assert (second.stats.decoded, second.stats.cache_hits) == (0, 6)
    assert [r.score for r in second.results] == [r.score for r in first.results]
    assert second.results[0].info["exif"] == first.results[0].info["exif"]
    st = os.stat(files[2])
    os.utime(files[2], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    third = run()
    assert (third.stats.decoded, third.stats.cache_hits) == (1, 5)
    # Other weights or exact decoding never reuse draft scores.
    with ScoreCache(db, "other-weights", 1, "draft") as cache:
        assert run_score(files[:1], loaded, cache=cache).stats.decoded == 1
    with ScoreCache(db, loaded.sha256, 1, "exact") as cache:
        assert run_score(files[:1], loaded, cache=cache, exact=True).stats.decoded == 1


@pytest.mark.slow
def test_cli_second_run_uses_cache(tmp_path, weights_file):
    folder = tmp_path / "shoot"
    folder.mkdir()
    for p in camera_photos(3):
        shutil.copy2(p, folder / p.name)
    first = cli("score", folder, "--weights", weights_file, "--device", "cpu", "--workers", "0")
    assert first.returncode == 0, first.stderr
    assert "0 from cache, 3 decoded" in first.stderr
    second = cli("score", folder, "--weights", weights_file, "--device", "cpu", "--workers", "0")
    assert "3 from cache, 0 decoded" in second.stderr


@pytest.mark.slow
def test_file_names_that_are_not_utf8_survive_cache_and_reports(tmp_path, weights_file):
    """Latin-1 names from old cameras or zips: scored, cached, and written to every report."""
    folder = tmp_path / "latin1"
    folder.mkdir()
    raw = os.fsencode(folder) + b"/caf\xe9_\xff.jpg"
    try:
        shutil.copy(camera_photos(1)[0], raw)
    except (OSError, UnicodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    shutil.copy(camera_photos(2)[1], folder / "plain.jpg")
    for fmt in ("json", "csv", "html"):
        proc = cli("score", folder, "--weights", weights_file, "--device", "cpu", "-o", tmp_path / f"r.{fmt}")
        assert proc.returncode == 0 and "scored 2 of 2" in proc.stderr, proc.stderr
        assert ("0 from cache" if fmt == "json" else "2 from cache") in proc.stderr
    data = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert sorted(os.fsencode(r["path"]) for r in data["results"]) == sorted([raw, os.fsencode(folder / "plain.jpg")])
    assert raw in (tmp_path / "r.csv").read_bytes()  # the exact bytes on disk: the path opens
    page = (tmp_path / "r.html").read_text(encoding="utf-8")  # valid UTF-8
    assert "caf\ufffd_\ufffd.jpg" in page
    stdout = cli("score", folder, "--weights", weights_file, "--device", "cpu", "--json")
    assert stdout.returncode == 0 and len(json.loads(stdout.stdout)["results"]) == 2


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _evil_folder(tmp_path) -> Path:
    folder = tmp_path / "evil"
    folder.mkdir()
    photo = camera_photos(1)[0]
    shutil.copy2(photo, folder / "<img src=x onerror=alert(1)>.jpg")
    img = Image.open(photo)
    exif = img.getexif()
    exif[0x010F] = "</script><script>alert(2)</script>"  # Make
    exif[0x0110] = '"><b onmouseover=alert(3)>'  # Model
    img.save(folder / "maker.jpg", exif=exif.tobytes(), quality=90)
    (folder / "broken <i>.jpg").write_bytes(b"not an image <script>alert(4)</script>")
    return folder


@pytest.mark.slow
def test_html_report_escapes_attacker_controlled_text(tmp_path, weights_file):
    folder = _evil_folder(tmp_path)
    report = tmp_path / "sheet.html"
    proc = cli("score", folder, "--weights", weights_file, "--device", "cpu", "-o", report, "--no-cache")
    assert proc.returncode == 0, proc.stderr
    page = report.read_text(encoding="utf-8")
    parser = _Collector()
    parser.feed(page)
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


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_html_report_renders_in_headless_chromium(tmp_path, weights_file):
    folder = _evil_folder(tmp_path)
    for p in camera_photos(6):
        shutil.copy2(p, folder / p.name)
    report = tmp_path / "sheet.html"
    assert cli("score", folder, "--weights", weights_file, "--device", "cpu", "-o", report).returncode == 0
    shot = tmp_path / "sheet.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chrome'}", "--hide-scrollbars", "--window-size=1100,900"]
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", report.as_uri()], capture_output=True, timeout=120)
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", report.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    assert "&lt;img src=x onerror=alert(1)&gt;.jpg" in dom and "<script" not in dom
    img = np.asarray(Image.open(shot).convert("RGB"))
    # Thumbnails are photos: thousands of distinct colours; an empty page has a handful.
    colours = len(np.unique(img.reshape(-1, 3), axis=0))
    assert colours > 5000, colours
    if os.environ.get("ILGNET_KEEP_SCREENSHOT"):
        shutil.copy2(shot, os.environ["ILGNET_KEEP_SCREENSHOT"])


@pytest.mark.slow
def test_csv_and_json_reports_hold_every_file_and_errors(tmp_path, weights_file):
    folder = _evil_folder(tmp_path)
    out_csv, out_json = tmp_path / "r.csv", tmp_path / "r.json"
    proc = cli("score", folder, "--weights", weights_file, "--device", "cpu", "-o", out_csv, "--top", "1")
    assert proc.returncode == 0
    rows = list(csv.DictReader(out_csv.open(encoding="utf-8")))
    assert [r["status"] for r in rows] == ["scored", "scored", "error"]
    assert rows[2]["error"] == "not identifiable as an image" and rows[0]["rank"] == "1"
    assert cli("score", folder, "--weights", weights_file, "--device", "cpu", "--json", "-o", out_json).returncode == 0
    data = json.loads(out_json.read_text())
    assert len(data["results"]) == 2 and data["errors"][0]["path"].endswith("broken <i>.jpg")
    maker = next(r for r in data["results"] if r["path"].endswith("maker.jpg"))
    assert maker["camera"].startswith("</script>")


@pytest.mark.slow
def test_exit_codes(tmp_path, weights_file):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    proc = cli("score", bad, "--weights", weights_file, "--device", "cpu")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "skipped" in proc.stderr
    proc = cli("score", tmp_path / "does-not-exist", "--weights", weights_file)
    assert proc.returncode == 1 and "no such file or folder" in proc.stderr
    proc = cli("score", bad, "--copy-top", tmp_path / "a", "--link-top", tmp_path / "b")
    assert proc.returncode == 2 and "either --copy-top or --link-top" in proc.stderr
    proc = cli("score", bad, "--format", "pdf")
    assert proc.returncode == 2
    proc = cli("score", bad, "--device", "cuda:7" if not _cuda() else "tpu")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_unwritable_outputs_fail_before_any_scoring(tmp_path, weights_file):
    """A typo in -o or --copy-top must cost seconds, not a finished run (and never a traceback)."""
    photo = camera_photos(1)[0]
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    cases = [(("-o", tmp_path, "-f", "csv"), "it is a folder"),
             (("-o", a_file / "report.json"), "cannot write"),
             (("--copy-top", a_file), "a file of that name exists"),
             (("--link-top", a_file / "sub"), "cannot use")]
    for args, message in cases:
        proc = cli("score", photo, "--weights", weights_file, "--device", "cpu", "--no-cache", *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr
        assert "scored" not in proc.stderr  # refused before the run, not after it
    assert a_file.read_text() == "x"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.slow
def test_interrupt_writes_partial_report_and_exits_130(tmp_path, weights_file):
    folder = tmp_path / "many"
    folder.mkdir()
    photo = camera_photos(1)[0]
    for i in range(80):
        shutil.copy2(photo, folder / f"img_{i:03d}.jpg")
    home = tmp_path / "home"
    report = tmp_path / "partial.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ilgnet_cli", "score", str(folder), "--weights", str(weights_file), "--device", "cpu",
         "--workers", "0", "--batch-size", "4", "-o", str(report)],
        env={**os.environ, "ILGNET_HOME": str(home)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = home / "scores.sqlite"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if db.exists():
            try:
                with sqlite3.connect(db) as conn:
                    if conn.execute("SELECT COUNT(*) FROM scores").fetchone()[0] >= 8:
                        break
            except sqlite3.OperationalError:
                pass
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    data = json.loads(report.read_text())
    assert data["summary"]["interrupted"] is True
    assert 8 <= len(data["results"]) < 80
    # Nothing finished is lost: the cache holds at least what the report holds.
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM scores").fetchone()[0] >= len(data["results"])


def test_exif_failure_loses_only_exif(monkeypatch, loaded):
    import exifread

    def boom(*args, **kwargs):
        raise AssertionError("exifread exploded")

    monkeypatch.setattr(exifread, "process_file", boom)
    run = run_score([str(camera_photos(1)[0])], loaded)
    result = run.results[0]
    assert result.ok and result.score is not None
    assert result.info["exif"]["error"].startswith("EXIF unreadable: AssertionError")


@pytest.mark.slow
def test_copy_and_link_top_never_overwrite(tmp_path, weights_file):
    folder = tmp_path / "shoot"
    folder.mkdir()
    for p in camera_photos(4):
        shutil.copy2(p, folder / p.name)
    dest = tmp_path / "best"
    dest.mkdir()
    existing = dest / "keep.txt"
    existing.write_text("mine")
    args = ["score", folder, "--weights", weights_file, "--device", "cpu", "--top", "2"]
    assert cli(*args, "--copy-top", dest).returncode == 0
    assert cli(*args, "--copy-top", dest).returncode == 0
    names = sorted(p.name for p in dest.iterdir())
    assert existing.read_text() == "mine"
    assert len([n for n in names if n.startswith("001_")]) == 2  # second run added "-1", overwrote nothing
    assert all((folder / p.name.split("_", 1)[1]).exists() for p in dest.iterdir() if p.name.startswith("00")
               and "-" not in p.stem[-2:])
    links = tmp_path / "links"
    assert cli(*args, "--link-top", links).returncode == 0
    assert all(p.is_symlink() and p.resolve().parent == folder.resolve() for p in links.iterdir())


@pytest.mark.slow
def test_min_score_filters_report(tmp_path, weights_file, loaded):
    files = [str(p) for p in camera_photos(6)]
    scores = sorted(r.score for r in run_score(files, loaded).results)
    threshold = scores[3]
    out = tmp_path / "r.json"
    assert cli("score", *files, "--weights", weights_file, "--device", "cpu", "--min-score", threshold,
               "-o", out).returncode == 0
    assert len(json.loads(out.read_text())["results"]) == 3


def test_odd_formats_convert_correctly(tmp_path, loaded):
    from ilgnet_cli.data.decode import decode

    ramp = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    Image.fromarray(ramp, "F").save(tmp_path / "float.tiff")
    rgb = decode(tmp_path / "float.tiff").rgb
    assert rgb.shape == (64, 64, 3) and 100 < rgb.mean() < 155  # not black
    Image.fromarray((ramp * 65535).astype(np.uint16)).save(tmp_path / "gray16.png")
    assert 100 < decode(tmp_path / "gray16.png").rgb.mean() < 155
    base = Image.open(camera_photos(1)[0]).convert("RGB").resize((320, 240))
    base.save(tmp_path / "stereo.mpo", "MPO", save_all=True, append_images=[base.transpose(Image.FLIP_LEFT_RIGHT)])
    decoded = decode(tmp_path / "stereo.mpo", draft=256)
    assert decoded.format == "MPO" and decoded.rgb.shape == (240, 320, 3)
    frames = [Image.new("RGB", (40, 30), c) for c in ("red", "blue")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    first = decode(tmp_path / "anim.gif").rgb
    assert first[..., 0].mean() > 200 and first[..., 2].mean() < 50  # the first (red) frame
    run = run_score([str(tmp_path / n) for n in ("float.tiff", "gray16.png", "stereo.mpo", "anim.gif")], loaded)
    assert run.stats.scored == 4
