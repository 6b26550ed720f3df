"""State helpers of the stages: tables written around Faust's per-key path, a table
seen as ``str``, and write buffers that let a batch read its own writes and write each
changed key back once.

* ``ChangelogTable`` — a Faust table whose writes go to its store and, as changelog
  records, through the worker's producer (``streams.producer``), to the partition
  ``writing`` names.
* ``StrTable`` — the identity table (bytes values) as a mapping of str.
* ``Overlay`` — writes held back until ``flush``; only keys whose value changed are
  written (each write is a changelog record).
* ``NodeCache`` — profiles a batch touches, decoded once, encoded once, and written
  back only when their stored form changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from typing import Any

import orjson

from profiles.graph.node import ProfileNode
from profiles.routing import partition_for
from schemas.wire import ledger_key, node_from, node_to
from streams.producer import FastProducer


class ChangelogTable(MutableMapping[str, bytes]):
    """A Faust table read from its store and written to its store plus its changelog,
    the record produced by the worker's ``FastProducer`` to ``partition`` (set by
    ``writing`` for each key). Recovery is Faust's own: it reads the changelog, whose
    records have the form Faust writes (the key as JSON, the value as it is). The
    stage awaits ``FastProducer.delivered`` before it acknowledges its input."""

    def __init__(self, table: Any, producer: FastProducer) -> None:
        self._table = table
        self._producer = producer
        self._topic = table.changelog_topic.get_topic_name()
        # The memory store's key -> changelog partition: what a rebalance drops and a
        # snapshot copies (``streams.snapshots``); Faust fills it only in recovery.
        self._partitions: dict[str, int] = table.data._key_partition
        self.partition: int | None = None

    def _send(self, key: str, value: bytes | None) -> None:
        if self.partition is None:
            raise RuntimeError(f"table key {key!r} written outside `writing`")
        if value is None:
            self._partitions.pop(key, None)
        else:
            self._partitions[key] = self.partition
        self._producer.produce(self._topic, value, orjson.dumps(key), self.partition)

    def __getitem__(self, key: str) -> bytes:
        return self._table.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self._table.data.get(key, default)

    def __setitem__(self, key: str, value: bytes) -> None:
        self._table.data[key] = value
        self._send(key, value)

    def __delitem__(self, key: str) -> None:
        del self._table.data[key]
        self._send(key, None)

    def pop(self, key: str, default: Any = None) -> Any:
        if key not in self._table.data:
            return default
        value = self._table.data[key]
        del self[key]
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._table.data)

    def __len__(self) -> int:
        return len(self._table.data)


@contextmanager
def writing(
    table: ChangelogTable, events: Sequence[Any], partitions: int
) -> Iterator[Callable[[str], None]]:
    """Yields ``before(key)``, which points the table's writes at ``key``'s partition
    (``profiles.routing.partition_for``, where its messages are sent) — one this batch
    has records of, else the key is not this worker's to write."""
    held = {event.message.partition for event in events}

    def before(key: str) -> None:
        part = partition_for(key, partitions)
        if part not in held:
            raise RuntimeError(
                f"table key {key!r} belongs to partition {part}, and no record of this "
                f"batch came from it (partitions {sorted(held)})"
            )
        table.partition = part

    try:
        yield before
    finally:
        table.partition = None


class StrTable(MutableMapping[str, str]):
    """The identity table (bytes values) as a mapping of str."""

    def __init__(self, table: Any) -> None:
        self._t = table

    def __getitem__(self, key: str) -> str:
        raw = self._t[key]
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def get(self, key: str, default: Any = None) -> Any:
        raw = self._t.get(key)
        return default if raw is None else raw.decode()

    def __setitem__(self, key: str, value: str) -> None:
        self._t[key] = value.encode()

    def __delitem__(self, key: str) -> None:
        del self._t[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._t)

    def __len__(self) -> int:
        return len(self._t)


class Overlay(MutableMapping[str, str]):
    """Writes to a table held back until ``flush``; reads see them."""

    def __init__(self, table: MutableMapping[str, str]) -> None:
        self._t = table
        self._w: dict[str, str | None] = {}  # None: deleted

    def __getitem__(self, key: str) -> str:
        if key in self._w:
            value = self._w[key]
            if value is None:
                raise KeyError(key)
            return value
        return self._t[key]

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __setitem__(self, key: str, value: str) -> None:
        self._w[key] = value

    def __delitem__(self, key: str) -> None:
        self[key]  # KeyError when absent
        self._w[key] = None

    def __iter__(self) -> Iterator[str]:
        deleted = {k for k, v in self._w.items() if v is None}
        yield from (k for k in self._w if k not in deleted)
        yield from (k for k in self._t if k not in self._w)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def flush(self, before: Callable[[str], None] = lambda key: None) -> None:
        """Write what changed. A key set to the value it has, or deleted while absent,
        is not written: each write is a changelog record, and a re-delivered claim
        sets what is there already."""
        for key, value in self._w.items():
            if self._t.get(key) == value:
                continue
            before(key)
            if value is None:
                self._t.pop(key, None)
            else:
                self._t[key] = value
        self._w.clear()


class NodeCache(dict[str, ProfileNode]):
    """Profiles a batch touches, decoded once and written back once.

    Once the batch is handled, ``encode()`` takes each profile's stored form once:
    ``changed`` answers from it, and ``flush`` writes back only the profiles whose
    form changed (each write is a changelog record; a message that changed nothing,
    such as a re-delivered one, costs none). A profile's ledger chunks sealed in the
    batch are written under keys of their own (``schemas.wire.ledger_key``), once each;
    those of a profile merged away are deleted."""

    def __init__(self, table: Any, on_read: Callable[[ProfileNode], Any] | None = None) -> None:
        super().__init__()
        self._t = table
        self._on_read = on_read
        self.before: dict[str, bytes | None] = {}  # as stored when first read
        self.read: dict[str, Any] = {}  # what on_read said of each node as it was read
        self._sealed: dict[str, int] = {}  # ledger chunks stored when first read
        self._after: dict[str, bytes] | None = None

    def _loader(self, key: str) -> Callable[[int], bytes]:
        def load(n: int) -> bytes:
            raw = self._t.get(ledger_key(key, n))
            if raw is None:
                raise KeyError(f"ledger chunk {n} of {key} is missing from the table")
            return bytes(raw)

        return load

    def get(self, key: str, default: Any = None) -> Any:
        if key not in self:
            raw = self._t.get(key)
            self.before.setdefault(key, raw)
            if raw is None:
                self._sealed.setdefault(key, 0)
                return default
            node = self[key] = node_from(raw, self._loader(key))
            # A record in the old form (one JSON object) is folded again as it is read:
            # its chunks are sealed in memory, none is in the table yet.
            stored = 0 if raw[:1] == b"{" else node.state.ledger.sealed
            self._sealed.setdefault(key, stored)
            if self._on_read is not None:
                self.read[key] = self._on_read(node)
        return self[key]

    def encode(self) -> None:
        self._after = {key: node_to(node) for key, node in self.items()}

    def changed(self, key: str) -> bool:
        if self._after is None:
            raise RuntimeError("NodeCache.changed before encode()")
        return self._after.get(key) != self.before.get(key)

    def flush(self, before: Callable[[str], None] = lambda key: None) -> None:
        if self._after is None:
            self.encode()
        assert self._after is not None
        for key, raw in self._after.items():
            if raw == self.before.get(key):
                continue
            before(key)
            ledger = self[key].state.ledger
            stored = self._sealed.get(key, 0)
            for n in range(stored, ledger.sealed):  # sealed in this batch
                self._t[ledger_key(key, n)] = ledger.chunk(n)
            for n in range(ledger.sealed, stored):  # merged away: its events moved
                self._t.pop(ledger_key(key, n), None)
            self._t[key] = raw
