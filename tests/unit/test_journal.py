"""The collector's journal: what is appended is read back whole, in order; a torn end
is where a file stops; closed files older than the keep time are deleted."""

from __future__ import annotations

import os
import time
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from producers.journal import SUFFIX, Journal, read_journal


@given(st.lists(st.lists(st.binary(max_size=300), max_size=5), max_size=8))
def test_appended_records_read_back_in_order(batches: list[list[bytes]]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        journal = Journal(Path(d))
        for batch in batches:
            journal.append(batch)
        journal.close()
        assert list(read_journal(Path(d))) == [v for batch in batches for v in batch]


def test_a_torn_record_ends_its_file_and_the_next_file_is_read(tmp_path: Path) -> None:
    journal = Journal(tmp_path, rotate_s=0.0)  # a file per append
    journal.append([b"one", b"two"])
    time.sleep(0.002)
    journal.append([b"three"])
    journal.close()
    first, _second = sorted(tmp_path.glob(f"*{SUFFIX}"), key=lambda p: p.name)
    whole = first.read_bytes()
    first.write_bytes(whole[:-2])  # a crash mid-write
    assert list(read_journal(tmp_path)) == [b"one", b"three"]
    damaged = bytearray(whole)
    damaged[10] ^= 0xFF  # inside the first record's value
    first.write_bytes(bytes(damaged))
    assert list(read_journal(tmp_path)) == [b"three"]


def test_closed_files_older_than_the_keep_time_are_deleted(tmp_path: Path) -> None:
    journal = Journal(tmp_path, rotate_s=0.0, keep_s=60.0)
    journal.append([b"old"])
    (old,) = tmp_path.glob(f"*{SUFFIX}")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    time.sleep(0.002)
    journal.append([b"new"])  # opens a new file, and prunes
    journal.close()
    assert not old.exists()
    assert list(read_journal(tmp_path)) == [b"new"]
