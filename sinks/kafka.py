"""The output topics as a sink: ``profile-updates`` and ``profile-merges``.

``ProfileTopicsSink`` sends, for every batch, one ``ProfileMerge`` per merge and, per
profile whose stored form changed, its full ``ProfileUpdate`` (or a tombstone when it
was merged away); the records are built in ``schemas.records``. It knows no Kafka
client: the stage gives it ``send(topic, key, value)``, which returns a delivery
future, so the worker's own producer (Faust's) sends them and ``flush`` waits for
the broker's acknowledgements.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from schemas.records import encode_update, merge_record
from sinks.base import ChangeBatch, Delivery

#: (topic, key, value or None for a tombstone) -> a future that completes on delivery.
Send = Callable[[str, bytes, bytes | None], Awaitable[Awaitable[Any]]]


class ProfileTopicsSink:
    name = "profile-topics"

    def __init__(
        self,
        send: Send,
        updates_topic: str,
        merges_topic: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._send = send
        self.updates_topic = updates_topic
        self.merges_topic = merges_topic
        self._clock = clock
        self._pending: list[Awaitable[Any]] = []
        self._counts = {"merges": 0, "updates": 0}

    async def write(self, batch: ChangeBatch) -> None:
        now_ms = int(self._clock() * 1000)
        for merge in batch.merges:
            await self._queue(self.merges_topic, merge.loser, merge_record(merge), "merges")
        for change in batch.changes:
            if not change.publish:
                continue
            if change.removed:
                value = None
            else:
                assert change.why is not None
                value = encode_update(change.view, change.why, list(change.changed), now_ms)
            await self._queue(self.updates_topic, change.profile_id, value, "updates")

    async def _queue(self, topic: str, key: str, value: bytes | None, kind: str) -> None:
        self._pending.append(await self._send(topic, key.encode(), value))
        self._counts[kind] += 1

    async def flush(self) -> Delivery:
        pending, self._pending = self._pending, []
        counts, self._counts = self._counts, {"merges": 0, "updates": 0}
        started = time.perf_counter()
        if pending:
            await asyncio.gather(*pending)
        return Delivery(self.name, len(pending), 0, time.perf_counter() - started, counts)

    async def close(self) -> None:
        await self.flush()
