"""The event archive: every record of the ``touchpoints`` topic, as the broker accepted
it, in Avro object container files (fastavro) in a directory, with a manifest.

* One archived record per Kafka record: its partition, offset and timestamp and the
  touchpoints it carried (read with the shipped Touchpoint schema, so a file needs
  nothing but itself to be read back); a record that cannot be decoded is kept as
  its raw bytes (replayed, it goes to the dead-letter topic again, with its reason).
* Files rotate (``touchpoints-e<epoch>-p<partition>-<first offset>.avro``) after
  ``rotate_records`` records or ``rotate_seconds``; appended in place meanwhile, each
  append flushed to disk before the manifest names it.
* ``manifest.json`` (written atomically) lists every file with its partition, offset
  range, record and touchpoint counts, size and — once closed — SHA-256; it is also
  where the archiver resumes, so a file never holds a record twice. An *epoch* is one
  life of the topic's log: the embedded broker keeps its log in memory, and when it
  comes back empty the offsets start again at 0 (a new epoch, new file names).
* ``verify`` checks the files against the manifest; ``replay`` sends what the files
  hold back through the normal path (idempotent: the graph folds each event id once).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import fastavro
import orjson
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from config.settings import Settings
from producers.kafka import TouchpointProducer
from schemas.codec import (
    DecodeError,
    decode_touchpoints,
    load_raw_schemas,
    touchpoint_from_avro,
    touchpoint_to_avro,
)

log = logging.getLogger("unifier.archive")

MANIFEST = "manifest.json"
ROTATE_RECORDS = 100_000
ROTATE_SECONDS = 300.0

SCHEMA = fastavro.parse_schema(
    {
        "type": "record",
        "name": "ArchivedRecord",
        "namespace": "unifier.archive",
        "doc": "One record of the touchpoints topic, as the broker accepted it.",
        "fields": [
            {"name": "partition", "type": "int"},
            {"name": "offset", "type": "long"},
            {"name": "timestamp_ms", "type": "long"},
            {
                "name": "touchpoints",
                "type": {"type": "array", "items": load_raw_schemas()["unifier.v1.Touchpoint"]},
            },
            {"name": "raw", "type": ["null", "bytes"], "default": None},
        ],
    },
    named_schemas={},
)


class ArchiveError(RuntimeError):
    """The archive is not what its manifest says (the message says what differs)."""


@dataclass
class Part:
    """One file of the archive."""

    file: str
    epoch: int
    partition: int
    first_offset: int
    last_offset: int
    records: int = 0
    touchpoints: int = 0
    bytes: int = 0
    opened_at: float = field(default_factory=time.time)
    sha256: str | None = None  # set when closed


@dataclass
class Manifest:
    topic: str
    epoch: int = 0
    next_offsets: dict[int, int] = field(default_factory=dict)  # this epoch's resume point
    parts: list[Part] = field(default_factory=list)
    gaps: list[dict[str, int]] = field(default_factory=list)  # offsets the log no longer had

    @classmethod
    def load(cls, directory: Path, topic: str) -> Manifest:
        path = directory / MANIFEST
        if not path.exists():
            return cls(topic)
        raw = orjson.loads(path.read_bytes())
        return cls(
            raw["topic"],
            raw["epoch"],
            {int(p): o for p, o in raw["next_offsets"].items()},
            [Part(**p) for p in raw["parts"]],
            raw.get("gaps", []),
        )

    def save(self, directory: Path) -> None:
        doc = {
            "topic": self.topic,
            "epoch": self.epoch,
            "next_offsets": {str(p): o for p, o in sorted(self.next_offsets.items())},
            "parts": [asdict(p) for p in self.parts],
            "gaps": self.gaps,
        }
        tmp = directory / f".{MANIFEST}.tmp"
        tmp.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        tmp.replace(directory / MANIFEST)

    def open_part(self, partition: int) -> Part | None:
        for part in reversed(self.parts):
            if part.partition == partition and part.epoch == self.epoch:
                return part if part.sha256 is None else None
        return None

    def new_epoch(self, next_offsets: dict[int, int]) -> None:
        """The topic's log starts again (an empty broker): new offsets, new files."""
        self.epoch += 1
        self.next_offsets = dict(next_offsets)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Archived:
    """One Kafka record to archive."""

    partition: int
    offset: int
    timestamp_ms: int
    value: bytes | None


class ArchiveWriter:
    """Appends records to the open file of their partition; the manifest follows."""

    def __init__(
        self,
        directory: Path,
        topic: str,
        rotate_records: int = ROTATE_RECORDS,
        rotate_seconds: float = ROTATE_SECONDS,
    ) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.manifest = Manifest.load(directory, topic)
        self.rotate_records = rotate_records
        self.rotate_seconds = rotate_seconds
        for part in self.manifest.parts:  # a crash mid-append: cut what the manifest lacks
            path = directory / part.file
            if part.sha256 is None and path.exists() and path.stat().st_size > part.bytes:
                with open(path, "r+b") as fh:
                    fh.truncate(part.bytes)

    def next_offset(self, partition: int) -> int:
        return self.manifest.next_offsets.get(partition, 0)

    def append(self, records: list[Archived]) -> None:
        """Write these records (any partitions), then the manifest. A record whose
        offset is below the partition's next one means the log started again: a new
        epoch."""
        by_partition: dict[int, list[Archived]] = {}
        expect: dict[int, int] = {}
        for rec in sorted(records, key=lambda r: (r.partition, r.offset)):
            expected = expect.get(rec.partition, self.next_offset(rec.partition))
            if rec.offset < expected:
                self._write_all(by_partition)  # what came before belongs to the old epoch
                by_partition, expect = {}, {}
                self._restart(rec)
                expected = 0
            if rec.offset > expected:
                gap = {"epoch": self.manifest.epoch, "partition": rec.partition}
                self.manifest.gaps.append({**gap, "first": expected, "last": rec.offset - 1})
                log.error(
                    "touchpoints[%d]: offsets %d..%d are no longer in the log (retention); "
                    "the archive has a gap there",
                    rec.partition,
                    expected,
                    rec.offset - 1,
                )
            by_partition.setdefault(rec.partition, []).append(rec)
            expect[rec.partition] = rec.offset + 1
        self._write_all(by_partition)
        self.manifest.save(self.dir)

    def _write_all(self, by_partition: dict[int, list[Archived]]) -> None:
        """Write each partition's records; its resume point moves only once they are on
        disk (a write that fails leaves it where it was: the records come again)."""
        for partition, recs in by_partition.items():
            self._write(partition, recs)
            self.manifest.next_offsets[partition] = recs[-1].offset + 1

    def _restart(self, rec: Archived) -> None:
        log.warning(
            "touchpoints[%d]: offset %d is below the archive's %d: the broker's log "
            "started again (epoch %d begins)",
            rec.partition,
            rec.offset,
            self.next_offset(rec.partition),
            self.manifest.epoch + 1,
        )
        self.close_all()
        self.manifest.new_epoch({})

    def _write(self, partition: int, recs: list[Archived]) -> None:
        part = self.manifest.open_part(partition)
        if part is None:
            name = f"touchpoints-e{self.manifest.epoch}-p{partition}-{recs[0].offset:012d}.avro"
            part = Part(name, self.manifest.epoch, partition, recs[0].offset, recs[0].offset)
            self.manifest.parts.append(part)
        rows = [_row(r) for r in recs]
        path = self.dir / part.file
        # A new file starts empty: one the manifest never named (the process died
        # between its first append and the manifest) holds nothing the archive has.
        with open(path, "a+b" if part.records else "w+b") as fh:
            fastavro.writer(fh, SCHEMA, rows, codec="deflate")
            fh.flush()
            os.fsync(fh.fileno())
            part.bytes = fh.tell()
        part.records += len(rows)
        part.touchpoints += sum(len(r["touchpoints"]) for r in rows)
        part.last_offset = recs[-1].offset
        if part.records >= self.rotate_records:
            self._close(part)

    def rotate_due(self) -> None:
        """Close files open longer than ``rotate_seconds`` (called between polls)."""
        now = time.time()
        due = [
            p
            for p in self.manifest.parts
            if p.sha256 is None and p.records and now - p.opened_at >= self.rotate_seconds
        ]
        for part in due:
            self._close(part)
        if due:
            self.manifest.save(self.dir)

    def _close(self, part: Part) -> None:
        part.sha256 = _sha256(self.dir / part.file)

    def close_all(self) -> None:
        for part in self.manifest.parts:
            if part.sha256 is None:
                self._close(part)
        self.manifest.save(self.dir)


def _row(rec: Archived) -> dict[str, Any]:
    try:
        tps = decode_touchpoints(rec.value)
    except DecodeError:
        return {
            "partition": rec.partition,
            "offset": rec.offset,
            "timestamp_ms": rec.timestamp_ms,
            "touchpoints": [],
            "raw": rec.value or b"",
        }
    return {
        "partition": rec.partition,
        "offset": rec.offset,
        "timestamp_ms": rec.timestamp_ms,
        "touchpoints": [touchpoint_to_avro(tp) for tp in tps],
        "raw": None,
    }


# --- the archiver process ------------------------------------------------------------
def run_archiver(
    settings: Settings,
    directory: Path,
    stop: threading.Event | None = None,
    rotate_records: int = ROTATE_RECORDS,
    rotate_seconds: float = ROTATE_SECONDS,
) -> None:
    """Archive the touchpoints topic until ``stop`` is set: each partition from where
    the manifest says the archive ends (the consumer group only shows the lag)."""
    stop = stop or threading.Event()
    topic = settings.topic_touchpoints
    writer = ArchiveWriter(directory, topic, rotate_records, rotate_seconds)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": settings.archive_group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=30)
        partitions = sorted(meta.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, writer.next_offset(p)) for p in partitions])
        log.info("archiving %s (%d partitions) to %s", topic, len(partitions), directory)
        idle_after_stop = 0
        # Stopped, it first reads to the end (what a collector flushed as it stopped),
        # for at most DRAIN_POLLS polls.
        for _ in _until_drained(stop):
            batch = consumer.consume(1000, timeout=0.5)
            if stop.is_set():
                idle_after_stop = 0 if batch else idle_after_stop + 1
                if idle_after_stop >= 2:
                    break
            records = []
            for msg in batch:
                error = msg.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        log.warning("archive fetch: %s", error)
                    continue
                _kind, ts = msg.timestamp()
                part, offset = msg.partition(), msg.offset()
                if part is not None and offset is not None:
                    records.append(Archived(part, offset, ts, msg.value()))
            if records:
                writer.append(records)
                # Only to show the archiver's lag (`unifier lag`): it resumes from the
                # manifest, not from the group's offsets.
                consumer.commit(
                    offsets=[
                        TopicPartition(topic, p, o) for p, o in writer.manifest.next_offsets.items()
                    ],
                    asynchronous=True,
                )
            writer.rotate_due()
    finally:
        writer.close_all()
        consumer.close()


DRAIN_POLLS = 40


def _until_drained(stop: threading.Event) -> Iterator[None]:
    while not stop.is_set():
        yield
    for _ in range(DRAIN_POLLS):
        yield


# --- reading, verifying, replaying --------------------------------------------------
def read_parts(directory: Path) -> Manifest:
    if not (directory / MANIFEST).exists():
        raise ArchiveError(f"{directory} holds no archive ({MANIFEST} is missing)")
    raw = orjson.loads((directory / MANIFEST).read_bytes())
    return Manifest.load(directory, raw["topic"])


def _rows(fh: Any) -> Iterator[dict[str, Any]]:
    """The records of an archive file (fastavro types them loosely)."""
    reader: Iterator[Any] = fastavro.reader(fh)
    return reader


def records(directory: Path, since_ms: int | None = None) -> Iterator[dict[str, Any]]:
    """Every archived record, file by file in the order they were written (epoch,
    partition, offset), up to what the manifest names in each file."""
    manifest = read_parts(directory)
    for part in sorted(manifest.parts, key=lambda p: (p.epoch, p.partition, p.first_offset)):
        for row in _read_rows(directory / part.file, part.records):
            if since_ms is None or row["timestamp_ms"] >= since_ms:
                yield row


@dataclass
class Verified:
    files: int = 0
    records: int = 0
    touchpoints: int = 0
    problems: list[str] = field(default_factory=list)


def verify(directory: Path) -> Verified:
    """Each file against the manifest: present, its size and SHA-256 (closed files),
    its records' count, partition and offsets (contiguous, in the manifest's range)."""
    manifest = read_parts(directory)
    result = Verified()
    for part in manifest.parts:
        path = directory / part.file
        result.files += 1
        if not path.exists():
            result.problems.append(f"{part.file}: missing")
            continue
        if part.sha256 is not None and _sha256(path) != part.sha256:
            result.problems.append(f"{part.file}: SHA-256 differs from the manifest's")
        size = path.stat().st_size
        if size < part.bytes or (part.sha256 is not None and size != part.bytes):
            result.problems.append(f"{part.file}: {size} bytes, the manifest says {part.bytes}")
        try:
            rows = list(_read_rows(path, part.records))
        except Exception as exc:  # a damaged file: say which and why
            result.problems.append(f"{part.file}: unreadable ({type(exc).__name__}: {exc})")
            continue
        offsets = [r["offset"] for r in rows]
        expected = list(range(part.first_offset, part.first_offset + part.records))
        if len(rows) != part.records:
            result.problems.append(f"{part.file}: {len(rows)} records, manifest {part.records}")
        elif offsets != expected and not _only_gaps(offsets, part, manifest):
            result.problems.append(f"{part.file}: offsets are not the manifest's range")
        if any(r["partition"] != part.partition for r in rows):
            result.problems.append(f"{part.file}: holds records of another partition")
        touchpoints = sum(len(r["touchpoints"]) for r in rows)
        if touchpoints != part.touchpoints:
            result.problems.append(
                f"{part.file}: {touchpoints} touchpoints, manifest {part.touchpoints}"
            )
        result.records += len(rows)
        result.touchpoints += touchpoints
    return result


def _read_rows(path: Path, limit: int) -> Iterator[dict[str, Any]]:
    """The first ``limit`` records of a file (what the manifest names; anything after
    is an append the manifest never recorded)."""
    with open(path, "rb") as fh:
        for n, row in enumerate(_rows(fh)):
            if n >= limit:
                return
            yield row


def _only_gaps(offsets: list[int], part: Part, manifest: Manifest) -> bool:
    """Offsets that skip only the gaps the manifest records (retention) are fine."""
    missing = {
        o
        for g in manifest.gaps
        if g["epoch"] == part.epoch and g["partition"] == part.partition
        for o in range(g["first"], g["last"] + 1)
    }
    wanted = [o for o in range(part.first_offset, part.last_offset + 1) if o not in missing]
    return offsets == wanted


@dataclass
class Replayed:
    records: int = 0
    touchpoints: int = 0
    raw: int = 0
    delivered: int = 0
    failed: int = 0
    next_offsets: dict[int, int] = field(default_factory=dict)  # of the topic, after
    journal: int = 0  # records replayed from the collector's journal after the archive
    definitions: int = 0  # segment definitions published again (unifier.restore)


def replay(
    settings: Settings, directory: Path, since: datetime | None = None, progress: bool = False
) -> Replayed:
    """Send the archive's touchpoints back to the touchpoints topic (and undecodable
    records as they were). Idempotent downstream: an event already applied is
    folded once."""
    since_ms = int(since.timestamp() * 1000) if since is not None else None
    result = Replayed()
    raw_producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    with contextlib.ExitStack() as stack:
        producer = stack.enter_context(TouchpointProducer(settings))
        bar = None
        if progress:
            from rich.progress import Progress

            bar = stack.enter_context(Progress(transient=True))
            task = bar.add_task("replaying the archive", total=None)
        for row in records(directory, since_ms):
            result.records += 1
            if row["raw"] is not None:
                raw_producer.produce(settings.topic_touchpoints, row["raw"])
                result.raw += 1
            else:
                tps = [touchpoint_from_avro(t) for t in row["touchpoints"]]
                producer.send_many(tps)
                result.touchpoints += len(tps)
            if bar is not None:
                bar.update(task, advance=1)
        report = producer.flush()
        result.delivered, result.failed = report.events_sent, report.events_failed
    if raw_producer.flush(60) != 0:
        result.failed += result.raw
    return result
