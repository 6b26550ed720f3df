"""``create_app(settings)``: the Faust app — the topology's topics and tables, its
stages, their sinks, the Faust patches and the ops server.

No module-level app: the entry point builds Settings once and passes them here.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any, cast

import faust
import redis.asyncio as aredis

from config.settings import Settings
from profiles.configured import check, identity_rules, trait_rules
from profiles.quality import default_secret
from sinks.consent import PurposeTopicSink
from sinks.kafka import ProfileTopicsSink
from sinks.keys import sealer_for
from sinks.quality import QualitySink
from sinks.redis_view import RedisViewSink, write_definitions
from sinks.redisconn import UNAVAILABLE, connect_async
from streams import heal, identity, metrics, ops, profile, registry, route
from streams.messages import send_batches
from streams.patches import fetch, flush, offsets, recovery
from streams.privacy import ErasureLedger, Shredder
from streams.producer import DeliveryFailed, FastProducer, ProducedTopic
from streams.rules import LiveRules
from streams.segments import TICK_S, Definitions, Mirror, Published, Scheduler
from streams.snapshots import Snapshots
from streams.topology import Topology, topology

log = logging.getLogger("unifier.worker")


def _faust_app(settings: Settings) -> Any:
    return faust.App(
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


def _declare(app: Any, topo: Topology) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Faust topics (by stage name for stage inputs, by role for the others) and
    tables of the topology. Everything is raw bytes: the stages encode and decode."""

    def raw_topic(spec: Any) -> Any:
        return app.topic(
            spec.name,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=spec.partitions,
            internal=False,
        )

    topics = {
        "route": raw_topic(topo.touchpoints),
        "identity": raw_topic(topo.identity),
        "profile": raw_topic(topo.profile_ops),
        "dlq": raw_topic(topo.dlq),
        "merges": raw_topic(topo.profile_merges),
        "updates": raw_topic(topo.profile_updates),
    }
    tables = {
        name: app.Table(
            name,
            partitions=topo.identity.partitions,
            # Declared both on the schema and on the table itself: with only schema=,
            # recovery decoded the raw keys as JSON and came back empty.
            schema=faust.Schema(
                key_type=str, value_type=bytes, key_serializer="raw", value_serializer="raw"
            ),
            key_type=str,
            value_type=bytes,
        )
        for name in topo.tables
    }
    return topics, tables


def _register_stages(app: Any, settings: Settings, topo: Topology) -> dict[str, Any]:
    topics, tables = _declare(app, topo)
    producer = FastProducer(settings, on_fatal=_stop_worker)
    produced = {
        "identity": ProducedTopic(producer, topo.identity.name),
        "profile": ProducedTopic(producer, topo.profile_ops.name),
        "updates": ProducedTopic(producer, topo.profile_updates.name),
        "merges": ProducedTopic(producer, topo.profile_merges.name),
        "membership": ProducedTopic(producer, topo.segment_membership.name),
        "dlq": ProducedTopic(producer, topo.dlq.name),
        "erasures": ProducedTopic(producer, topo.erasures.name),
        "privacy": ProducedTopic(producer, topo.privacy.name),
        "audit": ProducedTopic(producer, topo.audit.name),
        **{f"purpose:{p}": ProducedTopic(producer, t.name) for p, t in topo.purposes.items()},
    }
    ledger = ErasureLedger(settings.bootstrap_servers, topo.erasures.name)
    rules = LiveRules(
        identity_rules(settings), settings.bootstrap_servers, topo.identity_rules.name
    )

    @app.on_before_shutdown.connect
    async def close_producer(app: Any, **kwargs: Any) -> None:
        ledger.stop()
        rules.stop()
        producer.close()

    stages = {s.name: s for s in topo.stages}
    take = settings.stage_batch_records, settings.stage_batch_wait_s
    max_bytes = settings.max_record_bytes
    route.register(
        app, settings, topics["route"], produced, topics["dlq"], tables["identity"], ledger, rules
    )
    shredder = Shredder(settings, produced["erasures"], produced["privacy"])
    identity.register(
        app,
        stages["identity"],
        topics,
        tables["identity"],
        rules,
        take,
        max_bytes,
        produced,
        shredder,
    )

    stage = stages["profile"]
    profile.register(
        app,
        stage,
        topics,
        tables["profiles"],
        (rules, trait_rules(settings)),
        profile_sinks(settings, topo, produced),
        take,
        max_bytes,
        produced,
        _segments(app, settings, topo, tables["profiles"], produced),
    )
    heal.install(
        app,
        tables["profiles"],
        trait_rules(settings),
        stage.partitions,
        stage.consumes,
        settings.redis_url,
        settings.redis_cluster,
    )
    return tables


def _segments(
    app: Any, settings: Settings, topo: Topology, table: Any, produced: dict[str, ProducedTopic]
) -> profile.SegmentRuntime:
    """The definitions follower and the scheduler of windows and backfills
    (``streams.segments``), on the worker's loop."""
    definitions = Definitions(settings.bootstrap_servers, topo.segments.name)
    stage = next(s for s in topo.stages if s.name == "profile")
    producer = produced["profile"].producer
    max_bytes = settings.max_record_bytes

    def owned() -> list[int]:
        if app.rebalancing or app.in_recovery:
            return []
        return [
            tp.partition for tp in app.assignor.assigned_actives() if tp.topic == stage.consumes
        ]

    async def send(groups: dict[int, list[Any]]) -> None:
        send_batches(produced["profile"], groups, max_bytes)
        await producer.delivered()

    scheduler = Scheduler(table, stage.partitions, definitions, owned, send)
    client: list[aredis.Redis] = []

    async def mirror_write(records: dict[str, bytes]) -> None:
        if not client:
            client.append(connect_async(settings.redis_url, settings.redis_cluster))
        await write_definitions(client[0], records)

    mirror = Mirror(definitions, mirror_write)

    @app.on_before_shutdown.connect
    async def stop_definitions(app: Any, **kwargs: Any) -> None:
        definitions.stop()
        for c in client:
            await c.aclose()

    @app.timer(interval=TICK_S)
    async def segment_windows() -> None:
        definitions.start()  # once: it follows the topic from then on
        if not definitions.ready.is_set():
            return
        try:
            sent = await scheduler.tick()
            if sent:
                metrics.SEGMENT_EVALUATIONS_SENT.labels(why="window").inc(sent)
        except DeliveryFailed:
            raise
        except Exception:  # the next tick tries again; the worker keeps serving
            log.exception("segment scheduler tick failed")
        try:
            await mirror.sync()
        except UNAVAILABLE as exc:  # Redis away: the next tick retries
            log.debug("segment definitions not mirrored to Redis: %s", exc)

    published = Published(
        settings.bootstrap_servers, topo.segment_membership.name, stage.partitions
    )
    return profile.SegmentRuntime(definitions, scheduler, published)


def _snapshots(app: Any, settings: Settings, tables: dict[str, Any]) -> Snapshots | None:
    """Table snapshots every ``snapshot_interval_s`` (None when 0)."""
    if not settings.snapshot_interval_s:
        return None
    directory = settings.state_dir / "worker-data" / "snapshots"
    snapshots = Snapshots(tables.values(), directory, settings.bootstrap_servers)

    @app.timer(interval=settings.snapshot_interval_s, on_leader=False)
    async def _snapshot_tables() -> None:
        try:
            await snapshots.take(app)
        except Exception:  # a snapshot missed costs a longer recovery, nothing else
            log.exception("table snapshot failed")

    return snapshots


def _stop_worker(reason: str) -> None:
    """A record the broker refused for good: the worker stops (SIGTERM to itself, so it
    shuts down as on any stop) and, restarted, recovers its tables from the changelogs
    and re-reads what it had not acknowledged."""
    log.critical("stopping the worker: %s", reason)
    os.kill(os.getpid(), signal.SIGTERM)


async def _done() -> None:
    return None


class _Done:
    """An awaitable that is already complete (what a queued record's ``send`` gives)."""

    def __await__(self) -> Any:
        return _done().__await__()


_DONE = _Done()


def profile_sinks(
    settings: Settings, topo: Topology, produced: dict[str, ProducedTopic]
) -> profile.Sinks:
    """Where the profile stage's changes go (``sinks``). A new destination is one more
    entry here: in ``views`` when it keeps a copy of profiles (written after the table,
    versions refuse replays), in ``published`` when it must be delivered before the
    table write (an output topic)."""

    by_name = {
        topo.profile_updates.name: produced["updates"],
        topo.profile_merges.name: produced["merges"],
        topo.segment_membership.name: produced["membership"],
        topo.dlq.name: produced["dlq"],
        topo.privacy.name: produced["privacy"],
        topo.audit.name: produced["audit"],
        **{t.name: produced[f"purpose:{p}"] for p, t in topo.purposes.items()},
    }

    async def send(
        topic: str,
        key: bytes,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int = -1,
    ) -> Any:
        # Queued on the worker's producer; the stage awaits the delivery of the whole
        # batch (``FastProducer.delivered``) before the sink's flush.
        by_name[topic].send(value, partition, key=key, headers=headers)
        return _DONE

    return profile.Sinks(
        published=[
            lambda: ProfileTopicsSink(
                send,
                topo.profile_updates.name,
                topo.profile_merges.name,
                membership_topic=topo.segment_membership.name,
                dlq_topic=topo.dlq.name,
                partitions=topo.segment_membership.partitions,
                receipts_topic=topo.privacy.name,
                audit_topic=topo.audit.name,
            ),
            # Outputs that serve a consent purpose: only the profiles that consented.
            *(
                (lambda p=purpose, t=spec.name: PurposeTopicSink(send, t, p))
                for purpose, spec in topo.purposes.items()
            ),
        ],
        views=[
            lambda: RedisViewSink.from_url(settings.redis_url, settings.redis_cluster),
            lambda: quality_sink(settings),
        ],
    )


def quality_sink(settings: Settings) -> QualitySink:
    """The data-quality KPIs' sink: match keys hashed with the key store's secret (the
    tokens' own), or one derived from the app id when nothing is sealed."""
    sealer = sealer_for(settings)
    secret = sealer.store.hmac_key() if sealer is not None else default_secret(settings.app_id)
    client = connect_async(settings.redis_url, settings.redis_cluster)
    return QualitySink(client, secret, sealer)


def create_app(settings: Settings) -> Any:
    check(settings)  # a setting the core cannot use fails the start, naming it
    app = _faust_app(settings)
    topo = topology(settings)

    @app.on_partitions_assigned.connect
    async def count_rebalance(sender: Any, assigned: Any, **kwargs: Any) -> None:
        metrics.REBALANCES.inc()

    tables = _register_stages(app, settings, topo)
    snapshots = _snapshots(app, settings, tables)
    inputs = topo.stage_inputs()
    offsets.install(app, inputs)
    flush.install()  # a commit waits for every table write to be sent
    fetch.install(settings.consumer_fetch_max_wait_ms)  # Faust hard-codes 1500 ms
    # Changelogs read from the latest snapshot to their true end.
    recovery.install(
        settings.bootstrap_servers,
        snapshots.restore if snapshots else None,
        snapshots.recovered if snapshots else None,
    )
    ops.install(app, settings, inputs)
    registry.install(app, settings)  # who owns which partitions (`unifier lag`)

    async def _ready(sender: Any, *args: Any, **kwargs: Any) -> None:
        # `unifier stack` and the tests wait for this line: assigned and recovered.
        assigned = sender.consumer.assignment() if sender.consumer else set()
        log.info("unifier worker ready: %d partitions assigned", len(assigned))

    # mode's Signal typing wants a `signal=` keyword in the receiver's signature.
    cast(Any, app.on_rebalance_complete).connect(_ready)

    return app
