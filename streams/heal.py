"""A view that heals itself: the worker notices that Redis lost its data and writes its
own profiles there again, with no operator.

Each profile partition is marked complete in every bucket's ``unifier:view:{t}`` hash
(``sinks.redis_view``) by the worker that owns the partition once every profile of it
is in the view. Redis restarted empty (or flushed, or a new server, or one shard of a
cluster that lost its data: the marks of its buckets went with it) lacks marks: once
a second the worker checks the marks of its partitions, and for each one missing it
rebuilds that partition's view from its own ``profiles`` table — views, redirects,
explanations and identifier index, through the same write-if-newer script as the
stage (``sinks.redis_view``), so it runs while events keep flowing: a live write of
a newer version wins, a rebuild write of an older one is refused.

A bucket's mark is set only if the rebuild's own token is still in that bucket's hash
at the end (one script per bucket): a server or shard emptied again mid-way leaves
the partition unmarked there, and it is rebuilt again. Meanwhile ``/ready`` (the
worker's and the read API's) says "view rebuilding (N of M)", from
``unifier:view:rebuilding`` (a short-lived key the rebuild refreshes), and
``unifier_view_rebuilds_total`` counts rebuilt partitions.

What it does not cover: a Redis that comes back with *part* of its data (an
append-only file missing its last second) keeps its markers; profiles touched again
are sent whole (``sinks.redis_view``, read versions), others wait for
``unifier view rebuild``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import Counter, Gauge

from profiles.projection import shown, view_of, why_of
from profiles.routing import partition_for
from profiles.traits import TraitRules
from schemas.wire import ledger_key, node_from
from sinks.redis_view import (
    ALL_MARKS,
    PROGRESS_KEY,
    AsyncRedisWriter,
    complete_field,
    missing_partitions,
    token_field,
)
from sinks.redisconn import UNAVAILABLE, Call, Lua, run_scripts

log = logging.getLogger("unifier.heal")

CHECK_INTERVAL_S = 1.0
CHUNK = 500  # profiles per write pipeline; the loop is yielded between chunks
PROGRESS_TTL_S = 30

REBUILDS = Counter(
    "unifier_view_rebuilds",
    "Profile partitions whose Redis view this worker rebuilt because Redis had lost it",
)
REBUILDING = Gauge(
    "unifier_view_rebuilding_profiles",
    "Profiles left to write back to Redis by a rebuild under way (0: none)",
)

# KEYS[1] a bucket's marks; ARGV[1] the token field, ARGV[2] the rebuild's token,
# ARGV[3] the complete field, ARGV[4] its value. Set only if the token is still there.
_MARK = Lua(
    """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"""
)


@dataclass
class Healer:
    """Checks the markers of the partitions this worker owns; rebuilds the missing."""

    table: Any
    rules: TraitRules
    partitions: int
    owned: Callable[[], Iterable[int]]  # profile partitions assigned and recovered now
    url: str
    cluster: bool | None = None
    progress: tuple[int, int] | None = None  # (done, total) while rebuilding
    _writer: AsyncRedisWriter | None = field(default=None, repr=False)

    def writer(self) -> AsyncRedisWriter:
        if self._writer is None:
            self._writer = AsyncRedisWriter.from_url(self.url, self.cluster)
        return self._writer

    async def check(self) -> list[int]:
        """Rebuild the owned partitions whose marker is missing; returns them."""
        owned = sorted(self.owned())
        if not owned:
            return []
        client = self.writer().client
        missing = await missing_partitions(client, owned)
        if missing:
            await self.rebuild(missing)
        return missing

    def _keys(self, partitions: set[int]) -> list[str]:
        return [
            key
            for key in list(self.table.data)
            if "#" not in key and partition_for(key, self.partitions) in partitions
        ]

    async def rebuild(self, partitions: list[int]) -> int:
        """Write every profile of these partitions to Redis; mark each partition
        complete if no one emptied Redis meanwhile. Returns the profiles written."""
        client = self.writer().client
        token = uuid.uuid4().hex
        pipe = client.pipeline(transaction=False)
        for key in ALL_MARKS:
            pipe.hset(key, mapping={token_field(p): token for p in partitions})
        await pipe.execute()
        keys = self._keys(set(partitions))
        log.warning(
            "the Redis view lacks profile partitions %s (Redis lost its data): "
            "writing their %d profiles again",
            partitions,
            len(keys),
        )
        started = time.monotonic()
        done = 0
        self.progress = (0, len(keys))
        try:
            for start in range(0, len(keys), CHUNK):
                await self._write_chunk(keys[start : start + CHUNK])
                done = min(start + CHUNK, len(keys))
                self.progress = (done, len(keys))
                REBUILDING.set(len(keys) - done)
                await client.set(
                    PROGRESS_KEY,
                    orjson.dumps({"done": done, "total": len(keys)}),
                    ex=PROGRESS_TTL_S,
                )
            value = orjson.dumps({"at": time.time(), "profiles": len(keys)})
            marked = []
            for p in partitions:
                args = [token_field(p), token, complete_field(p), value]
                calls: list[Call] = [(_MARK, [key], args) for key in ALL_MARKS]
                if all(await run_scripts(client, calls)):
                    marked.append(p)
            REBUILDS.inc(len(marked))
            await client.delete(PROGRESS_KEY)
        finally:
            self.progress = None
            REBUILDING.set(0)
        log.warning(
            "the Redis view of partitions %s is complete again: %d profiles in %.1f s%s",
            marked,
            len(keys),
            time.monotonic() - started,
            "" if marked == partitions else " (the others were emptied again: next check)",
        )
        return len(keys)

    def _loader(self, key: str) -> Callable[[int], bytes]:
        return lambda n: bytes(self.table.data[ledger_key(key, n)])

    async def _write_chunk(self, keys: list[str]) -> None:
        nodes = {}
        for key in keys:
            raw = self.table.data.get(key)
            if raw is not None:  # merged away and deleted since the keys were listed
                nodes[key] = node_from(raw, self._loader(key))
        views, whys = [], {}
        for key, node in shown(nodes):
            views.append(view_of(key, node, self.rules))
            if node.redirect is None:
                whys[key] = why_of(node)
        await self.writer().write(views, whys)
        await asyncio.sleep(0)  # the stages run between chunks

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.close()


def install(
    app: Any,
    table: Any,
    rules: TraitRules,
    partitions: int,
    topic: str,
    url: str,
    cluster: bool | None = None,
) -> Healer:
    """Check the view's markers once a second on the worker's loop."""

    def owned() -> list[int]:
        if app.rebalancing or app.in_recovery:
            return []
        return [tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic]

    healer = Healer(table, rules, partitions, owned, url, cluster)

    @app.timer(interval=CHECK_INTERVAL_S)
    async def heal_view() -> None:
        try:
            await healer.check()
        except UNAVAILABLE as exc:  # Redis away: the next check retries
            log.debug("view check skipped: %s", exc)
        except Exception:  # the check must never take the worker down
            log.exception("view check failed")

    @app.on_before_shutdown.connect
    async def close_healer(app: Any, **kwargs: Any) -> None:
        await healer.close()

    return healer
