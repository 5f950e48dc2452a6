"""The score cache under concurrent writers and a kill -9 in the middle of a run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from multiprocessing import get_context

import pytest

from ilgnet_cli.photos.cache import FileKey, ScoreCache


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
    time.sleep(3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with ScoreCache(db, "w", 1, "draft") as cache:
        assert cache.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        n = cache.conn.execute("SELECT COUNT(*) FROM scores").fetchone()[0]
    assert n > 0


def test_corrupt_cache_is_set_aside_and_replaced(tmp_path):
    from ilgnet_cli.photos.cache import open_cache

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


@pytest.mark.slow
def test_a_failing_cache_never_costs_a_score(tmp_path, weights_file):
    from conftest import camera_photos
    from ilgnet_cli.photos.scoring import run_score

    from ilgnet_cli.model import store

    cache = ScoreCache(tmp_path / "scores.sqlite", "w", 1, "draft")
    cache.conn.close()  # every later query fails, like a disk that filled up mid-run
    files = [str(p) for p in camera_photos(3)]
    run = run_score(files, store.load_model(str(weights_file)), batch_size=2, cache=cache)
    assert run.stats.scored == 3 and cache.problem and "not cached" in cache.problem
