"""The event archive's files and manifest (producers/archive.py), without a broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import Settings
from producers.archive import (
    MANIFEST,
    Archived,
    ArchiveError,
    ArchiveWriter,
    Manifest,
    records,
    verify,
)
from producers.synthetic import generate
from profiles.configured import identifier_priorities
from profiles.touchpoint import parse_json
from schemas.codec import encode_batch, touchpoint_from_avro

EVENTS = [parse_json(e, identifier_priorities(Settings())) for e in generate(people=8, seed=3)]


def kafka_records(partition: int, first: int, n: int, per: int = 3) -> list[Archived]:
    out = []
    for i in range(n):
        start = ((first + i) * per) % len(EVENTS)
        batch = EVENTS[start : start + per] or EVENTS[:per]
        out.append(Archived(partition, first + i, 1_700_000_000_000 + i, encode_batch(batch)))
    return out


def test_what_is_archived_reads_back_as_the_same_touchpoints(tmp_path: Path) -> None:
    writer = ArchiveWriter(tmp_path, "touchpoints")
    sent = kafka_records(0, 0, 4) + kafka_records(1, 0, 2)
    writer.append(sent[:2] + sent[4:])
    writer.append(sent[2:4])  # appended to the same open file
    writer.close_all()
    rows = list(records(tmp_path))
    assert [(r["partition"], r["offset"]) for r in rows] == [(0, 0), (0, 1), (0, 2), (0, 3),
                                                             (1, 0), (1, 1)]  # fmt: skip
    from schemas.codec import decode_touchpoints

    for row, rec in zip(rows, sorted(sent, key=lambda r: (r.partition, r.offset)), strict=True):
        got = [touchpoint_from_avro(t) for t in row["touchpoints"]]
        assert got == decode_touchpoints(rec.value)
    checked = verify(tmp_path)
    assert checked.problems == [] and checked.records == 6
    assert Manifest.load(tmp_path, "touchpoints").next_offsets == {0: 4, 1: 2}


def test_files_rotate_and_a_tampered_file_is_named(tmp_path: Path) -> None:
    writer = ArchiveWriter(tmp_path, "touchpoints", rotate_records=3)
    for first in range(0, 9, 2):
        writer.append(kafka_records(0, first, 2))
    writer.close_all()
    parts = Manifest.load(tmp_path, "touchpoints").parts
    assert [(p.first_offset, p.last_offset, p.records) for p in parts] == [
        (0, 3, 4), (4, 7, 4), (8, 9, 2)]  # fmt: skip
    assert verify(tmp_path).problems == []
    damaged = tmp_path / parts[1].file
    damaged.write_bytes(damaged.read_bytes()[:-20])
    problems = verify(tmp_path).problems
    assert any(p.startswith(f"{parts[1].file}: SHA-256 differs") for p in problems), problems


def test_a_crash_mid_append_is_cut_back_to_what_the_manifest_names(tmp_path: Path) -> None:
    writer = ArchiveWriter(tmp_path, "touchpoints")
    writer.append(kafka_records(2, 0, 3))
    part = Manifest.load(tmp_path, "touchpoints").parts[0]
    with open(tmp_path / part.file, "ab") as fh:
        fh.write(b"half a block")  # the process died here, before the manifest
    writer = ArchiveWriter(tmp_path, "touchpoints")  # restarted
    writer.append(kafka_records(2, 3, 1))
    writer.close_all()
    assert [r["offset"] for r in records(tmp_path)] == [0, 1, 2, 3]
    assert verify(tmp_path).problems == []


def test_a_log_that_starts_again_opens_an_epoch_and_a_missing_range_is_a_gap(
    tmp_path: Path,
) -> None:
    writer = ArchiveWriter(tmp_path, "touchpoints")
    writer.append(kafka_records(0, 0, 5))
    writer.append(kafka_records(0, 0, 2))  # an empty broker came back: offsets from 0
    writer.append(kafka_records(0, 4, 1))  # 2..3 deleted by retention before archived
    writer.close_all()
    manifest = Manifest.load(tmp_path, "touchpoints")
    assert manifest.epoch == 1
    assert [(p.epoch, p.records) for p in manifest.parts] == [(0, 5), (1, 3)]
    assert manifest.gaps == [{"epoch": 1, "partition": 0, "first": 2, "last": 3}]
    assert verify(tmp_path).problems == []
    assert len(list(records(tmp_path, since_ms=1_700_000_000_004))) == 1


def test_an_undecodable_record_is_kept_as_it_came(tmp_path: Path) -> None:
    writer = ArchiveWriter(tmp_path, "touchpoints")
    writer.append([Archived(0, 0, 1, b"not avro")])
    writer.close_all()
    [row] = records(tmp_path)
    assert row["raw"] == b"not avro" and row["touchpoints"] == []


def test_a_directory_without_a_manifest_is_said_to_hold_no_archive(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match=f"holds no archive \\({MANIFEST} is missing\\)"):
        verify(tmp_path)


def test_a_file_the_manifest_never_named_is_started_again(tmp_path: Path) -> None:
    """Killed between a new file's first append and the manifest: the restarted archiver
    writes the same records to the same file name — from its start, not after them."""
    ArchiveWriter(tmp_path, "touchpoints").append(kafka_records(0, 0, 2))
    orphan = tmp_path / "touchpoints-e0-p1-000000000000.avro"
    writer = ArchiveWriter(tmp_path, "touchpoints")
    writer._write(1, kafka_records(1, 0, 3, per=1))  # on disk; the manifest never saved
    writer = ArchiveWriter(tmp_path, "touchpoints")  # restarted from the manifest
    assert orphan.exists() and writer.next_offset(1) == 0
    writer.append(kafka_records(1, 0, 3))
    writer.close_all()
    rows = list(records(tmp_path))
    assert [(r["partition"], r["offset"]) for r in rows] == [
        (0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]  # fmt: skip
    assert [len(r["touchpoints"]) for r in rows[2:]] == [3, 3, 3]  # the records sent after
    assert verify(tmp_path).problems == []
