"""Stage 2, apply: fold each routed batch into the profiles table and write every
changed profile to Redis in one pipeline round-trip."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import redis

from profiles.profile import Profile
from profiles.routing import RoutedItem
from profiles.touchpoint import Touchpoint
from profiles.view import AsyncRedisWriter
from schemas.codec import ORJSON_OPTS, DecodeError, decode_routed
from streams.dlq import dead_letter
from unifier.settings import Settings

log = logging.getLogger("unifier.apply")


def fold(table: Any, items: list[RoutedItem]) -> list[dict[str, Any]]:
    """Apply a batch to the table: one read and one write per profile, not per event.

    Returns the view of every profile the batch touched, even when all its events were
    re-deliveries: a worker that died after its table write reached the changelog but
    before its Redis write did must still bring the view up to date on the replay (the
    version guard in Redis makes a repeated write a no-op)."""
    by_key: dict[str, list[tuple[Touchpoint, dict[str, str]]]] = {}
    for item in items:
        by_key.setdefault(item.key, []).append((item.event, item.identifiers))
    views = []
    for key, group in by_key.items():
        raw = table.get(key)
        profile = Profile.from_state(orjson.loads(raw)) if raw else Profile(profile_id=key)
        if profile.apply_all(group):
            table[key] = orjson.dumps(profile.to_state(), option=ORJSON_OPTS)
        views.append(profile.to_view())
    return views


async def write_with_retry(writer: AsyncRedisWriter, views: list[dict[str, Any]]) -> None:
    """Redis down is back-pressure, not data loss: retry until it answers (lag shows it)."""
    delay = 0.1
    while True:
        try:
            await writer.write(views)
            return
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            log.warning("Redis write failed (%s); retrying in %.1fs", type(exc).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def register(app: Any, settings: Settings, routed: Any, table: Any, dlq: Any) -> Any:
    @app.agent(routed, name="apply")
    async def apply(stream: Any) -> None:
        writer = AsyncRedisWriter.from_url(settings.redis_url)
        try:
            # Acknowledged by hand after the Redis write (see streams/route.py for why).
            manual = stream.noack()
            async for event in manual.events():
                try:
                    items = decode_routed(event.value)
                except DecodeError as exc:
                    await dead_letter(dlq, event, "apply.decode", str(exc), log=log)
                else:
                    await write_with_retry(writer, fold(table, items))
                await manual.ack(event)
        finally:
            await writer.close()

    return apply
