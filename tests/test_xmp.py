"""XMP sidecars (photos/xmp.py): ratings written beside photos in the Adobe and darktable styles
and read back by ExifTool, hand ratings kept, and existing sidecars however hostile or unusual:
encodings, clashes, links, FIFOs, nesting, odd ratings, fuzzed packets. Every case ends in one of
two documented outcomes: the sidecar is merged (and re-parses with our rating in it), or it is
skipped with a one-line ``XmpError`` naming the file and left byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import tracemalloc
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import DARKTABLE_XMP
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ilgnet_cli.photos.results import ScoreResult
from ilgnet_cli.photos.xmp import MAX_SIDECAR_BYTES, XmpError, _decode, plan_and_write, stars_for, write_sidecars

RATING = "{http://ns.adobe.com/xap/1.0/}Rating"
OURS = "{https://github.com/ilgnet/ilgnet-cli/ns/1.0/}Rating"
EXIFTOOL = shutil.which("exiftool")
needs_exiftool = pytest.mark.skipif(EXIFTOOL is None,
                                    reason="ExifTool not installed (apt-get install libimage-exiftool-perl)")


SIDECAR = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/" xmp:Rating="{rating}">
   <dc:subject><rdf:Bag><rdf:li>caf\u00e9</rdf:li><rdf:li>Stra\u00dfe</rdf:li></rdf:Bag></dc:subject>
   <dc:title><rdf:Alt><rdf:li xml:lang="x-default">Sommer</rdf:li></rdf:Alt></dc:title>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>"""


def _encode(text: str, codec: str) -> bytes:
    # The xpacket's begin="\ufeff" only exists in Unicode; 8-bit files carry begin="".
    return text.encode(codec) if codec.startswith("utf") else text.replace("\ufeff", "").encode(codec)


def _descriptions(data: bytes | str) -> list[ET.Element]:
    root = ET.fromstring(data)
    return root.findall(".//{http://www.w3.org/1999/02/22-rdf-syntax-ns#}Description")


def _rating(data: bytes | str) -> str | None:
    values = [d.get(RATING) for d in _descriptions(data) if d.get(RATING) is not None]
    assert len(values) <= 1, "two xmp:Rating values"
    return values[0] if values else None


def _skipped_untouched(path: Path, match: str) -> None:
    before = path.read_bytes() if path.is_file() and not path.is_symlink() else None
    with pytest.raises(XmpError, match=match) as info:
        plan_and_write(path, 4, 0.7, "m")
    assert "\n" not in str(info.value) and path.name in str(info.value)
    if before is not None:
        assert path.read_bytes() == before


# --- A: encodings -------------------------------------------------------------------------

ENCODINGS = [  # (name, BOM, codec for the body, XML declaration)
    ("utf-8", b"", "utf-8", ""),
    ("utf-8 BOM", b"\xef\xbb\xbf", "utf-8", ""),
    ("utf-16 LE BOM", b"\xff\xfe", "utf-16-le", ""),
    ("utf-16 BE BOM", b"\xfe\xff", "utf-16-be", ""),
    ("utf-16 LE", b"", "utf-16-le", '<?xml version="1.0" encoding="UTF-16"?>\n'),
    ("utf-16 BE", b"", "utf-16-be", ""),
    ("utf-32 LE BOM", b"\xff\xfe\x00\x00", "utf-32-le", ""),
    ("utf-32 BE", b"", "utf-32-be", ""),
    ("latin-1 declared", b"", "latin-1", '<?xml version="1.0" encoding="ISO-8859-1"?>\n'),
    ("cp1252 declared", b"", "cp1252", "<?xml version='1.0' encoding='windows-1252'?>\n"),
]


@pytest.mark.parametrize(("name", "bom", "codec", "decl"), ENCODINGS, ids=[e[0] for e in ENCODINGS])
def test_sidecar_is_merged_and_kept_in_its_encoding(tmp_path, name, bom, codec, decl):
    sidecar = tmp_path / "IMG_0001.xmp"
    sidecar.write_bytes(bom + _encode(decl + SIDECAR.replace("{rating}", "0"), codec))
    change = plan_and_write(sidecar, 4, 0.81, "mod\u00e8le-\u4e00")  # a model name not in Latin-1
    assert change.action == "update" and change.new_rating == "4"
    data = sidecar.read_bytes()
    assert data.startswith(bom)
    text = data[len(bom):].decode(codec)  # still in the encoding it came in
    begin = '<?xpacket begin="' + ("\ufeff" if codec.startswith("utf") else "") + '"'
    assert text.startswith(decl + begin) and text.rstrip().endswith('<?xpacket end="w"?>')
    assert "caf\u00e9" in text and "Stra\u00dfe" in text
    assert _rating(text) == "4"  # (expat reads no UTF-32: the decoded text, then)
    root = ET.fromstring(text)
    assert [li.text for li in root.iter("{http://www.w3.org/1999/02/22-rdf-syntax-ns#}li")] == [
        "caf\u00e9", "Stra\u00dfe", "Sommer"]
    desc = _descriptions(text)[0]
    assert desc.get("{https://github.com/ilgnet/ilgnet-cli/ns/1.0/}Model") == "mod\u00e8le-\u4e00"
    # A second run reads what the first one wrote.
    assert plan_and_write(sidecar, 2, 0.3, "m").action == "update"
    data = sidecar.read_bytes()
    assert data.startswith(bom) and _rating(data[len(bom):].decode(codec)) == "2"


@pytest.mark.parametrize(("data", "match"), [
    (_encode(SIDECAR.replace("{rating}", "3"), "latin-1"), "cannot decode"),  # Latin-1 without a declaration
    (b"\xff\xfe" + b"<\x00x\x00\x00\xd8", "cannot decode"),  # UTF-16 with a lone surrogate
    (SIDECAR.replace("{rating}", "3").encode("utf-16-le")[:-1], "cannot decode"),  # odd byte count
    (b'<?xml version="1.0" encoding="rot13"?><x/>', "encoding"),
    (b'<?xml version="1.0" encoding="no-such-codec"?><x/>', "encoding"),
    (b"<x:xmpmeta xmlns:x='adobe:ns:meta/'><unclosed></x:xmpmeta>", "not valid XML"),
    (b"<!-- <b> --><x:xmpmeta xmlns:x='adobe:ns:meta/'/>", None),  # '<' in a comment before the root
    (b"", "no XML element|not valid XML"),
    (b"<html><body/></html>", "not an XMP packet"),
])
def test_unreadable_sidecar_is_skipped_untouched(tmp_path, data, match):
    sidecar = tmp_path / "IMG_0001.xmp"
    sidecar.write_bytes(data)
    if match is None:  # legal, if odd: merged
        plan_and_write(sidecar, 4, 0.7, "m")
        assert _rating(sidecar.read_bytes()) == "4"
        assert sidecar.read_bytes().startswith(b"<!-- <b> -->")
    else:
        _skipped_untouched(sidecar, match)


def test_too_large_sidecar_is_skipped_untouched(tmp_path):
    sidecar = tmp_path / "IMG_0001.xmp"
    body = SIDECAR.replace("{rating}", "3")
    sidecar.write_text(body.replace("<x:xmpmeta", "<!--" + "x" * MAX_SIDECAR_BYTES + "-->\n<x:xmpmeta"))
    _skipped_untouched(sidecar, "too large")


def _results(tmp_path: Path, *names: str, scores: list[float] | None = None) -> list[ScoreResult]:
    scores = scores or [0.1 * (i + 1) for i in range(len(names))]
    return [ScoreResult(path=str(tmp_path / n), score=s) for n, s in zip(names, scores, strict=True)]


def test_a_bad_sidecar_does_not_stop_the_later_ones(tmp_path):
    bad = (tmp_path / "b.xmp")
    bad.write_bytes(_encode(SIDECAR.replace("{rating}", "3"), "latin-1"))
    before = bad.read_bytes()
    changes, errors = write_sidecars(_results(tmp_path, "a.jpg", "b.jpg", "c.jpg"), model="m")
    assert [c.path.name for c in changes] == ["a.xmp", "c.xmp"]
    assert len(errors) == 1 and "b.xmp" in errors[0] and "\n" not in errors[0]
    assert bad.read_bytes() == before
    assert (tmp_path / "c.xmp").exists()


def test_cli_goes_on_after_a_utf16_and_a_broken_sidecar(tmp_path, photo_folder, tiny_cli, cli):
    tmp_path = photo_folder(3, names=[f"IMG_{i}.JPG" for i in range(3)], size=400)
    (tmp_path / "IMG_0.xmp").write_bytes(b"\xff\xfe" + SIDECAR.replace("{rating}", "0").encode("utf-16-le"))
    broken = tmp_path / "IMG_1.xmp"
    broken.write_bytes(_encode(SIDECAR.replace("{rating}", "3"), "latin-1"))
    before = broken.read_bytes()
    result = cli("score", tmp_path, "--weights", "tiny", "--device", "cpu", "--workers", "0", "--xmp")
    assert result.code == 1, result.output  # a sidecar that could not be written fails the run; the rest are written
    assert "Traceback" not in result.output and "IMG_1.xmp" in result.output
    assert broken.read_bytes() == before
    assert _rating((tmp_path / "IMG_0.xmp").read_bytes()) in list("12345")
    assert (tmp_path / "IMG_0.xmp").read_bytes().startswith(b"\xff\xfe<\x00")
    assert _rating((tmp_path / "IMG_2.xmp").read_bytes()) in list("12345")


# --- B: two images, one sidecar -----------------------------------------------------------

@pytest.mark.parametrize("order", [["a.JPG", "a.CR2"], ["a.CR2", "a.JPG"]])
def test_raw_plus_jpeg_the_raw_wins_the_shared_sidecar(tmp_path, order):
    scores = {"a.CR2": 0.9, "a.JPG": 0.1}
    results = _results(tmp_path, *order, "z.jpg", "y.jpg", "x.jpg",
                       scores=[scores[n] for n in order] + [0.2, 0.3, 0.4])
    changes, errors = write_sidecars(results, model="m")
    shared = [c for c in changes if c.path.name == "a.xmp"]
    assert sorted(c.action for c in shared) == ["clash", "create"]
    written = next(c for c in shared if c.action != "clash")
    assert written.score == 0.9 and written.new_rating == "5"
    assert _rating((tmp_path / "a.xmp").read_bytes()) == "5"
    assert len(errors) == 1 and "a.xmp" in errors[0] and "a.JPG" in errors[0] and "a.CR2" in errors[0]


def test_darktable_style_never_clashes(tmp_path):
    changes, errors = write_sidecars(_results(tmp_path, "a.CR2", "a.JPG"), style="darktable", model="m")
    assert errors == [] and sorted(c.path.name for c in changes) == ["a.CR2.xmp", "a.JPG.xmp"]


def test_non_raw_clash_is_decided_by_sorted_path_and_case_is_ignored(tmp_path):
    changes, errors = write_sidecars(_results(tmp_path, "b.tif", "B.heic", "b.JPG"), model="m")
    written = [c for c in changes if c.action != "clash"]
    assert len(written) == 1 and written[0].path.name == "B.xmp"  # "B.heic" sorts first
    assert len(errors) == 2 and all("\n" not in e for e in errors)
    assert not (tmp_path / "b.xmp").exists()


def test_the_same_sidecar_of_one_image_is_written_once(tmp_path):
    # No suffix: the Adobe and the darktable names are the same file.
    changes, errors = write_sidecars(_results(tmp_path, "scan"), style="both", model="m")
    assert errors == [] and [c.path.name for c in changes] == ["scan.xmp"]


def test_dry_run_table_shows_clashes_and_odd_old_ratings(tmp_path, capsys):
    from ilgnet_cli.cli import score as cli

    (tmp_path / "c.xmp").write_text(SIDECAR.replace("{rating}", "[/bold] [link=x]"), encoding="utf-8")
    run = SimpleNamespace(results=_results(tmp_path, "a.CR2", "a.JPG", "c.jpg"))
    cli._write_xmp(run, "m", "adobe", "quantile", False, True)  # must not raise a markup error
    out = capsys.readouterr().out
    assert "clash" in out and "[/bold]" in out


# --- D: what a sidecar path can be ------------------------------------------------------

def test_symlinked_sidecar_is_refused(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    target = outside / "secret.xmp"
    target.write_text(SIDECAR.replace("{rating}", "2"), encoding="utf-8")
    before = target.read_bytes()
    photos = tmp_path / "photos"
    photos.mkdir()
    link = photos / "a.xmp"
    link.symlink_to(target)
    changes, errors = write_sidecars(_results(photos, "a.jpg"), model="m", overwrite_ratings=True)
    assert changes == [] and len(errors) == 1 and "symbolic link" in errors[0]
    assert link.is_symlink() and target.read_bytes() == before
    (photos / "dangling.xmp").symlink_to(outside / "nothing.xmp")
    _skipped_untouched(photos / "dangling.xmp", "symbolic link")
    assert (photos / "dangling.xmp").is_symlink() and not (outside / "nothing.xmp").exists()


def test_sidecar_that_is_a_folder_is_skipped(tmp_path):
    (tmp_path / "a.xmp").mkdir()
    _skipped_untouched(tmp_path / "a.xmp", "not a regular file")
    assert (tmp_path / "a.xmp").is_dir()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_sidecar_that_is_a_fifo_is_never_opened(tmp_path):
    fifo = tmp_path / "a.xmp"
    os.mkfifo(fifo)
    outcome: list = []

    def attempt() -> None:
        try:
            plan_and_write(fifo, 4, 0.7, "m")
        except Exception as exc:  # noqa: BLE001 - recorded for the assertion below
            outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(10)
    blocked = worker.is_alive()
    if blocked:  # unblock the reader so the thread ends
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        worker.join(5)
    assert not blocked, "opened the FIFO and blocked"
    assert len(outcome) == 1 and isinstance(outcome[0], XmpError) and "not a regular file" in str(outcome[0])


@pytest.mark.parametrize("depth", [150, 5000, 200_000])
def test_deeply_nested_sidecar_is_refused_without_recursion_error(tmp_path, depth):
    sidecar = tmp_path / "a.xmp"
    nest = "<rdf:Bag>" * depth + "</rdf:Bag>" * depth
    sidecar.write_text(SIDECAR.replace("{rating}", "1").replace("<dc:subject>", "<dc:subject>" + nest))
    _skipped_untouched(sidecar, "nested too deep|too large")


def test_too_many_elements_are_refused(tmp_path):
    sidecar = tmp_path / "a.xmp"
    sidecar.write_text(SIDECAR.replace("{rating}", "1").replace("<rdf:Bag>", "<rdf:Bag>" + "<a/>" * 300_000))
    _skipped_untouched(sidecar, "too many elements")


@pytest.mark.parametrize(("old", "action", "kept"), [
    ("abc", "update", False), ("99", "update", False), ("-5", "update", False), ("nan", "update", False),
    ("1e400", "update", False), ("", "update", False), ("0", "update", False),
    ("3.5", "keep-hand-rating", True), (" 2 ", "keep-hand-rating", True), ("-1", "keep-hand-rating", True),
])
def test_existing_rating_that_is_not_a_rating(tmp_path, old, action, kept):
    sidecar = tmp_path / "a.xmp"
    sidecar.write_text(SIDECAR.replace("{rating}", old), encoding="utf-8")
    change = plan_and_write(sidecar, 4, 0.7, "m")
    assert change.action == action
    assert _rating(sidecar.read_bytes()) == (old if kept else "4")


def test_our_own_rating_written_as_a_real_is_not_a_hand_rating(tmp_path):
    sidecar = tmp_path / "a.xmp"
    sidecar.write_text(SIDECAR.replace('xmp:Rating="{rating}"', 'xmp:Rating="3.0" '
                                       'xmlns:ilgnet="https://github.com/ilgnet/ilgnet-cli/ns/1.0/" '
                                       'ilgnet:Rating="3"'), encoding="utf-8")
    assert plan_and_write(sidecar, 5, 0.9, "m").action == "update"
    assert _rating(sidecar.read_bytes()) == "5"


def test_rating_in_a_second_description_is_found_not_duplicated(tmp_path):
    sidecar = tmp_path / "a.xmp"
    sidecar.write_text(SIDECAR.replace(' xmp:Rating="{rating}"', "").replace(
        " </rdf:RDF>", '  <rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="2"/>\n'
                       " </rdf:RDF>"), encoding="utf-8")
    assert plan_and_write(sidecar, 5, 0.9, "m").action == "keep-hand-rating"
    assert _rating(sidecar.read_bytes()) == "2"
    assert plan_and_write(sidecar, 5, 0.9, "m", overwrite_ratings=True).action == "update"
    assert _rating(sidecar.read_bytes()) == "5"


def test_control_characters_and_undecodable_names_give_valid_xml(tmp_path):
    sidecar = tmp_path / "a.xmp"
    plan_and_write(sidecar, 3, 0.5, "evil\x00\x01\x1b[31m\udcff\ufffe")
    desc = _descriptions(sidecar.read_bytes())[0]
    assert desc.get("{https://github.com/ilgnet/ilgnet-cli/ns/1.0/}Model").startswith("evil")
    # Control characters already in a sidecar (as raw bytes or character references) are not XML 1.0.
    for body in ("<dc:source>\x01</dc:source>", "<dc:source>&#1;</dc:source>"):
        sidecar.write_text(SIDECAR.replace("{rating}", "1").replace("<dc:subject>", body + "<dc:subject>"))
        _skipped_untouched(sidecar, "not valid XML")


def test_a_namespace_in_one_sidecar_cannot_break_the_next(tmp_path):
    # Prefixes are read from the document (and only from real declarations): a comment claiming
    # ``xmlns:xml`` once made ElementTree write xml:lang as ns0:lang, which no parser accepts.
    first = tmp_path / "a.xmp"
    first.write_text(SIDECAR.replace("{rating}", "0").replace(
        "<dc:subject>", '<!-- xmlns:xml="urn:evil" xmlns:rdf="urn:evil" --><dc:subject>'), encoding="utf-8")
    plan_and_write(first, 3, 0.5, "m")
    second = tmp_path / "b.xmp"
    second.write_text(SIDECAR.replace("{rating}", "0"), encoding="utf-8")
    plan_and_write(second, 3, 0.5, "m")
    text = second.read_text(encoding="utf-8")
    assert 'xml:lang="x-default"' in text and "<rdf:RDF" in text
    assert _rating(second.read_bytes()) == "3"


def test_thousands_of_namespace_declarations_are_refused_quickly(tmp_path):
    # ElementTree's register_namespace scans its whole table on every call: 100k prefixes took hours.
    sidecar = tmp_path / "a.xmp"
    decls = " ".join(f'xmlns:p{i}="urn:n{i}"' for i in range(100_000))
    sidecar.write_text(SIDECAR.replace("{rating}", "0").replace("<dc:subject>", f"<dc:x {decls}/><dc:subject>"))
    _skipped_untouched(sidecar, "too many namespace")


@pytest.mark.skipif(shutil.which("exiftool") is None, reason="ExifTool not installed")
@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_exiftool_reads_the_utf16_sidecar_we_wrote_back(tmp_path, codec):
    import json
    import subprocess

    sidecar = tmp_path / "a.xmp"
    sidecar.write_bytes(SIDECAR.replace("{rating}", "0").encode(codec))
    plan_and_write(sidecar, 4, 0.81, "m")
    data = json.loads(subprocess.run(["exiftool", "-j", "-XMP:all", str(sidecar)], capture_output=True, text=True,
                                     check=True).stdout)[0]
    assert data["Rating"] == 4 and data["Subject"] == ["caf\u00e9", "Stra\u00dfe"] and data["Title"] == "Sommer"


def test_an_existing_sidecar_spelt_in_other_case_is_merged_not_doubled(tmp_path):
    # A camera or a Windows tool wrote IMG_1.XMP: on a case-sensitive disk a new IMG_1.xmp beside it
    # would leave two sidecars, each with its own rating.
    upper = tmp_path / "IMG_1.XMP"
    upper.write_text(SIDECAR.replace("{rating}", "2"), encoding="utf-8")
    changes, errors = write_sidecars(_results(tmp_path, "IMG_1.jpg", "IMG_2.jpg"), model="m")
    assert errors == [] and changes[0].path.name == "IMG_1.XMP" and changes[0].action == "keep-hand-rating"
    # (ilgnet-data: $ILGNET_DATA of the tests, where the ledger of written stars lives)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "ilgnet-data") == ["IMG_1.XMP", "IMG_2.xmp"]
    assert _rating(upper.read_bytes()) == "2"
    if not (tmp_path / "img_1.xmp").exists():  # case-sensitive: two spellings cannot both be chosen
        (tmp_path / "img_1.xmp").write_text(SIDECAR.replace("{rating}", "3"), encoding="utf-8")
        changes, errors = write_sidecars(_results(tmp_path, "IMG_1.jpg"), model="m")
        assert changes == [] and len(errors) == 1 and "differ only in case" in errors[0]


def test_one_image_named_twice_is_no_clash(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    results = [ScoreResult(path="a.jpg", score=0.5), ScoreResult(path="./a.jpg", score=0.5)]
    changes, errors = write_sidecars(results, model="m")
    assert errors == [] and [c.action for c in changes] == ["create"]


# --- G: photographers' files, ExifTool and the CLI -------------------------------------

def exiftool(*paths: Path) -> list[dict]:
    out = subprocess.run([EXIFTOOL, "-j", "-struct", "-XMP:all", *map(str, paths)], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)


@needs_exiftool
@pytest.mark.parametrize("style", ["adobe", "darktable"])
def test_sidecars_read_back_with_exiftool(photo_folder, tiny_cli, style, cli):
    folder = photo_folder(5, names=[f"IMG_{i:04d}.JPG" for i in range(5)], size=400)
    images_before = {p.name: p.read_bytes() for p in folder.iterdir()}
    result = cli("score", folder, "--weights", "tiny", "--device", "cpu", "--workers", "0", "--xmp", "--xmp-style",
                 style, "--json")
    assert result.code == 0, result.output
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
def test_existing_sidecar_keeps_every_field_and_hand_rating(tmp_path, camera):
    image = tmp_path / "IMG_0001.JPG"
    shutil.copy2(camera(1)[0], image)
    sidecar = tmp_path / "IMG_0001.xmp"
    sidecar.write_text(DARKTABLE_XMP.replace("{rating}", "2"), encoding="utf-8")
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


def test_dry_run_writes_nothing(photo_folder, tiny_cli, cli):
    folder = photo_folder(2, names=["IMG_0000.JPG", "IMG_0001.JPG"], size=400)
    (folder / "IMG_0000.xmp").write_text(DARKTABLE_XMP.replace("{rating}", "4"), encoding="utf-8")
    before = (folder / "IMG_0000.xmp").read_bytes()
    result = cli("score", folder, "--weights", "tiny", "--device", "cpu", "--workers", "0", "--xmp", "--dry-run")
    assert result.code == 0, result.output
    assert "dry run" in result.output and "keep-hand-rating" in result.output
    assert (folder / "IMG_0000.xmp").read_bytes() == before
    assert not (folder / "IMG_0001.xmp").exists()


@pytest.mark.parametrize("payload", [
    '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/">&b;</x:xmpmeta>',
    '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/">&e;</x:xmpmeta>',
])
def test_malicious_sidecar_is_refused_and_untouched(tmp_path, payload, copies, tiny_cli, cli):
    sidecar = tmp_path / "IMG_0001.xmp"
    sidecar.write_text(payload)
    with pytest.raises(XmpError, match="refused, unsafe XML"):
        plan_and_write(sidecar, 4, 0.7, "m")
    assert sidecar.read_text() == payload
    (photo,) = copies(["IMG_0001.JPG"], tmp_path)
    result = cli("score", photo, "--weights", "tiny", "--device", "cpu", "--workers", "0", "--xmp")
    assert result.code == 1 and "refused, unsafe XML" in result.output  # the run says so in its exit code
    assert sidecar.read_text() == payload


def test_stars():
    assert stars_for([0.1, 0.2, 0.3, 0.4, 0.5], "quantile") == [1, 2, 3, 4, 5]
    assert stars_for([0.1, 0.5, 0.9], "fixed:0.2,0.4,0.6,0.8") == [1, 3, 5]
    with pytest.raises(ValueError):
        stars_for([0.1], "fixed:0.5,0.4")


def test_heic_gets_a_sidecar_too(tmp_path, shared, tiny_cli, cli):
    heic = shared("photos", "camera", "Apple_iPhone-11-Pro-Max.heic")
    shutil.copy2(heic, tmp_path / "IMG_1234.HEIC")
    result = cli("score", tmp_path / "IMG_1234.HEIC", "--weights", "tiny", "--device", "cpu", "--workers", "0", "--xmp",
                 "--xmp-style", "both")
    assert result.code == 0, result.output
    assert (tmp_path / "IMG_1234.xmp").exists() and (tmp_path / "IMG_1234.HEIC.xmp").exists()
    if EXIFTOOL:
        assert exiftool(tmp_path / "IMG_1234.HEIC.xmp")[0]["Rating"] in range(1, 6)


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--xmp-style", "lightroom", "'lightroom' is not one of 'adobe', 'darktable', 'both'"),
    ("--stars", "fixed:0.9,0.1", "four increasing thresholds"),
    ("--stars", "deciles", "--stars must be"),
])
def test_bad_xmp_options_are_usage_errors_before_scoring(tmp_path, option, value, message, copies, cli):
    (photo,) = map(Path, copies(["a.jpg"], tmp_path))
    result = cli("score", str(photo), "--weights", str(tmp_path / "absent.safetensors"),
                                 "--xmp", option, value)
    assert result.code == 2 and message in result.stderr
    assert not (tmp_path / "a.xmp").exists()


# --- H: fuzzed sidecars ------------------------------------------------------------------

VALID = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/" xmp:Rating="{rating}">
   <!-- a comment --><dc:subject><rdf:Bag><rdf:li>caf\u00e9</rdf:li></rdf:Bag></dc:subject>
   <dc:title><rdf:Alt><rdf:li xml:lang="x-default">t</rdf:li></rdf:Alt></dc:title>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>"""
CODECS = [("", "utf-8"), ("\ufeff", "utf-8"), ("\ufeff", "utf-16-le"), ("", "utf-16-be"), ("\ufeff", "utf-32-be"),
          ("", "utf-32-le")]
RATINGS = st.sampled_from(["0", "1", "3", "5", "-1", "3.5", "abc", "99", "-5", "", " 2 ", "nan", "1e9", "[/b]"])
TAG = st.sampled_from(["rdf:Bag", "rdf:li", "a", "x:xmpmeta", "rdf:Description", "xmp:Rating", "b:c"])


@st.composite
def mutated(draw) -> bytes:
    bom, codec = draw(st.sampled_from(CODECS))
    data = bytearray((bom + VALID.replace("{rating}", draw(RATINGS))).encode(codec))
    for _ in range(draw(st.integers(0, 6))):
        i = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["flip", "insert", "delete", "dup"]))
        if op == "flip" and i < len(data):
            data[i] = draw(st.integers(0, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8) | st.sampled_from(
                [b"<", b">", b"&", b"]]>", b"<!--", b"<?", b"<!DOCTYPE x>", b"&#1;", b"\x00", b"\"", b"\xff\xfe"]))
        elif op == "delete":
            del data[i:i + draw(st.integers(1, 40))]
        elif op == "dup":
            j = draw(st.integers(i, min(len(data), i + 200)))
            data[i:i] = data[i:j]
    return bytes(data)


@st.composite
def xmlish(draw) -> bytes:
    pieces = st.sampled_from(["<", ">", "</", "/>", "=", '"', "'", " ", "\n", "x:xmpmeta", "rdf:RDF",
                              "rdf:Description", "xmp:Rating", 'xmlns:x="adobe:ns:meta/"',
                              'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"',
                              'xmlns:xmp="http://ns.adobe.com/xap/1.0/"', 'xmlns:xml="urn:x"', "<!--", "-->",
                              "<?xpacket end='w'?>", "<?xml version='1.0' encoding='latin-1'?>", "&amp;", "&x;",
                              "<![CDATA[", "]]>", "\u00e9", "\ud7ff", "\U0001f600", "\x01"]) | st.text(max_size=5)
    text = "".join(draw(st.lists(pieces, max_size=60)))
    return text.encode(draw(st.sampled_from(["utf-8", "utf-16-le", "latin-1"])), "replace")


@st.composite
def deep(draw) -> bytes:
    tag, depth = draw(TAG), draw(st.integers(1, 3000))
    inner = f"<{tag}>" * depth + f"</{tag}>" * draw(st.sampled_from([depth, depth - 1, 0]))
    return VALID.replace("{rating}", "0").replace("<dc:subject>", inner + "<dc:subject>").encode()


@st.composite
def huge_attribute(draw) -> bytes:
    value = draw(st.sampled_from(["a", "&amp;", "\u00e9", "<", ">", "\""])) * draw(st.integers(1, 300_000))
    where = draw(st.sampled_from(['xmp:Rating="{rating}"', 'rdf:about=""']))
    return VALID.replace(where, where.split("=")[0] + '="' + value + '"').replace("{rating}", "0").encode()


HOSTILE = st.binary(max_size=2000) | mutated() | xmlish() | deep() | huge_attribute()


def _rating_in(path: Path) -> list[str]:
    text, _ = _decode(path.read_bytes(), path)  # (expat reads no UTF-32: our decoder, then the stdlib parser)
    root = ET.fromstring(text)
    return [d.get(RATING) for d in root.iter("{http://www.w3.org/1999/02/22-rdf-syntax-ns#}Description")
            if d.get(RATING) is not None]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=HOSTILE, stars=st.integers(1, 5), overwrite=st.booleans(), dry_run=st.booleans())
def test_hostile_sidecar_is_merged_or_skipped_untouched(data, stars, overwrite, dry_run):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "IMG_0001.xmp"
        path.write_bytes(data)
        started = time.monotonic()
        tracemalloc.start()
        try:
            change = plan_and_write(path, stars, 0.5, "m", overwrite_ratings=overwrite, dry_run=dry_run)
        except XmpError as exc:
            change, message = None, str(exc)
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert time.monotonic() - started < 10
        assert peak < 64 * 2**20 + 64 * len(data), peak
        event("skipped" if change is None else change.action)
        if change is None:
            assert "\n" not in message and path.name in message and len(message) < 400, message
            assert path.read_bytes() == data
            return
        if dry_run:
            assert path.read_bytes() == data
            return
        assert _rating_in(path) == [change.new_rating]
        if overwrite or change.action != "keep-hand-rating":
            assert change.new_rating == str(stars)
        # What we wrote, we read back next time.
        assert plan_and_write(path, stars, 0.5, "m", overwrite_ratings=True).new_rating == str(stars)
