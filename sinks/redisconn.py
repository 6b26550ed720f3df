"""Connections to the Redis that holds the view — one server or a Redis Cluster — and
the two things every reader and writer needs on both: hash tags and scripts run in
pipelines.

**One server or a cluster.** ``UNIFIER_REDIS_URL`` names one node; with
``UNIFIER_REDIS_CLUSTER=true`` (or unset, when the server says ``cluster_enabled:1``)
the client discovers the others from it and sends every command to the shard that
owns its key.

**Buckets.** Everything about one profile — its hash, its quality counts, its share of
each segment's member set, the view's completeness marks — lives under one of
``BUCKETS`` hash tags (``{3f}``), chosen from the profile id (``bucket``): a script
that touches a profile and its segment sets touches one slot, so it runs atomically on
a cluster as on one server. Identifier keys are not tagged: each is written alone
(``sinks.redis_view``). 256 buckets spread evenly over up to ~64 shards.

**Scripts.** ``run_scripts`` queues EVALSHA calls on a pipeline; a shard that does not
know a script yet (a new node, a restart, a failover) answers NOSCRIPT, and only those
calls are sent again after the script is loaded on every primary — no SCRIPT EXISTS
round trip before each pipeline.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis
import redis.asyncio as aredis
from redis.exceptions import (
    ClusterDownError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    TryAgainError,
)

log = logging.getLogger("unifier.redis")

#: Redis away for a while — a server restarting, a cluster's shard down or failing
#: over, a slot not covered yet: writers wait and retry (back-pressure, no data lost).
TRANSIENT: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    ClusterDownError,  # MasterDownError too
    TryAgainError,
    RedisClusterException,  # SlotNotCoveredError, "cannot be connected"
    OSError,
)
#: Any failure of Redis: readers that report instead of retrying catch these.
UNAVAILABLE: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError)

#: Hash tags the per-profile keys are spread over (part of the key layout: changing it
#: needs a view rebuild).
BUCKETS = 256


@functools.lru_cache(maxsize=1 << 16)
def bucket(text: str) -> int:
    """The bucket of a profile id (or of a match token): a 16-bit polynomial hash of its
    UTF-8 bytes, which the read script computes the same way in Lua."""
    h = 0
    for b in text.encode():
        h = (h * 31 + b) & 0xFFFF
    return h % BUCKETS


def tag_of(n: int) -> str:
    return f"{{{n:02x}}}"


def tag(text: str) -> str:
    """The hash tag (``{3f}``) of a profile id's bucket."""
    return tag_of(bucket(text))


ALL_TAGS = [tag_of(n) for n in range(BUCKETS)]

# Lua of ``bucket``: the numbers stay below 2^21, exact in Lua's doubles.
LUA_TAG = f"""
local function tag(s)
  local h = 0
  for i = 1, #s do h = (h * 31 + string.byte(s, i)) % 65536 end
  return string.format('{{%02x}}', h % {BUCKETS})
end
"""


@functools.lru_cache(maxsize=64)
def _server_is_cluster(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        return str(client.info("cluster").get("cluster_enabled", 0)) == "1"
    finally:
        client.close()


def is_cluster(url: str, setting: bool | None = None) -> bool:
    """Whether ``url`` is a node of a Redis Cluster: the setting when given, else the
    server's answer (asked once per process). A server that does not answer now is
    taken for one server, with a warning: a deployment on a cluster sets
    UNIFIER_REDIS_CLUSTER=true, so a worker started while Redis is away still gets a
    cluster client (the embedded stack and the compose profile do)."""
    if setting is not None:
        return setting
    try:
        return _server_is_cluster(url)
    except UNAVAILABLE as exc:
        log.warning(
            "could not ask Redis whether it is a cluster (%s): using it as one server; "
            "set UNIFIER_REDIS_CLUSTER to say",
            type(exc).__name__,
        )
        return False


def connect(url: str, cluster: bool | None = None, timeout: float = 10.0) -> redis.Redis:
    """A synchronous client of ``url`` (a cluster client when it is one). Typed as
    ``redis.Redis``: the cluster client answers the same commands this code uses."""
    if is_cluster(url, cluster):
        return cast(redis.Redis, redis.RedisCluster.from_url(url, socket_timeout=timeout))
    return redis.Redis.from_url(url, socket_timeout=timeout)


def connect_async(url: str, cluster: bool | None = None, timeout: float = 10.0) -> aredis.Redis:
    """An asyncio client of ``url`` (see ``connect``)."""
    if is_cluster(url, cluster):
        return cast(aredis.Redis, aredis.RedisCluster.from_url(url, socket_timeout=timeout))
    return aredis.Redis.from_url(url, socket_timeout=timeout)


def is_cluster_client(client: Any) -> bool:
    return isinstance(client, redis.RedisCluster | aredis.RedisCluster)


def mget(client: redis.Redis, keys: Sequence[str]) -> list[Any]:
    """MGET of keys in any slots (a cluster sends one per slot)."""
    if isinstance(client, redis.RedisCluster):
        return list(client.mget_nonatomic(keys))
    return list(client.mget(keys))


async def amget(client: aredis.Redis, keys: Sequence[str]) -> list[Any]:
    if isinstance(client, aredis.RedisCluster):
        return list(await client.mget_nonatomic(keys))
    return list(await client.mget(keys))


@dataclass(frozen=True)
class Lua:
    """A script, known by its SHA1."""

    body: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.body.encode()).hexdigest())


#: One call: (script, keys, args). A script's keys must share one slot.
Call = tuple[Lua, Sequence[Any], Sequence[Any]]


def _queue(pipe: Any, calls: Iterable[Call]) -> None:
    # A single-server pipeline's execute_command would run at once while WATCHing; the
    # cluster pipeline only has execute_command, which queues.
    queue = getattr(pipe, "pipeline_execute_command", None) or pipe.execute_command
    for script, keys, args in calls:
        queue("EVALSHA", script.sha, len(keys), *keys, *args)


def _checked(results: list[Any], calls: Sequence[Call]) -> list[int]:
    """Indices of the calls the server did not have the script of; raises any other error."""
    missing = []
    for i, r in enumerate(results):
        if isinstance(r, NoScriptError):
            missing.append(i)
        elif isinstance(r, Exception):
            raise r
    return missing


async def run_scripts(client: aredis.Redis, calls: Sequence[Call]) -> list[Any]:
    """Run the calls in one pipeline (one round trip per shard); their results."""
    if not calls:
        return []
    pipe = client.pipeline(transaction=False)
    _queue(pipe, calls)
    results = list(await pipe.execute(raise_on_error=False))
    missing = _checked(results, calls)
    if missing:
        for body in {calls[i][0].body for i in missing}:
            await client.script_load(body)  # every primary of a cluster
        again = await run_scripts(client, [calls[i] for i in missing])
        for i, r in zip(missing, again, strict=True):
            results[i] = r
    return results


def run_scripts_sync(client: redis.Redis, calls: Sequence[Call]) -> list[Any]:
    """``run_scripts`` for synchronous clients."""
    if not calls:
        return []
    pipe = client.pipeline(transaction=False)
    _queue(pipe, calls)
    results = list(pipe.execute(raise_on_error=False))
    missing = _checked(results, calls)
    if missing:
        for body in {calls[i][0].body for i in missing}:
            client.script_load(body)
        again = run_scripts_sync(client, [calls[i] for i in missing])
        for i, r in zip(missing, again, strict=True):
            results[i] = r
    return results
