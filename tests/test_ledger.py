"""The ledger of stars ilgnet wrote: history by path, copies found by content, concurrency, and a
damaged, hostile or unwritable ledger costing a one-line note, never a run."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PIL import Image

from ilgnet_cli.photos import ledger as ledger_mod
from ilgnet_cli.photos.ledger import Ledger, Written, content_digest, ledger_path
from ilgnet_cli.photos.results import ScoreResult
from ilgnet_cli.photos.xmp import write_sidecars


def _photo(path: Path, seed: int = 0) -> Path:
    Image.effect_noise((96, 64), 40 + seed).convert("RGB").save(path, quality=90)
    return path


def test_history_by_path_and_copies_by_content(tmp_path):
    a = _photo(tmp_path / "a.jpg")
    with Ledger() as book:
        assert book.stars(str(a)) == frozenset() and book.notes == []
        assert not ledger_path().exists()  # reading never creates one
        book.record([Written(str(a), 4, 0.7, "w1", "sha-1")])
        book.record([Written(str(a), 2, 0.3, "w2", "sha-2")])  # a re-score: the old star stays known
        book.record([Written(str(a), 2, 0.31, "w2", "sha-2")])  # the same again: one row, updated
        assert book.stars(str(a)) == {4.0, 2.0}
    assert ledger_path() == Path(os.environ["ILGNET_DATA"]) / "ledger.sqlite"
    rows = sqlite3.connect(ledger_path()).execute("SELECT stars, score, weights, weights_sha256, digest FROM writes "
                                                  "ORDER BY stars").fetchall()
    assert [r[:4] for r in rows] == [(2.0, 0.31, "w2", "sha-2"), (4.0, 0.7, "w1", "sha-1")]
    assert rows[0][4] == content_digest(a) and rows[0][4].startswith("v1:")
    # A photo manager's copy elsewhere (its own folder tree): found by content.
    elsewhere = tmp_path / "library" / "2024" / "IMG.jpg"
    elsewhere.parent.mkdir(parents=True)
    shutil.copyfile(a, elsewhere)
    other = _photo(tmp_path / "b.jpg", seed=1)
    with Ledger() as book:
        assert book.stars(str(elsewhere)) == {4.0, 2.0}
        assert book.stars(str(other)) == frozenset()
        # Through a symbolic link: the real path.
        link = tmp_path / "link.jpg"
        link.symlink_to(a)
        assert book.stars(str(link)) == {4.0, 2.0}


def test_metadata_written_into_the_file_changes_the_digest_not_the_path(tmp_path):
    # Lightroom's "write metadata to file" or digiKam rewrite the file: by path it is still known.
    a = _photo(tmp_path / "a.jpg")
    with Ledger() as book:
        book.record([Written(str(a), 5, 0.9)])
    before = content_digest(a)
    Image.open(a).save(a, quality=90, xmp=b"<x:xmpmeta xmlns:x='adobe:ns:meta/'/>")
    assert content_digest(a) != before
    with Ledger() as book:
        assert book.stars(str(a)) == {5.0}
        moved = tmp_path / "moved.jpg"
        shutil.copyfile(a, moved)
        assert book.stars(str(moved)) == frozenset()  # a changed file elsewhere is another photo


def test_digest_reads_only_regular_files_and_is_cheap(tmp_path):
    big = tmp_path / "big.raw"
    with open(big, "wb") as fh:
        fh.truncate(50 << 20)
        fh.seek(25 << 20)
        fh.write(b"x")
    d1 = content_digest(big)
    with open(big, "r+b") as fh:
        fh.seek(30 << 20)
        fh.write(b"y")  # outside the three chunks: the same digest (documented trade-off)
    assert content_digest(big) == d1
    with open(big, "r+b") as fh:
        fh.seek(25 << 20)
        fh.write(b"z")  # inside the middle chunk
    assert content_digest(big) != d1
    assert content_digest(tmp_path / "absent.jpg") is None
    assert content_digest(tmp_path) is None
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "fifo.jpg"
        os.mkfifo(fifo)
        done: list = []
        worker = threading.Thread(target=lambda: done.append(content_digest(fifo)), daemon=True)
        worker.start()
        worker.join(10)
        assert done == [None], "opened the FIFO and blocked"


@pytest.mark.parametrize("planted", ["", "-wal", "-shm"])
def test_a_link_at_the_ledger_or_its_wal_is_never_written_through(tmp_path, planted):
    # SQLite follows a link at any of a database's files: another program's library would get
    # ilgnet's table. The ledger is then not used (one line), the target left as it was.
    a = _photo(tmp_path / "a.jpg")
    victim = tmp_path / "library.db"
    sqlite3.connect(victim).executescript("CREATE TABLE images (id INTEGER); INSERT INTO images VALUES (1);")
    before = victim.read_bytes()
    path = ledger_path()
    path.parent.mkdir(parents=True)
    Path(f"{path}{planted}").symlink_to(victim)
    with Ledger() as book:
        assert book.record([Written(str(a), 3, 0.5)]) == 0
        assert len(book.notes) == 1 and "not a regular file" in book.notes[0]
    assert victim.read_bytes() == before


@pytest.mark.parametrize("garbage", [b"not a database at all" * 100, b"", b"SQLite format 3\x00" + b"\xff" * 4000])
def test_a_damaged_ledger_is_set_aside_with_one_line(tmp_path, garbage):
    a = _photo(tmp_path / "a.jpg")
    path = ledger_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(garbage)
    with Ledger() as book:
        assert book.stars(str(a)) == frozenset()
        assert len(book.notes) == 1 and "\n" not in book.notes[0] and "set aside" in book.notes[0]
    assert not path.exists() and list(path.parent.glob("ledger.sqlite.corrupt-*"))
    with Ledger() as book:  # the next run starts a fresh one
        assert book.record([Written(str(a), 3, 0.5)]) == 1 and book.notes == []
        assert book.stars(str(a)) == {3.0}


def test_a_damaged_ledger_found_while_writing_is_replaced(tmp_path):
    a = _photo(tmp_path / "a.jpg")
    ledger_path().parent.mkdir(parents=True)
    ledger_path().write_bytes(b"garbage" * 1000)
    with Ledger() as book:
        assert book.record([Written(str(a), 3, 0.5)]) == 1
        assert len(book.notes) == 1 and "set aside" in book.notes[0]
    with Ledger() as book:
        assert book.stars(str(a)) == {3.0}


def test_hostile_values_and_row_caps(tmp_path, monkeypatch):
    a = _photo(tmp_path / "a.jpg")
    with Ledger() as book:
        book.record([Written(str(a), 2, 0.2)])
    conn = sqlite3.connect(ledger_path())
    real = os.path.realpath(a)
    for bad in ("abc", 99.0, -1.0, float("inf"), b"\x00" * 10, 0.0, 2.5, 3.0, 4.0, 5.0):
        conn.execute("INSERT INTO writes (path, digest, stars, first_written, last_written) VALUES (?,?,?,?,?)",
                     (real, "d", bad, "t", "t"))
    conn.commit()
    conn.close()
    with Ledger() as book:
        assert book.stars(str(a)) == {2.0, 2.5, 3.0, 4.0, 5.0}  # only ratings ilgnet could have written
    monkeypatch.setattr(ledger_mod, "MAX_ROWS_PER_PHOTO", 3)
    with Ledger() as book:
        assert len(book.stars(str(a))) <= 3
    monkeypatch.setattr(ledger_mod, "MAX_LEDGER_BYTES", 1000)
    with Ledger() as book:
        assert book.stars(str(a)) == frozenset() and "larger than" in book.notes[0]


def test_a_ledger_that_cannot_be_written_is_a_warning_not_a_failure(tmp_path, monkeypatch):
    data = tmp_path / "data-is-a-file"
    data.write_text("x")
    monkeypatch.setenv("ILGNET_DATA", str(data))  # its folder cannot be created
    photo = _photo(tmp_path / "a.jpg")
    notes: list[str] = []
    changes, errors = write_sidecars([ScoreResult(path=str(photo), score=0.5)], model="m", notes=notes)
    assert errors == [] and [c.action for c in changes] == ["create"]
    assert (tmp_path / "a.xmp").exists()
    assert len(notes) == 1 and "\n" not in notes[0] and "ledger" in notes[0]


def test_score_xmp_records_what_it_wrote_and_dry_run_nothing(tmp_path):
    photos = [_photo(tmp_path / f"p{i}.jpg", seed=i) for i in range(5)]
    results = [ScoreResult(path=str(p), score=0.1 * (i + 1)) for i, p in enumerate(photos)]
    write_sidecars(results, model="m", dry_run=True)
    assert not ledger_path().exists()
    changes, errors = write_sidecars(results, model="weights-x", weights_sha256="abc123")
    assert errors == []
    rows = sqlite3.connect(ledger_path()).execute("SELECT path, stars, score, weights, weights_sha256, sidecar "
                                                  "FROM writes ORDER BY stars").fetchall()
    assert [(Path(r[0]).name, r[1], r[3], r[4]) for r in rows] == [
        (f"p{i}.jpg", float(i + 1), "weights-x", "abc123") for i in range(5)]
    assert all(Path(r[5]).name == Path(r[0]).stem + ".xmp" for r in rows)


WRITER = """
import sys
from ilgnet_cli.photos.ledger import Ledger, Written
photo, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    with Ledger() as book:
        assert book.record([Written(photo, 1 + i % 5, i / n, tag, f"{tag}-{i}")]) == 1, book.notes
"""


def test_two_runs_at_once_do_not_corrupt_it(tmp_path):
    photo = _photo(tmp_path / "a.jpg")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent),
                                                        os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(photo), tag, "60"], env=env,
                              stderr=subprocess.PIPE) for tag in ("one", "two")]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    conn = sqlite3.connect(ledger_path())
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert conn.execute("SELECT COUNT(*) FROM writes").fetchone() == (120,)


def test_a_lock_sqlite_does_not_wait_for_is_waited_out(tmp_path, monkeypatch):
    # Opening can meet "database is locked" without SQLite's busy handler waiting (the switch to
    # WAL, another run's last connection removing the WAL): seen in a full-suite run, so the
    # opening itself is retried up to the lock deadline.
    photo = _photo(tmp_path / "a.jpg")
    real, failures = ledger_mod.Ledger._open, [2]

    def flaky(self, create):
        if failures[0]:
            failures[0] -= 1
            raise sqlite3.OperationalError("database is locked")
        return real(self, create)

    monkeypatch.setattr(ledger_mod.Ledger, "_open", flaky)
    with Ledger() as book:
        assert book.record([Written(str(photo), 3, 0.5)]) == 1, book.notes
        assert book.notes == []
    monkeypatch.setattr(ledger_mod, "TIMEOUT_S", 0.05)
    failures[0] = 10**6  # a lock that never goes: one line, no hang
    with Ledger() as book:
        assert book.record([Written(str(photo), 4, 0.5)]) == 0
        assert len(book.notes) == 1 and "locked" in book.notes[0]


def test_an_unchanged_photo_is_not_read_again(tmp_path, monkeypatch):
    # Re-scoring a cached collection decodes nothing: the ledger must not read every photo either.
    a = _photo(tmp_path / "a.jpg")
    with Ledger() as book:
        book.record([Written(str(a), 3, 0.5)])
    calls = []
    real = ledger_mod.content_digest
    monkeypatch.setattr(ledger_mod, "content_digest", lambda p: calls.append(p) or real(p))
    with Ledger() as book:
        book.record([Written(str(a), 4, 0.6)])
    assert calls == []
    _photo(a, seed=5)  # changed: its digest is computed again
    with Ledger() as book:
        book.record([Written(str(a), 4, 0.6)])
    assert len(calls) == 1
    rows = sqlite3.connect(ledger_path()).execute("SELECT COUNT(DISTINCT digest) FROM writes").fetchone()
    assert rows == (2,)
