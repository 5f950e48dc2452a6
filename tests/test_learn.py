"""ilgnet learn: ratings in (XMP both styles, embedded, CSV, folders), labels, grouping, grouped CV,
the refusal to install what is not better than the base, and installed weights that score
exactly what the learned head predicted.

The photographer's taste is synthesised on real photos (../shared/photos/camera): each scene is
saved sharp (liked: 4-5 stars) and blurred (disliked: 1-2 stars or rejected), rated the way
editors write it. The base model is random (tests/conftest.py), so it has no such taste.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import camera_photos
from PIL import Image, ImageFilter
from typer.testing import CliRunner

from ilgnet_cli.cli import app
from ilgnet_cli.photos import ratings
from ilgnet_cli.training import learn, metrics

RUNNER = CliRunner()
XMP = ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
       '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       '<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
       'xmlns:ilgnet="https://github.com/ilgnet/ilgnet-cli/ns/1.0/" {attrs}/></rdf:RDF></x:xmpmeta>\n'
       '<?xpacket end="w"?>')


def xmp(rating: float | None = None, ours: float | None = None) -> str:
    attrs = []
    if rating is not None:
        attrs.append(f'xmp:Rating="{rating:g}"')
    if ours is not None:
        attrs.append(f'ilgnet:Rating="{ours:g}"')
    return XMP.format(attrs=" ".join(attrs))


def write_sidecar(image: Path, rating: float, style: str, ours: float | None = None) -> Path:
    side = image.with_suffix(".xmp") if style == "adobe" else image.with_name(image.name + ".xmp")
    side.write_text(xmp(rating, ours), encoding="utf-8")
    return side


def run_cli(*args: str):
    result = RUNNER.invoke(app, [str(a) for a in args])
    return result


# --------------------------------------------------------------------------- photos with a taste


def _scene(src: Path, size: int = 480) -> Image.Image:
    img = Image.open(src).convert("RGB")
    img.thumbnail((size, size))
    return img


@pytest.fixture(scope="module")
def shoot(tmp_path_factory):
    """Two folders of rated scenes (train: 38 scenes, test: 13 others), each scene sharp and blurred.

    Ratings as editors write them: Adobe-style sidecars on even scenes, darktable-style on odd
    ones, a reject on every fourth blurred frame, a few 3-star frames (left out), embedded XMP
    on a few sharp frames, and one blurred frame per folder carrying a rating ilgnet wrote
    itself (5 stars that must not be read as the user's).
    """
    photos = camera_photos(51)
    root = tmp_path_factory.mktemp("shoot")
    folders = {"train": root / "train", "test": root / "test"}
    for f in folders.values():
        f.mkdir()
    truth: dict[str, int] = {}
    for i, src in enumerate(photos):
        folder = folders["train"] if i < 38 else folders["test"]
        img = _scene(src)
        sharp, soft = folder / f"scene{i:02d}_a.jpg", folder / f"scene{i:02d}_b.jpg"
        style = "adobe" if i % 2 == 0 else "darktable"
        if i % 9 == 4:  # rated in the photo's own embedded XMP only (as Lightroom writes to JPEGs)
            img.save(sharp, quality=90, xmp=xmp(5).encode())
        else:
            img.save(sharp, quality=90)
            write_sidecar(sharp, 4 + i % 2, style)
        img.filter(ImageFilter.GaussianBlur(5)).save(soft, quality=90)
        write_sidecar(soft, -1 if i % 4 == 0 else 1 + i % 2, style)
        truth[str(sharp)], truth[str(soft)] = 1, 0
        if i % 10 == 3:  # a middling frame: 3 stars, left out by the default thresholds
            mid = folder / f"scene{i:02d}_c.jpg"
            img.filter(ImageFilter.GaussianBlur(2)).save(mid, quality=90)
            write_sidecar(mid, 3, style)
    for name, folder in folders.items():
        trap = folder / f"zz_{name}_ilgnet.jpg"  # blurred, with a rating ilgnet wrote: not the user's
        _scene(photos[0]).filter(ImageFilter.GaussianBlur(6)).save(trap, quality=90)
        write_sidecar(trap, 5, "adobe", ours=5)
    return {"root": root, **folders, "truth": truth}


# --------------------------------------------------------------------------- ratings


def test_sidecar_styles_rejects_and_ilgnet_ratings(tmp_path):
    img = Image.new("RGB", (64, 48), (90, 120, 150))
    paths = {}
    for name in ("a", "b", "c", "d", "e", "f", "g"):
        paths[name] = tmp_path / f"{name}.jpg"
        img.save(paths[name])
    write_sidecar(paths["a"], 5, "adobe")
    write_sidecar(paths["b"], 2, "darktable")
    write_sidecar(paths["c"], -1, "adobe")  # Lightroom's reject
    write_sidecar(paths["d"], 4, "adobe", ours=4)  # ilgnet wrote it: not the user's
    write_sidecar(paths["e"], 2, "adobe", ours=4)  # the user changed ilgnet's 4 to 2: theirs
    (tmp_path / "f.XMP").write_text(xmp(3.5), encoding="utf-8")  # another case, a real rating
    write_sidecar(paths["g"], 0, "adobe")  # 0 = unrated
    element = xmp().replace("/></rdf:RDF>", "><xmp:Rating>1</xmp:Rating></rdf:Description></rdf:RDF>")
    paths["h"] = tmp_path / "h.jpg"
    img.save(paths["h"])
    (tmp_path / "h.jpg.xmp").write_text(element, encoding="utf-8")  # digiKam writes elements
    report = ratings.collect([tmp_path])
    got = {Path(p.path).stem: (p.rating, p.source) for p in report.photos}
    assert got == {"a": (5, "adobe sidecar"), "b": (2, "darktable sidecar"), "c": (-1, "adobe sidecar"),
                   "e": (2, "adobe sidecar"), "f": (3.5, "adobe sidecar"), "h": (1, "darktable sidecar")}
    assert report.ilgnet_written == 1
    assert report.unrated == 1
    assert report.counts() == {"rejected": 1, "1": 1, "2": 2, "3.5": 1, "5": 1}


def test_embedded_xmp_and_sidecar_conflict(tmp_path):
    img = Image.new("RGB", (64, 48), (200, 100, 50))
    only, both = tmp_path / "only.jpg", tmp_path / "both.jpg"
    img.save(only, xmp=xmp(4).encode())
    img.save(both, xmp=xmp(1).encode())
    write_sidecar(both, 5, "darktable")
    report = ratings.collect([tmp_path])
    got = {Path(p.path).stem: (p.rating, p.source) for p in report.photos}
    assert got == {"only": (4, "embedded XMP"), "both": (5, "darktable sidecar")}  # the sidecar wins
    assert len(report.conflicts) == 1 and "sidecar wins" in report.conflicts[0]


@pytest.mark.parametrize("older", ["adobe", "darktable"])
def test_adobe_and_darktable_disagree_fixed_order_wins(tmp_path, older):
    # No file time decides (an ilgnet rewrite of one sidecar would flip it): darktable's wins.
    image = tmp_path / "x.jpg"
    Image.new("RGB", (32, 32)).save(image)
    sides = {"adobe": write_sidecar(image, 1, "adobe"), "darktable": write_sidecar(image, 5, "darktable")}
    os.utime(sides[older], (1_000_000, 1_000_000))
    report = ratings.collect([tmp_path])
    assert [(p.rating, p.source) for p in report.photos] == [(5, "darktable sidecar")]
    assert len(report.conflicts) == 1 and "darktable sidecar wins" in report.conflicts[0]


def test_unreadable_sidecars_are_reported_not_fatal(tmp_path):
    img = Image.new("RGB", (32, 32))
    for name in ("bomb", "garbage", "fine"):
        img.save(tmp_path / f"{name}.jpg")
    (tmp_path / "bomb.xmp").write_text('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>')
    (tmp_path / "garbage.xmp").write_bytes(b"\x00\xff not xml at all")
    write_sidecar(tmp_path / "fine.jpg", 4, "adobe")
    report = ratings.collect([tmp_path])
    assert [Path(p.path).stem for p in report.photos] == ["fine"]
    assert len(report.problems) == 2 and all(p.startswith("unreadable sidecar") for p in report.problems)


def test_csv_and_folders(tmp_path):
    img = Image.new("RGB", (32, 32))
    (tmp_path / "k").mkdir()
    (tmp_path / "r").mkdir()
    for p in ("a.jpg", "b.jpg", "k/k1.jpg", "r/r1.jpg"):
        img.save(tmp_path / p)
    csv = tmp_path / "ratings.csv"
    csv.write_text("path,rating\na.jpg,5\nb.jpg,zzz\nmissing.jpg,4\nk/k1.jpg,1\n", encoding="utf-8")
    report = ratings.collect([], keep=[tmp_path / "k"], reject=[tmp_path / "r"], ratings_csv=csv)
    got = {Path(p.path).name: (p.rating, p.source) for p in report.photos}
    # the CSV wins over the keep folder for k1, and says so
    assert got == {"a.jpg": (5, "csv"), "k1.jpg": (1, "csv"), "r1.jpg": (-1, "reject folder")}
    assert len(report.problems) == 2 and any("line 3" in p for p in report.problems)
    assert any("k1.jpg" in c for c in report.conflicts)


# --------------------------------------------------------------------------- labels and groups


def test_thresholds():
    t = learn.Thresholds()
    assert [t.label(r) for r in (-1, 1, 2, 2.5, 3, 3.5, 4, 5)] == [0, 0, 0, None, None, None, 1, 1]
    strict = learn.Thresholds(liked=5, disliked=0)  # only 5 stars vs only rejects
    assert [strict.label(r) for r in (-1, 1, 4, 5)] == [0, None, None, 1]
    for bad in ((3, 3), (2, 4), (6, 1), (4, -1)):
        with pytest.raises(learn.UsageError):
            learn.Thresholds(*bad)


def test_cli_rejects_bad_thresholds(tmp_path):
    result = run_cli("learn", tmp_path, "--name", "mine", "--liked", "3", "--disliked", "3")
    assert result.exit_code == 2 and "must be below" in result.output


def _exif(make: str, when: str) -> dict:
    return {"exif": {"make": make, "model": "M", "captured": when}}


def test_scene_groups_bursts_stems_and_hashes():
    paths = ["/p/a.jpg", "/p/b.jpg", "/p/c.jpg", "/p/A.CR2", "/p/d.jpg", "/p/e.jpg", "/q/a.jpg"]
    info = [
        _exif("Canon", "2024-05-01T10:00:00"), _exif("Canon", "2024-05-01T10:00:03"),  # one burst
        _exif("Canon", "2024-05-01T10:05:00"),  # minutes later: another scene
        {"phash": 0xFFFF0000FFFF0000},  # the RAW of a.jpg (same stem)
        {"phash": 0b1111}, {"phash": 0b1111 | (1 << 40)},  # near-identical without EXIF
        {"phash": (1 << 64) - 1},  # same name, other folder, different picture
    ]
    g = learn.scene_groups(paths, info, seconds=5)
    assert g[0] == g[1] == g[3]
    assert g[4] == g[5]
    assert len({g[0], g[2], g[4], g[6]}) == 4


def test_phash_joins_variants_not_other_photos():
    photos = camera_photos(16)
    hashes = []
    for src in photos:
        img = _scene(src, 320)
        w, h = img.size
        variants = [img, img.filter(ImageFilter.GaussianBlur(5)), img.point(lambda v: int(v * 0.8)),
                    img.crop((8, 8, w - 8, h - 8)).resize(img.size),
                    img.crop((w // 10, h // 10, w - w // 10, h - h // 10)),
                    img.crop((w // 6, h // 6, w - w // 6, h - h // 6))]  # a tight crop: 2/3 of the side
        hashes.append([learn.phashes(np.asarray(v)) for v in variants])
    for h in hashes:
        assert max(learn.hash_distance(h[0], x) for x in h[1:]) <= learn.PHASH_DISTANCE
    for i in range(len(hashes)):
        for j in range(i + 1, len(hashes)):
            assert learn.hash_distance(hashes[i][0], hashes[j][0]) > learn.PHASH_DISTANCE


def test_group_folds_never_split_a_group():
    rng = np.random.default_rng(3)
    for _ in range(50):
        groups = rng.integers(0, 30, size=120)
        y = rng.integers(0, 2, size=120)
        folds = learn.group_folds(groups, y, 5, seed=int(rng.integers(100)))
        for g in np.unique(groups):
            assert len(np.unique(folds[groups == g])) == 1
        assert len(np.unique(folds)) == 5


# --------------------------------------------------------------------------- end to end


def _scores(args: list) -> dict[str, float]:
    result = run_cli("score", *args, "--format", "json", "--no-cache", "--quiet")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    return {r["path"]: r["score"] for r in data["results"] if r.get("score") is not None}


def _auc(scores: dict[str, float], truth: dict[str, int]) -> float:
    paths = [p for p in scores if p in truth]
    return metrics.roc_auc(np.asarray([truth[p] for p in paths]), np.asarray([scores[p] for p in paths]))


@pytest.mark.slow
def test_learn_ranks_unseen_scenes_and_scores_exactly_the_head(shoot, weights_file):
    result = run_cli("learn", shoot["train"], "--name", "mine", "--base", weights_file, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["ratings"]["ilgnet_written"] == 1  # the trap was not read as the user's
    assert summary["ratings"]["counts"]["3"] == 4
    assert summary["ratings"]["counts"]["rejected"] == 10
    assert summary["ratings"]["sources"]["embedded XMP"] == 4
    assert summary["labelled"] == 76 and summary["liked"] == 38
    assert summary["groups"] == 38  # each scene's sharp and blurred frames are one group
    cv = summary["cross_validation"]
    assert cv["better_than_base"] and cv["learned"]["auc"]["value"] > cv["base"]["auc"]["value"]
    meta = summary["installed"]
    assert meta["name"] == "mine" and meta["source_sha256"] == summary["base"]["sha256"]

    listed = run_cli("weights", "list", "--json")
    assert '"mine"' in listed.stdout

    learned = _scores([shoot["test"], "--weights", "mine"])
    base = _scores([shoot["test"], "--weights", weights_file])
    assert all(0.0 <= s <= 1.0 for s in learned.values())
    assert _auc(learned, shoot["truth"]) >= 0.9, _auc(learned, shoot["truth"])
    assert _auc(base, shoot["truth"]) < 0.9

    # The installed file is a normal ILGNet whose P(high) is exactly the head's P(liked).
    from safetensors import safe_open

    from ilgnet_cli.model import store

    with safe_open(str(store.weights_dir() / "mine.safetensors"), framework="np") as fh:
        info = json.loads(fh.metadata()["learned"])
        w = fh.get_tensor("loss1.classifier_cjy.weight")[1].astype(np.float64)
        b = float(fh.get_tensor("loss1.classifier_cjy.bias")[1])
    assert info["thresholds"] == {"liked": 4.0, "disliked": 2.0} and info["ratings"] == 80
    assert info["base_sha256"] == summary["base"]["sha256"] and info["cross_validation"]["folds"] == 5
    loaded = store.load_model(str(weights_file))
    feats = learn.extract(sorted(learned), loaded, mirror=False)
    head = learn.Head(w=w, b=b, alpha=0.0)
    predicted = dict(zip(feats.paths, head.predict(feats.h), strict=True))
    assert max(abs(predicted[p] - learned[p]) for p in learned) < 1e-5


@pytest.mark.slow
def test_not_better_than_base_is_refused(shoot, weights_file, tmp_path):
    # A "taste" that is exactly the base model's: nothing can beat it, so nothing is installed.
    base = _scores([shoot["train"], "--weights", weights_file])
    ordered = sorted(base, key=base.get)
    csv = tmp_path / "r.csv"
    half = len(ordered) // 2
    csv.write_text("".join(f"{p},{1 if i < half else 5}\n" for i, p in enumerate(ordered)), encoding="utf-8")
    # (--no-mirror --folds 3: the same refusal, in half the time)
    result = run_cli("learn", "--ratings", csv, "--name", "same", "--base", weights_file, "--no-mirror",
                     "--folds", "3")
    assert result.exit_code == 1, result.output
    assert "not better than the base" in result.output and "nothing installed" in result.output
    assert not list(Path(os.environ["ILGNET_HOME"]).glob("weights/same.*"))


@pytest.mark.slow
def test_too_few_ratings_is_refused_unless_forced(shoot, weights_file):
    small = sorted(p for p in shoot["truth"] if "/test/" in p)[:12]
    csv = shoot["root"] / "few.csv"
    csv.write_text("".join(f"{p},{5 if shoot['truth'][p] else 1}\n" for p in small), encoding="utf-8")
    result = run_cli("learn", "--ratings", csv, "--name", "few", "--base", weights_file)
    assert result.exit_code == 1 and "too few ratings" in result.output
    assert not list(Path(os.environ["ILGNET_HOME"]).glob("weights/few.*"))
    forced = run_cli("learn", "--ratings", csv, "--name", "few", "--base", weights_file, "--force")
    assert forced.exit_code == 0, forced.output
    assert "installed anyway" in forced.output
    assert (Path(os.environ["ILGNET_HOME"]) / "weights" / "few.safetensors").is_file()


def test_bad_photos_and_sidecars_never_stop_the_run(tmp_path, weights_file):
    photos = camera_photos(6)
    for i, src in enumerate(photos):
        img = _scene(src, 256)
        img.save(tmp_path / f"s{i}_a.jpg")
        img.filter(ImageFilter.GaussianBlur(5)).save(tmp_path / f"s{i}_b.jpg")
        write_sidecar(tmp_path / f"s{i}_a.jpg", 5, "adobe")
        write_sidecar(tmp_path / f"s{i}_b.jpg", 1, "darktable")
    good = (tmp_path / "s0_a.jpg").read_bytes()
    (tmp_path / "broken.jpg").write_bytes(good[: len(good) // 3])
    write_sidecar(tmp_path / "broken.jpg", 5, "adobe")
    (tmp_path / "s1_a.jpg.xmp").write_text("<<<not xml", encoding="utf-8")
    result = run_cli("learn", tmp_path, "--dry-run", "--base", weights_file, "--workers", "0")
    assert result.exit_code == 1, result.output  # 13 ratings: too few, said in one line
    assert "unreadable sidecar" in result.output
    assert "not decoded" in result.output and "broken.jpg" in result.output
    assert "too few ratings" in result.output
    assert "Traceback" not in result.output


def test_registry_names_are_refused(tmp_path):
    result = run_cli("learn", tmp_path, "--name", "ilgnet-ava1")
    assert result.exit_code == 2 and "registry" in result.output


def test_head_fit_is_exact_on_separable_and_finite_on_constant_features():
    rng = np.random.default_rng(0)
    h = np.abs(rng.normal(size=(60, learn.FEATURE_DIM))).astype(np.float32)
    h[:, 10:] = 1.0  # constant (dead) units must get weight 0, not NaN
    y = (h[:, 0] > np.median(h[:, 0])).astype(int)
    head = learn.fit_head(h, y, alpha=0.003)
    assert np.all(np.isfinite(head.w)) and np.all(head.w[10:] == 0)
    assert metrics.roc_auc(y, head.predict(h)) > 0.99
    state = learn.head_state({k: v for k, v in _tiny_state().items()}, head)
    assert state["loss1.classifier_cjy.weight"].shape == (2, learn.FEATURE_DIM)


def _tiny_state() -> dict[str, torch.Tensor]:
    from ilgnet_cli.model.ilgnet import ILGNet

    return ILGNet().state_dict()


def test_embedded_xmp_of_real_phone_photos_is_read(shared):
    # The iPhone's HEIC ends its XMP packet with a NUL byte: still a readable packet, not a problem.
    folder = shared("photos", "camera")
    report = ratings.collect([folder / "Apple_iPhone-11-Pro-Max.heic", folder / "Samsung_Galaxy-S24-FE.heic"])
    assert report.problems == []


def test_ratings_csv_that_is_a_fifo_is_reported_never_read(tmp_path):
    import subprocess
    import sys

    fifo = tmp_path / "ratings.csv"
    os.mkfifo(fifo)
    code = ("import sys; from ilgnet_cli.photos.ratings import csv_ratings; "
            "r = csv_ratings(sys.argv[1]); print(r.problems)")
    proc = subprocess.run([sys.executable, "-c", code, str(fifo)], capture_output=True, text=True, timeout=15)
    assert proc.returncode == 0 and "not a regular file" in proc.stdout
