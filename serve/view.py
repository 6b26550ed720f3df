"""Readers of the Redis view: the CLI, export and tests (``RedisProfileView``) and the
read API (``AsyncRedisView``). Both follow redirects, so a merged-away id answers with
the survivor. The key layout is the writer's (``sinks.redis_view``).

On a Redis Cluster the read API follows keys one command at a time (an identifier key
and the profile it names live on different shards); on one server one script does it
in one round trip. A redirect that names a survivor whose first view is not written
yet (``sinks.redis_view``: the writer's steps) is read again a moment later.

Personal data in the view is sealed (``profiles.privacy``). Given a ``Sealer``, a
reader finds profiles by the plain identifier (its token names the index key) and
``RedisProfileView`` returns views opened; the read API opens what it serves itself
(and masks it for keys without the ``read_pii`` scope).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
import redis
import redis.asyncio as aredis

from config.settings import Settings
from profiles.privacy import Sealer, open_document
from sinks.keys import sealer_for
from sinks.redis_view import (
    DEFINITIONS_KEY,
    PROFILE_PREFIX,
    identifier_key,
    profile_key,
    segment_keys,
    view_state,
)
from sinks.redisconn import BUCKETS, LUA_TAG, connect, connect_async, is_cluster_client

# A redirect whose survivor has no view yet is read again this often, this long apart:
# the writer puts it there in its next step (``sinks.redis_view``).
DANGLING_TRIES, DANGLING_WAIT_S = 20, 0.005


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def index_key(id_type: str, value: str, sealer: Sealer | None) -> str:
    """The index key of a normalized identifier: by its token when values are sealed."""
    if sealer is None:
        return identifier_key(id_type, value)
    return identifier_key(id_type, f"~{sealer.token(id_type, value)}")


class RedisProfileView:
    """Synchronous reader (CLI, export, tests): views come back opened when it has a
    sealer (``for_settings``)."""

    def __init__(self, client: redis.Redis, sealer: Sealer | None = None) -> None:
        self._r = client
        self._sealer = sealer

    @classmethod
    def from_url(
        cls, url: str, sealer: Sealer | None = None, cluster: bool | None = None
    ) -> RedisProfileView:
        return cls(connect(url, cluster), sealer)

    @classmethod
    def for_settings(cls, settings: Settings) -> RedisProfileView:
        """The reader of this deployment's view, opening what it reads."""
        return cls.from_url(settings.redis_url, sealer_for(settings), settings.redis_cluster)

    def _open(self, doc: Any) -> Any:
        return doc if self._sealer is None else open_document(doc, self._sealer.open_many)

    def close(self) -> None:
        self._r.close()

    def get(self, profile_id: str) -> dict[str, Any] | None:
        """The profile, following redirects: a merged-away id answers with the survivor."""
        found = self._follow(profile_id)
        return self._open(found[0]) if found else None

    def why(self, profile_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(the profile, how its identifiers were linked), following redirects."""
        found = self._follow(profile_id)
        if found is None:
            return None
        view, key = found
        raw = self._r.hget(key, "why")
        return self._open(view), self._open(orjson.loads(raw) if raw else {})

    def _follow(self, profile_id: str) -> tuple[dict[str, Any], str] | None:
        redirected = False
        for _ in range(64):
            raw = self._r.hget(profile_key(profile_id), "json")
            for _ in range(DANGLING_TRIES if redirected else 0):
                if raw:
                    break
                time.sleep(DANGLING_WAIT_S)
                raw = self._r.hget(profile_key(profile_id), "json")
            if not raw:
                return None
            view: dict[str, Any] = orjson.loads(raw)
            if "merged_into" not in view:
                return view, profile_key(profile_id)
            profile_id, redirected = view["merged_into"], True
        return None

    def lookup(self, id_type: str, value: str) -> dict[str, Any] | None:
        """The profile holding a normalized identifier."""
        profile_id = self._r.get(index_key(id_type, value, self._sealer))
        return self.get(profile_id.decode()) if profile_id else None  # type: ignore[union-attr]

    def scan(self, page: int = 1000) -> Iterator[dict[str, Any]]:
        """Every profile, fetched a page of keys per pipeline round-trip."""
        keys: list[Any] = []
        for key in self._r.scan_iter(match=f"{PROFILE_PREFIX}*", count=page):
            keys.append(key)
            if len(keys) >= page:
                yield from self._fetch(keys)
                keys = []
        if keys:
            yield from self._fetch(keys)

    def _fetch(self, keys: Sequence[Any]) -> Iterator[dict[str, Any]]:
        pipe = self._r.pipeline(transaction=False)
        for key in keys:
            pipe.hget(key, "json")
        views = [orjson.loads(raw) for raw in pipe.execute() if raw]
        # redirects are not profiles; one key-store lookup opens the whole page
        yield from self._open([v for v in views if "merged_into" not in v])


# One round trip for a read on one server (the read API's hot path): from an
# identifier key or a profile id to the survivor's JSON, redirects followed in the
# server; 0 when a redirect names a profile with no view yet. A redirect is recognised
# by its exact form (redirect_view: profile_id, then merged_into), never by a search
# inside a profile, whose traits may hold any text.
_READ = (
    LUA_TAG
    + """
local pid = ARGV[2]
if ARGV[1] == 'id' then
  pid = redis.call('GET', ARGV[2])
  if not pid then return false end
end
local redirected = false
for _ = 1, 64 do
  local raw = redis.call('HGET', ARGV[3] .. tag(pid) .. pid, 'json')
  if not raw then
    if redirected then return 0 end
    return false
  end
  local into = string.match(raw, '^{"profile_id":"[^"]*","merged_into":"([^"]*)"')
  if not into then return raw end
  pid, redirected = into, true
end
return false
"""
)
_REDIRECT = re.compile(rb'^{"profile_id":"[^"]*","merged_into":"([^"]*)"')


class AsyncRedisView:
    """Asynchronous reader (the read API): the same answers as RedisProfileView, the
    profiles as the stored JSON (sealed: the API opens them)."""

    def __init__(self, client: aredis.Redis, sealer: Sealer | None = None) -> None:
        self._r = client
        self._sealer = sealer
        self._cluster = is_cluster_client(client)
        self._read = None if self._cluster else client.register_script(_READ)

    async def get_json(self, profile_id: str) -> bytes | None:
        """The profile's stored JSON as is (redirects followed); one round trip on one
        server."""
        return await self._read_json("profile", profile_id)

    async def lookup_json(self, id_type: str, value: str) -> bytes | None:
        """The JSON of the profile that holds the normalized identifier."""
        return await self._read_json("id", index_key(id_type, value, self._sealer))

    async def _read_json(self, kind: str, name: str) -> bytes | None:
        for _ in range(DANGLING_TRIES):
            if self._read is not None:
                raw = await self._read(args=[kind, name, PROFILE_PREFIX])
            else:
                raw = await self._follow_json(kind, name)
            if raw != 0:
                return raw or None
            await asyncio.sleep(DANGLING_WAIT_S)  # a redirect ahead of its survivor's view
        return None

    async def _follow_json(self, kind: str, name: str) -> bytes | int | None:
        """``_READ`` a command at a time (a cluster): keys on different shards."""
        pid: Any = name
        if kind == "id":
            pid = await self._r.get(name)
            if pid is None:
                return None
            pid = _text(pid)
        for hop in range(64):
            found = await self._r.hget(profile_key(pid), "json")
            if not found:
                return 0 if hop else None
            raw = found.encode() if isinstance(found, str) else bytes(found)
            into = _REDIRECT.match(raw)
            if into is None:
                return raw
            pid = into.group(1).decode()
        return None

    @classmethod
    def from_url(
        cls, url: str, sealer: Sealer | None = None, cluster: bool | None = None
    ) -> AsyncRedisView:
        return cls(connect_async(url, cluster, timeout=5), sealer)

    async def close(self) -> None:
        await self._r.aclose()

    async def ping(self) -> bool:
        return bool(await self._r.ping())

    async def completeness(self, partitions: int) -> str | None:
        """None when the workers have every profile partition in the view; else why
        not (Redis lost its data and they are writing it again)."""
        return await view_state(self._r, partitions)

    async def segments(self) -> dict[str, dict[str, Any]]:
        """The segment definitions in force (as the workers last wrote them), by name,
        each with its number of members (summed over the buckets)."""
        raw = await self._r.hgetall(DEFINITIONS_KEY)
        names = sorted(_text(k) for k in raw)
        pipe = self._r.pipeline(transaction=False)
        for name in names:
            for key in segment_keys(name):
                pipe.scard(key)
        counts = await pipe.execute()
        return {
            name: {
                **orjson.loads(raw[name.encode()]),
                "members": sum(counts[i * BUCKETS : (i + 1) * BUCKETS]),
            }
            for i, name in enumerate(names)
        }

    async def has_segment(self, name: str) -> bool:
        return bool(await self._r.hexists(DEFINITIONS_KEY, name))

    async def members(self, name: str, cursor: int, count: int) -> tuple[list[str], int]:
        """A page of a segment's member ids and the cursor of the next (0: the last).
        The cursor is (the set's own cursor) * BUCKETS + the bucket it is in."""
        keys = segment_keys(name)
        bucket, inner = cursor % BUCKETS, cursor // BUCKETS
        found: list[str] = []
        while bucket < BUCKETS and len(found) < count:
            inner, ids = await self._r.sscan(keys[bucket], cursor=inner, count=count)
            found += (_text(i) for i in ids)
            if int(inner) == 0:
                bucket, inner = bucket + 1, 0
        if bucket >= BUCKETS:
            return sorted(found), 0
        return sorted(found), int(inner) * BUCKETS + bucket

    async def why(self, profile_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        found = await self._follow(profile_id)
        if found is None:
            return None
        view, key = found
        raw = await self._r.hget(key, "why")
        return view, (orjson.loads(raw) if raw else {})

    async def _follow(self, profile_id: str) -> tuple[dict[str, Any], str] | None:
        redirected = False
        for _ in range(64):
            raw = await self._r.hget(profile_key(profile_id), "json")
            for _ in range(DANGLING_TRIES if redirected else 0):
                if raw:
                    break
                await asyncio.sleep(DANGLING_WAIT_S)
                raw = await self._r.hget(profile_key(profile_id), "json")
            if not raw:
                return None
            view: dict[str, Any] = orjson.loads(raw)
            if "merged_into" not in view:
                return view, profile_key(profile_id)
            profile_id, redirected = view["merged_into"], True
        return None
