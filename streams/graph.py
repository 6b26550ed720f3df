"""Stages 2 and 3: the identity graph on two partitioned tables.

* ``identity`` consumes messages keyed by identifier (observations from route, claims
  and re-points from profiles) against the ``identity`` table (identifier → profile).
* ``profile`` consumes messages keyed by profile id against the ``profiles`` table
  (state or redirect), writes every touched profile to Redis in one pipeline, and
  publishes merges on ``profile-merges``.

Both take the Kafka records that have arrived (each a batch of messages) and handle
them as one batch (streams.batches): the table is read and written once per key per
batch, outputs go out grouped by partition, and the records are acknowledged by hand
after their outputs are sent (and, for profiles, written to Redis). A re-delivered
record is handled again; every handler tolerates that (profiles.graph).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from typing import Any

import redis

from config.settings import Settings
from profiles.configured import identity_rules, trait_rules
from profiles.graph.identity import handle_identity
from profiles.graph.messages import Apply
from profiles.graph.profile import handle_profile
from profiles.graph.state import ProfileNode
from profiles.projection import changed_fields, merged_away, shown, view_of, why_of
from schemas.records import encode_update, merge_record
from schemas.wire import WireError, decode_messages, node_from, node_to
from sinks.redis_view import AsyncRedisWriter
from streams import metrics
from streams.batches import batches, in_partition
from streams.dlq import dead_letter
from streams.messages import group, send_batches

log = logging.getLogger("unifier.graph")


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
    such as a re-delivered one, costs none)."""

    def __init__(self, table: Any) -> None:
        super().__init__()
        self._t = table
        self.before: dict[str, bytes | None] = {}  # as stored when first read
        self._after: dict[str, bytes] | None = None

    def get(self, key: str, default: Any = None) -> Any:
        if key not in self:
            raw = self._t.get(key)
            self.before.setdefault(key, raw)
            if raw is None:
                return default
            self[key] = node_from(raw)
        return self[key]

    def stored(self, key: str) -> ProfileNode | None:
        raw = self.before.get(key)
        return None if raw is None else node_from(raw)

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
            self._t[key] = raw


async def write_with_retry(
    writer: AsyncRedisWriter, views: list[dict[str, Any]], whys: dict[str, dict[str, Any]]
) -> None:
    """Redis down is back-pressure, not data loss: retry until it answers (lag shows it)."""
    delay = 0.1
    started = time.perf_counter()
    while True:
        try:
            await writer.write(views, whys)
            metrics.REDIS_SECONDS.observe(time.perf_counter() - started)
            metrics.REDIS_BATCH.observe(len(views))
            return
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            log.warning("Redis write failed (%s); retrying in %.1fs", type(exc).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def register(
    app: Any,
    settings: Settings,
    topics: dict[str, Any],
    identity_table: Any,
    profiles_table: Any,
) -> None:
    rules = identity_rules(settings)
    survivorship = trait_rules(settings)
    partitions = settings.internal_partitions
    max_bytes = settings.max_record_bytes
    identity_topic, profile_topic = topics["identity"], topics["profile"]
    dlq, merges_topic, updates_topic = topics["dlq"], topics["merges"], topics["updates"]

    async def send_outputs(
        stage: str, outs: list[Any], updates: Sequence[tuple[str, bytes | None]] = ()
    ) -> None:
        """Send a record's outputs and wait until the broker has them all. Table writes
        come after this, never before: a worker killed in between leaves the table as
        it was, and the re-delivered record sends the outputs again (a no-op where they
        had arrived). The other way round, a table could remember a claim whose message
        was lost, and the merge it starts would never finish."""
        out = group(outs, partitions)
        sent = await send_batches(identity_topic, out.identity, max_bytes)
        sent += await send_batches(profile_topic, out.profile, max_bytes)
        for merge in out.merges:
            sent.append(
                await merges_topic.send(key=merge.loser.encode(), value=merge_record(merge))
            )
        for key, value in updates:
            sent.append(await updates_topic.send(key=key.encode(), value=value))
        if sent:
            await asyncio.gather(*sent)
        metrics.MERGES.inc(len(out.merges))
        metrics.count_refusals(out.refused)
        for to, n in (("identity", sum(map(len, out.identity.values()))),
                      ("profile", sum(map(len, out.profile.values()))),
                      ("merges", len(out.merges)), ("updates", len(updates))):  # fmt: skip
            if n:
                metrics.MESSAGES_OUT.labels(stage=stage, to=to).inc(n)

    def profile_updates(
        cache: NodeCache,
        touched: list[tuple[str, ProfileNode]],
        views: list[dict[str, Any]],
        whys: dict[str, dict[str, Any]],
    ) -> list[tuple[str, bytes | None]]:
        """``profile-updates`` records for the profiles this record changed: the full
        profile with what changed, or a tombstone for one merged away."""
        now = int(time.time() * 1000)
        out: list[tuple[str, bytes | None]] = []
        for (key, node), view in zip(touched, views, strict=True):
            if not cache.changed(key):
                continue  # as stored: the feed has its latest form already
            old = cache.stored(key)
            if node.redirect is not None:
                if old is None or old.redirect is None:
                    out.append((key, None))
                continue
            before = (
                view_of(key, old, survivorship)
                if old is not None and old.redirect is None
                else None
            )
            changed = changed_fields(before, view)
            if before is None or changed or before["version"] != view["version"]:
                out.append((key, encode_update(view, whys[key], changed, now)))
        return out

    async def messages_of(event: Any, stage: str) -> list[Any] | None:
        """The record's messages, or None once it is dead-lettered."""
        try:
            return decode_messages(event.value)
        except WireError as exc:
            await dead_letter(dlq, event, f"{stage}.decode", str(exc), log=log)
            return None

    take = settings.stage_batch_records, settings.stage_batch_wait_s

    async def messages_in(events: Sequence[Any], stage: str) -> list[Any]:
        """Every message of a batch of records, in order; bad records dead-lettered."""
        out: list[Any] = []
        for event in events:
            messages = await messages_of(event, stage)
            if messages is not None:
                out += messages
        metrics.MESSAGES_IN.labels(stage=stage).inc(len(out))
        return out

    @app.agent(identity_topic, name="identity")
    async def identity(stream: Any) -> None:
        table = StrTable(identity_table)
        manual = stream.noack()
        async for events in batches(manual, *take):
            writes = Overlay(table)
            outs = []
            for msg in await messages_in(events, "identity"):
                outs += handle_identity(writes, msg, rules.max_claimants)
            await send_outputs("identity", outs)
            with in_partition(manual, events, partitions) as before:
                writes.flush(before)
            for event in events:
                await manual.ack(event)
            metrics.RECORDS.labels(stage="identity").inc(len(events))

    @app.agent(profile_topic, name="profile")
    async def profile(stream: Any) -> None:
        writer = AsyncRedisWriter.from_url(settings.redis_url)
        try:
            manual = stream.noack()
            async for events in batches(manual, *take):
                messages = await messages_in(events, "profile")
                cache = NodeCache(profiles_table)
                outs = []
                for msg in messages:
                    outs += handle_profile(cache, msg, rules)
                # Every touched profile, even when nothing changed: a replay after a crash
                # between the table write and Redis must still bring the view up to date
                # (the version guard makes a repeated write a no-op).
                cache.encode()
                touched = shown(cache)
                views = [view_of(key, node, survivorship) for key, node in touched]
                whys = {key: why_of(node) for key, node in touched if node.redirect is None}
                updates = profile_updates(cache, touched, views, whys)
                await send_outputs("profile", outs, updates)
                new = [
                    k for k, node in touched if node.redirect is None and not cache.before.get(k)
                ]
                with in_partition(manual, events, partitions) as before:
                    cache.flush(before)
                written = views + merged_away(outs)
                if written:
                    await write_with_retry(writer, written, whys)
                for event in events:
                    await manual.ack(event)
                metrics.RECORDS.labels(stage="profile").inc(len(events))
                metrics.FOUNDED.inc(len(new))
                now_ms = time.time() * 1000
                for msg in messages:
                    if isinstance(msg, Apply) and not msg.pass_over:
                        metrics.EVENT_TO_VIEW.observe(max(now_ms - msg.event.time_ms, 0) / 1000)
        finally:
            await writer.close()
