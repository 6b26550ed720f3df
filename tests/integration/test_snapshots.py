"""Table snapshots on the real broker: a restarted worker loads them and reads its
changelogs from there on, with the same tables as a read from the start; a snapshot
that does not match its changelog is ignored (``streams.snapshots``)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from config.settings import Settings
from producers.synthetic import generate
from streams.snapshots import read_snapshot, tails, write_snapshot
from streams.topology import topology
from tests.integration.test_pipeline import caught_up, exported
from tests.support.data import assert_same_profiles, comparable, reference_views, write_jsonl
from tests.support.http import get_text, metric
from tests.support.kafka import consume_all
from unifier.ingest import ingest_file
from unifier.processes import free_port
from unifier.stack import EmbeddedStack

pytestmark = pytest.mark.integration

RESTORED = "keys from the snapshot at offset"
IGNORED = "its snapshot was taken after a record the changelog no longer holds"


def changelog_partitions(settings: Settings) -> list[tuple[str, int]]:
    tables = topology(settings).tables
    return [
        (tables[name].changelog, p)
        for name in ("identity", "profiles")
        for p in range(settings.internal_partitions)
    ]


def snapshot_path(settings: Settings, topic: str, partition: int) -> Path:
    return settings.state_dir / "worker-data" / "snapshots" / topic / f"{partition}.snap"


def snapshots_cover_the_changelogs(settings: Settings) -> bool:
    for (topic, partition), tail in tails(
        settings.bootstrap_servers, changelog_partitions(settings)
    ).items():
        path = snapshot_path(settings, topic, partition)
        if tail is not None and (not path.exists() or read_snapshot(path)[0].tail != tail):
            return False
    return True


def live_identity_keys(settings: Settings) -> int:
    latest: dict[bytes | None, bytes | None] = {}
    changelog = topology(settings).tables["identity"].changelog
    for m in consume_all(settings, changelog, settings.internal_partitions):
        latest[m.key()] = m.value()
    return sum(1 for value in latest.values() if value is not None)


def logged_since(log: Path, offset: int, text: str) -> int:
    with open(log, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace").count(text)


def table_keys_reach(settings: Settings, want: int) -> int:
    url = f"http://127.0.0.1:{settings.worker_metrics_port}/metrics"
    deadline = time.monotonic() + 30
    while True:
        keys = metric(get_text(url).splitlines(), "unifier_table_keys", table="identity")
        if keys == want or time.monotonic() > deadline:
            return int(keys or 0)
        time.sleep(0.5)


def test_a_restart_loads_the_snapshots_and_reads_the_changelogs_on_from_them(
    topics: Settings, workers: EmbeddedStack, tmp_path: Path
) -> None:
    often = topics.model_copy(
        update={"snapshot_interval_s": 0.5, "worker_metrics_port": free_port()}
    )
    never = often.model_copy(update={"snapshot_interval_s": 3600.0})  # not in this test
    events = generate(people=150, seed=9)
    third = len(events) // 3
    files = []
    for n, part in enumerate([events[:third], events[third : 2 * third], events[2 * third :]]):
        files.append(tmp_path / f"part{n}.jsonl")
        write_jsonl(files[-1], part)
    log = workers.dir / "worker.log"

    # 1. Snapshots of the first third's tables.
    workers.settings = often
    workers.start_worker()
    ingest_file(files[0], often)
    caught_up(often)
    for _ in range(600):  # bounded, not timed
        if snapshots_cover_the_changelogs(often):
            break
        time.sleep(0.1)
    assert snapshots_cover_the_changelogs(often), "the worker never wrote its snapshots"
    workers.kill_one("worker")
    taken = {
        tp: read_snapshot(snapshot_path(often, *tp))[0].tail.offset
        for tp in changelog_partitions(often)
        if snapshot_path(often, *tp).exists()
    }
    assert len(taken) >= often.internal_partitions  # both tables, most partitions

    # 2. A worker that takes none handles the second third: table writes after them.
    workers.settings = never
    offset = log.stat().st_size
    workers.start_worker()
    assert logged_since(log, offset, RESTORED) == len(taken)
    ingest_file(files[1], never)
    caught_up(never)
    workers.kill_one("worker")
    ends = tails(never.bootstrap_servers, list(taken))
    assert all(ends[tp] is not None and ends[tp].offset > o for tp, o in taken.items())  # type: ignore[union-attr]

    # 3. Killed and started again: the same snapshots, then the changelogs read on from
    # them give exactly the tables a read from the start gives.
    offset = log.stat().st_size
    workers.start_worker()
    assert logged_since(log, offset, RESTORED) == len(taken)
    for (topic, partition), at in taken.items():
        assert (
            f"{topic}[{partition}]: " in log.read_text()
            and f"snapshot at offset {at} " in log.read_text()
        )
    want = live_identity_keys(never)
    assert table_keys_reach(never, want) == want
    ingest_file(files[2], never)
    caught_up(never)
    assert_same_profiles(comparable(exported(never).values()), reference_views(events, never))

    # 4. A snapshot of another log (here: another last record, and a key the changelog
    # never had) is not taken for this one.
    workers.stop_one("worker")
    written = sorted((never.state_dir / "worker-data" / "snapshots").glob("*/*.snap"))
    assert len(written) == len(taken)
    for path in written:
        header, items = read_snapshot(path)
        forged = replace(header, tail=replace(header.tail, timestamp=header.tail.timestamp + 1))
        write_snapshot(path, forged, [*items.items(), ("not-a-key", b"x")])
    offset = log.stat().st_size
    workers.start_worker()
    assert logged_since(log, offset, IGNORED) == len(written)
    assert logged_since(log, offset, RESTORED) == 0
    want = live_identity_keys(never)
    assert table_keys_reach(never, want) == want
    assert_same_profiles(comparable(exported(never).values()), reference_views(events, never))
