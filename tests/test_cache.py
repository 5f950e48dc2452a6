"""The score cache (photos/cache.py): keyed by what determines a score, never trusted beyond
what a run can use, safe under concurrent writers and kill -9, and only ever a speed-up: a
damaged or failing database costs no score."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from multiprocessing import get_context

import pytest

from ilgnet_cli.photos.cache import FileKey, ScoreCache, open_cache
from ilgnet_cli.photos.collection import score_files
from ilgnet_cli.photos.exif import ExifInfo
from ilgnet_cli.photos.results import ScoreResult
from ilgnet_cli.predict.predictor import CRASH_REASON, Prediction, Predictor


def _writer(db: str, tag: int, files: list[str]) -> None:
    with ScoreCache(db, "w", 1, "draft") as cache:
        for start in range(0, len(files), 5):
            batch = [(FileKey.of(f), 0.1 * tag, None, {"writer": tag}) for f in files[start:start + 5]]
            cache.put_many(batch)


def test_two_runs_writing_at_once(tmp_path):
    files = []
    for i in range(200):
        p = tmp_path / f"f{i}.jpg"
        p.write_bytes(b"x" * i)
        files.append(str(p))
    db = str(tmp_path / "cache.sqlite")
    ctx = get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(db, tag, files)) for tag in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with ScoreCache(db, "w", 1, "draft") as cache:
        hits = [cache.get(FileKey.of(f)) for f in files]
    assert all(h is not None and h.meta["writer"] in (1, 2) for h in hits)


def test_kill_9_keeps_committed_batches(tmp_path):
    db = tmp_path / "cache.sqlite"
    files = []
    for i in range(2000):
        p = tmp_path / f"f{i}"
        p.write_bytes(b"y")
        files.append(str(p))
    listing = tmp_path / "files.txt"
    listing.write_text("\n".join(files))
    script = (
        "import sys\n"
        "from ilgnet_cli.photos.cache import FileKey, ScoreCache\n"
        "files = open(sys.argv[2]).read().split()\n"
        "with ScoreCache(sys.argv[1], 'w', 1, 'draft') as c:\n"
        "    while True:\n"
        "        for f in files:\n"
        "            c.put_many([(FileKey.of(f), 0.5, None, {'pad': 'x' * 500})])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(db), str(listing)], env=os.environ.copy())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (tmp_path / "cache.sqlite-wal").exists():
        time.sleep(0.1)
    time.sleep(1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with ScoreCache(db, "w", 1, "draft") as cache:
        assert cache.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        n = cache.conn.execute("SELECT COUNT(*) FROM scores_v2").fetchone()[0]
    assert n > 0


# --------------------------------------------------------------------------- the key


def test_a_file_replaced_by_one_of_the_same_size_and_time_misses(tmp_path):
    """A photo replaced by another of the same size, its old mtime restored (a sync tool, a
    restore from backup): the inode, the ctime or the sample digest changes, so it is scored again."""
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"A" * 10_000)
    before = FileKey.of(photo)
    with ScoreCache(tmp_path / "c.sqlite", "w", 1, "exact") as cache:
        cache.put_many([(before, 0.7, None, {})])
        assert cache.get(before).score == 0.7
        with photo.open("r+b") as fh:  # the same inode, the same size, new content at the end
            fh.seek(9_000)
            fh.write(b"B" * 1000)
        os.utime(photo, ns=(before.mtime_ns, before.mtime_ns))
        after = FileKey.of(photo)
        assert (after.size, after.mtime_ns, after.ino) == (before.size, before.mtime_ns, before.ino)
        assert after.sample != before.sample and cache.get(after) is None
        twin = tmp_path / "b.jpg"
        twin.write_bytes(b"A" * 10_000)
        os.replace(twin, photo)  # another file under the name: another inode
        os.utime(photo, ns=(before.mtime_ns, before.mtime_ns))
        assert FileKey.of(photo).ino != before.ino and cache.get(FileKey.of(photo)) is None


def test_modes_and_weights_never_share_rows(tmp_path):
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"x")
    key = FileKey.of(photo)
    with ScoreCache(tmp_path / "c.sqlite", "w", 1, "fast-800") as cache:
        cache.put_many([(key, 0.5, None, {})])
        cache.put_many([(key, 0.6, None, {})], mode="fast-800+bf16")
        assert cache.get(key).score == 0.5 and cache.get(key, "fast-800+bf16").score == 0.6
        assert cache.get(key, "exact") is None
    for weights, prep in (("other", 1), ("w", 2)):
        with ScoreCache(tmp_path / "c.sqlite", weights, prep, "fast-800") as cache:
            assert cache.get(key) is None


def test_refusals_count_only_under_the_same_pixel_limit(tmp_path):
    photo = tmp_path / "huge.png"
    photo.write_bytes(b"x")
    key = FileKey.of(photo)
    with ScoreCache(tmp_path / "c.sqlite", "w", 1, "exact") as cache:
        cache.put_many([(key, None, "decompression bomb (2e+08 pixels declared, limit 1.2e+08)", {})])
        assert cache.get(key).error.startswith("decompression bomb")
        assert cache.get(key, max_pixels=300_000_000) is None  # --max-pixels raised: tried again
        cache.put_many([(key, 0.4, None, {})], max_pixels=300_000_000)
        assert cache.get(key).score == 0.4 and cache.get(key, max_pixels=5).score == 0.4  # scores always count


def test_what_the_cache_keeps_of_a_result_comes_back_typed():
    full = ScoreResult(path="/p/a.jpg", score=0.8, width=4000, height=3000, format="JPEG",
                       exif=ExifInfo(make="Canon", model="EOS", iso=100, has_gps=True), sharpness=12.5,
                       precision="bf16", decode="fast-800")
    back = ScoreResult.from_cache(full.path, full.score, None, full.to_cache())
    assert back == full
    edited = {"width": "4000", "height": True, "format": 3, "exif": ["x"], "sharpness": float("nan"),
              "precision": 16, "decode": None, "extra": 1}
    junk = ScoreResult.from_cache("/p/b.jpg", 0.1, None, edited)  # an edited or foreign row: dropped fields
    assert (junk.width, junk.height, junk.format, junk.exif, junk.sharpness, junk.precision) == (
        None, None, None, ExifInfo(), None, None)


# --------------------------------------------------------------------------- what is never trusted


def test_nan_in_cache_is_a_miss_and_never_stored(tmp_path):
    db = tmp_path / "cache.sqlite"
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"x")
    key = FileKey.of(photo)
    with ScoreCache(db, "sha", 1, "draft") as cache:
        cache.put_many([(key, float("nan"), None, {"width": 1})])
        assert cache.get(key) is None
        cache.put_many([(key, float("inf"), None, {})])
        assert cache.get(key) is None
        cache.put_many([(key, None, None, {})])
        assert cache.get(key) is None
        assert cache.conn.execute("SELECT COUNT(*) FROM scores_v2").fetchone()[0] == 0
    # Rows edited by hand or written by something else (NULL score and no error; broken meta) are misses.
    conn = sqlite3.connect(db)
    for score, error, meta in ((None, None, "{}"), (0.5, None, "not json"), (0.5, None, "[1]"), ("text", None, "{}"),
                               (0.5, None, "[" * 100_000)):
        conn.execute("INSERT OR REPLACE INTO scores_v2 VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                     (key.path, key.size, key.mtime_ns, key.ino, key.ctime_ns, key.sample, "sha", 1, "draft", score,
                      error, None, meta, 0.0))
        conn.commit()
        with ScoreCache(db, "sha", 1, "draft") as cache:
            assert cache.get(key) is None, (score, error, meta[:10])
    conn.close()
    with ScoreCache(db, "sha", 1, "draft") as cache:
        cache.put_many([(key, 0.25, None, {})])
        hit = cache.get(key)
        assert hit is not None and math.isclose(hit.score, 0.25)


def test_crash_reasons_are_never_cached(tmp_path, tiny, monkeypatch):
    """A decoder that crashed or hung may not do so again (another machine, a fixed library)."""
    photo = tmp_path / "a.png"
    photo.write_bytes(b"\x89PNG\r\n\x1a\n not really")

    def crashed(self, source, indices=None):
        yield Prediction(index=0, name=source.name(0), error=CRASH_REASON)

    monkeypatch.setattr(Predictor, "predict", crashed)
    with ScoreCache(tmp_path / "c.sqlite", tiny.sha256, 1, "exact") as cache:
        run = score_files([str(photo)], tiny, cache=cache)
        assert run.results[0].error == CRASH_REASON
        assert cache.get(FileKey.of(photo), "exact") is None


# --------------------------------------------------------------------------- damage


def test_corrupt_cache_is_set_aside_and_replaced(tmp_path):
    db = tmp_path / "scores.sqlite"
    junk = b"not a database, e.g. truncated by a sync tool " * 40
    db.write_bytes(junk)
    cache, note = open_cache(db, "w", 1, "draft")
    assert cache is not None and "corrupt" in note
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("scores.sqlite.corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes() == junk  # kept for inspection, never deleted
    f = tmp_path / "a.jpg"
    f.write_bytes(b"x")
    cache.put_many([(FileKey.of(str(f)), 0.5, None, {})])
    assert cache.get(FileKey.of(str(f))).score == 0.5
    cache.close()
    assert open_cache(db, "w", 1, "draft")[1] is None  # the new one opens cleanly


@pytest.mark.parametrize("planted", ["", "-wal"])
def test_a_link_at_the_cache_is_set_aside_never_written_through(tmp_path, planted):
    # SQLite follows links: another program's database (or any file) would get ilgnet's tables.
    victim = tmp_path / "library.db"
    sqlite3.connect(victim).executescript("CREATE TABLE images (id INTEGER); INSERT INTO images VALUES (1);")
    before = victim.read_bytes()
    home = tmp_path / "home"
    home.mkdir()
    db = home / "scores.sqlite"
    (home / f"scores.sqlite{planted}").symlink_to(victim)
    cache, note = open_cache(db, "w", 1, "draft")
    assert cache is not None and "regular file" in note
    f = tmp_path / "a.jpg"
    f.write_bytes(b"x")
    cache.put_many([(FileKey.of(str(f)), 0.5, None, {})])
    cache.close()
    assert victim.read_bytes() == before
    assert not db.is_symlink() and not (home / "scores.sqlite-wal").is_symlink()


def test_a_valid_header_over_damaged_pages_is_caught_at_open(tmp_path):
    db = tmp_path / "scores.sqlite"
    with ScoreCache(db, "w", 1, "draft") as cache:
        for i in range(300):
            f = tmp_path / f"f{i}"
            f.write_bytes(b"x")
            cache.put_many([(FileKey.of(f), 0.5, None, {"pad": "p" * 200})])
        cache.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(db.read_bytes())
    assert len(data) > 16 * 4096
    data[4096 * 3:4096 * 12] = os.urandom(4096 * 9)  # the header (page 1) intact
    db.write_bytes(bytes(data))
    cache, note = open_cache(db, "w", 1, "draft")
    assert cache is not None and note is not None and "corrupt" in note
    assert any(p.name.startswith("scores.sqlite.corrupt-") for p in tmp_path.iterdir())
    cache.close()


class _Broken:
    """A connection whose every query fails the way SQLite does on a damaged page (or, with
    ``operational``, on a locked or full database)."""

    def __init__(self, conn, operational: bool = False) -> None:
        self.conn, self.operational = conn, operational

    def execute(self, *args, **kwargs):
        error = sqlite3.OperationalError("database is locked") if self.operational else sqlite3.DatabaseError(
            "database disk image is malformed")
        raise error

    def close(self) -> None:
        self.conn.close()


@pytest.mark.parametrize("operational", [False, True])
def test_damage_found_mid_run_sets_the_file_aside_at_close(tmp_path, operational):
    db = tmp_path / "scores.sqlite"
    cache, _ = open_cache(db, "w", 1, "draft")
    cache.conn = _Broken(cache.conn, operational)
    f = tmp_path / "a.jpg"
    f.write_bytes(b"x")
    assert cache.get(FileKey.of(f)) is None
    assert "stopped working" in cache.problem and "not cached" in cache.problem
    cache.put_many([(FileKey.of(f), 0.5, None, {})])  # after a failure: nothing more is tried
    cache.close()
    aside = [p.name for p in tmp_path.iterdir() if p.name.startswith("scores.sqlite.corrupt-")]
    assert len(aside) == (0 if operational else 1)  # locked or full is not damage: kept


def test_a_failing_cache_never_costs_a_score(tmp_path, tiny, photo_folder):
    cache = ScoreCache(tmp_path / "scores.sqlite", tiny.sha256, 1, "exact")
    cache.conn.close()  # every later query fails, like a disk that filled up mid-run
    files = sorted(str(p) for p in photo_folder(3, size=400).iterdir())
    run = score_files(files, tiny, batch_size=2, cache=cache)
    assert run.stats.scored == 3 and cache.problem and "not cached" in cache.problem
