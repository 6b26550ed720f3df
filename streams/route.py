"""Stage 1, route: decode input records, pick each event's profile, and forward the
events grouped by the partition that owns that profile — one Kafka record per
group, so the stages behind pay Faust's per-record cost once per batch."""

from __future__ import annotations

import logging
from typing import Any

from profiles.routing import RoutedItem, partition_for, profile_key
from profiles.touchpoint import InvalidTouchpoint
from schemas.codec import DecodeError, decode_touchpoints, encode_routed, encode_touchpoint
from streams.dlq import dead_letter
from unifier.settings import Settings

log = logging.getLogger("unifier.route")


def register(app: Any, settings: Settings, source: Any, routed: Any, dlq: Any) -> Any:
    priorities = settings.identifier_priorities
    region = settings.default_phone_region
    partitions = settings.internal_partitions

    @app.agent(source, name="route")
    async def route(stream: Any) -> None:
        async for events in stream.take_events(
            settings.route_batch_max, within=settings.route_batch_within_s
        ):
            groups: dict[int, list[RoutedItem]] = {}
            for event in events:
                try:
                    touchpoints = decode_touchpoints(event.value)
                except DecodeError as exc:
                    await dead_letter(dlq, event, "route.decode", str(exc), log=log)
                    continue
                msg = event.message
                for index, tp in enumerate(touchpoints):
                    try:
                        routed_to = profile_key(tp, priorities, region)
                    except InvalidTouchpoint as exc:
                        await dead_letter(
                            dlq, event, "route.validate", str(exc), encode_touchpoint(tp), log
                        )
                        continue
                    groups.setdefault(partition_for(routed_to.key, partitions), []).append(
                        RoutedItem(
                            routed_to.key,
                            routed_to.identifiers,
                            tp,
                            (msg.partition, msg.offset, index),
                        )
                    )
            for partition, items in groups.items():
                await routed.send(value=encode_routed(items), partition=partition)

    return route
