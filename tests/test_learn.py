"""ilgnet learn (training/learn.py): labels from ratings, scene groups, grouped cross-validation,
the refusal to install what is not better than the base, and an installed taste that scores
exactly what the learned head predicted.

The photographer's taste is synthesised on real photos (../shared/photos/camera): each scene is
saved sharp (liked: 4-5 stars) and blurred (disliked: 1-2 stars or rejected), rated the way
editors write it. The base model is random (conftest: weights_file), so it has no such taste.
The tiny stand-in cannot stand in here: a taste reads ILGNet's 1024-d pooled trunk features.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import camera_photos, write_sidecar, xmp
from PIL import Image, ImageFilter

from ilgnet_cli.model import store
from ilgnet_cli.model.ilgnet import FEATURE_DIM
from ilgnet_cli.training import learn, metrics

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


# --------------------------------------------------------------------------- labels and groups


def test_thresholds():
    t = learn.Thresholds()
    assert [t.label(r) for r in (-1, 1, 2, 2.5, 3, 3.5, 4, 5)] == [0, 0, 0, None, None, None, 1, 1]
    strict = learn.Thresholds(liked=5, disliked=0)  # only 5 stars vs only rejects
    assert [strict.label(r) for r in (-1, 1, 4, 5)] == [0, None, None, 1]
    for bad in ((3, 3), (2, 4), (6, 1), (4, -1)):
        with pytest.raises(learn.UsageError):
            learn.Thresholds(*bad)


def test_cli_rejects_bad_thresholds(tmp_path, cli):
    result = cli("learn", tmp_path, "--name", "mine", "--liked", "3", "--disliked", "3")
    assert result.code == 2 and "must be below" in result.output


def _exif(make: str, when: str) -> dict:
    return {"exif": {"make": make, "model": "M", "captured": when}}


def test_scene_groups_bursts_stems_and_hashes():
    paths = ["/p/a.jpg", "/p/b.jpg", "/p/c.jpg", "/p/A.CR2", "/p/d.jpg", "/p/e.jpg", "/q/a.jpg"]
    info = [
        _exif("Canon", "2024-05-01T10:00:00"), _exif("Canon", "2024-05-01T10:00:03"),  # one burst
        _exif("Canon", "2024-05-01T10:05:00"),  # minutes later: another scene
        {"phash": [0xFFFF0000FFFF0000]},  # the RAW of a.jpg (same stem)
        {"phash": [0b1111]}, {"phash": [0b1111 | (1 << 40)]},  # near-identical without EXIF
        {"phash": [(1 << 64) - 1]},  # same name, other folder, different picture
    ]
    seen = []
    g = learn.scene_groups(paths, info, seconds=5, progress=lambda done, total: seen.append((done, total)))
    assert g[0] == g[1] == g[3]
    assert g[4] == g[5]
    assert len({g[0], g[2], g[4], g[6]}) == 4
    assert seen and seen[-1] == (4, 4)  # the photos with hashes, compared in chunks


def test_near_pairs_are_every_pair_within_the_distance():
    """All pairs compared as vectorised popcounts, chunk by chunk: the same pairs as comparing
    each pair in Python, whatever the chunk size."""
    rng = np.random.default_rng(5)
    base = [int(x) for x in rng.integers(0, 2**63, size=40, dtype=np.int64)]
    hashes = []
    for h in base:
        hashes.append([h, h ^ 0b111])  # a photo and a crop of it, 3 bits apart
        hashes.append([h ^ (1 << 50) ^ (1 << 3)])  # a regraded copy: 2 bits from the whole
    hashes += [None, "x", [], [1.5]]  # photos without a usable hash: never paired
    brute = sorted((i, j) for i in range(len(hashes)) for j in range(i + 1, len(hashes))
                   if isinstance(hashes[i], list) and isinstance(hashes[j], list) and hashes[i] and hashes[j]
                   and all(isinstance(x, int) for x in hashes[i] + hashes[j])
                   and learn.hash_distance(hashes[i], hashes[j]) <= 12)
    assert sorted(learn.near_pairs(hashes, 12)) == brute and len(brute) >= 40
    old = learn.NEAR_CHUNK
    try:
        learn.NEAR_CHUNK = 7
        assert sorted(learn.near_pairs(hashes, 12)) == brute
    finally:
        learn.NEAR_CHUNK = old


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


def _scores(args: list, cli) -> dict[str, float]:
    result = cli("score", *args, "--format", "json", "--no-cache", "--quiet")
    assert result.code == 0, result.output
    data = json.loads(result.stdout)
    return {r["path"]: r["score"] for r in data["results"] if r.get("score") is not None}


def _auc(scores: dict[str, float], truth: dict[str, int]) -> float:
    paths = [p for p in scores if p in truth]
    return metrics.roc_auc(np.asarray([truth[p] for p in paths]), np.asarray([scores[p] for p in paths]))


@pytest.mark.slow
def test_learn_ranks_unseen_scenes_and_scores_exactly_the_head(shoot, weights_file, cli):
    store.add_safetensors(weights_file, "random")  # a taste needs its base in the store
    result = cli("learn", shoot["train"], "--name", "mine", "--base", "random", "--json")
    assert result.code == 0, result.output
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
    assert meta["name"] == "mine" and meta["architecture"] == "ilgnet-taste"
    assert meta["base_sha256"] == meta["source_sha256"] == summary["base"]["sha256"]

    listed = cli("weights", "list", "--json")
    assert '"mine"' in listed.stdout

    learned = _scores([shoot["test"], "--weights", "mine"], cli)
    base = _scores([shoot["test"], "--weights", weights_file], cli)
    assert all(0.0 <= s <= 1.0 for s in learned.values())
    assert _auc(learned, shoot["truth"]) >= 0.9, _auc(learned, shoot["truth"])
    assert _auc(base, shoot["truth"]) < 0.9

    # Installed, the taste is its head (a few KB, its base referenced by sha256); loaded, it scores
    # exactly the head's P(liked) on the base's features.
    from safetensors import safe_open

    from ilgnet_cli.model.taste import HEAD_BIAS, HEAD_WEIGHT

    taste = store.weights_dir() / "mine.safetensors"
    assert taste.stat().st_size < 64 << 10
    with safe_open(str(taste), framework="np") as fh:
        info = json.loads(fh.metadata()["learned"])
        w = fh.get_tensor(HEAD_WEIGHT).astype(np.float64)
        b = float(fh.get_tensor(HEAD_BIAS)[0])
    assert info["thresholds"] == {"liked": 4.0, "disliked": 2.0} and info["ratings"] == 80
    assert info["base_sha256"] == summary["base"]["sha256"] and info["cross_validation"]["folds"] == 5
    loaded = store.load_model(str(weights_file))
    feats = learn.extract(sorted(learned), loaded, mirror=False)
    head = learn.Head(w=w, b=b, alpha=0.0)
    predicted = dict(zip(feats.paths, head.predict(feats.h), strict=True))
    assert max(abs(predicted[p] - learned[p]) for p in learned) < 1e-5


@pytest.mark.slow
def test_not_better_than_base_is_refused(shoot, weights_file, tmp_path, cli):
    # A "taste" that is exactly the base model's: nothing can beat it, so nothing is installed.
    base = _scores([shoot["train"], "--weights", weights_file], cli)
    ordered = sorted(base, key=base.get)
    csv = tmp_path / "r.csv"
    half = len(ordered) // 2
    csv.write_text("".join(f"{p},{1 if i < half else 5}\n" for i, p in enumerate(ordered)), encoding="utf-8")
    # (--no-mirror --folds 3: the same refusal, in half the time)
    store.add_safetensors(weights_file, "random")  # a taste needs its base in the store
    result = cli("learn", "--ratings", csv, "--name", "same", "--base", "random", "--no-mirror",
                     "--folds", "3")
    assert result.code == 1, result.output
    assert "not better than the base" in result.output and "nothing installed" in result.output
    assert not list(Path(os.environ["ILGNET_HOME"]).glob("weights/same.*"))


@pytest.mark.slow
def test_too_few_ratings_is_refused_unless_forced(shoot, weights_file, cli):
    small = sorted(p for p in shoot["truth"] if "/test/" in p)[:12]
    csv = shoot["root"] / "few.csv"
    csv.write_text("".join(f"{p},{5 if shoot['truth'][p] else 1}\n" for p in small), encoding="utf-8")
    store.add_safetensors(weights_file, "random")  # a taste needs its base in the store
    result = cli("learn", "--ratings", csv, "--name", "few", "--base", "random")
    assert result.code == 1 and "too few ratings" in result.output
    assert not list(Path(os.environ["ILGNET_HOME"]).glob("weights/few.*"))
    forced = cli("learn", "--ratings", csv, "--name", "few", "--base", "random", "--force")
    assert forced.code == 0, forced.output
    assert "installed anyway" in forced.output
    assert (Path(os.environ["ILGNET_HOME"]) / "weights" / "few.safetensors").is_file()


@pytest.mark.slow
def test_a_taste_needs_stored_base_weights_and_then_scores(shoot, weights_file, cli):
    """A taste is a head on stored weights: ``learn --base FILE --name mine`` is refused before any
    work with the command that stores FILE; once stored (under any name), the taste learned on the
    same file scores."""
    small = sorted(p for p in shoot["truth"] if "/test/" in p)[:12]
    csv = shoot["root"] / "few-file.csv"
    csv.write_text("".join(f"{p},{5 if shoot['truth'][p] else 1}\n" for p in small), encoding="utf-8")
    refused = cli("learn", "--ratings", csv, "--name", "onfile", "--base", weights_file, "--force", "--no-mirror")
    assert refused.code == 2 and "not in the weights store" in refused.output and "weights add" in refused.output
    assert [line for line in refused.errors if line.startswith("error:")] == [refused.errors[-1]], refused.output
    added = cli("weights", "add", weights_file, "--name", "stored")
    assert added.code == 0, added.output
    learned = cli("learn", "--ratings", csv, "--name", "onfile", "--base", weights_file, "--force", "--no-mirror")
    assert learned.code == 0, learned.output
    scored = cli("score", small[0], "--weights", "onfile", "--device", "cpu", "--workers", "0", "--no-cache")
    assert scored.code == 0, scored.output


def test_bad_photos_and_sidecars_never_stop_the_run(tmp_path, tiny_cli, cli):
    """(The tiny stand-in as the base: the run stops at "too few ratings", before any head.)"""
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
    result = cli("learn", tmp_path, "--dry-run", "--base", "tiny", "--workers", "0")
    assert result.code == 1, result.output  # 13 ratings: too few, said in one line
    assert "unreadable sidecar" in result.output
    assert "not decoded" in result.output and "broken.jpg" in result.output
    assert "too few ratings" in result.output
    assert "Traceback" not in result.output


def test_registry_names_are_refused(tmp_path, cli):
    result = cli("learn", tmp_path, "--name", "ilgnet-ava1")
    assert result.code == 2 and "registry" in result.output


def test_head_fit_is_exact_on_separable_and_finite_on_constant_features():
    rng = np.random.default_rng(0)
    h = np.abs(rng.normal(size=(60, FEATURE_DIM))).astype(np.float32)
    h[:, 10:] = 1.0  # constant (dead) units must get weight 0, not NaN
    y = (h[:, 0] > np.median(h[:, 0])).astype(int)
    head = learn.fit_head(h, y, alpha=0.003)
    assert np.all(np.isfinite(head.w)) and np.all(head.w[10:] == 0)
    assert metrics.roc_auc(y, head.predict(h)) > 0.99
    assert head.w.shape == (FEATURE_DIM,) and head.w.dtype == np.float64


