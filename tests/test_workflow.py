"""Photographer workflow: XMP sidecars (checked with ExifTool), best-of-burst, hostile sidecars."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import camera_photos
from PIL import Image, ImageFilter
from typer.testing import CliRunner

from ilgnet_cli.cli import app
from ilgnet_cli.photos.xmp import XmpError, plan_and_write, stars_for

runner = CliRunner()
EXIFTOOL = shutil.which("exiftool")
needs_exiftool = pytest.mark.skipif(EXIFTOOL is None,
                                    reason="ExifTool not installed (apt-get install libimage-exiftool-perl)")

EXISTING = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
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


def exiftool(*paths: Path) -> list[dict]:
    out = subprocess.run([EXIFTOOL, "-j", "-struct", "-XMP:all", *map(str, paths)], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)


def _shoot(tmp_path: Path, n: int = 5) -> Path:
    folder = tmp_path / "shoot"
    folder.mkdir()
    for i, p in enumerate(camera_photos(n)):
        shutil.copy2(p, folder / f"IMG_{i:04d}.JPG")
    return folder


@pytest.mark.slow
@needs_exiftool
@pytest.mark.parametrize("style", ["adobe", "darktable"])
def test_sidecars_read_back_with_exiftool(tmp_path, weights_file, style):
    folder = _shoot(tmp_path)
    images_before = {p.name: p.read_bytes() for p in folder.iterdir()}
    result = runner.invoke(app, ["score", str(folder), "--weights", str(weights_file), "--device", "cpu",
                                 "--workers", "0", "--xmp", "--xmp-style", style, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    stars = dict(zip([r["path"] for r in report["results"]],
                     stars_for([r["score"] for r in report["results"]], "quantile"), strict=True))
    for path, expected in stars.items():
        sidecar = Path(path).with_suffix(".xmp") if style == "adobe" else Path(path + ".xmp")
        data = exiftool(sidecar)[0]
        assert data["Rating"] == expected
        assert abs(float(data["Score"]) - next(r["score"] for r in report["results"] if r["path"] == path)) < 1e-6
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.suffix == ".JPG"} == images_before
    assert sorted(stars.values()) == [1, 2, 3, 4, 5]


@needs_exiftool
def test_existing_sidecar_keeps_every_field_and_hand_rating(tmp_path):
    image = tmp_path / "IMG_0001.JPG"
    shutil.copy2(camera_photos(1)[0], image)
    sidecar = tmp_path / "IMG_0001.xmp"
    sidecar.write_text(EXISTING.replace("{rating}", "2"), encoding="utf-8")
    before = exiftool(sidecar)[0]
    change = plan_and_write(sidecar, 5, 0.91, "ilgnet-ava1")
    assert change.action == "keep-hand-rating"
    after = exiftool(sidecar)[0]
    for key, value in before.items():
        if key not in ("SourceFile",):
            assert after[key] == value, key
    assert after["Rating"] == 2 and after["Score"] == 0.91 and after["Model"] == "ilgnet-ava1"
    text = sidecar.read_text(encoding="utf-8")
    assert text.startswith('<?xpacket begin="\ufeff"') and text.rstrip().endswith('<?xpacket end="w"?>')
    assert "<!-- edited by hand -->" in text
    # --overwrite-ratings replaces it; later runs then update their own rating freely.
    assert plan_and_write(sidecar, 5, 0.91, "m", overwrite_ratings=True).action == "update"
    assert exiftool(sidecar)[0]["Rating"] == 5
    assert plan_and_write(sidecar, 3, 0.5, "m").action == "update"
    assert exiftool(sidecar)[0]["Rating"] == 3
    assert exiftool(sidecar)[0]["Subject"] == ["holiday", "beach"]


def test_dry_run_writes_nothing(tmp_path, weights_file):
    folder = _shoot(tmp_path, 2)
    (folder / "IMG_0000.xmp").write_text(EXISTING.replace("{rating}", "4"), encoding="utf-8")
    before = (folder / "IMG_0000.xmp").read_bytes()
    result = runner.invoke(app, ["score", str(folder), "--weights", str(weights_file), "--device", "cpu",
                                 "--workers", "0", "--xmp", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "dry run" in result.output and "keep-hand-rating" in result.output
    assert (folder / "IMG_0000.xmp").read_bytes() == before
    assert not (folder / "IMG_0001.xmp").exists()


@pytest.mark.parametrize("payload", [
    '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/">&b;</x:xmpmeta>',
    '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/">&e;</x:xmpmeta>',
])
@pytest.mark.slow
def test_malicious_sidecar_is_refused_and_untouched(tmp_path, payload, weights_file):
    sidecar = tmp_path / "IMG_0001.xmp"
    sidecar.write_text(payload)
    with pytest.raises(XmpError, match="refused, unsafe XML"):
        plan_and_write(sidecar, 4, 0.7, "m")
    assert sidecar.read_text() == payload
    shutil.copy2(camera_photos(1)[0], tmp_path / "IMG_0001.JPG")
    result = runner.invoke(app, ["score", str(tmp_path / "IMG_0001.JPG"), "--weights", str(weights_file),
                                 "--device", "cpu", "--workers", "0", "--xmp"])
    assert result.exit_code == 0 and "refused, unsafe XML" in result.output
    assert sidecar.read_text() == payload


def test_stars():
    assert stars_for([0.1, 0.2, 0.3, 0.4, 0.5], "quantile") == [1, 2, 3, 4, 5]
    assert stars_for([0.1, 0.5, 0.9], "fixed:0.2,0.4,0.6,0.8") == [1, 3, 5]
    with pytest.raises(ValueError):
        stars_for([0.1], "fixed:0.5,0.4")


def _exif_bytes(base: Image.Image, when: str, subsec: str) -> bytes:
    exif = base.getexif()
    exif[0x010F], exif[0x0110] = "Canon", "Canon EOS 5D Mark III"
    ifd = exif.get_ifd(0x8769)
    ifd[0x9003], ifd[0x9291], ifd[0xA431] = when, subsec, "123456"
    return exif.tobytes()


@pytest.mark.slow
def test_burst_keeper_is_the_sharp_frame(tmp_path, weights_file):
    """A synthetic burst: copies of one photo 0.1 s apart, the best-scored one blurred."""
    folder = tmp_path / "burst"
    folder.mkdir()
    base = Image.open(camera_photos(1)[0]).convert("RGB").resize((800, 600))
    frames = {"a_sharp.jpg": ("2024:05:01 10:00:00", "10", base),
              "b_blurred.jpg": ("2024:05:01 10:00:00", "20", base.filter(ImageFilter.GaussianBlur(6))),
              "c_sharp.jpg": ("2024:05:01 10:00:00", "30", base.transpose(Image.FLIP_LEFT_RIGHT)),
              "later.jpg": ("2024:05:01 10:05:00", "00", base.rotate(3))}
    for name, (when, sub, img) in frames.items():
        img.save(folder / name, quality=92, exif=_exif_bytes(base, when, sub))
    out = tmp_path / "r.json"
    result = runner.invoke(app, ["score", str(folder), "--weights", str(weights_file), "--device", "cpu",
                                 "--workers", "0", "--group-bursts", "1", "--top", "1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["results"]
    bursts: dict[int, list] = {}
    for r in rows:
        bursts.setdefault(r["burst"], []).append(r)
    burst = next(b for b in bursts.values() if len(b) == 3)
    keeper = next(r for r in burst if r["keeper"])
    assert "sharp" in keeper["path"] and "blurred" not in keeper["path"]
    blurred = next(r for r in burst if "blurred" in r["path"])
    assert blurred["sharpness"] < 0.5 * keeper["sharpness"]
    assert len(bursts) == 2 and sum(len(b) for b in bursts.values()) == 4
    assert "best 1 of 2 shots and bursts" in result.output  # --top 1 counts bursts
    assert result.output.count("keeper of") <= 1 and "keeper of 1" not in result.output  # a single is no burst
    html = tmp_path / "r.html"
    assert runner.invoke(app, ["score", str(folder), "--weights", str(weights_file), "--device", "cpu",
                               "--workers", "0", "--group-bursts", "1", "-o", str(html)]).exit_code == 0
    page = html.read_text()
    # The burst is one strip (keeper first), the single shot an ordinary grid cell.
    assert page.count('<figure class="strip"') == 1 and page.count('<figure class="shot"') == 1
    assert "burst of 3 frames" in page and page.index("a_sharp.jpg") < page.index("b_blurred.jpg")


def test_bursts_on_real_camera_photos_are_singletons(tmp_path, weights_file):
    """The shared camera photos come from different bodies and years: no false bursts."""
    folder = _shoot(tmp_path, 8)
    out = tmp_path / "r.json"
    assert runner.invoke(app, ["score", str(folder), "--weights", str(weights_file), "--device", "cpu",
                               "--workers", "0", "--group-bursts", "2", "-o", str(out)]).exit_code == 0
    rows = json.loads(out.read_text())["results"]
    assert len({r["burst"] for r in rows}) == len(rows) == 8 and all(r["keeper"] for r in rows)


def test_heic_gets_a_sidecar_too(tmp_path, weights_file):
    from conftest import shared_path

    heic = shared_path("photos", "camera", "Apple_iPhone-11-Pro-Max.heic")
    shutil.copy2(heic, tmp_path / "IMG_1234.HEIC")
    result = runner.invoke(app, ["score", str(tmp_path / "IMG_1234.HEIC"), "--weights", str(weights_file),
                                 "--device", "cpu", "--workers", "0", "--xmp", "--xmp-style", "both"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "IMG_1234.xmp").exists() and (tmp_path / "IMG_1234.HEIC.xmp").exists()
    if EXIFTOOL:
        assert exiftool(tmp_path / "IMG_1234.HEIC.xmp")[0]["Rating"] in range(1, 6)


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--xmp-style", "lightroom", "'lightroom' is not one of 'adobe', 'darktable', 'both'"),
    ("--stars", "fixed:0.9,0.1", "four increasing thresholds"),
    ("--stars", "deciles", "--stars must be"),
])
def test_bad_xmp_options_are_usage_errors_before_scoring(tmp_path, option, value, message):
    photo = tmp_path / "a.jpg"
    shutil.copy(camera_photos(1)[0], photo)
    result = runner.invoke(app, ["score", str(photo), "--weights", str(tmp_path / "absent.safetensors"),
                                 "--xmp", option, value])
    assert result.exit_code == 2 and message in result.stderr
    assert not (tmp_path / "a.xmp").exists()
