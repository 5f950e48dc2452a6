"""AVA.txt and the partition lists: the release's format, the real vote counts in ../shared,
and malformed lines (skipped with a reason, or refused in strict mode)."""

from __future__ import annotations

import json

import pytest
from ava_votes import real_records
from helpers import shared_path

from ilgnet_cli.ava.records import (
    HIGH_THRESHOLD,
    AVAFormatError,
    AVARecord,
    available,
    parse_label_lines,
    parse_line,
    read_ava,
    read_id_list,
    read_label_list,
    write_ava,
    write_label_list,
)


def test_records_round_trip_through_ava_txt(tmp_path):
    records = [AVARecord(953619, (0, 1, 5, 17, 38, 36, 15, 6, 5, 1), (1, 22), 1396),
               AVARecord(7, (0, 0, 0, 0, 0, 0, 0, 0, 0, 3), (0, 0), 0)]
    write_ava(tmp_path / "AVA.txt", records)
    assert (tmp_path / "AVA.txt").read_text().splitlines()[0] == "1 953619 0 1 5 17 38 36 15 6 5 1 1 22 1396"
    data = read_ava(tmp_path / "AVA.txt", strict=True)
    assert list(data.records.values()) == records and data.skipped == []
    r = data.records[953619]
    assert r.n_votes == 124 and r.mean == pytest.approx(sum(i * v for i, v in enumerate(r.votes, 1)) / 124)
    assert data.records[7].mean == 10 and data.records[7].std == 0


def test_the_ava1_label_rule_is_mean_above_five_on_real_votes():
    """Measured on the 48,604 real vote counts: the authors' AVA1 lists label mean > 5 high."""
    records = real_records(shared_path("ava", "votes"))
    authors = {}
    for split in ("train", "val"):
        authors.update(read_label_list(shared_path("ilgnet", "data", "AVA1", f"{split}.txt")))
    labelled = [(r, authors[i]) for i, r in records.items() if i in authors]
    assert len(labelled) == 48_604 and HIGH_THRESHOLD == 5.0
    assert all(r.ava1_label == label for r, label in labelled)


def test_label_lists_as_the_authors_wrote_them(tmp_path):
    (tmp_path / "val.txt").write_text("12.jpg 1\n7.jpg 0")  # their last line has no newline
    assert read_label_list(tmp_path / "val.txt") == [(12, 1), (7, 0)]
    write_label_list(tmp_path / "out.txt", [(3, 1), (4, 0)])
    assert (tmp_path / "out.txt").read_text() == "3.jpg 1\n4.jpg 0\n"
    assert read_id_list(tmp_path / "out.txt") == [3, 4]
    (tmp_path / "ids.jpgl").write_text("953619\n\n7\n")
    assert read_id_list(tmp_path / "ids.jpgl") == [953619, 7]
    for bad in ("12.jpg 2\n", "12.jpg\n", "x.jpg 1\n", "12.png 1 1\n"):
        with pytest.raises(AVAFormatError, match="line 1"):
            parse_label_lines(bad, "list.txt")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "3.jpg").write_bytes(b"x")
    assert available([(3, 1), (4, 0)], tmp_path / "images") == [(3, 1)]


@pytest.mark.parametrize("line,message", [
    ("1 12 1 2 3 4 5 6 7 8 9\n", "line 2: expected 15 columns, found 11"),
    ("1 12 1 2 x 4 5 6 7 8 9 10 0 0 7\n", "line 2: non-numeric value 'x'"),
    ("1 12 0 0 0 0 0 0 0 0 0 0 1 2 3\n", "line 2: image 12 has zero votes"),
])
def test_malformed_ava_lines(tmp_path, line, message, cli):
    path = tmp_path / "AVA.txt"
    more = "".join(f"{n} {n + 10} 1 1 1 1 {n} 1 1 1 1 1 0 0 4\n" for n in range(3, 23))
    path.write_text("1 11 0 1 2 3 4 5 6 7 8 9 1 2 3\n" + line + more)
    with pytest.raises(AVAFormatError, match=message):
        read_ava(path, strict=True)
    data = read_ava(path)
    assert sorted(data.records) == [11, *range(13, 33)]
    assert data.skipped == [f"AVA.txt {message}"]
    part_dir = tmp_path / "p"
    result = cli("partition", "ava2", "--ava", str(tmp_path), "--out", str(part_dir))
    assert result.code == 0, result.output
    assert "malformed line(s) skipped" in json.loads((part_dir / "partition.json").read_text())["notes"][-1]


def test_huge_and_negative_numbers_in_ava_lists_are_format_errors(tmp_path):
    with pytest.raises(AVAFormatError, match="non-numeric"):
        parse_line("1 " + "9" * 5000 + " 1 1 1 1 1 1 1 1 1 1 0 0 1", 1)
    with pytest.raises(AVAFormatError, match="negative image id"):
        parse_line("1 -5 1 1 1 1 1 1 1 1 1 1 0 0 1", 1)
    with pytest.raises(AVAFormatError):
        parse_label_lines("9" * 5000 + ".jpg 1\n", "test.txt")
    with pytest.raises(AVAFormatError):
        parse_label_lines("\u0665.jpg 1\n", "test.txt")  # an Arabic-Indic digit is no image id
    ava = tmp_path / "AVA.txt"
    ava.write_text("1 7 1 1 1 1 1 1 1 1 1 1 0 0 1\n1 " + "9" * 5000 + " 1 1 1 1 1 1 1 1 1 1 0 0 1\n")
    data = read_ava(ava)
    assert list(data.records) == [7] and len(data.skipped) == 1


