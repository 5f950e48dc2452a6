"""Best-of-burst (photos/bursts.py): consecutive shots of one camera body grouped, the sharp,
best-scored frame kept; frames too blurred never become the keeper; different bodies and times
are never grouped."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image, ImageFilter

from ilgnet_cli.photos.bursts import BLUR_RATIO, burst_groups, group_bursts, sharpness
from ilgnet_cli.photos.collection import score_collection
from ilgnet_cli.photos.exif import ExifInfo
from ilgnet_cli.photos.results import BurstMark, ScoreResult

CANON = ("Canon", "EOS 5D", "123456")


def test_groups_are_runs_of_one_body_each_within_the_gap():
    bodies = [CANON, CANON, CANON, ("Canon", "EOS 5D", "999"), CANON, (None, None, None), CANON]
    times = [0.0, 0.4, 0.9, 0.5, 30.0, 0.1, None]
    groups = burst_groups(bodies, times, 1.0)
    assert sorted(map(sorted, groups)) == [[0, 1, 2], [3], [4], [5], [6]]  # another serial: another body
    assert burst_groups(bodies, times, 0.45)[0] == [0, 1]  # each frame within the gap of the one before
    assert burst_groups([CANON] * 3, [5.0, 0.0, 0.5], 1.0, ["c", "a", "b"])[0] == [1, 2]  # in time order


def test_sharpness_tells_a_blurred_frame(camera):
    img = Image.open(camera(1)[0]).convert("RGB").resize((800, 600))
    sharp = sharpness(np.asarray(img))
    blurred = sharpness(np.asarray(img.filter(ImageFilter.GaussianBlur(6))))
    assert blurred < BLUR_RATIO * sharp and sharpness(np.zeros((2, 2, 3), np.uint8)) == 0.0


def _frame(path: str, score: float, t: str, sharp: float) -> ScoreResult:
    return ScoreResult(path=path, score=score, exif=ExifInfo(make="Canon", model="EOS 5D", serial="1", captured=t),
                       sharpness=sharp)


def test_the_keeper_is_the_best_sharp_frame_and_every_member_knows_its_place():
    frames = [_frame("a.jpg", 0.7, "2024-05-01T10:00:00.10", 100.0),
              _frame("b.jpg", 0.9, "2024-05-01T10:00:00.20", 20.0),  # best score, but blurred
              _frame("c.jpg", 0.8, "2024-05-01T10:00:00.30", 90.0),
              _frame("d.jpg", 0.6, "2024-05-01T10:05:00.00", 50.0)]
    failed = ScoreResult(path="e.jpg", error="truncated image data")
    bursts = group_bursts([*frames, failed], 1.0)
    assert [[m.path for m in b.members] for b in bursts] == [["c.jpg", "a.jpg", "b.jpg"], ["d.jpg"]]
    assert frames[2].burst == BurstMark(1, 3, True) and frames[1].burst == BurstMark(1, 3, False)
    assert frames[3].burst == BurstMark(2, 1, True) and failed.burst is None


def test_bursts_on_real_camera_photos_are_singletons(photo_folder, tiny):
    """The shared camera photos come from different bodies and years: no false bursts."""
    run = score_collection([photo_folder(8, size=400)], weights=tiny, device="cpu", workers=0, cache=False,
                           group_bursts=2)
    assert len(run.bursts) == len(run.results) == 8 and all(r.burst.keeper and r.burst.size == 1 for r in run.results)


def _exif_bytes(base: Image.Image, when: str, subsec: str) -> bytes:
    exif = base.getexif()
    exif[0x010F], exif[0x0110] = "Canon", "Canon EOS 5D Mark III"
    ifd = exif.get_ifd(0x8769)
    ifd[0x9003], ifd[0x9291], ifd[0xA431] = when, subsec, "123456"
    return exif.tobytes()


def test_burst_keeper_is_the_sharp_frame(tmp_path, camera, tiny_cli, cli):
    """A synthetic burst: copies of one photo 0.1 s apart, the best-scored one blurred."""
    folder = tmp_path / "burst"
    folder.mkdir()
    base = Image.open(camera(1)[0]).convert("RGB").resize((800, 600))
    frames = {"a_sharp.jpg": ("2024:05:01 10:00:00", "10", base),
              "b_blurred.jpg": ("2024:05:01 10:00:00", "20", base.filter(ImageFilter.GaussianBlur(6))),
              "c_sharp.jpg": ("2024:05:01 10:00:00", "30", base.transpose(Image.FLIP_LEFT_RIGHT)),
              "later.jpg": ("2024:05:01 10:05:00", "00", base.rotate(3))}
    for name, (when, sub, img) in frames.items():
        img.save(folder / name, quality=92, exif=_exif_bytes(base, when, sub))
    out = tmp_path / "r.json"
    result = cli("score", folder, "--weights", "tiny", "--device", "cpu", "--workers", "0", "--group-bursts", "1",
                 "--top", "1", "-o", out)
    assert result.code == 0, result.output
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
    assert cli("score", folder, "--weights", "tiny", "--device", "cpu", "--workers", "0", "--group-bursts", "1",
               "-o", html).code == 0
    page = html.read_text()
    # The burst is one strip (keeper first), the single shot an ordinary grid cell.
    assert page.count('<figure class="strip"') == 1 and page.count('<figure class="shot"') == 1
    assert "burst of 3 frames" in page and page.index("a_sharp.jpg") < page.index("b_blurred.jpg")
