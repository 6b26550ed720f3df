"""The data-quality KPIs in Redis, kept by the profile stage as profiles change
(``profiles.quality``).

Layout (under ``unifier:quality:``):

* ``p:<profile>`` — hash: ``v`` the profile version last counted, ``f`` its tokens;
* ``counts`` — hash: token -> how many live profiles have it (``n``: profiles);
* ``dup:<match token>`` — set of the profiles with that match key; ``dups`` — the
  match tokens held by two profiles or more (duplicate candidates);
* ``fresh`` — hash: source -> time (ms) of the newest event seen from it;
* ``day:<YYYY-MM-DD>`` — hash: merges, splits, ``refused:<rule>`` that day (UTC);
* ``snap:<YYYY-MM-DD>`` — ``counts`` as the day's first batch found them: the trend.

A profile's tokens are replaced by a script that refuses an older version and applies
only the difference to the totals, so a replayed batch counts nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import redis
import redis.asyncio as aredis

from profiles.privacy import Sealer
from profiles.quality import MATCH_TRAITS, tokens_of
from sinks.base import ChangeBatch, Delivery
from sinks.redis_view import PREFIX

log = logging.getLogger("unifier.quality")

Q = f"{PREFIX}quality:"
COUNTS, DUPS, FRESH = f"{Q}counts", f"{Q}dups", f"{Q}fresh"
DUP_PREFIX = f"{Q}dup:"
#: How long the daily counters and snapshots are kept.
KEEP_DAYS_S = 40 * 86400


def profile_key(pid: str) -> str:
    return f"{Q}p:{pid}"


def day_key(day: str) -> str:
    return f"{Q}day:{day}"


def snap_key(day: str) -> str:
    return f"{Q}snap:{day}"


def today(now_s: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if now_s is None else now_s, UTC).strftime("%Y-%m-%d")


# KEYS[1] the profile's hash, KEYS[2] counts, KEYS[3] dups; ARGV[1] profile id, ARGV[2]
# version, ARGV[3] tokens (newline-joined; '' when it is gone), ARGV[4] dup prefix.
_COUNT = """
local cur = redis.call('HGET', KEYS[1], 'v')
if cur and tonumber(cur) >= tonumber(ARGV[2]) then return 0 end
local function set(s)
  local t = {}
  for x in string.gmatch(s, "[^\\n]+") do t[x] = true end
  return t
end
local old = set(redis.call('HGET', KEYS[1], 'f') or '')
local new = set(ARGV[3])
for x in pairs(old) do
  if not new[x] then
    redis.call('HINCRBY', KEYS[2], x, -1)
    if string.sub(x, 1, 2) == 'm:' then
      local k = ARGV[4] .. x
      redis.call('SREM', k, ARGV[1])
      if redis.call('SCARD', k) < 2 then redis.call('SREM', KEYS[3], x) end
    end
  end
end
for x in pairs(new) do
  if not old[x] then
    redis.call('HINCRBY', KEYS[2], x, 1)
    if string.sub(x, 1, 2) == 'm:' then
      local k = ARGV[4] .. x
      redis.call('SADD', k, ARGV[1])
      if redis.call('SCARD', k) >= 2 then redis.call('SADD', KEYS[3], x) end
    end
  end
end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'f', ARGV[3])
return 1
"""

# KEYS[1] fresh; ARGV source, time pairs: each kept if newer.
_FRESH = """
for i = 1, #ARGV, 2 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if not cur or tonumber(cur) < tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 1
"""

# KEYS[1] counts, KEYS[2] the day's snapshot, KEYS[3] dups; ARGV[1] seconds to keep it,
# ARGV[2] now (ms).
_SNAPSHOT = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local all = redis.call('HGETALL', KEYS[1])
redis.call('HSET', KEYS[2], '_at', ARGV[2], '_dups', redis.call('SCARD', KEYS[3]))
for i = 1, #all, 2 do redis.call('HSET', KEYS[2], all[i], all[i + 1]) end
redis.call('EXPIRE', KEYS[2], ARGV[1])
return 1
"""


class QualitySink:
    """A ``sinks.base.Sink`` among the views: after each batch's table write, every
    touched profile's tokens (with its version), the day's merges, splits and refused
    links, and each source's newest event."""

    name = "quality"

    def __init__(self, client: aredis.Redis, secret: bytes, sealer: Sealer | None) -> None:
        self._r = client
        self._secret = secret
        self._sealer = sealer
        self._count = client.register_script(_COUNT)
        self._fresh = client.register_script(_FRESH)
        self._snapshot = client.register_script(_SNAPSHOT)
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
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                log.warning("Redis write of the quality counts failed (%s); retrying in %.1fs",
                            type(exc).__name__, delay)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        written = sum(1 for r in results[1 : 1 + len(pending)] if r == 1)
        return Delivery(self.name, written, len(pending) - written, time.perf_counter() - started)

    async def _send(
        self, pending: list[tuple[str, int, str]], day: Counter[str], newest: dict[str, int]
    ) -> list[Any]:
        pipe = self._r.pipeline(transaction=False)
        for script in (self._count, self._fresh, self._snapshot):
            pipe.scripts.add(script)  # type: ignore[arg-type]
        date = today()
        pipe.pipeline_execute_command(
            "EVALSHA", self._snapshot.sha, 3, COUNTS, snap_key(date), DUPS, KEEP_DAYS_S,
            int(time.time() * 1000),
        )  # fmt: skip
        for pid, version, tokens in pending:
            pipe.pipeline_execute_command(
                "EVALSHA", self._count.sha, 3, profile_key(pid), COUNTS, DUPS, pid, version,
                tokens, DUP_PREFIX,
            )  # fmt: skip
        if +day:
            for field, n in (+day).items():
                pipe.hincrby(day_key(date), field, n)
            pipe.expire(day_key(date), KEEP_DAYS_S)
        if newest:
            args: list[Any] = [x for s, at in sorted(newest.items()) for x in (s, at)]
            pipe.pipeline_execute_command("EVALSHA", self._fresh.sha, 1, FRESH, *args)
        return list(await pipe.execute())

    async def close(self) -> None:
        await self._r.aclose()
