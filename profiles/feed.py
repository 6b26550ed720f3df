"""Follow the unifier's outputs: a small typed client for downstream services.

``profile-updates`` (compacted, keyed by profile id) carries the full profile after
every change and a tombstone when a profile is merged away; ``profile-merges`` says
into which profile it went. ``ProfileFeed`` reads both and yields typed records::

    from profiles.feed import ProfileFeed, ProfileMerge, ProfileRemoved, ProfileUpdate

    with ProfileFeed("localhost:9092", group_id="crm-sync") as feed:
        for change in feed.changes():
            match change:
                case ProfileUpdate():
                    crm.upsert(change.profile_id, change.view())
                case ProfileMerge():
                    crm.rekey(change.loser, change.winner)
                case ProfileRemoved():
                    crm.delete(change.profile_id)

Delivery is at least once: with a ``group_id``, a record's offset is committed only
when the next record is asked for (or on ``close``), so a consumer that crashes
mid-record sees it again. Versions only grow, so a copy can ignore an update whose
``version`` is not above the one it has. Without a ``group_id`` nothing is
committed, and ``changes(until_end=True)`` reads what is there and stops (what
``unifier view rebuild`` does).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from schemas.codec import CODEC, PROFILE_MERGE, PROFILE_UPDATE, DecodeError


@dataclass(frozen=True, slots=True)
class ProfileUpdate:
    """A profile as it is now (the full profile, not a diff)."""

    profile_id: str
    version: int
    updated_at_ms: int
    identifiers: Mapping[str, list[str]]
    traits: Mapping[str, Any]
    computed: Mapping[str, Any]
    changed_fields: tuple[str, ...]
    why: Mapping[str, Any]

    def view(self) -> dict[str, Any]:
        """The documented read form, as the API and Redis serve it."""
        return {
            "profile_id": self.profile_id,
            "identifiers": dict(self.identifiers),
            "traits": dict(self.traits),
            "computed": dict(self.computed),
            "version": self.version,
        }


@dataclass(frozen=True, slots=True)
class ProfileRemoved:
    """A tombstone: the profile was merged into another (a ``ProfileMerge`` names it)."""

    profile_id: str


@dataclass(frozen=True, slots=True)
class ProfileMerge:
    loser: str
    winner: str
    identifier_type: str  # the type of the identifier that linked them (its value is PII)
    event_id: str
    merged_at_ms: int


Change = ProfileUpdate | ProfileRemoved | ProfileMerge


class FeedError(RuntimeError):
    """A record on an output topic that this client cannot read."""


def update_from(key: bytes | None, value: bytes | None) -> ProfileUpdate | ProfileRemoved:
    if key is None:
        raise FeedError("a profile-updates record without a key")
    if value is None:
        return ProfileRemoved(key.decode())
    try:
        _, r = CODEC.read(value, (PROFILE_UPDATE,))
        return ProfileUpdate(
            r["profile_id"],
            r["version"],
            _millis(r["updated_at"]),
            r["identifiers"],
            r["traits"],
            orjson.loads(r["computed_json"]),
            tuple(r["changed_fields"]),
            orjson.loads(r["why_json"]),
        )
    except (DecodeError, orjson.JSONDecodeError, KeyError) as exc:
        raise FeedError(f"profile-updates record for {key.decode()!r}: {exc}") from None


def merge_from(value: bytes | None) -> ProfileMerge:
    try:
        _, r = CODEC.read(value or b"", (PROFILE_MERGE,))
    except DecodeError as exc:
        raise FeedError(f"profile-merges record: {exc}") from None
    return ProfileMerge(
        r["loser"], r["winner"], r["identifier_type"], r["event_id"], _millis(r["merged_at"])
    )


def _millis(value: Any) -> int:
    # fastavro reads timestamp-millis as an aware datetime.
    return value if isinstance(value, int) else int(value.timestamp() * 1000)


class ProfileFeed:
    """Reads ``profile-updates`` and ``profile-merges``; see the module's docstring."""

    def __init__(
        self,
        bootstrap_servers: str,
        group_id: str | None = None,
        *,
        updates_topic: str = "profile-updates",
        merges_topic: str = "profile-merges",
        from_beginning: bool = True,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.updates_topic, self.merges_topic = updates_topic, merges_topic
        self._grouped = group_id is not None
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap_servers,
                "group.id": group_id or f"unifier.feed.{uuid.uuid4().hex[:12]}",
                "auto.offset.reset": "earliest" if from_beginning else "latest",
                "enable.auto.commit": self._grouped,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
                **(config or {}),
            }
        )
        self._done: Any = None  # the last record handed out, stored when the next is asked

    def __enter__(self) -> ProfileFeed:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._store()
        self._consumer.close()  # commits what was stored, when in a group

    def _store(self) -> None:
        if self._done is not None and self._grouped:
            self._consumer.store_offsets(message=self._done)
        self._done = None

    def _partitions(self, topics: tuple[str, ...]) -> list[TopicPartition]:
        out = []
        for topic in topics:
            meta = self._consumer.list_topics(topic, timeout=10).topics.get(topic)
            if meta is None or meta.error is not None or not meta.partitions:
                raise FeedError(f"topic '{topic}' does not exist")
            out += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(meta.partitions)]
        return out

    def changes(
        self,
        *,
        updates: bool = True,
        merges: bool = True,
        until_end: bool = False,
        poll_s: float = 0.5,
        idle_s: float | None = None,
    ) -> Iterator[Change]:
        """Changes as they arrive. ``until_end``: read every partition from its start to
        its end as of now, then stop (no group needed). ``idle_s``: stop after that long
        without a record."""
        wanted = ((self.updates_topic, updates), (self.merges_topic, merges))
        topics = tuple(topic for topic, on in wanted if on)
        if until_end:
            parts = self._partitions(topics)
            self._consumer.assign(parts)
            waiting = {(tp.topic, tp.partition) for tp in parts}
        else:
            self._consumer.subscribe(list(topics))
            waiting = set()
        last = time.monotonic()
        while not until_end or waiting:
            self._store()
            msg = self._consumer.poll(poll_s)
            if msg is None:
                if idle_s is not None and time.monotonic() - last > idle_s:
                    return
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    waiting.discard((msg.topic(), msg.partition()))
                    continue
                raise KafkaException(err)
            last = time.monotonic()
            self._done = msg
            if msg.topic() == self.merges_topic:
                yield merge_from(msg.value())
            else:
                yield update_from(msg.key(), msg.value())
