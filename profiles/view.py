"""The latest unified view, served from Redis.

Layout (all keys under ``unifier:``):
- ``unifier:profile:<profile_id>`` — hash with ``version`` and ``json`` (the
  documented profile form). Written by a Lua script that refuses an older
  version, so a lagging writer can never move the view backwards.
- ``unifier:id:<type>:<normalized value>`` — the profile id that holds the identifier.
- A profile merged into another keeps ``unifier:profile:<id>`` as a redirect
  (``{"profile_id", "merged_into"}``): reads follow it to the survivor.

The worker writes whole batches in one pipeline; readers go through the
``ProfileView`` protocol and never know which store answers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import orjson
import redis
import redis.asyncio as aredis

from schemas.codec import ORJSON_OPTS

PREFIX = "unifier:"

# KEYS[1] profile hash; ARGV[1] version, ARGV[2] json, ARGV[3] why ('' = none: a
# redirect keeps no explanation of the profile it was).
# 1 = written, 0 = older, ignored.
_WRITE_IF_NEWER = """
local cur = redis.call('HGET', KEYS[1], 'version')
if cur and tonumber(cur) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'json', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'why', ARGV[3])
else redis.call('HDEL', KEYS[1], 'why') end
return 1
"""


def profile_key(profile_id: str) -> str:
    return f"{PREFIX}profile:{profile_id}"


def identifier_key(id_type: str, value: str) -> str:
    return f"{PREFIX}id:{id_type}:{value}"


class ProfileView(Protocol):
    """What readers need from the store that serves the view."""

    def get(self, profile_id: str) -> dict[str, Any] | None: ...

    def lookup(self, id_type: str, value: str) -> dict[str, Any] | None: ...

    def scan(self) -> Iterator[dict[str, Any]]: ...

    def why(self, profile_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None: ...


class RedisProfileView:
    """Synchronous reader (CLI, export, tests)."""

    def __init__(self, client: redis.Redis) -> None:
        self._r = client

    @classmethod
    def from_url(cls, url: str) -> RedisProfileView:
        return cls(redis.Redis.from_url(url, socket_timeout=10))

    def close(self) -> None:
        self._r.close()

    def get(self, profile_id: str) -> dict[str, Any] | None:
        """The profile, following redirects: a merged-away id answers with the survivor."""
        found = self._follow(profile_id)
        return found[0] if found else None

    def why(self, profile_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(the profile, how its identifiers were linked), following redirects."""
        found = self._follow(profile_id)
        if found is None:
            return None
        view, key = found
        raw = self._r.hget(key, "why")
        return view, (orjson.loads(raw) if raw else {})

    def _follow(self, profile_id: str) -> tuple[dict[str, Any], str] | None:
        for _ in range(64):
            raw = self._r.hget(profile_key(profile_id), "json")
            if not raw:
                return None
            view: dict[str, Any] = orjson.loads(raw)
            if "merged_into" not in view:
                return view, profile_key(profile_id)
            profile_id = view["merged_into"]
        return None

    def lookup(self, id_type: str, value: str) -> dict[str, Any] | None:
        profile_id = self._r.get(identifier_key(id_type, value))
        return self.get(profile_id.decode()) if profile_id else None  # type: ignore[union-attr]

    def scan(self, page: int = 1000) -> Iterator[dict[str, Any]]:
        """Every profile, fetched a page of keys per pipeline round-trip."""
        keys: list[Any] = []
        for key in self._r.scan_iter(match=f"{PREFIX}profile:*", count=page):
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
        for raw in pipe.execute():
            if raw:
                view = orjson.loads(raw)
                if "merged_into" not in view:  # redirects are not profiles
                    yield view


class AsyncRedisView:
    """Asynchronous reader (the read API): the same answers as RedisProfileView."""

    def __init__(self, client: aredis.Redis) -> None:
        self._r = client

    @classmethod
    def from_url(cls, url: str) -> AsyncRedisView:
        return cls(aredis.Redis.from_url(url, socket_timeout=5))

    async def close(self) -> None:
        await self._r.aclose()

    async def ping(self) -> bool:
        return bool(await self._r.ping())

    async def get(self, profile_id: str) -> dict[str, Any] | None:
        found = await self._follow(profile_id)
        return found[0] if found else None

    async def why(self, profile_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        found = await self._follow(profile_id)
        if found is None:
            return None
        view, key = found
        raw = await self._r.hget(key, "why")
        return view, (orjson.loads(raw) if raw else {})

    async def lookup(self, id_type: str, value: str) -> dict[str, Any] | None:
        found = await self._r.get(identifier_key(id_type, value))
        if not found:
            return None
        return await self.get(found.decode() if isinstance(found, bytes) else str(found))

    async def _follow(self, profile_id: str) -> tuple[dict[str, Any], str] | None:
        for _ in range(64):
            raw = await self._r.hget(profile_key(profile_id), "json")
            if not raw:
                return None
            view: dict[str, Any] = orjson.loads(raw)
            if "merged_into" not in view:
                return view, profile_key(profile_id)
            profile_id = view["merged_into"]
        return None


def write_args(view: Mapping[str, Any], why: Mapping[str, Any] | None) -> list[Any]:
    """ARGV of the write-if-newer script for one profile view (or redirect)."""
    return [
        view["version"],
        orjson.dumps(view, option=ORJSON_OPTS),
        orjson.dumps(why, option=ORJSON_OPTS) if why is not None else "",
    ]


def index_entries(view: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(key, profile id) for every identifier a live view holds; none for a redirect."""
    for id_type, values in view.get("identifiers", {}).items():
        for value in values:
            yield identifier_key(id_type, value), view["profile_id"]


def applied(results: Sequence[Any]) -> int:
    """How many script calls in a pipeline's results wrote (1), not SETs (True)."""
    return sum(1 for r in results if r == 1 and not isinstance(r, bool))


class RedisWriter:
    """A synchronous writer with the same guard (``unifier view rebuild``)."""

    def __init__(self, client: redis.Redis) -> None:
        self._r = client
        self._script = client.register_script(_WRITE_IF_NEWER)

    def write(
        self,
        profiles: Iterable[Mapping[str, Any]],
        whys: Mapping[str, Mapping[str, Any]] | None = None,
        index: bool = True,
    ) -> int:
        pipe = self._r.pipeline(transaction=False)
        whys = whys or {}
        for view in profiles:
            pid = view["profile_id"]
            self._script(keys=[profile_key(pid)], args=write_args(view, whys.get(pid)), client=pipe)
            if index:
                for key, pid in index_entries(view):
                    pipe.set(key, pid)
        return applied(pipe.execute())


class AsyncRedisWriter:
    """The worker's writer: one pipeline round-trip per batch of profiles."""

    def __init__(self, client: aredis.Redis) -> None:
        self._r = client
        self._script = client.register_script(_WRITE_IF_NEWER)

    @classmethod
    def from_url(cls, url: str) -> AsyncRedisWriter:
        return cls(aredis.Redis.from_url(url, socket_timeout=10))

    async def write(
        self, profiles: Iterable[dict[str, Any]], whys: Mapping[str, dict[str, Any]] | None = None
    ) -> int:
        """Write profiles (view form), their explanations (``whys`` by profile id) and
        their identifier index; returns how many profile writes were applied (older
        versions are skipped by the script)."""
        pipe = self._r.pipeline(transaction=False)
        count = 0
        whys = whys or {}
        for view in profiles:
            pid = view["profile_id"]
            args = write_args(view, whys.get(pid))
            await self._script(keys=[profile_key(pid)], args=args, client=pipe)
            for key, pid in index_entries(view):
                pipe.set(key, pid)
            count += 1
        if count == 0:
            return 0
        return applied(await pipe.execute())

    async def close(self) -> None:
        await self._r.aclose()
