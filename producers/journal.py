"""The collector's journal: every record it sends, on disk before it is sent, for the
last few minutes.

Why: the embedded broker keeps its log in memory and the archiver copies it to disk
within about a second. An event the broker acknowledged (the sender got its 2xx) in
that second before a broker crash was in neither place. With the journal it is on
disk before the broker even sees it; ``stack up`` replays the journal after the
archive (``unifier.restore``), and an event found in both is applied once (the stages
are idempotent by event id).

Files: ``<dir>/<start ms>-<pid>.journal``, each a run of frames ``length (4 bytes) |
crc32 (4) | the record value`` (the Kafka record's value exactly as produced). A frame
cut short by a crash is where a file ends for its reader. One ``fsync`` per batch of
records. A file is closed every ``rotate_s``, and a closed file older than
``keep_s`` is deleted: the journal covers the archiver's lag, not history.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger("unifier.journal")

SUFFIX = ".journal"
_FRAME = struct.Struct(">II")


class Journal:
    """Appends record values, durably, from any thread."""

    def __init__(self, directory: Path, rotate_s: float = 10.0, keep_s: float = 300.0) -> None:
        self.directory = directory
        self.rotate_s = rotate_s
        self.keep_s = keep_s
        self._lock = threading.Lock()
        self._file: BinaryIO | None = None
        self._opened_at = 0.0
        directory.mkdir(parents=True, exist_ok=True)

    def _rotate(self, now: float) -> BinaryIO:
        if self._file is not None:
            self._file.close()
        path = self.directory / f"{int(now * 1000)}-{os.getpid()}{SUFFIX}"
        self._file = open(path, "ab")  # noqa: SIM115 (kept open between appends)
        self._opened_at = now
        self._prune(now)
        return self._file

    def _prune(self, now: float) -> None:
        for path in self.directory.glob(f"*{SUFFIX}"):
            if self._file is not None and path.name == Path(self._file.name).name:
                continue
            try:
                if now - path.stat().st_mtime > self.keep_s:
                    path.unlink()
            except FileNotFoundError:
                pass

    def append(self, values: Iterable[bytes]) -> None:
        """Write ``values`` and return once they are on disk (``OSError`` if not)."""
        frames = b"".join(_FRAME.pack(len(v), zlib.crc32(v)) + v for v in values)
        with self._lock:
            now = time.time()
            f = self._file
            if f is None or now - self._opened_at >= self.rotate_s:
                f = self._rotate(now)
            f.write(frames)
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def read_journal(directory: Path) -> Iterator[bytes]:
    """Every whole record value in the journal's files, oldest file first; a torn or
    damaged frame ends its file (said in the log)."""
    for path in sorted(directory.glob(f"*{SUFFIX}"), key=lambda p: p.name):
        data = path.read_bytes()
        pos = 0
        while pos + _FRAME.size <= len(data):
            length, crc = _FRAME.unpack_from(data, pos)
            value = data[pos + _FRAME.size : pos + _FRAME.size + length]
            if len(value) < length or zlib.crc32(value) != crc:
                log.warning("%s: a torn or damaged record at byte %d ends the file", path, pos)
                break
            yield value
            pos += _FRAME.size + length


def replay_journal(bootstrap_servers: str, topic: str, directory: Path) -> int:
    """Send the journal's records to ``topic`` again; returns how many were delivered
    (``RuntimeError`` naming the first failure if any was not)."""
    from confluent_kafka import Producer

    from config.kafkalog import client_logger

    failed: list[str] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            failed.append(str(err))

    producer = Producer(
        {
            "bootstrap.servers": bootstrap_servers,
            "enable.idempotence": True,
            "linger.ms": 5,
            "message.max.bytes": 8 * 1024 * 1024,
            "logger": client_logger(),
        }
    )
    sent = 0
    for value in read_journal(directory) if directory.exists() else ():
        while True:
            try:
                producer.produce(topic, value=value, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        sent += 1
    left = producer.flush(60)
    if failed or left:
        raise RuntimeError(
            f"{len(failed) + left} of {sent} journal records were not delivered"
            + (f", e.g. {failed[0]}" if failed else "")
        )
    return sent
