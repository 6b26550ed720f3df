"""The latest unified view, served from Redis — one server or a Redis Cluster.

Layout (all keys under ``unifier:``; ``{t}`` is the hash tag of the profile's bucket,
``sinks.redisconn``):
- ``unifier:profile:{t}<profile_id>`` — hash with ``version`` and ``json`` (the
  documented profile form). Written by a script that refuses an older version, so a
  lagging writer can never move the view backwards.
- ``unifier:id:<type>:<normalized value>`` — the profile id that holds the identifier.
  Written by its own script, and only ever to a smaller id (``rank``): every profile
  that ever held an identifier ends up merged into one, a merge keeps the smaller id,
  and a split moves an identifier to a part, smaller than the profile it left — so the
  smallest holder is the one that lasts. A write from a profile merged away since (a
  record replayed after a restart, a lagging worker) cannot take the key back.
- A profile merged into another keeps its hash as a redirect
  (``{"profile_id", "merged_into"}``): reads follow it to the survivor.
- ``unifier:segment:<name>:{t}`` — the members of a segment in bucket ``t``: written by
  the profile's own script, so the sets always agree with the views.

**No script spans two slots**, so all of it runs on a Redis Cluster. What one script
did across keys is now an order of writes, each atomic on its own key (one
pipeline round per step, and a cluster runs a step's writes on every shard at once):

1. redirects of profiles merged away, then
2. live views (with their segment sets: same bucket), then
3. identifier keys, offered only for views written in step 2 (not older, not erased), then
4. the mark ('ix') that a view's identifier keys are all written: a later touch that
   changes no identifier writes the profile alone only if Redis holds the version it
   read *and* that mark — a worker killed between steps 2 and 3 leaves a view whose
   keys are missing, and the restarted worker's next touch writes it whole.

Why this order keeps the two promises without cross-slot atomicity:
- *Versions never go backwards*: each profile hash guards its own version.
- *A merged-away id resolves to its survivor, and a read never finds the loser once
  the merge shows*: the loser's redirect is in place (step 1) before the survivor's
  merged view (step 2), and an identifier key names a profile only once that
  profile's hash exists (step 3 after 2). A redirect can name a survivor whose very
  first view is being written in step 2 of the same batch: readers wait a moment for
  it (``serve.view``) instead of answering "not found".

The worker writes whole batches this way (``RedisViewSink``, a ``sinks.base.Sink``);
readers are in ``serve.view``.
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
from sinks.redisconn import (
    ALL_TAGS,
    TRANSIENT,
    Call,
    Lua,
    connect_async,
    run_scripts,
    run_scripts_sync,
    tag,
)

log = logging.getLogger("unifier.view")

PREFIX = "unifier:"
# Profiles per pipeline round trip when the worker writes a batch: enough to amortize
# the round trip, few enough that one batch does not hold Redis (or the client's
# buffers) for long.
PIPELINE_PROFILES = 500

# An identifier key names the smallest profile id that has held it (see the module
# docstring), in the order of ``profiles.graph.state.rank``: more splits behind an id
# (``~`` in it) first, then byte order, as Python orders strings (Lua's `<` on strings
# follows the server's locale). KEYS[1] the identifier key, ARGV[1] the profile id.
_INDEX = Lua(
    """
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
local cur = redis.call('GET', KEYS[1])
if not cur or smaller(ARGV[1], cur) then redis.call('SET', KEYS[1], ARGV[1]) return 1 end
return 0
"""
)

# A profile's segments are in its hash ('segs', names joined by newlines) and it is a
# member of its bucket's set of each: ARGV prefix .. name .. ':' .. tag, the tag of
# KEYS[1]'s bucket — one slot with the profile's hash.
_SEGMENTS = """
local function names(s)
  local t = {}
  for n in string.gmatch(s, "[^\\n]+") do t[n] = true end
  return t
end
local function move_segments(pid, new, prefix, tag)
  local old = names(redis.call('HGET', KEYS[1], 'segs') or '')
  local now = names(new)
  for n in pairs(old) do
    if not now[n] then redis.call('SREM', prefix .. n .. ':' .. tag, pid) end
  end
  for n in pairs(now) do
    if not old[n] then redis.call('SADD', prefix .. n .. ':' .. tag, pid) end
  end
  if new == '' then redis.call('HDEL', KEYS[1], 'segs')
  else redis.call('HSET', KEYS[1], 'segs', new) end
end
"""

#: ``_WRITE_IF_NEWER``'s answers.
WRITTEN, OLDER, LOST, ERASED = 1, 0, 2, 3

# KEYS[1] profile hash; ARGV[1] version, ARGV[2] json, ARGV[3] why ('' = none: a
# redirect keeps no explanation of the profile it was; '=' = unchanged, kept), ARGV[4]
# the profile id, ARGV[5] with '=': the version the writer read the profile at (Redis
# should hold it), ARGV[6] its segments (newline-joined), ARGV[7] the prefix of segment
# keys, ARGV[8] the profile's hash tag. Answers WRITTEN; OLDER (ignored, identifier
# keys included: they are of a state Redis moved past); ERASED (a tombstone: nothing
# written, and its identifier keys are not offered); LOST when '=' but Redis does not
# hold the version the writer read: none or an older one (it lost writes), or a newer
# one (written before a crash from a state the restarted worker's table never got: its
# explanation may be one the table never had), or the right one whose identifier keys
# were never confirmed written (field 'ix', ``_INDEXED``: a worker killed between a
# view write and its index keys) — nothing written, send it whole. A '=' write keeps
# 'ix' current (its identifiers are those of the version confirmed).
_WRITE_IF_NEWER = Lua(
    _SEGMENTS
    + """
if redis.call('HEXISTS', KEYS[1], 'erased') == 1 then return 3 end
local cur = redis.call('HGET', KEYS[1], 'version')
if cur and tonumber(cur) > tonumber(ARGV[1]) then return 0 end
if ARGV[3] == '=' and (not cur or tonumber(cur) ~= tonumber(ARGV[5])
    or redis.call('HGET', KEYS[1], 'ix') ~= cur) then return 2 end
move_segments(ARGV[4], ARGV[6], ARGV[7], ARGV[8])
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'json', ARGV[2])
if ARGV[3] == '=' then redis.call('HSET', KEYS[1], 'ix', ARGV[1]) return 1 end
redis.call('HDEL', KEYS[1], 'ix')
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'why', ARGV[3])
else redis.call('HDEL', KEYS[1], 'why') end
return 1
"""
)

# KEYS[1] a profile hash, ARGV[1] the version whose identifier keys were all offered:
# recorded ('ix') if the hash still holds that version. Only then may a later touch
# that leaves the identifiers as they were skip them ('=' above).
_INDEXED = Lua(
    """
if redis.call('HGET', KEYS[1], 'version') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'ix', ARGV[1]) return 1
end
return 0
"""
)

# Erasure: KEYS[1] the profile hash; ARGV[1] the profile id, ARGV[2] the prefix of
# segment keys, ARGV[3] its tag. It leaves its segments' sets. The hash becomes a
# tombstone ('erased', no view): a write of the profile replayed later (a worker
# re-reading records after a crash) is refused whole, index keys included. The index
# keys that name it go next (``_DROP``).
_ERASE = Lua(
    _SEGMENTS
    + """
move_segments(ARGV[1], '', ARGV[2], ARGV[3])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'erased', '1')
return 1
"""
)

# KEYS[1] an identifier key, ARGV[1] a profile id: removed if it names that profile (an
# erased profile's identifiers; one a rule made its profile let go).
_DROP = Lua(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0
"""
)

PROFILE_PREFIX = f"{PREFIX}profile:"


def profile_key(profile_id: str) -> str:
    return f"{PROFILE_PREFIX}{tag(profile_id)}{profile_id}"


def profile_id_of(key: bytes | str) -> str:
    """The profile id of a profile key (``profile_key``'s inverse)."""
    text = key.decode() if isinstance(key, bytes) else key
    return text[len(PROFILE_PREFIX) :].split("}", 1)[1]


def identifier_key(id_type: str, value: str) -> str:
    """The index key of an identifier. A sealed one (``profiles.sealed``) is indexed by
    its token alone (``~TOKEN``), which readers compute from the plain value."""
    if value.startswith("~") and (token := token_of(value)) is not None:
        value = f"~{token}"
    return f"{PREFIX}id:{id_type}:{value}"


#: ``segment_keys(name)``: the sets of the ids of a segment's members, one per bucket.
SEGMENT_PREFIX = f"{PREFIX}segment:"
#: The definitions in force (segment name -> its JSON), as the workers hold them: what
#: the read API lists (``GET /v1/segments``).
DEFINITIONS_KEY = f"{PREFIX}segments"


def segment_keys(name: str) -> list[str]:
    """The member sets of a segment, one per bucket (``sinks.redisconn``)."""
    return [f"{SEGMENT_PREFIX}{name}:{t}" for t in ALL_TAGS]


def segment_sizes_sync(client: redis.Redis, names: Sequence[str]) -> dict[str, int]:
    """How many members each segment has (its buckets' sets summed)."""
    pipe = client.pipeline(transaction=False)
    for name in names:
        for key in segment_keys(name):
            pipe.scard(key)
    counts = pipe.execute()
    n = len(ALL_TAGS)
    return {name: sum(counts[i * n : (i + 1) * n]) for i, name in enumerate(names)}


def segment_members_sync(client: redis.Redis, name: str, page: int = 1000) -> Iterable[str]:
    """Every member id of a segment, a bucket at a time."""
    for key in segment_keys(name):
        for member in client.sscan_iter(key, count=page):
            yield member.decode() if isinstance(member, bytes) else str(member)


# KEYS[1] the definitions hash; ARGV name, JSON pairs: the hash replaced by them.
_REPLACE_HASH = Lua(
    """
redis.call('DEL', KEYS[1])
for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""
)


async def write_definitions(client: aredis.Redis, definitions: Mapping[str, bytes]) -> None:
    """Replace the definitions readers see with these, at once (one script on one key:
    redis-py's cluster transactions leave a connection behind for the next loop)."""
    args = [x for name, value in sorted(definitions.items()) for x in (name, value)]
    await run_scripts(client, [(_REPLACE_HASH, [DEFINITIONS_KEY], args)])


# The view's completeness (``streams.heal``): each bucket has a hash,
# ``unifier:view:{t}``, where the worker that owns a profile partition marks it
# complete (field ``c:<partition>``) once all its profiles are in Redis. A server (or
# a cluster's shard) that lost its data lost the marks of its buckets with it.
def marks_key(t: str) -> str:
    return f"{PREFIX}view:{t}"


def complete_field(partition: int) -> str:
    return f"c:{partition}"


def token_field(partition: int) -> str:
    return f"t:{partition}"


ALL_MARKS = [marks_key(t) for t in ALL_TAGS]

#: While a worker rebuilds the view: {"done", "total"} profiles (expires if it stops).
PROGRESS_KEY = f"{PREFIX}view:rebuilding"


def missing_from(marks: Sequence[Sequence[Any]], partitions: Sequence[int]) -> list[int]:
    """The partitions some bucket has no mark of; ``marks``: each bucket's HMGET of
    the partitions' complete fields."""
    return [p for i, p in enumerate(partitions) if any(row[i] is None for row in marks)]


def describe_view(missing: Sequence[int], progress: Any, partitions: int) -> str | None:
    """None when every partition's view is complete; else what a reader should be told
    (``/ready``, the status page): from the missing partitions and the rebuild's
    progress key."""
    if not missing:
        return None
    if progress is not None:
        done = orjson.loads(progress)
        return f"view rebuilding ({done['done']:,} of {done['total']:,} profiles)"
    return f"view incomplete: {len(missing)} of {partitions} partitions not written yet"


def _marks_pipe(client: Any, partitions: Sequence[int]) -> Any:
    pipe = client.pipeline(transaction=False)
    fields = [complete_field(p) for p in partitions]
    for key in ALL_MARKS:
        pipe.hmget(key, fields)
    return pipe


async def missing_partitions(client: aredis.Redis, partitions: Sequence[int]) -> list[int]:
    """The partitions whose view is not complete in every bucket (one round trip per shard)."""
    if not partitions:
        return []
    return missing_from(await _marks_pipe(client, partitions).execute(), partitions)


def missing_partitions_sync(client: redis.Redis, partitions: Sequence[int]) -> list[int]:
    if not partitions:
        return []
    return missing_from(_marks_pipe(client, partitions).execute(), partitions)


async def view_state(client: aredis.Redis, partitions: int) -> str | None:
    """``describe_view`` of a Redis server or cluster."""
    missing = await missing_partitions(client, range(partitions))
    progress = await client.get(PROGRESS_KEY) if missing else None
    return describe_view(missing, progress, partitions)


def view_state_sync(client: redis.Redis, partitions: int) -> str | None:
    missing = missing_partitions_sync(client, list(range(partitions)))
    progress = client.get(PROGRESS_KEY) if missing else None
    return describe_view(missing, progress, partitions)


def mark_complete_sync(client: redis.Redis, partitions: Iterable[int], value: bytes) -> None:
    """Mark partitions complete in every bucket (tests; the workers mark theirs with
    ``streams.heal``'s script)."""
    mapping = {complete_field(p): value for p in partitions}
    if not mapping:
        return
    pipe = client.pipeline(transaction=False)
    for key in ALL_MARKS:
        pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]
    pipe.execute()


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
    pid = view["profile_id"]
    return [
        view["version"],
        orjson.dumps(view, option=ORJSON_OPTS),
        encoded,
        pid,
        read_version,
        "\n".join(view.get("segments", ())),
        SEGMENT_PREFIX,
        tag(pid),
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
    return sum(1 for r in results if r == WRITTEN)


class Plan:
    """One batch of view writes as the ordered steps of the module docstring."""

    def __init__(
        self,
        views: Iterable[Mapping[str, Any]],
        whys: Mapping[str, Any],
        same: Mapping[str, int],
        index: bool = True,
    ) -> None:
        self.redirects: list[Mapping[str, Any]] = []
        self.live: list[Mapping[str, Any]] = []
        for view in views:
            (self.redirects if "merged_into" in view else self.live).append(view)
        self.whys, self.same, self.index = whys, same, index

    def write_calls(self, views: Sequence[Mapping[str, Any]]) -> list[Call]:
        calls: list[Call] = []
        for view in views:
            pid = view["profile_id"]
            if pid in self.same:
                args = write_args(view, KEEP, self.same[pid])
            else:
                args = write_args(view, self.whys.get(pid))
            calls.append((_WRITE_IF_NEWER, [profile_key(pid)], args))
        return calls

    def index_calls(self, views: Sequence[Mapping[str, Any]], results: Sequence[Any]) -> list[Call]:
        """Identifier keys of the views written — not older, not erased, not lost (sent
        whole again), not unchanged. An older view's keys are not offered: its
        identifiers are those of a state Redis has moved past, and one of them may have
        been let go since (a block split, ``_DROP``) — offering it would bring its key
        back. The newer version's own writer offered its keys, or, killed before it
        could, left no 'ix' mark, so the next touch writes that profile whole."""
        if not self.index:
            return []
        return index_calls(
            view
            for view, r in zip(views, results, strict=True)
            if r == WRITTEN and view["profile_id"] not in self.same
        )

    def indexed_calls(
        self, views: Sequence[Mapping[str, Any]], results: Sequence[Any]
    ) -> list[Call]:
        """After ``index_calls`` ran: record that the views written whole have their
        identifier keys (a '=' write records it itself)."""
        if not self.index:
            return []
        return indexed_calls(
            view
            for view, r in zip(views, results, strict=True)
            if r == WRITTEN and view["profile_id"] not in self.same
        )


def indexed_calls(views: Iterable[Mapping[str, Any]]) -> list[Call]:
    return [(_INDEXED, [profile_key(v["profile_id"])], [v["version"]]) for v in views]


def _chunks(items: Sequence[Any], size: int = PIPELINE_PROFILES) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def index_calls(views: Iterable[Mapping[str, Any]]) -> list[Call]:
    return [
        (_INDEX, [key], [view["profile_id"]]) for view in views for key in identifier_keys(view)
    ]


class RedisWriter:
    """A synchronous writer with the same guards (``unifier view rebuild``)."""

    def __init__(self, client: redis.Redis) -> None:
        self._r = client

    def write(
        self,
        profiles: Iterable[Mapping[str, Any]],
        whys: Mapping[str, Mapping[str, Any]] | None = None,
        index: bool = True,
    ) -> int:
        plan = Plan(profiles, whys or {}, {}, index)
        done = 0
        for part in _chunks(plan.redirects):
            done += applied(run_scripts_sync(self._r, plan.write_calls(part)))
        for part in _chunks(plan.live):
            results = run_scripts_sync(self._r, plan.write_calls(part))
            done += applied(results)
            run_scripts_sync(self._r, plan.index_calls(part, results))
            run_scripts_sync(self._r, plan.indexed_calls(part, results))
        return done

    def index(self, views: Iterable[Mapping[str, Any]]) -> int:
        """Offer every identifier of these live views to the index; how many were offered."""
        offered = 0
        for part in _chunks(list(views)):
            calls = index_calls(part)
            run_scripts_sync(self._r, calls)
            run_scripts_sync(self._r, indexed_calls(part))
            offered += len(calls)
        return offered


class AsyncRedisWriter:
    """The worker's writer: a few pipeline rounds per batch of profiles (the steps of
    the module docstring)."""

    def __init__(self, client: aredis.Redis) -> None:
        self._r = client

    async def unindex(self, dropped: Iterable[Unindexed]) -> int:
        """Remove the index keys of identifiers their profile let go, if they name it."""
        calls: list[Call] = []
        n = 0
        for u in dropped:
            calls += [(_DROP, [identifier_key(*i.split(":", 1))], [u.profile]) for i in u.ids]
            n += 1
        await run_scripts(self._r, calls)
        return n

    async def erase(self, erased: Iterable[Erased]) -> int:
        """Remove erased profiles: their hashes (a tombstone stays), their segment
        memberships, then the index keys that name them."""
        erased = list(erased)
        tombstones: list[Call] = [
            (_ERASE, [profile_key(e.profile)], [e.profile, SEGMENT_PREFIX, tag(e.profile)])
            for e in erased
        ]
        await run_scripts(self._r, tombstones)
        drops: list[Call] = [
            (_DROP, [identifier_key(*i.split(":", 1))], [e.profile]) for e in erased for i in e.ids
        ]
        await run_scripts(self._r, drops)
        return len(erased)

    @property
    def client(self) -> aredis.Redis:
        return self._r

    @classmethod
    def from_url(cls, url: str, cluster: bool | None = None) -> AsyncRedisWriter:
        return cls(connect_async(url, cluster))

    async def write(
        self,
        profiles: Iterable[dict[str, Any]],
        whys: Mapping[str, Any] | None = None,
        same_identity: Mapping[str, int] | None = None,
    ) -> int:
        """Write profiles (view form), their explanations (``whys`` by profile id) and
        their identifier index — but for the ids in ``same_identity``, whose index and
        explanation Redis has already; returns how many profile writes were applied
        (older versions are skipped by the script)."""
        plan = Plan(profiles, whys or {}, same_identity or {})
        done = 0
        for part in _chunks(plan.redirects):
            done += applied(await run_scripts(self._r, plan.write_calls(part)))
        lost: list[Mapping[str, Any]] = []
        for part in _chunks(plan.live):
            results = await run_scripts(self._r, plan.write_calls(part))
            done += applied(results)
            await run_scripts(self._r, plan.index_calls(part, results))
            await run_scripts(self._r, plan.indexed_calls(part, results))
            lost += [view for view, r in zip(part, results, strict=True) if r == LOST]
        if lost:  # Redis lost them: written whole, index and explanation included
            done += await self.write([dict(v) for v in lost], whys, {})
        return done

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
    def from_url(cls, url: str, cluster: bool | None = None) -> RedisViewSink:
        return cls(AsyncRedisWriter.from_url(url, cluster))

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
            except TRANSIENT as exc:
                log.warning("Redis write failed (%s); retrying in %.1fs", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_delay)

    async def close(self) -> None:
        await self._writer.close()
