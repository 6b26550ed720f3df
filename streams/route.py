"""Stage 1, route: decode input records, check each event, and send it to the identity
partition of its highest-priority identifier — one Kafka record per partition for all
the input records taken at once, so the stages behind pay Faust's per-record cost
once per batch."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from config.settings import Settings
from profiles.configured import identity_rules, trait_alias_index
from profiles.graph.messages import Observe
from profiles.routing import observe, partition_for
from profiles.touchpoint import InvalidTouchpoint, Touchpoint
from schemas.codec import DecodeError, UnknownSchema, decode_touchpoints, encode_touchpoint
from schemas.resolve import Resolver
from streams import metrics
from streams.batches import batches
from streams.dlq import dead_letter
from streams.messages import send_batches
from streams.producer import ProducedTopic

log = logging.getLogger("unifier.route")


async def decode(resolver: Resolver, data: bytes | None) -> list[Touchpoint]:
    """The touchpoints of an input record; a record written with a newer producer's
    schema makes the resolver look that schema up (blocking I/O, so off the loop) and
    is decoded again, once."""
    try:
        return decode_touchpoints(data)
    except UnknownSchema as missing:
        reason = await asyncio.get_running_loop().run_in_executor(None, resolver.resolve, missing)
        if reason is not None:
            raise DecodeError(reason) from None
        log.info("learned writer schema %s %s", missing.kind, missing.key)
        return decode_touchpoints(data)


def register(app: Any, settings: Settings, source: Any, identity: ProducedTopic, dlq: Any) -> Any:
    """The route agent, consuming the input topic."""
    rules = identity_rules(settings)
    region = settings.default_phone_region
    aliases = trait_alias_index(settings)
    partitions = settings.internal_partitions
    max_bytes = settings.max_record_bytes
    resolver = Resolver(settings)

    async def route_record(event: Any) -> dict[int, list[Observe]]:
        groups: dict[int, list[Observe]] = {}
        try:
            touchpoints = await decode(resolver, event.value)
        except DecodeError as exc:
            await dead_letter(dlq, event, "route.decode", str(exc), log=log, max_bytes=max_bytes)
            return groups
        metrics.MESSAGES_IN.labels(stage="route").inc(len(touchpoints))
        for tp in touchpoints:
            try:
                first = observe(tp, rules, region, aliases)
            except InvalidTouchpoint as exc:
                await dead_letter(
                    dlq, event, "route.validate", str(exc), encode_touchpoint(tp), log
                )
                continue
            groups.setdefault(partition_for(first.anchor, partitions), []).append(first)
        return groups

    records = metrics.RECORDS.labels(stage="route")
    sent = metrics.MESSAGES_OUT.labels(stage="route", to="identity")

    @app.agent(source, name="route")
    async def route(stream: Any) -> None:
        # The records that have arrived, handled as one batch (streams.batches) and
        # acknowledged by hand once their groups are sent: Faust's own acks (and
        # `take_events`) fire in a `finally`, so a worker stopped mid-batch would commit
        # events it never forwarded. Unacked records are re-delivered after a restart;
        # the graph folds each event id once.
        manual = stream.noack()
        async for events in batches(
            manual, settings.stage_batch_records, settings.stage_batch_wait_s
        ):
            groups: dict[int, list[Observe]] = {}
            for event in events:
                for part, observed in (await route_record(event)).items():
                    groups.setdefault(part, []).extend(observed)
            if send_batches(identity, groups, max_bytes):
                await identity.producer.delivered()
            for event in events:
                await manual.ack(event)
            records.inc(len(events))
            sent.inc(sum(len(g) for g in groups.values()))

    return route
