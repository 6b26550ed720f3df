"""The latest unified view, served from Redis.

Layout (all keys under ``unifier:``):
- ``unifier:profile:<profile_id>`` — hash with ``version`` and ``json`` (the
  documented profile form). Written by a Lua script that refuses an older
  version, so a lagging writer can never move the view backwards.
- ``unifier:id:<type>:<normalized value>`` — the profile id that holds the identifier.
  Written in the same script, and only ever to a smaller id (``rank``): every profile
  that ever held an identifier ends up merged into one, a merge keeps the smaller id,
  and a split moves an identifier to a part, smaller than the profile it left — so the
  smallest holder is the one that lasts. A write from a profile merged away since (a
  record replayed after a restart, a lagging worker) cannot take the key back.
- A profile merged into another keeps ``unifier:profile:<id>`` as a redirect
  (``{"profile_id", "merged_into"}``): reads follow it to the survivor.

The worker writes whole batches in one pipeline (``RedisViewSink``, a
``sinks.base.Sink``); readers are in ``serve.view``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson
import redis
import redis.asyncio as aredis

from profiles.graph.messages import Erased, Unindexed
from profiles.projection import redirect_view
from profiles.sealed import token_of
from schemas.codec import ORJSON_OPTS
from sinks.base import ChangeBatch, Delivery

log = logging.getLogger("unifier.view")

PREFIX = "unifier:"
# Profiles per pipeline round trip when the worker writes a batch: enough to amortize
# the round trip, few enough that one batch does not hold Redis (or the client's
# buffers) for long.
PIPELINE_PROFILES = 500

# Identifier keys name the smallest profile id that has held them (see the module
# docstring), in the order of ``profiles.graph.state.rank``: more splits behind an id
# (``~`` in it) first, then byte order, as Python orders strings (Lua's `<` on strings
# follows the server's locale).
_INDEX = """
local function splits(s)
  local _, n = string.gsub(s, "~", "")
  return n
end
local function smaller(a, b)
  local sa, sb = splits(a), splits(b)
  if sa ~= sb then return sa > sb end
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

# A profile's segments are in its hash ('segs', names joined by newlines) and it is a
# member of the set of each (segment_key): written with the view, so the sets always
# agree with the views (an older view refused leaves them too). The set keys are not
# among KEYS: one Redis server holds them all (a cluster needs hash tags, issue #22).
_SEGMENTS = """
local function names(s)
  local t = {}
  for n in string.gmatch(s, "[^\\n]+") do t[n] = true end
  return t
end
local function move_segments(pid, new, prefix)
  local old = names(redis.call('HGET', KEYS[1], 'segs') or '')
  local now = names(new)
  for n in pairs(old) do if not now[n] then redis.call('SREM', prefix .. n, pid) end end
  for n in pairs(now) do if not old[n] then redis.call('SADD', prefix .. n, pid) end end
  if new == '' then redis.call('HDEL', KEYS[1], 'segs')
  else redis.call('HSET', KEYS[1], 'segs', new) end
end
"""

# KEYS[1] profile hash, KEYS[2..] the identifier keys of its identifiers (none for a
# redirect, or when they did not change); ARGV[1] version, ARGV[2] json, ARGV[3] why
# ('' = none: a redirect keeps no explanation of the profile it was; '=' = unchanged,
# kept), ARGV[4] the profile id, ARGV[5] with '=': the version the writer read the
# profile at (Redis should hold it). 1 = written, 0 = older, ignored (its identifier
# keys are still offered), 2 = '=' but Redis does not hold the version the writer read:
# none or an older one (it lost writes), or a newer one (written before a crash from a
# state the restarted worker's table never got: its explanation may be one the table
# never had) — nothing written, send it whole. ARGV[6] its segments (newline-joined),
# ARGV[7] the prefix of segment keys.
_WRITE_IF_NEWER = (
    _INDEX
    + _SEGMENTS
    + """
if redis.call('HEXISTS', KEYS[1], 'erased') == 1 then return 0 end
index(2, ARGV[4])
local cur = redis.call('HGET', KEYS[1], 'version')
if cur and tonumber(cur) > tonumber(ARGV[1]) then return 0 end
if ARGV[3] == '=' and (not cur or tonumber(cur) ~= tonumber(ARGV[5])) then return 2 end
move_segments(ARGV[4], ARGV[6], ARGV[7])
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'json', ARGV[2])
if ARGV[3] == '=' then return 1 end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'why', ARGV[3])
else redis.call('HDEL', KEYS[1], 'why') end
return 1
"""
)

# Erasure: KEYS[1] the profile hash, KEYS[2..] the index keys of its identifiers (each
# removed only if it names this profile); ARGV[1] the profile id, ARGV[2] the prefix of
# segment keys. It leaves its segments' sets. The hash becomes a tombstone ('erased',
# no view): a write of the profile replayed later (a worker re-reading records after a
# crash) is refused whole, index keys included.
_ERASE = (
    _SEGMENTS
    + """
move_segments(ARGV[1], '', ARGV[2])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'erased', '1')
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i]) end
end
return 1
"""
)

# KEYS identifier keys a profile let go (a rule blocks them now), ARGV[1] its id: each is
# removed if it names it.
_UNINDEX = """
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i]) end
end
return 1
"""

# KEYS the identifier keys of one profile, ARGV[1] its id (`unifier view rebuild`).
_INDEX_ONLY = _INDEX + "index(1, ARGV[1])\nreturn 1\n"


def profile_key(profile_id: str) -> str:
    return f"{PREFIX}profile:{profile_id}"


def identifier_key(id_type: str, value: str) -> str:
    """The index key of an identifier. A sealed one (``profiles.sealed``) is indexed by
    its token alone (``~TOKEN``), which readers compute from the plain value."""
    if value.startswith("~") and (token := token_of(value)) is not None:
        value = f"~{token}"
    return f"{PREFIX}id:{id_type}:{value}"


#: ``segment_key(name)``: the set of the ids of a segment's members.
SEGMENT_PREFIX = f"{PREFIX}segment:"
#: The definitions in force (segment name -> its JSON), as the workers hold them: what
#: the read API lists (``GET /v1/segments``).
DEFINITIONS_KEY = f"{PREFIX}segments"


def segment_key(name: str) -> str:
    return f"{SEGMENT_PREFIX}{name}"


async def write_definitions(client: aredis.Redis, definitions: Mapping[str, bytes]) -> None:
    """Replace the definitions readers see with these (one transaction)."""
    pipe = client.pipeline(transaction=True)
    pipe.delete(DEFINITIONS_KEY)
    if definitions:
        pipe.hset(DEFINITIONS_KEY, mapping=dict(definitions))  # type: ignore[arg-type]
    await pipe.execute()


# The view's completeness (``streams.heal``): a marker per profile partition, set by
# the worker that owns it once all its profiles are in Redis — gone when Redis loses
# its data.
def marker_key(partition: int) -> str:
    return f"{PREFIX}view:complete:{partition}"


def token_key(partition: int) -> str:
    return f"{PREFIX}view:token:{partition}"


#: While a worker rebuilds the view: {"done", "total"} profiles (expires if it stops).
PROGRESS_KEY = f"{PREFIX}view:rebuilding"


def missing_partitions(markers: list[Any], partitions: list[int]) -> list[int]:
    return [p for p, m in zip(partitions, markers, strict=True) if m is None]


def describe_view(markers: list[Any], progress: Any, partitions: int) -> str | None:
    """None when every partition's view is complete; else what a reader should be told
    (``/ready``, the status page): from the markers and the rebuild's progress key."""
    missing = missing_partitions(markers, list(range(partitions)))
    if not missing:
        return None
    if progress is not None:
        done = orjson.loads(progress)
        return f"view rebuilding ({done['done']:,} of {done['total']:,} profiles)"
    return f"view incomplete: {len(missing)} of {partitions} partitions not written yet"


def _state_keys(partitions: int) -> list[str]:
    return [*(marker_key(p) for p in range(partitions)), PROGRESS_KEY]


async def view_state(client: aredis.Redis, partitions: int) -> str | None:
    """``describe_view`` of a Redis server, in one round trip."""
    *markers, progress = await client.mget(_state_keys(partitions))
    return describe_view(markers, progress, partitions)


def view_state_sync(client: redis.Redis, partitions: int) -> str | None:
    *markers, progress = client.mget(_state_keys(partitions))
    return describe_view(markers, progress, partitions)


#: ``write_args``'s ``why`` for a profile whose explanation did not change.
KEEP = object()


def write_args(view: Mapping[str, Any], why: Any, read_version: int = 0) -> list[Any]:
    """ARGV of the write-if-newer script for one profile view (or redirect). A redirect
    keeps no explanation, whatever ``why`` says: one batch can hold a merged-away
    profile's last live view (with its explanation) and its redirect. ``why`` is
    ``KEEP`` when the explanation Redis holds is still right."""
    if "merged_into" in view:
        why = None
    if why is KEEP:
        encoded: Any = "="
    else:
        encoded = orjson.dumps(why, option=ORJSON_OPTS) if why is not None else ""
    return [
        view["version"],
        orjson.dumps(view, option=ORJSON_OPTS),
        encoded,
        view["profile_id"],
        read_version,
        "\n".join(view.get("segments", ())),
        SEGMENT_PREFIX,
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
        self._erase = client.register_script(_ERASE)
        self._unindex = client.register_script(_UNINDEX)

    async def unindex(self, dropped: Iterable[Unindexed]) -> int:
        """Remove the index keys of identifiers their profile let go, if they name it."""
        pipe = self._r.pipeline(transaction=False)
        pipe.scripts.add(self._unindex)  # type: ignore[arg-type]
        n = 0
        for u in dropped:
            keys = [identifier_key(*i.split(":", 1)) for i in u.ids]
            pipe.pipeline_execute_command("EVALSHA", self._unindex.sha, len(keys), *keys, u.profile)
            n += 1
        if n:
            await pipe.execute()
        return n

    async def erase(self, erased: Iterable[Erased]) -> int:
        """Remove erased profiles: their hashes, the index keys that name them, their
        segment memberships."""
        pipe = self._r.pipeline(transaction=False)
        pipe.scripts.add(self._erase)  # type: ignore[arg-type]
        n = 0
        for e in erased:
            keys = [profile_key(e.profile), *(identifier_key(*i.split(":", 1)) for i in e.ids)]
            args = [e.profile, SEGMENT_PREFIX]
            pipe.pipeline_execute_command("EVALSHA", self._erase.sha, len(keys), *keys, *args)
            n += 1
        if n:
            await pipe.execute()
        return n

    @property
    def client(self) -> aredis.Redis:
        return self._r

    @classmethod
    def from_url(cls, url: str) -> AsyncRedisWriter:
        return cls(aredis.Redis.from_url(url, socket_timeout=10))

    def _pipeline(self) -> Any:
        pipe = self._r.pipeline(transaction=False)
        # redis-py loads it at execute if Redis lost it
        pipe.scripts.add(self._script)  # type: ignore[arg-type]  # an AsyncScript, as it wants
        return pipe

    async def write(
        self,
        profiles: Iterable[dict[str, Any]],
        whys: Mapping[str, Any] | None = None,
        same_identity: Mapping[str, int] | None = None,
    ) -> int:
        """Write profiles (view form), their explanations (``whys`` by profile id) and
        their identifier index — but for the ids in ``same_identity``, whose index and
        explanation Redis has already; returns how many profile writes were applied
        (older versions are skipped by the script). Commands are queued on the
        pipeline directly: through ``Script.__call__`` each cost an await."""
        whys = whys or {}
        views = list(profiles)
        done, lost = await self._write(views, whys, same_identity or {})
        if lost:  # Redis lost them: written whole, index and explanation included
            again, _ = await self._write(lost, whys, {})
            done += again
        return done

    async def _write(
        self, views: list[dict[str, Any]], whys: Mapping[str, Any], same: Mapping[str, int]
    ) -> tuple[int, list[dict[str, Any]]]:
        sha = self._script.sha
        done, lost = 0, []
        for start in range(0, len(views), PIPELINE_PROFILES):  # bounded round trips
            part = views[start : start + PIPELINE_PROFILES]
            pipe = self._pipeline()
            for view in part:
                pid = view["profile_id"]
                if pid in same:
                    keys, args = [profile_key(pid)], write_args(view, KEEP, same[pid])
                else:
                    keys = [profile_key(pid), *identifier_keys(view)]
                    args = write_args(view, whys.get(pid))
                pipe.pipeline_execute_command("EVALSHA", sha, len(keys), *keys, *args)
            results = await pipe.execute()
            done += applied(results)
            lost += [view for view, r in zip(part, results, strict=True) if r == 2]
        return done, lost

    async def close(self) -> None:
        await self._r.aclose()


class RedisViewSink:
    """The Redis view as a sink: every profile of a batch (and the redirect of every
    profile its winners absorbed) in pipelines, each write refused if older than what
    Redis holds. Redis down is back-pressure, not data loss: ``flush`` retries until it
    answers (the stage's lag shows it)."""

    name = "redis-view"

    def __init__(self, writer: AsyncRedisWriter, max_delay_s: float = 5.0) -> None:
        self._writer = writer
        self._views: list[dict[str, Any]] = []
        self._whys: dict[str, dict[str, Any]] = {}
        self._same: dict[str, int] = {}  # explanation and index unchanged: read version
        self._erased: list[Erased] = []
        self._unindexed: list[Unindexed] = []
        self._max_delay = max_delay_s

    @classmethod
    def from_url(cls, url: str) -> RedisViewSink:
        return cls(AsyncRedisWriter.from_url(url))

    async def write(self, batch: ChangeBatch) -> None:
        for change in batch.changes:
            self._views.append(change.view)
            if not change.identity_changed:
                self._same[change.profile_id] = change.read_version
            if change.why is not None:  # kept: sent if Redis turns out to have lost it
                self._whys[change.profile_id] = change.why
        # The winner writes the loser's redirect too: the view agrees with profile-merges
        # (which the winner publishes) as soon as the merge is made, whatever happens to
        # the loser's table afterwards. The loser writes the same redirect later.
        self._views += [redirect_view(m.loser, m.winner) for m in batch.merges]
        self._erased += batch.erased
        self._unindexed += batch.unindexed

    async def flush(self) -> Delivery:
        views, self._views = self._views, []
        whys, self._whys = self._whys, {}
        same, self._same = self._same, {}
        erased, self._erased = self._erased, []
        dropped, self._unindexed = self._unindexed, []
        if not views and not erased and not dropped:
            return Delivery(self.name)
        started = time.perf_counter()
        written = await self._retrying(lambda: self._writer.write(views, whys, same))
        if erased:  # after the views: a redirect written by this batch goes too
            await self._retrying(lambda: self._writer.erase(erased))
        if dropped:
            await self._retrying(lambda: self._writer.unindex(dropped))
        return Delivery(self.name, written, len(views) - written, time.perf_counter() - started)

    async def _retrying(self, call: Callable[[], Awaitable[int]]) -> int:
        delay = 0.1
        while True:
            try:
                return await call()
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                log.warning("Redis write failed (%s); retrying in %.1fs", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_delay)

    async def close(self) -> None:
        await self._writer.close()
