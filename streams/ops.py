"""A worker's operations endpoints, on ``UNIFIER_WORKER_METRICS_PORT``:

* ``/metrics`` — Prometheus (streams.metrics), plus the lag of each partition this
  worker owns, refreshed every few seconds;
* ``/health`` — the process answers;
* ``/ready`` — 200 only when its partitions are assigned and their tables recovered
  (no rebalance under way), both the broker and Redis answer, and the Redis view is
  complete (not being written again after Redis lost its data, ``streams.heal``);
  otherwise 503 with the reasons. A load balancer or an orchestrator can wait on it after a restart.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from aiohttp import web
from prometheus_client import Gauge

from config import httpmetrics
from config.settings import Settings
from sinks.redis_view import view_state
from sinks.redisconn import UNAVAILABLE, connect_async

log = logging.getLogger("unifier.ops")

LAG = Gauge(
    "unifier_consumer_lag",
    "Records not yet processed in each input partition this worker owns",
    ["topic", "partition"],
)
ASSIGNED = Gauge("unifier_assigned_partitions", "Input partitions this worker owns")
TABLE_KEYS = Gauge(
    "unifier_table_keys",
    "Entries in this worker's partitions of each table (identity: identifiers; "
    "profiles: profiles and redirects): what its memory grows with",
    ["table"],
)


async def _answers(host: str, port: int) -> bool:
    try:
        async with asyncio.timeout(2.0):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


def not_ready(app: Any, recovery: Any) -> list[str]:
    """Why the worker's own state is not ready (empty: it is)."""
    reasons = []
    if not recovery.completed.is_set():
        reasons.append("tables not recovered yet")
    if getattr(recovery, "in_recovery", False):
        reasons.append("recovering tables")
    if getattr(app, "rebalancing", False):
        reasons.append("rebalancing")
    return reasons


def install(app: Any, settings: Settings, inputs: list[str]) -> None:
    """Serve the endpoints from the worker's own loop, and keep the lag gauge fresh."""
    if settings.worker_metrics_port is None:
        return
    host, port = settings.worker_metrics_host, settings.worker_metrics_port
    broker_host, broker_port = settings.broker_address
    wanted = set(inputs)
    recovery = app.tables.recovery  # created here, in the worker's thread

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(request: web.Request) -> web.Response:
        reasons = not_ready(app, recovery)
        if not await _answers(broker_host, broker_port):
            reasons.append(f"broker {broker_host}:{broker_port} does not answer")
        client = connect_async(settings.redis_url, settings.redis_cluster, timeout=2)
        try:
            await client.ping()
            incomplete = await view_state(client, settings.internal_partitions)
            if incomplete is not None:  # Redis lost its data: streams.heal writes it again
                reasons.append(incomplete)
        except UNAVAILABLE:
            reasons.append("Redis does not answer")
        finally:
            await client.aclose()
        if reasons:
            return web.json_response({"status": "not ready", "reasons": reasons}, status=503)
        return web.json_response({"status": "ready"})

    web_app = web.Application(middlewares=[httpmetrics.middleware("worker")])
    web_app.router.add_get("/metrics", httpmetrics.metrics)
    web_app.router.add_get("/health", health)
    web_app.router.add_get("/ready", ready)
    # Its own thread and loop, started now: Faust starts app tasks only after the
    # first table recovery, and /health must answer (and /ready say "not recovered
    # yet") during a long one. The handlers only read the app's flags.
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(web_app, access_log=None)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, host, port).start())  # a taken port fails here
    threading.Thread(target=loop.run_forever, name="unifier-ops", daemon=True).start()
    log.info("metrics, health and readiness on http://%s:%d", host, port)

    @app.timer(interval=5.0)
    async def measure_lag() -> None:
        for name, table in app.tables.items():
            TABLE_KEYS.labels(name).set(len(table))
        consumer = app.consumer
        owned = [tp for tp in consumer.assignment() if tp.topic in wanted]
        ASSIGNED.set(len(owned))
        LAG.clear()
        for tp in owned:
            high = consumer.highwater(tp)
            committed = consumer._committed_offset.get(tp)
            if high is None or high < 0:
                continue
            LAG.labels(tp.topic, str(tp.partition)).set(max(high - (committed or 0), 0))
