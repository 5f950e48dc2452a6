"""Build an AVA.txt-format file from the real vote counts in ../shared/ava/votes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ilgnet_cli.ava.records import AVARecord, write_ava


def real_records(votes_dir: Path) -> dict[int, AVARecord]:
    records: dict[int, AVARecord] = {}
    for item in json.loads((votes_dir / "idealo_ava_labels_test.json").read_text()):
        records[int(item["image_id"])] = AVARecord(int(item["image_id"]), tuple(int(v) for v in item["label"]))
    for name in ("tanet_test.csv", "tanet_val.csv"):
        with (votes_dir / name).open() as fh:
            for row in csv.DictReader(fh):
                rid = int(row["image_id"])
                votes = tuple(int(row[f"score{i}"]) for i in range(2, 12))
                records[rid] = AVARecord(rid, votes, (int(row["tag1"]), int(row["tag2"])), int(row["tag3"]))
    return records


def write_real_ava(votes_dir: Path, dest: Path) -> dict[int, AVARecord]:
    records = real_records(votes_dir)
    write_ava(dest, (records[i] for i in sorted(records)))
    return records
