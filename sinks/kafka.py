"""The output topics as a sink: ``profile-updates``, ``profile-merges`` and
``segment-membership`` (and the dead letters of segment evaluations that failed).

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

import orjson

from profiles.routing import partition_for
from profiles.segments import EvalError
from schemas.records import (
    encode_update,
    identity_audit,
    membership_record,
    merge_record,
    receipt_step,
    removal_headers,
    split_record,
)
from sinks.base import ChangeBatch, Delivery

#: (topic, key, value or None for a tombstone[, headers[, partition]]) -> a future that
#: completes on delivery (partition -1: the producer's partitioner picks by key).
Send = Callable[..., Awaitable[Awaitable[Any]]]


#: Header of a membership record: the input offset it was made from.
SOURCE_OFFSET = "x-source-offset"


def _zero() -> dict[str, int]:
    return {"merges": 0, "updates": 0, "memberships": 0, "dead_letters": 0}


def segment_error_headers(e: EvalError) -> list[tuple[str, bytes]]:
    """A failed evaluation's dead letter says why (reasons name no identifier value)."""
    return [
        (
            "x-dlq-reason",
            f"segment {e.segment} v{e.definition_version}: {e.reason}".encode()[:1000],
        ),
        ("x-dlq-stage", b"segments"),
        ("x-dlq-time-ms", str(int(time.time() * 1000)).encode()),
    ]


class ProfileTopicsSink:
    name = "profile-topics"

    def __init__(
        self,
        send: Send,
        updates_topic: str,
        merges_topic: str,
        clock: Callable[[], float] = time.time,
        membership_topic: str | None = None,
        dlq_topic: str | None = None,
        partitions: int = 1,
        receipts_topic: str | None = None,
        audit_topic: str | None = None,
    ) -> None:
        self._send = send
        self.updates_topic = updates_topic
        self.merges_topic = merges_topic
        self.membership_topic = membership_topic
        self.dlq_topic = dlq_topic
        self.partitions = partitions
        self.receipts_topic = receipts_topic
        self.audit_topic = audit_topic
        self._clock = clock
        self._pending: list[Awaitable[Any]] = []
        self._counts = _zero()

    async def write(self, batch: ChangeBatch) -> None:
        now_ms = int(self._clock() * 1000)
        await self._identity(batch, now_ms)
        for change in batch.changes:
            if not change.publish:
                continue
            if change.removed:  # a tombstone that says where the profile went
                headers = removal_headers("merged", change.view["merged_into"])
                await self._queue(self.updates_topic, change.profile_id, None, "updates", headers)
                continue
            assert change.why is not None
            value = encode_update(change.view, change.why, list(change.changed), now_ms)
            await self._queue(self.updates_topic, change.profile_id, value, "updates")
        for gone in batch.erased:  # a tombstone: compaction drops every older record of it
            headers = removal_headers("erased")
            await self._queue(self.updates_topic, gone.profile, None, "updates", headers)
            if self.receipts_topic is not None:
                n_ids, n_segments = len(gone.ids), len(gone.segments)
                key, step = receipt_step(
                    gone.receipt, "profile", gone.profile, now_ms,
                    identifiers=n_ids, segments=n_segments,
                )  # fmt: skip
                await self._queue(self.receipts_topic, key, step, "receipts")
        if self.membership_topic is not None:
            for t in batch.memberships:
                record = membership_record(t)
                # On the partition of the profile's own (``profiles.routing``, not the
                # producer's hash of the key), with the input offset it came from: what
                # a worker handling that partition again reads back
                # (``streams.segments.Published``).
                p = partition_for(t.profile_id, self.partitions)
                headers = [(SOURCE_OFFSET, str(batch.source_offsets.get(p, -1)).encode())]
                await self._queue(
                    self.membership_topic, t.profile_id, record, "memberships", headers, p
                )
        if self.dlq_topic is not None:
            for e in batch.segment_errors:
                value = orjson.dumps(
                    {"profile_id": e.profile_id, "segment": e.segment,
                     "definition_version": e.definition_version, "reason": e.reason}
                )  # fmt: skip
                headers = segment_error_headers(e)
                await self._queue(self.dlq_topic, e.profile_id, value, "dead_letters", headers)

    async def _identity(self, batch: ChangeBatch, now_ms: int) -> None:
        """Merges and splits on profile-merges; with them, refused links on the audit
        trail."""
        for merge in batch.merges:
            await self._queue(self.merges_topic, merge.loser, merge_record(merge), "merges")
        for split in batch.splits:
            await self._queue(self.merges_topic, split.source, split_record(split), "merges")
        if self.audit_topic is not None:
            for action, value in identity_audit(batch, now_ms):
                await self._queue(self.audit_topic, action, value, "audit", [], 0)

    async def _queue(
        self,
        topic: str,
        key: str,
        value: bytes | None,
        kind: str,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int = -1,
    ) -> None:
        if headers is None:
            self._pending.append(await self._send(topic, key.encode(), value))
        else:
            self._pending.append(await self._send(topic, key.encode(), value, headers, partition))
        self._counts[kind] = self._counts.get(kind, 0) + 1

    async def flush(self) -> Delivery:
        pending, self._pending = self._pending, []
        counts, self._counts = self._counts, _zero()
        started = time.perf_counter()
        if pending:
            await asyncio.gather(*pending)
        return Delivery(self.name, len(pending), 0, time.perf_counter() - started, counts)

    async def close(self) -> None:
        await self.flush()
