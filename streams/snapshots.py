"""Table snapshots: a restarted worker reads its tables' changelogs from the latest
snapshot, not from the beginning.

Why: the tables live in memory (Faust's memory store) and come back by reading their
changelogs. On Kafka, compaction keeps a changelog near one record per key; the
embedded broker never compacts, so there every restart read the whole history: at 400
events/s a worker killed at minute 15 was not back within 90 s (bench/results/soak.md).
RocksDB is Faust's answer to the same problem; these snapshots do what its persisted
offsets do, for the memory store, with no native dependency.

**What holds**: every ``snapshot_interval_s`` each changelog partition this worker
owns is written to ``STATE_DIR/worker-data/snapshots/<changelog topic>/<partition>``
(a temporary file, then renamed: a crash leaves the previous one) with the offset of
the changelog's last record when the copy began. Recovery loads a partition's snapshot
and reads the changelog from that offset on. Why that is exact: a stage writes a key to
the store *before* it produces the changelog record, so every record the broker had
when the copy began is in the copy; records after the offset are read again, and a
changelog record is a whole value, so reading one twice changes nothing. That needs
this worker to have been the partition's only writer: a rebalance it has not heard of
yet may have let another worker write it already, so a copy is kept only if the broker
confirms, after the copy, that this worker is still a member of the generation it was
taken in (``streams.patches.fence``). And a snapshot is loaded over a partition only
if the table does not hold it already, read past the snapshot (``Snapshots.restore``):
workers share the directory, so an older one is often there.

A snapshot is used only if the changelog still holds, at its offset, the record it was
taken after (same key, same value checksum): a topic deleted and created again (the
embedded broker after ``stack down``), or any other log than the one it came from, is
not mistaken for its continuation: the snapshot is ignored and said so in the log.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from config.kafkalog import client_logger
from streams.patches import fence

log = logging.getLogger("unifier.snapshots")

MAGIC = b"UNIFSNAP1\n"
_LEN = struct.Struct(">I")


class SnapshotError(ValueError):
    """A snapshot file that cannot be used (torn, corrupt, or of another format)."""


@dataclass(frozen=True)
class Tail:
    """The last record of a changelog partition: where a snapshot starts from."""

    offset: int  # of the record; the changelog's end is offset + 1
    key: bytes | None
    crc: int  # zlib.crc32 of its value (0 for a tombstone)
    # Its timestamp (ms): a log written again (a replay into a new topic) can hold the
    # same key and value at the same offset, but not at the same millisecond.
    timestamp: int = 0


def tail_of(msg: Any) -> Tail:
    return Tail(msg.offset(), msg.key(), checksum(msg.value()), msg.timestamp()[1])


@dataclass(frozen=True)
class Header:
    topic: str
    partition: int
    tail: Tail
    keys: int
    taken_at: float


def checksum(value: bytes | None) -> int:
    return zlib.crc32(value) if value is not None else 0


def write_snapshot(path: Path, header: Header, items: Iterable[tuple[str, bytes]]) -> int:
    """Write ``items`` (key, value) to ``path`` atomically; returns its size in bytes."""
    body = bytearray()
    count = 0
    for key, value in items:
        raw = key.encode()
        body += _LEN.pack(len(raw)) + raw + _LEN.pack(len(value)) + value
        count += 1
    head = orjson.dumps(
        {
            "topic": header.topic,
            "partition": header.partition,
            "offset": header.tail.offset,
            "key": header.tail.key.hex() if header.tail.key is not None else None,
            "crc": header.tail.crc,
            "timestamp": header.tail.timestamp,
            "keys": count,
            "taken_at": header.taken_at,
        }
    )
    data = MAGIC + _LEN.pack(len(head)) + head + bytes(body)
    data += _LEN.pack(zlib.crc32(data))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(data)


def read_snapshot(path: Path) -> tuple[Header, dict[str, bytes]]:
    """The header and the items of a snapshot; ``SnapshotError`` if it is not whole."""
    data = path.read_bytes()
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 8:
        raise SnapshotError(f"{path}: not a table snapshot")
    (crc,) = _LEN.unpack_from(data, len(data) - 4)
    if zlib.crc32(data[:-4]) != crc:
        raise SnapshotError(f"{path}: checksum mismatch (a torn or damaged file)")
    pos = len(MAGIC)
    (n,) = _LEN.unpack_from(data, pos)
    head = orjson.loads(data[pos + 4 : pos + 4 + n])
    pos += 4 + n
    end = len(data) - 4
    items: dict[str, bytes] = {}
    while pos < end:
        (k,) = _LEN.unpack_from(data, pos)
        key = data[pos + 4 : pos + 4 + k].decode()
        pos += 4 + k
        (v,) = _LEN.unpack_from(data, pos)
        items[key] = data[pos + 4 : pos + 4 + v]
        pos += 4 + v
    if pos != end or len(items) != head["keys"]:
        raise SnapshotError(f"{path}: {len(items)} keys where the header says {head['keys']}")
    last = bytes.fromhex(head["key"]) if head["key"] is not None else None
    tail = Tail(head["offset"], last, head["crc"], head["timestamp"])
    return Header(head["topic"], head["partition"], tail, head["keys"], head["taken_at"]), items


def _consumer(bootstrap_servers: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": "unifier-snapshots",  # never joined, never committed
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 10,
            "logger": client_logger(),
        }
    )


def _read(
    consumer: Consumer, todo: set[tuple[str, int]], timeout_s: float, what: str
) -> Iterator[tuple[tuple[str, int], Message | None]]:
    """(partition, record) for the assigned partitions still in ``todo``, and
    (partition, None) at a partition's end (which leaves ``todo``)."""
    deadline = time.monotonic() + timeout_s
    while todo:
        if time.monotonic() > deadline:
            raise TimeoutError(f"could not read {what} of {sorted(todo)} in {timeout_s} s")
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        key = (str(msg.topic()), int(msg.partition() or 0))
        if key not in todo:
            continue
        err = msg.error()
        if err is None:
            yield key, msg
        elif err.code() == KafkaError._PARTITION_EOF:
            todo.discard(key)
            yield key, None
        else:
            raise RuntimeError(f"{key}: {err.str()}")


def tails(
    bootstrap_servers: str, tps: Iterable[tuple[str, int]], timeout_s: float = 30.0
) -> dict[tuple[str, int], Tail | None]:
    """The last record of each (topic, partition), None for an empty one. Read, not
    asked: the embedded broker's ListOffsets is short after a multi-record batch
    (ENVIRONMENT.md, trap 3), so the read starts at the reported end - 1 and goes on
    to the end of the log."""
    found: dict[tuple[str, int], Tail | None] = {tp: None for tp in tps}
    if not found:
        return found
    consumer = _consumer(bootstrap_servers)
    try:
        start = []
        for topic, partition in found:
            _low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout_s
            )
            if high > 0:
                start.append(TopicPartition(topic, partition, high - 1))
        consumer.assign(start)
        todo = {(tp.topic, tp.partition) for tp in start}
        for key, msg in _read(consumer, todo, timeout_s, "the end"):
            if msg is not None:
                found[key] = tail_of(msg)
    finally:
        consumer.close()
    return found


def record_at(
    bootstrap_servers: str, tps: Mapping[tuple[str, int], int], timeout_s: float = 30.0
) -> dict[tuple[str, int], Tail | None]:
    """The record at the given offset of each partition (None: the log has no record
    there, it is shorter or starts later)."""
    found: dict[tuple[str, int], Tail | None] = {tp: None for tp in tps}
    if not found:
        return found
    consumer = _consumer(bootstrap_servers)
    try:
        consumer.assign([TopicPartition(t, p, o) for (t, p), o in tps.items()])
        todo = set(tps)
        try:
            for key, msg in _read(consumer, todo, timeout_s, "the records"):
                if msg is not None:
                    if msg.offset() == tps[key]:
                        found[key] = tail_of(msg)
                    todo.discard(key)  # the first record read is the one, or it is gone
        except TimeoutError as exc:
            # The embedded broker may not answer for offsets past the end of a log it
            # has just made again: a record that cannot be read in time is taken as
            # gone, so its snapshot is ignored (a slower recovery, never a wrong one).
            log.warning("%s: taken as no longer there", exc)
    finally:
        consumer.close()
    return found


class Snapshots:
    """Writes and restores the snapshots of a worker's tables (by changelog topic)."""

    def __init__(self, tables: Iterable[Any], directory: Path, bootstrap_servers: str) -> None:
        self.tables = {t.changelog_topic.get_topic_name(): t for t in tables}
        self.directory = directory
        self.bootstrap_servers = bootstrap_servers
        self.taken: dict[tuple[str, int], int] = {}  # tp -> tail offset written last
        self.restored: dict[tuple[str, int], int] = {}  # tp -> offset restored from
        # tp -> offset: in memory, complete up to it, at the last recovery's end
        self.in_memory: dict[tuple[str, int], int] = {}

    def path(self, topic: str, partition: int) -> Path:
        return self.directory / topic / f"{partition}.snap"

    @staticmethod
    def _store(table: Any) -> Any:
        return table.data  # Faust's memory store: .data (the dict), ._key_partition

    @staticmethod
    def _keys_by_partition(store: Any, partitions: Iterable[int]) -> dict[int, list[Any]]:
        keys: dict[int, list[Any]] = {p: [] for p in partitions}
        for k, p in list(store._key_partition.items()):
            if p in keys:
                keys[p].append(k)
        return keys

    async def take(self, app: Any) -> int:
        """Snapshot every changelog partition this worker owns that changed since its
        last snapshot; returns how many were written. Never while a partition is being
        recovered (its table is partial then): a rebalance before or during the
        snapshot's read of the changelog ends cancels it."""

        def settled() -> Any:
            if app.rebalancing or app.tables.recovery.in_recovery:
                return None
            return app.consumer_generation_id, frozenset(app.consumer.assignment())

        before = settled()
        if before is None:
            return 0
        tps = [(tp.topic, tp.partition) for tp in before[1] if tp.topic in self.tables]
        if not tps:
            return 0
        loop = asyncio.get_running_loop()
        ends = await loop.run_in_executor(None, tails, self.bootstrap_servers, tps)
        if settled() != before:
            return 0
        copies: list[tuple[Header, list[tuple[str, bytes]]]] = []
        for topic in {t for t, _ in ends}:
            store = self._store(self.tables[topic])
            due = {
                p: tail
                for (t, p), tail in ends.items()
                if t == topic and tail is not None and self.taken.get((t, p)) != tail.offset
            }
            data = store.data
            # Copied after the tails were read: each copy holds every record up to its
            # tail. Values are bytes (immutable): a shallow copy is a consistent one.
            for partition, keys in self._keys_by_partition(store, due).items():
                items = [(k, data[k]) for k in keys if k in data]
                header = Header(topic, partition, due[partition], len(items), time.time())
                copies.append((header, items))
        # The worker's belief was checked, not the broker's: a rebalance it has not
        # heard of yet may have given a partition to another worker, whose changelog
        # writes the tails above include and this copy lacks. Restored (by whichever
        # worker gets the partition next, this one too), such a snapshot would skip
        # those writes for good. Asked after the copy: a rebalance that begins after
        # the answer lets the new owner write only after the copy.
        if copies and not await fence.in_generation(app.consumer, before[0], rejoin=False):
            log.info("table snapshot skipped: a rebalance began (not confirmed by the broker)")
            return 0
        for header, items in copies:
            path = self.path(header.topic, header.partition)
            size = await loop.run_in_executor(None, write_snapshot, path, header, items)
            self.taken[(header.topic, header.partition)] = header.tail.offset
            log.debug(
                "%s[%d]: snapshot of %d keys at offset %d (%d bytes)",
                header.topic, header.partition, header.keys, header.tail.offset, size,
            )  # fmt: skip
        return len(copies)

    def recovered(self, offsets: Mapping[Any, int | None]) -> None:
        """At the end of a table recovery: each active changelog partition and the
        offset read up to (Faust's ``active_offsets``). The memory store keeps the keys
        of exactly these partitions (it drops the others' then), complete up to that
        offset — which is what lets ``restore`` keep them rather than load an older
        snapshot."""
        self.in_memory = {
            (tp.topic, tp.partition): offset
            for tp, offset in offsets.items()
            if offset is not None and tp.topic in self.tables
        }

    async def restore(self, tps: Iterable[Any], offsets: Any) -> None:
        """Load the usable snapshot of each changelog partition in ``tps`` into its
        table and set its recovery start (``offsets``, Faust's "last offset read") to
        the snapshot's offset.

        Not when the table holds the partition already, read past the snapshot: a
        partition the worker keeps through a rebalance is recovered again from where
        its last recovery ended (``recovered``), with its keys in memory; a snapshot
        taken before that (the directory is shared: another worker's, from when it
        owned the partition) would put the keys back as they were then while the read
        went on from later — the writes in between lost for good. Any other start
        offset is not trusted: a snapshot older than it is loaded and the read starts
        from the snapshot (a changelog record read twice changes nothing)."""
        tps = list(tps)  # Faust's own set: a rebalance may change it while this waits
        start = {(tp.topic, tp.partition): offsets.get(tp) for tp in tps}
        found: dict[tuple[str, int], tuple[Header, dict[str, bytes]]] = {}
        for tp in tps:
            key = (tp.topic, tp.partition)
            if tp.topic not in self.tables:
                continue
            path = self.path(tp.topic, tp.partition)
            if not path.exists():
                continue
            try:
                header, items = await asyncio.get_running_loop().run_in_executor(
                    None, read_snapshot, path
                )
            except (OSError, SnapshotError, ValueError, KeyError) as exc:
                log.warning("ignoring a table snapshot: %s", exc)
                continue
            read = start[key]
            if read is not None and read == self.in_memory.get(key) and read >= header.tail.offset:
                continue  # in memory, complete up to ``read``: past this snapshot
            found[key] = header, items
        if not found:
            return
        at = await asyncio.get_running_loop().run_in_executor(
            None,
            record_at,
            self.bootstrap_servers,
            {tp: header.tail.offset for tp, (header, _) in found.items()},
        )
        by_tp = {(tp.topic, tp.partition): tp for tp in tps}
        held: dict[str, dict[int, list[Any]]] = {}  # topic -> partition -> keys in memory
        for key, (header, items) in found.items():
            topic, partition = key
            tp = by_tp[key]
            if tp not in offsets or offsets.get(tp) != start[key]:
                continue  # a rebalance since: this recovery is started again anyway
            if at.get(key) != header.tail:
                log.warning(
                    "%s[%d]: its snapshot was taken after a record the changelog no longer "
                    "holds at offset %d (the topic was created again?): ignored, the "
                    "table partition is read from the changelog's start",
                    topic, partition, header.tail.offset,
                )  # fmt: skip
                continue
            store = self._store(self.tables[topic])
            if topic not in held:  # one pass over the table's keys, not one per partition
                held[topic] = self._keys_by_partition(store, [p for t, p in found if t == topic])
            for k in held[topic][partition]:
                store.data.pop(k, None)
                store._key_partition.pop(k, None)
            store.data.update(items)
            store._key_partition.update(dict.fromkeys(items, partition))
            offsets[tp] = header.tail.offset
            self.restored[key] = header.tail.offset
            self.taken[key] = header.tail.offset
            log.info(
                "%s[%d]: %d keys from the snapshot at offset %d (%.0f s old); the "
                "changelog is read from there",
                topic, partition, len(items), header.tail.offset,
                time.time() - header.taken_at,
            )  # fmt: skip
