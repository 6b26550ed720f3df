"""Table snapshot files: what is written is read back whole, and a damaged or torn
file is refused rather than loaded (``streams.snapshots``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP
from hypothesis import given
from hypothesis import strategies as st

from streams import snapshots
from streams.snapshots import Header, SnapshotError, Tail, read_snapshot, write_snapshot
from tests.support.group import ConsumerThread, Coordinator

TAIL = Tail(offset=41, key=b'"p-1"', crc=123, timestamp=1_700_000_000_000)


def header(keys: int) -> Header:
    return Header("app-profiles-changelog", 3, TAIL, keys, 1.5)


@given(
    st.dictionaries(
        st.text(min_size=0, max_size=20), st.binary(min_size=0, max_size=64), max_size=30
    )
)
def test_a_snapshot_reads_back_as_written(
    tmp_path_factory: pytest.TempPathFactory, items: dict[str, bytes]
) -> None:
    path = tmp_path_factory.mktemp("snap") / "3.snap"
    write_snapshot(path, header(len(items)), items.items())
    got_header, got = read_snapshot(path)
    assert got == items
    assert got_header.tail == TAIL and got_header.partition == 3 and got_header.keys == len(items)


def test_a_tombstone_tail_and_an_empty_partition_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "0.snap"
    tail = Tail(offset=0, key=None, crc=0, timestamp=5)
    write_snapshot(path, Header("t", 0, tail, 0, 0.0), [])
    assert read_snapshot(path) == (Header("t", 0, tail, 0, 0.0), {})


def test_a_torn_or_damaged_snapshot_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "3.snap"
    write_snapshot(path, header(2), [("a", b"1"), ("b", b"22")])
    whole = path.read_bytes()
    path.write_bytes(whole[:-7])  # torn: the end is missing
    with pytest.raises(SnapshotError, match="checksum"):
        read_snapshot(path)
    damaged = bytearray(whole)
    damaged[len(damaged) // 2] ^= 0xFF
    path.write_bytes(bytes(damaged))
    with pytest.raises(SnapshotError, match="checksum"):
        read_snapshot(path)
    path.write_bytes(b"something else entirely")
    with pytest.raises(SnapshotError, match="not a table snapshot"):
        read_snapshot(path)


def test_writing_replaces_the_previous_snapshot_whole(tmp_path: Path) -> None:
    path = tmp_path / "3.snap"
    write_snapshot(path, header(2), [("a", b"1"), ("b", b"2")])
    write_snapshot(path, header(1), [("c", b"3")])
    assert read_snapshot(path)[1] == {"c": b"3"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["3.snap"]  # no temporary left


def worker(coordinator: Coordinator) -> tuple[Any, Any]:
    """A worker owning partitions 0 and 1 of one table (Faust's memory store), with
    this group coordinator: (app, table)."""
    changelog = "app-profiles-changelog"
    store = SimpleNamespace(
        data={"p-1": b"one", "p-2": b"two"}, _key_partition={"p-1": 0, "p-2": 1}
    )
    table = SimpleNamespace(
        changelog_topic=SimpleNamespace(get_topic_name=lambda: changelog), data=store
    )
    consumer = SimpleNamespace(
        assignment=lambda: {TP(changelog, 0), TP(changelog, 1)},
        _thread=ConsumerThread(coordinator),
    )
    app = SimpleNamespace(
        rebalancing=False,
        tables=SimpleNamespace(recovery=SimpleNamespace(in_recovery=False)),
        consumer_generation_id=4,
        consumer=consumer,
    )
    return app, table


def test_a_snapshot_is_kept_only_if_the_broker_confirms_the_generation_after_the_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rebalance the worker has not heard of yet may have let the partition's new
    owner write its changelog: the tails include those writes, the copy does not.
    Such a snapshot, restored, would skip them for good (profiles losing events)."""
    monkeypatch.setattr(snapshots, "tails", lambda _servers, tps: {tp: TAIL for tp in tps})
    for codes, written in [((0,), 2), ((22,), 0), ((27,), 0), ((None,), 0)]:
        coordinator = Coordinator(4, *codes)
        app, table = worker(coordinator)
        directory = tmp_path / f"codes-{codes[0]}"
        taking = snapshots.Snapshots([table], directory, "localhost:0")
        assert asyncio.run(taking.take(app)) == written
        files = sorted(p.name for p in directory.rglob("*.snap"))
        assert files == (["0.snap", "1.snap"] if written else [])
        (heartbeat, *_) = coordinator.sent  # asked with the generation of the copy
        assert heartbeat._generation_id == 4
        assert not coordinator.rejoin_requested  # the stages' fence rejoins, not this


def test_the_broker_is_asked_after_the_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asked before the copy, a rebalance between the answer and the copy could let
    the new owner's writes into the tails but not into the copy."""
    monkeypatch.setattr(snapshots, "tails", lambda _servers, tps: {tp: TAIL for tp in tps})

    class Answering(Coordinator):
        async def _send_req(self, request: Any) -> Any:
            table.data.data["p-1"] = b"written after the answer"
            return await super()._send_req(request)

    app, table = worker(Answering(4))
    taking = snapshots.Snapshots([table], tmp_path, "localhost:0")
    assert asyncio.run(taking.take(app)) == 2
    _header, items = read_snapshot(taking.path(table.changelog_topic.get_topic_name(), 0))
    assert items == {"p-1": b"one"}


def test_a_snapshot_older_than_what_the_table_holds_is_not_loaded_over_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partition kept through a rebalance is recovered again from where its last
    recovery ended, its keys in memory. A snapshot from before that (another worker's,
    from when it owned the partition: the directory is shared) would bring the keys
    back as they were then while the read goes on from later: writes lost for good.
    A start offset the last recovery did not end at is not trusted: the snapshot is
    loaded and read on from (a record read twice changes nothing)."""
    monkeypatch.setattr(
        snapshots, "record_at", lambda _servers, wanted: {tp: TAIL for tp in wanted}
    )
    _app, table = worker(Coordinator(4))
    changelog = table.changelog_topic.get_topic_name()
    restoring = snapshots.Snapshots([table], tmp_path, "localhost:0")
    write_snapshot(  # p-1 as it was at offset 41 (TAIL)
        restoring.path(changelog, 0), Header(changelog, 0, TAIL, 1, 1.5), [("p-1", b"old")]
    )
    tp = TP(changelog, 0)
    for recovered_to, read, value, start in [
        (60, 60, b"one", 60),  # kept, read past the snapshot: memory kept
        (41, 41, b"one", 41),  # kept, read up to it: the same
        (None, -1, b"old", 41),  # newly assigned: the snapshot, read on from it
        (None, 60, b"old", 41),  # a start nobody vouches for: the snapshot, read again
        (30, 30, b"old", 41),  # kept, but the snapshot is newer
    ]:
        table.data.data["p-1"] = b"one"  # what the table holds
        restoring.recovered({} if recovered_to is None else {tp: recovered_to})
        offsets = {tp: read}
        asyncio.run(restoring.restore([tp], offsets))
        assert (table.data.data["p-1"], offsets[tp]) == (value, start)


def test_a_rebalance_during_a_restore_leaves_the_partition_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Faust's rebalance may revoke a partition while the restore waits on the broker:
    its keys and start offset are then not touched (the recovery starts again)."""
    _app, table = worker(Coordinator(4))
    changelog = table.changelog_topic.get_topic_name()
    restoring = snapshots.Snapshots([table], tmp_path, "localhost:0")
    write_snapshot(
        restoring.path(changelog, 0), Header(changelog, 0, TAIL, 1, 1.5), [("p-1", b"old")]
    )
    tp = TP(changelog, 0)
    offsets: dict[Any, int] = {tp: -1}

    def revoked_meanwhile(_servers: str, wanted: Any) -> Any:
        offsets.pop(tp)  # Faust's on_rebalance: the partition was revoked
        return {key: TAIL for key in wanted}

    monkeypatch.setattr(snapshots, "record_at", revoked_meanwhile)
    asyncio.run(restoring.restore([tp], offsets))
    assert table.data.data["p-1"] == b"one" and tp not in offsets
