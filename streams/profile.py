"""Stage 3, profile: graph messages keyed by profile id against the ``profiles`` table
(state or redirect); every batch's changes go to the sinks (``sinks.base``).

Order within a batch, each step only after the one before succeeded:
1. messages for other partitions and the output topics (``ProfileTopicsSink``) are
   sent and delivered — a worker killed before the table write sends them again;
2. the table is written (only the profiles whose stored form changed), its
   changelog records queued on the worker's producer (``streams.producer``) — unless
   a rebalance began meanwhile (``streams.batches.fenced``, asked of the broker): the
   batch is then let go, unwritten, and read again by the partitions' owner;
3. the Redis view (``RedisViewSink``) gets every touched profile, changed or not — a
   replay after a crash between the table write and Redis still brings the view up
   to date (the version guard makes a repeated write a no-op);
4. once the changelog records are delivered, the records are acknowledged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from profiles.graph.messages import Apply, Erased, Evaluate, Merged, SplitOff
from profiles.graph.node import ProfileNode
from profiles.graph.profile import handle_profile
from profiles.projection import (
    changed_fields,
    explanation_changed,
    shown,
    signature_of,
    signature_with_view,
    version_of,
    view_of,
    why_of,
)
from profiles.routing import partition_for
from profiles.rules import IdentityRules
from profiles.segments import Catalog, Transition
from profiles.traits import TraitRules
from sinks.base import ChangeBatch, ProfileChange, Sink
from streams import metrics
from streams.batches import batches, fenced
from streams.messages import count_internal, group, messages_in, send_internal
from streams.producer import FastProducer, ProducedTopic
from streams.rules import LiveRules
from streams.segments import (
    Definitions,
    PassResult,
    Published,
    Scheduler,
    batch_offsets,
    segment_pass,
)
from streams.state import ChangelogTable, NodeCache, writing
from streams.topology import Stage

log = logging.getLogger("unifier.profile")


#: What ``NodeCache.read`` holds for a profile that was a redirect when read.
WAS_REDIRECT = "redirect"


def as_read(rules: TraitRules) -> Callable[[ProfileNode], Any]:
    """What the profile stage keeps of each profile as it is read, to name what a
    batch changed: its signature (``profiles.projection.signature_of``)."""

    def read(node: ProfileNode) -> Any:
        return WAS_REDIRECT if node.redirect is not None else signature_of(node, rules)

    return read


def change_of(
    key: str,
    node: ProfileNode,
    cache: NodeCache,
    view: dict[str, Any],
    rules: TraitRules,
    after: dict[str, Any] | None = None,
) -> ProfileChange:
    """What readers and followers learn of one touched profile."""
    why = why_of(node) if node.redirect is None else None
    if not cache.changed(key):
        return ProfileChange(key, view, why)  # as stored: followers have it already
    before = cache.read.get(key)  # None: new here
    if node.redirect is not None:  # merged away: a tombstone, once
        return ProfileChange(key, view, None, publish=before != WAS_REDIRECT)
    if before == WAS_REDIRECT:
        before = None
    if after is None:
        after = signature_with_view(node, view, rules)
    changed = changed_fields(before, after)
    publish = before is None or bool(changed) or before["version"] != after["version"]
    identity = explanation_changed(before, after)
    read_version = before["version"] if before is not None else 0
    return ProfileChange(key, view, why, publish, tuple(changed), identity, read_version)


def changes_of(
    cache: NodeCache,
    rules: TraitRules,
    outs: list[Any],
    catalog: Catalog | None = None,
    now_ms: int = 0,
    published: Published | None = None,
) -> tuple[ChangeBatch, dict[str, int]]:
    """The batch the sinks get: every profile the view shows among those touched, the
    merges made, and (with a catalog) the segments they entered or left; and the next
    instant at which each profile's segments can change (``streams.segments``)."""
    touched = shown(cache)
    views = {key: view_of(key, node, rules) for key, node in touched}
    # each live view's signature, made once: what changed, for segments and followers
    afters = {
        key: signature_with_view(node, views[key], rules)
        for key, node in touched
        if node.redirect is None and catalog is not None
    }  # without segments, change_of makes them for the profiles that changed
    result = PassResult()
    if catalog is not None:
        result = segment_pass(touched, views, cache.read, rules, catalog, now_ms, published, afters)
    cache.encode()
    changes = [
        change_of(key, node, cache, views[key], rules, afters.get(key)) for key, node in touched
    ]
    merges = [m for kind, _key, m in outs if kind == "merges" and isinstance(m, Merged)]
    splits = [m for kind, _key, m in outs if kind == "merges" and isinstance(m, SplitOff)]
    erased = [m for kind, _key, m in outs if kind == "erased" and isinstance(m, Erased)]
    exits = [
        Transition(e.profile, name, False, now_ms, version, e.version, seq + 1)
        for e in erased
        for name, version, seq in e.segments
    ]
    batch = ChangeBatch(
        changes,
        merges,
        memberships=result.transitions + exits,
        segment_errors=result.errors,
        erased=erased,
        splits=splits,
        unindexed=[m for kind, _key, m in outs if kind == "unindexed"],
        refusals=[(key, m) for kind, key, m in outs if kind == "audit"],
    )
    return batch, result.dues


def stamp(cache: NodeCache, offsets: dict[int, tuple[int, int]], partitions: int) -> None:
    """Each live profile whose version the batch moved records where in the log that
    happened (``ProfileNode.position``: the view's freshness)."""
    for key, node in shown(cache):
        if node.redirect is not None:
            continue
        before = cache.read.get(key)
        version = version_of(node.state) + node.segment_moves
        if before is None or before == WAS_REDIRECT or before["version"] != version:
            p = partition_for(key, partitions)
            if p in offsets:
                node.position = f"{p}:{offsets[p][1]}"


def newest_events(
    messages: list[Any],
    newest: dict[str, int],
    offsets: dict[int, tuple[int, int]],
    last_offsets: dict[int, int],
) -> None:
    """Where a batch ends: the last input offset of each partition, and each source's
    newest event (the quality KPIs' freshness)."""
    last_offsets.update((p, last) for p, (_first, last) in offsets.items())
    for msg in messages:
        if isinstance(msg, Apply) and msg.event.time_ms > newest.get(msg.event.source, 0):
            newest[msg.event.source] = msg.event.time_ms


def observe_delivery(
    stage: str, records: int, batch: ChangeBatch, messages: list[Any], cache: NodeCache
) -> None:
    """Metrics of a handled batch: records, profiles founded, and how old each event was
    when its profile reached the view."""
    metrics.RECORDS.labels(stage=stage).inc(records)
    founded = [c for c in batch.changes if not c.removed and not cache.before.get(c.profile_id)]
    metrics.FOUNDED.inc(len(founded))
    now_ms = time.time() * 1000
    for msg in messages:
        if isinstance(msg, Apply) and not msg.pass_over:
            metrics.EVENT_TO_VIEW.observe(max(now_ms - msg.event.time_ms, 0) / 1000)


def observe_segments(batch: ChangeBatch) -> None:
    for t in batch.memberships:
        metrics.SEGMENT_MOVES.labels(
            segment=t.segment, move="entered" if t.entered else "exited"
        ).inc()
    for e in batch.segment_errors:
        metrics.SEGMENT_ERRORS.labels(segment=e.segment).inc()


@dataclass(frozen=True)
class Sinks:
    """The profile stage's outputs, by when they get a batch. Each entry is a factory:
    sinks are made when the agent starts (their clients live on the worker's event
    loop, and an agent restarted after a crash starts with nothing pending).

    * ``published`` — sent and delivered *before* the table write, with the messages
      for other partitions (the output topics): a crash before the write sends them
      again, so they must tolerate duplicates (``profile-updates`` is compacted and
      carries versions; ``profile-merges`` names the merge).
    * ``views`` — written *after* the table write (the Redis view, and destinations
      that keep a copy). They get every touched profile, changed
      or not (``ProfileChange.publish`` says which changed) and must refuse a version
      older than the one they hold.
    """

    published: list[Callable[[], Sink]] = field(default_factory=list)
    views: list[Callable[[], Sink]] = field(default_factory=list)


@dataclass(frozen=True)
class SegmentRuntime:
    """What the profile stage needs for segments: the definitions in force, and the
    scheduler it tells when each touched profile's segments can next change."""

    definitions: Definitions
    scheduler: Scheduler
    published: Published


async def _publish(
    stage: str, sinks: list[Sink], batch: ChangeBatch, producer: FastProducer
) -> None:
    """Hand the batch to the published sinks and wait for it, and the messages the
    stage queued, to arrive."""
    for sink in sinks:
        await sink.write(batch)
    await producer.delivered()
    for sink in sinks:
        delivered = await sink.flush()
        for to, n in delivered.counts.items():
            if n:
                metrics.MESSAGES_OUT.labels(stage=stage, to=to).inc(n)


async def _write_views(views: list[Sink], batch: ChangeBatch) -> None:
    if not batch:
        return
    for sink in views:
        await sink.write(batch)
        written = await sink.flush()
        measured = metrics.VIEW_SINKS.get(sink.name)
        if measured is not None:
            seconds, profiles = measured
            seconds.observe(written.seconds)
            profiles.observe(written.written + written.skipped)


async def _overtaken(
    app: Any,
    events: list[Any],
    stage: str,
    segments: SegmentRuntime | None,
    offsets: dict[int, tuple[int, int]],
) -> bool:
    """``streams.batches.fenced``, just before the table write: the partition may be
    another worker's by now. The batch's membership transitions were sent already: they
    count as handled here, so that a re-read of these records reads them back
    (``Published``) rather than sending them twice."""
    if not await fenced(app, events, stage):
        return False
    if segments is not None:
        segments.published.after(offsets)
    return True


def register(
    app: Any,
    stage: Stage,
    topics: dict[str, Any],
    table: Any,
    rules: tuple[IdentityRules | LiveRules, TraitRules],
    sinks: Sinks,
    take: tuple[int, float],
    max_bytes: int,
    produced: dict[str, ProducedTopic],
    segments: SegmentRuntime | None = None,
) -> Any:
    """The profile agent, consuming ``topics[stage.name]``."""
    live_rules, trait_rules = rules
    partitions = stage.partitions
    read = as_read(trait_rules)
    producer = produced["profile"].producer
    changelog = ChangelogTable(table, producer)

    async def handle(
        manual: Any, events: list[Any], published: list[Sink], views: list[Sink]
    ) -> None:
        offsets = batch_offsets(events)
        if segments is not None:
            await segments.published.before(offsets)
        messages = await messages_in(events, stage.name, topics["dlq"], log)
        if segments is not None:
            segments.scheduler.handled(sum(1 for m in messages if isinstance(m, Evaluate)))
        cache = NodeCache(changelog, read)
        outs = []
        now = live_rules.current if isinstance(live_rules, LiveRules) else live_rules
        for msg in messages:
            outs += handle_profile(cache, msg, now)
        stamp(cache, offsets, partitions)
        catalog, published_before = (
            (segments.definitions.catalog, segments.published) if segments else (None, None)
        )
        now_ms = int(time.time() * 1000)
        batch, dues = changes_of(cache, trait_rules, outs, catalog, now_ms, published_before)
        newest_events(messages, batch.newest, offsets, batch.source_offsets)
        grouped = group(outs, partitions)
        send_internal(grouped, produced["identity"], produced["profile"], max_bytes)
        await _publish(stage.name, published, batch, producer)
        count_internal(stage.name, grouped)
        if await _overtaken(app, events, stage.name, segments, offsets):
            return
        with writing(changelog, events, partitions) as before:
            cache.flush(before)
        await _write_views(views, batch)  # while the changelog records are on their way
        if segments is not None:
            segments.scheduler.note(dues)
            observe_segments(batch)
        await producer.delivered()
        for event in events:
            await manual.ack(event)
        if segments is not None:
            segments.published.after(offsets)
        observe_delivery(stage.name, len(events), batch, messages, cache)

    @app.agent(topics[stage.name], name=stage.name)
    async def profile(stream: Any) -> None:
        published = [make() for make in sinks.published]
        views = [make() for make in sinks.views]
        if segments is not None:  # membership decided with no definitions would be wrong
            segments.definitions.start()
            await segments.definitions.wait_ready()
        try:
            manual = stream.noack()
            async for events in batches(manual, *take, app, stage.name):
                await handle(manual, events, published, views)
        finally:
            for sink in views:
                await sink.close()

    return profile
