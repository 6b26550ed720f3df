"""The latest unified view, served from Redis.

Layout (all keys under ``unifier:``):
- ``unifier:profile:<profile_id>`` — hash with ``version`` and ``json`` (the
  documented profile form). Written by a Lua script that refuses an older
  version, so a lagging writer can never move the view backwards.
- ``unifier:id:<type>:<normalized value>`` — the profile id that holds the identifier.
  Written in the same script, and only ever to a smaller id: every profile that ever
  held an identifier ends up merged into one, and a merge keeps the smaller id, so the
  smallest holder is the one that lasts. A write from a profile merged away since (a
  record replayed after a restart, a lagging worker) cannot take the key back.
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
# Profiles per pipeline round trip when the worker writes a batch: enough to amortize
# the round trip, few enough that one batch does not hold Redis (or the client's
# buffers) for long.
PIPELINE_PROFILES = 500

# Identifier keys name the smallest profile id that has held them (see the module
# docstring). Byte order, as Python orders profile ids: Lua's `<` on strings follows
# the server's locale.
_INDEX = """
local function smaller(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
local function index(first, pid)
  for i = first, #KEYS do
    local cur = redis.call('GET', KEYS[i])
    if not cur or smaller(pid, cur) then redis.call('SET', KEYS[i], pid) end
  end
end
"""

# KEYS[1] profile hash, KEYS[2..] the identifier keys of its identifiers (none for a
# redirect); ARGV[1] version, ARGV[2] json, ARGV[3] why ('' = none: a redirect keeps no
# explanation of the profile it was), ARGV[4] the profile id.
# 1 = written, 0 = older, ignored (its identifier keys are still offered).
_WRITE_IF_NEWER = (
    _INDEX
    + """
index(2, ARGV[4])
local cur = redis.call('HGET', KEYS[1], 'version')
if cur and tonumber(cur) > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'json', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'why', ARGV[3])
else redis.call('HDEL', KEYS[1], 'why') end
return 1
"""
)

# KEYS the identifier keys of one profile, ARGV[1] its id (`unifier view rebuild`).
_INDEX_ONLY = _INDEX + "index(1, ARGV[1])\nreturn 1\n"


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


# One round trip for a read (the read API's hot path): from an identifier key or a
# profile id to the survivor's JSON, redirects followed in the server. A redirect is
# recognised by its exact form (redirect_view: profile_id, then merged_into), never by
# a search inside a profile, whose traits may hold any text.
_READ = """
local pid = ARGV[2]
if ARGV[1] == 'id' then
  pid = redis.call('GET', ARGV[2])
  if not pid then return false end
end
for _ = 1, 64 do
  local raw = redis.call('HGET', ARGV[3] .. 'profile:' .. pid, 'json')
  if not raw then return false end
  local into = string.match(raw, '^{"profile_id":"[^"]*","merged_into":"([^"]*)"')
  if not into then return raw end
  pid = into
end
return false
"""


class AsyncRedisView:
    """Asynchronous reader (the read API): the same answers as RedisProfileView, the
    profiles as the stored JSON."""

    def __init__(self, client: aredis.Redis) -> None:
        self._r = client
        self._read = client.register_script(_READ)

    async def get_json(self, profile_id: str) -> bytes | None:
        """The profile's stored JSON as is (redirects followed), in one round trip."""
        raw = await self._read(args=["profile", profile_id, PREFIX])
        return raw or None

    async def lookup_json(self, id_type: str, value: str) -> bytes | None:
        """The JSON of the profile that holds the identifier, in one round trip."""
        raw = await self._read(args=["id", identifier_key(id_type, value), PREFIX])
        return raw or None

    @classmethod
    def from_url(cls, url: str) -> AsyncRedisView:
        return cls(aredis.Redis.from_url(url, socket_timeout=5))

    async def close(self) -> None:
        await self._r.aclose()

    async def ping(self) -> bool:
        return bool(await self._r.ping())

    async def why(self, profile_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        found = await self._follow(profile_id)
        if found is None:
            return None
        view, key = found
        raw = await self._r.hget(key, "why")
        return view, (orjson.loads(raw) if raw else {})

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
    """ARGV of the write-if-newer script for one profile view (or redirect). A redirect
    keeps no explanation, whatever ``why`` says: one batch can hold a merged-away
    profile's last live view (with its explanation) and its redirect."""
    if "merged_into" in view:
        why = None
    return [
        view["version"],
        orjson.dumps(view, option=ORJSON_OPTS),
        orjson.dumps(why, option=ORJSON_OPTS) if why is not None else "",
        view["profile_id"],
    ]


def identifier_keys(view: Mapping[str, Any]) -> list[str]:
    """The index keys of every identifier a live view holds; none for a redirect."""
    return [
        identifier_key(id_type, value)
        for id_type, values in view.get("identifiers", {}).items()
        for value in values
    ]


def applied(results: Sequence[Any]) -> int:
    """How many profile writes in a pipeline's results were applied (not older)."""
    return sum(1 for r in results if r == 1)


class RedisWriter:
    """A synchronous writer with the same guards (``unifier view rebuild``)."""

    def __init__(self, client: redis.Redis) -> None:
        self._r = client
        self._script = client.register_script(_WRITE_IF_NEWER)
        self._index = client.register_script(_INDEX_ONLY)

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
            keys = [profile_key(pid), *(identifier_keys(view) if index else ())]
            self._script(keys=keys, args=write_args(view, whys.get(pid)), client=pipe)
        return applied(pipe.execute())

    def index(self, views: Iterable[Mapping[str, Any]]) -> int:
        """Offer every identifier of these live views to the index; how many were offered."""
        pipe = self._r.pipeline(transaction=False)
        offered = 0
        for view in views:
            keys = identifier_keys(view)
            if keys:
                self._index(keys=keys, args=[view["profile_id"]], client=pipe)
                offered += len(keys)
        pipe.execute()
        return offered


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
        queued = done = 0
        whys = whys or {}
        for view in profiles:
            pid = view["profile_id"]
            keys = [profile_key(pid), *identifier_keys(view)]
            await self._script(keys=keys, args=write_args(view, whys.get(pid)), client=pipe)
            queued += 1
            if queued == PIPELINE_PROFILES:  # bounded: a huge batch is several round trips
                done += applied(await pipe.execute())
                queued = 0
        if queued:
            done += applied(await pipe.execute())
        return done

    async def close(self) -> None:
        await self._r.aclose()
