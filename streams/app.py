"""``create_app(settings)``: the Faust app with its topics, table and stages.

No module-level app: the entry point builds Settings once and passes them here.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import faust

from config.settings import Settings
from streams import fetch, flush, graph, metrics, offsets, ops, recovery, route

log = logging.getLogger("unifier.worker")


def create_app(settings: Settings) -> Any:
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{s.strip()}" for s in settings.bootstrap_servers.split(",")],
        store="memory://",
        datadir=str(settings.state_dir / "worker-data"),
        # Topics are created by `unifier topics create`, never implicitly (a broker
        # would give them a default partition count).
        topic_allow_declare=False,
        topic_disable_leader=True,
        topic_partitions=settings.internal_partitions,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(settings.session_timeout_s / 6, 0.5),
        broker_commit_interval=settings.commit_interval_s,
        consumer_auto_offset_reset="earliest",
        producer_max_batch_size=settings.faust_producer_max_batch_size,
        table_standby_replicas=0,
        web_enabled=False,
    )

    def raw_topic(name: str, partitions: int | None = None) -> Any:
        return app.topic(
            name,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=partitions,
            internal=False,
        )

    source = raw_topic(settings.topic_touchpoints, settings.touchpoint_partitions)
    topics = {
        "identity": raw_topic(settings.topic_identity, settings.internal_partitions),
        "profile": raw_topic(settings.topic_profile_ops, settings.internal_partitions),
        "dlq": raw_topic(settings.topic_dlq, 1),
        "merges": raw_topic(settings.topic_profile_merges, settings.internal_partitions),
        "updates": raw_topic(settings.topic_profile_updates, settings.internal_partitions),
    }

    def raw_table(name: str) -> Any:
        return app.Table(
            name,
            partitions=settings.internal_partitions,
            # Declared both on the schema and on the table itself: with only schema=,
            # recovery decoded the raw keys as JSON and came back empty.
            schema=faust.Schema(
                key_type=str, value_type=bytes, key_serializer="raw", value_serializer="raw"
            ),
            key_type=str,
            value_type=bytes,
        )

    identity = raw_table("identity")  # identifier -> the profile that owns it
    profiles = raw_table("profiles")  # profile id -> state, or a redirect

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def count_rebalance(sender: Any, assigned: Any, **kwargs: Any) -> None:
        metrics.REBALANCES.inc()

    route.register(app, settings, source, topics["identity"], topics["dlq"])
    graph.register(app, settings, topics, identity, profiles)
    inputs = [settings.topic_touchpoints, settings.topic_identity, settings.topic_profile_ops]
    offsets.install(app, inputs)
    flush.install()  # a commit waits for every table write to be sent
    fetch.install(settings.consumer_fetch_max_wait_ms)  # Faust hard-codes 1500 ms
    recovery.install(settings.bootstrap_servers)  # changelogs read to their true end
    ops.install(app, settings, inputs)

    async def _ready(sender: Any, *args: Any, **kwargs: Any) -> None:
        # `unifier stack` and the tests wait for this line: assigned and recovered.
        assigned = sender.consumer.assignment() if sender.consumer else set()
        log.info("unifier worker ready: %d partitions assigned", len(assigned))

    # mode's Signal typing wants a `signal=` keyword in the receiver's signature.
    cast(Any, app.on_rebalance_complete).connect(_ready)

    return app
