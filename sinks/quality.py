"""The data-quality KPIs in Redis, kept by the profile stage as profiles change
(``profiles.quality``).

Layout (under ``unifier:quality:``; ``{t}`` a bucket's hash tag, ``sinks.redisconn``):

* ``p:{t}<profile>`` — hash: ``v`` the profile version last counted, ``f`` its tokens,
  ``g`` the match tokens that version dropped;
* ``counts:{t}`` — hash: token -> how many live profiles of the bucket have it (``n``:
  profiles); the report sums the buckets;
* ``dup:{u}<match token>`` — set of the profiles with that match key (``{u}``: the
  token's own bucket); ``dups:{u}`` — the bucket's match tokens held by two profiles or
  more (duplicate candidates);
* ``fresh`` — hash: source -> time (ms) of the newest event seen from it;
* ``day:<YYYY-MM-DD>`` — hash: merges, splits, ``refused:<rule>`` that day (UTC);
* ``snap:<YYYY-MM-DD>:{t}`` — ``counts:{t}`` as the day's first batch found them (and
  ``_dups``: the size of ``dups:{t}``): the trend.

A profile's tokens are replaced by a script that refuses an older version and applies
only the difference to its bucket's totals, so a replayed batch counts nothing twice.
The duplicate sets live in the match token's bucket, not the profile's (two profiles
that share a match key are in any two buckets): the profile's script answers which
match tokens to add the profile to and remove it from, and a second script per token
does it — idempotent, and a replay of the same version answers the same again, so a
crash between the two steps is mended by the replay.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aredis

from profiles.privacy import Sealer
from profiles.quality import MATCH_TRAITS, tokens_of
from sinks.base import ChangeBatch, Delivery
from sinks.redis_view import PREFIX
from sinks.redisconn import ALL_TAGS, TRANSIENT, Call, Lua, run_scripts, tag

log = logging.getLogger("unifier.quality")

Q = f"{PREFIX}quality:"
FRESH = f"{Q}fresh"
#: How long the daily counters and snapshots are kept.
KEEP_DAYS_S = 40 * 86400


def profile_key(pid: str) -> str:
    return f"{Q}p:{tag(pid)}{pid}"


def counts_key(t: str) -> str:
    return f"{Q}counts:{t}"


def dups_key(t: str) -> str:
    return f"{Q}dups:{t}"


def dup_key(match_token: str) -> str:
    return f"{Q}dup:{tag(match_token)}{match_token}"


def day_key(day: str) -> str:
    return f"{Q}day:{day}"


def snap_key(day: str, t: str) -> str:
    return f"{Q}snap:{day}:{t}"


def today(now_s: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if now_s is None else now_s, UTC).strftime("%Y-%m-%d")


# KEYS[1] the profile's hash, KEYS[2] its bucket's counts; ARGV[1] version, ARGV[2]
# tokens (newline-joined; '' when it is gone). Answers {counted (1/0), match tokens to
# join (newline-joined), match tokens to leave}: those that changed; a replay of the
# version last counted answers all it holds and all that version dropped, counting
# nothing (a crash between this script and the duplicate sets' is mended so).
_COUNT = Lua(
    """
local function set(s)
  local t = {}
  for x in string.gmatch(s, "[^\\n]+") do t[x] = true end
  return t
end
local function matches(t)
  local out = {}
  for x in pairs(t) do if string.sub(x, 1, 2) == 'm:' then out[#out + 1] = x end end
  return table.concat(out, '\\n')
end
local cur = redis.call('HGET', KEYS[1], 'v')
if cur and tonumber(cur) > tonumber(ARGV[1]) then return {0, '', ''} end
local old = set(redis.call('HGET', KEYS[1], 'f') or '')
if cur and tonumber(cur) == tonumber(ARGV[1]) then
  return {0, matches(old), redis.call('HGET', KEYS[1], 'g') or ''}
end
local new = set(ARGV[2])
local gone, came = {}, {}
for x in pairs(old) do
  if not new[x] then
    redis.call('HINCRBY', KEYS[2], x, -1)
    gone[x] = true
  end
end
for x in pairs(new) do
  if not old[x] then
    redis.call('HINCRBY', KEYS[2], x, 1)
    came[x] = true
  end
end
local g = matches(gone)
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'f', ARGV[2], 'g', g)
return {1, matches(came), g}
"""
)

# KEYS[1] a match token's set, KEYS[2] its bucket's dups; ARGV[1] '+' or '-', ARGV[2]
# the profile, ARGV[3] the match token.
_DUP = Lua(
    """
if ARGV[1] == '+' then redis.call('SADD', KEYS[1], ARGV[2])
else redis.call('SREM', KEYS[1], ARGV[2]) end
if redis.call('SCARD', KEYS[1]) >= 2 then redis.call('SADD', KEYS[2], ARGV[3])
else redis.call('SREM', KEYS[2], ARGV[3]) end
return 1
"""
)

# KEYS[1] fresh; ARGV source, time pairs: each kept if newer.
_FRESH = Lua(
    """
for i = 1, #ARGV, 2 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if not cur or tonumber(cur) < tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 1
"""
)

# KEYS[1] a bucket's counts, KEYS[2] its snapshot of the day, KEYS[3] its dups; ARGV[1]
# seconds to keep it, ARGV[2] now (ms).
_SNAPSHOT = Lua(
    """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local all = redis.call('HGETALL', KEYS[1])
redis.call('HSET', KEYS[2], '_at', ARGV[2], '_dups', redis.call('SCARD', KEYS[3]))
for i = 1, #all, 2 do redis.call('HSET', KEYS[2], all[i], all[i + 1]) end
redis.call('EXPIRE', KEYS[2], ARGV[1])
return 1
"""
)


def _split(raw: Any) -> list[str]:
    text = raw.decode() if isinstance(raw, bytes) else str(raw or "")
    return [x for x in text.split("\n") if x]


class QualitySink:
    """A ``sinks.base.Sink`` among the views: after each batch's table write, every
    touched profile's tokens (with its version), the day's merges, splits and refused
    links, and each source's newest event."""

    name = "quality"

    def __init__(self, client: aredis.Redis, secret: bytes, sealer: Sealer | None) -> None:
        self._r = client
        self._secret = secret
        self._sealer = sealer
        self._snapped: str | None = None  # the day whose snapshots were taken
        self._pending: list[tuple[str, int, str]] = []
        self._day: Counter[str] = Counter()
        self._newest: dict[str, int] = {}
        # Sealed name traits as last opened, by profile: most changes do not touch them.
        self._opened: dict[str, tuple[tuple[Any, ...], list[Any]]] = {}

    def _open(self, pid: str) -> Any:
        sealer = self._sealer
        if sealer is None:
            return None

        def opened(values: list[Any]) -> list[Any]:
            seen = self._opened.get(pid)
            if seen is not None and seen[0] == tuple(values):
                return seen[1]
            plain = sealer.open_many(values)
            if len(self._opened) > 100_000:
                self._opened.clear()
            self._opened[pid] = (tuple(values), plain)
            return plain

        return opened

    async def write(self, batch: ChangeBatch) -> None:
        for change in batch.changes:
            view = change.view
            pid = change.profile_id
            traits = view.get("traits") or {}
            needs = any(t in traits for t in MATCH_TRAITS)
            tokens = tokens_of(view, self._secret, self._open(pid) if needs else None)
            self._pending.append((pid, int(view["version"]), "\n".join(tokens)))
        for gone in batch.erased:
            self._pending.append((gone.profile, gone.version, ""))
        self._day["merges"] += len(batch.merges)
        self._day["splits"] += len(batch.splits)
        for _profile, refusal in batch.refusals:
            self._day[f"refused:{refusal.rule}"] += 1
        for source, at in batch.newest.items():
            self._newest[source] = max(at, self._newest.get(source, 0))

    async def flush(self) -> Delivery:
        pending, self._pending = self._pending, []
        day, self._day = self._day, Counter()
        newest, self._newest = self._newest, {}
        if not pending and not +day and not newest:
            return Delivery(self.name)
        started = time.perf_counter()
        delay = 0.1
        while True:  # Redis away is back-pressure, as for the view (sinks.redis_view)
            try:
                results = await self._send(pending, day, newest)
                break
            except TRANSIENT as exc:
                log.warning("Redis write of the quality counts failed (%s); retrying in %.1fs",
                            type(exc).__name__, delay)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        written = sum(1 for r in results if r[0] == 1)
        return Delivery(self.name, written, len(pending) - written, time.perf_counter() - started)

    async def _send(
        self, pending: list[tuple[str, int, str]], day: Counter[str], newest: dict[str, int]
    ) -> list[Any]:
        date = today()
        if self._snapped != date:  # the day's first batch: each bucket's snapshot
            now_ms = int(time.time() * 1000)
            snaps: list[Call] = [
                (_SNAPSHOT, [counts_key(t), snap_key(date, t), dups_key(t)], [KEEP_DAYS_S, now_ms])
                for t in ALL_TAGS
            ]
            await run_scripts(self._r, snaps)
            self._snapped = date
        counts: list[Call] = [
            (_COUNT, [profile_key(pid), counts_key(tag(pid))], [version, tokens])
            for pid, version, tokens in pending
        ]
        results = await run_scripts(self._r, counts)
        dups: list[Call] = []
        for (pid, _, _), (_, into, out) in zip(pending, results, strict=True):
            for op, tokens in (("-", out), ("+", into)):
                for m in _split(tokens):
                    dups.append((_DUP, [dup_key(m), dups_key(tag(m))], [op, pid, m]))
        others: list[Call] = []
        if newest:
            args: list[Any] = [x for s, at in sorted(newest.items()) for x in (s, at)]
            others.append((_FRESH, [FRESH], args))
        await run_scripts(self._r, dups + others)
        if +day:
            pipe = self._r.pipeline(transaction=False)
            for field, n in (+day).items():
                pipe.hincrby(day_key(date), field, n)
            pipe.expire(day_key(date), KEEP_DAYS_S)
            await pipe.execute()
        return results

    async def close(self) -> None:
        await self._r.aclose()
