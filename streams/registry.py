"""Which worker owns which partitions, for ``unifier lag`` and the status page.

A Kafka broker says it when asked to describe the consumer group; the embedded one
describes groups without their members (ENVIRONMENT.md). So each worker also says it
itself: every ``INTERVAL_S`` it writes ``unifier:workers:<name>`` in Redis — its name,
host, pid and the partitions it owns, by topic — with a time to live of ``TTL_S``. A
worker that stops deletes its key; one that dies stops refreshing it, and it expires.
Readers are in ``serve.lag`` (``registered_owners``).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

import orjson

from config.settings import Settings
from sinks.redis_view import PREFIX
from sinks.redisconn import UNAVAILABLE, connect_async

log = logging.getLogger("unifier.registry")

WORKERS_PREFIX = f"{PREFIX}workers:"
INTERVAL_S = 2.0
TTL_S = 10


def worker_name(settings: Settings) -> str:
    return settings.worker_name or f"{socket.gethostname()}/{os.getpid()}"


def entry(name: str, owned: list[tuple[str, int]]) -> bytes:
    partitions: dict[str, list[int]] = {}
    for topic, p in sorted(owned):
        partitions.setdefault(topic, []).append(p)
    return orjson.dumps(
        {"name": name, "host": socket.gethostname(), "pid": os.getpid(), "at": time.time(),
         "partitions": partitions}
    )  # fmt: skip


def install(app: Any, settings: Settings) -> None:
    """Refresh this worker's entry on the worker's loop; delete it when it stops."""
    name = worker_name(settings)
    key = f"{WORKERS_PREFIX}{name}"
    client: list[Any] = []

    def redis() -> Any:
        if not client:
            client.append(connect_async(settings.redis_url, settings.redis_cluster, timeout=2))
        return client[0]

    @app.timer(interval=INTERVAL_S)
    async def register_worker() -> None:
        owned = [(tp.topic, tp.partition) for tp in app.consumer.assignment()]
        try:
            await redis().set(key, entry(name, owned), ex=TTL_S)
        except UNAVAILABLE as exc:  # Redis away: the next tick tries again
            log.debug("worker registry not written: %s", exc)

    @app.on_before_shutdown.connect
    async def unregister_worker(app: Any, **kwargs: Any) -> None:
        if client:
            try:
                await client[0].delete(key)
                await client[0].aclose()
            except UNAVAILABLE:
                pass
