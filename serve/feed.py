"""Follow the unifier's outputs: a small typed client for downstream services.

``profile-updates`` (compacted, keyed by profile id) carries the full profile after
every change and a tombstone when a profile is merged away; ``profile-merges`` says
into which profile it went. ``ProfileFeed`` reads both and yields typed records::

    from serve.feed import ProfileFeed, ProfileMerge, ProfileRemoved, ProfileUpdate

    with ProfileFeed("localhost:9092", group_id="crm-sync") as feed:
        for change in feed.changes():
            match change:
                case ProfileUpdate():
                    crm.upsert(change.profile_id, change.view())
                case ProfileMerge():
                    crm.rekey(change.loser, change.winner)
                case ProfileRemoved():
                    crm.delete(change.profile_id)

Identifiers and personal traits are sealed on the topics (``profiles.privacy``); give
the feed a ``sealer`` (``sinks.keys.sealer_for(settings)``) and it yields them opened
(an erased person's values read ``[erased]``).

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
from dataclasses import replace
from types import TracebackType
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from profiles.privacy import Sealer, open_document
from schemas.records import (
    Change,
    FeedError,
    ProfileMerge,
    ProfileRemoved,
    ProfileUpdate,
    merge_from,
    update_from,
)

__all__ = [
    "Change",
    "FeedError",
    "ProfileFeed",
    "ProfileMerge",
    "ProfileRemoved",
    "ProfileUpdate",
    "merge_from",
    "open_change",
    "update_from",
]


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
        sealer: Sealer | None = None,
    ) -> None:
        self.updates_topic, self.merges_topic = updates_topic, merges_topic
        self._sealer = sealer
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
                change: Change = merge_from(msg.value())
            else:
                change = update_from(msg.key(), msg.value(), msg.headers())
            yield change if self._sealer is None else open_change(self._sealer, change)


def open_change(sealer: Sealer, change: Change) -> Change:
    """A change with its sealed identifiers and traits opened (an erased person's
    values read ``[erased]``)."""
    opens = sealer.open_many
    if isinstance(change, ProfileUpdate):
        return replace(
            change,
            identifiers=open_document(dict(change.identifiers), opens),
            traits=open_document(dict(change.traits), opens),
            why=open_document(dict(change.why), opens),
        )
    return change
