"""``unifier sync``: profiles out to the apps that use them, their edits back in.

One process serves one destination group (``group`` in ``destinations.toml``). It
follows ``profile-updates`` in the consumer group ``APP_ID.sync.GROUP``: run more
processes with the same group and Kafka shares the partitions among them, as with
workers. Each batch of records is opened (``serve.feed.open_change``), handed to
every destination, and its offsets are committed only after every destination took
it — a process killed mid-batch gets the batch again, and a destination's version
guard makes the second write a no-op.

Every ``poll_s`` the process that holds partition 0 reads each two-way database's
edits (``sinks.destinations.table``), sends them as touchpoints from the
destination's source (validated and sealed like any other), and records them as
seen once the broker has them.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from prometheus_client import Counter, Histogram

from config.kafkalog import client_logger
from config.settings import Settings
from producers.kafka import TouchpointProducer
from profiles.configured import identity_rules
from profiles.routing import validate_event
from profiles.touchpoint import InvalidTouchpoint
from schemas.records import FeedError, ProfileRemoved, ProfileUpdate, update_from
from sinks.destinations.config import Destination, DestinationError, load_destinations
from sinks.destinations.table import Applied, TableDestination, open_table
from sinks.keys import sealer_for
from streams.dlq import dlq_headers
from streams.topology import topology
from unifier.webhook_sync import WebhookSync

log = logging.getLogger("unifier.sync")

DELIVERED = Counter("unifier_sync_delivered", "Profile changes a destination took", ["destination"])
WRITES = Counter(
    "unifier_sync_writes", "Rows a destination wrote, by kind", ["destination", "kind"]
)
HELD = Counter(
    "unifier_sync_held",
    "Fields left as the app has them (its edit not taken in yet, or it owns them)",
    ["destination"],
)
EDITS = Counter(
    "unifier_sync_inbound_edits",
    "App edits sent into the pipeline, or refused",
    ["destination", "outcome"],
)
ECHOES = Counter(
    "unifier_sync_echoes", "Rows read back holding only our own writes", ["destination"]
)
FAILURES = Counter(
    "unifier_sync_failures", "Batches a destination failed to take (retried)", ["destination"]
)
LATENCY = Histogram(
    "unifier_sync_latency_seconds",
    "From a profile change (its profile-updates record) to the destination having it",
    ["destination"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)


@dataclass
class SyncStats:
    batches: int = 0
    records: int = 0
    applied: dict[str, Applied] = field(default_factory=dict)
    edits_sent: int = 0
    edits_refused: int = 0
    echoes: int = 0


def destinations_of(
    settings: Settings, group: str | None, names: Sequence[str] = ()
) -> list[Destination]:
    """The destinations a process serves: those named, else those of the group."""
    found = load_destinations(settings.destinations_path)
    if names:
        unknown = sorted(set(names) - {d.name for d in found})
        if unknown:
            raise DestinationError(
                f"{settings.destinations_path}: no destination {', '.join(unknown)}"
            )
        return [d for d in found if d.name in names]
    chosen = [d for d in found if group is None or d.group == group]
    if not chosen:
        raise DestinationError(f"{settings.destinations_path}: no destination in group {group!r}")
    return chosen


def check_identifiers(settings: Settings, dests: Sequence[Destination]) -> None:
    """Every identifier type a destination names is one this deployment knows."""
    known = identity_rules(settings).priorities
    for d in dests:
        named = [
            *d.identifier_columns().values(),
            *([d.row_identifier] if d.row_identifier else []),
        ]
        for id_type in named:
            if id_type not in known:
                raise DestinationError(
                    f"destinations.{d.name}: identifier type {id_type!r} is not configured "
                    f"(known: {', '.join(sorted(known))})"
                )


class Syncer:
    """One ``unifier sync`` process (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        dests: Sequence[Destination],
        *,
        group: str,
        from_beginning: bool = False,
        since_ms: int | None = None,
        batch_records: int = 2000,
        base: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.dests = list(dests)
        self.group = group
        self._clock = clock
        self._batch = batch_records
        self._sealer = sealer_for(settings)
        self._rules = identity_rules(settings)
        self.tables: list[TableDestination] = [
            open_table(d, settings.default_phone_region, base)
            for d in self.dests
            if d.kind != "webhook"
        ]
        for t in self.tables:
            t.setup()
        partitions = topology(settings).profile_updates.partitions
        self.hooks: list[WebhookSync] = [
            WebhookSync(settings, d, self._sealer, group, partitions)
            for d in self.dests
            if d.kind == "webhook"
        ]
        self._producer: TouchpointProducer | None = None
        self._dlq: Producer | None = None
        self._sources: list[Message] = []
        self._stop = threading.Event()
        self._from_beginning = from_beginning
        self._since_ms = since_ms
        # Partitions replayed from a time, whose first records may still be older:
        # brokers answer a time with an offset at batch granularity (the embedded one
        # does), so records before it are skipped until the first at or after it.
        self._skip_before: dict[int, int] = {}
        self.stats = SyncStats()
        # The latest change-to-destination latencies (s), for the bench and tests.
        self.latencies: deque[float] = deque(maxlen=100_000)
        self._next_poll = 0.0
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.bootstrap_servers,
                "group.id": settings.sync_group(group),
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                # The embedded broker joins in session.timeout/2 (ENVIRONMENT.md, trap 1).
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 1000,
                # Larger fetches: a backfill reads whole partitions, not 1 MB at a time.
                "max.partition.fetch.bytes": 16 * 1024 * 1024,
                "fetch.max.bytes": 64 * 1024 * 1024,
                "logger": client_logger(),
            }
        )
        self._consumer.subscribe([settings.topic_profile_updates], on_assign=self._on_assign)

    def _on_assign(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        # A replay starts on the first assignment only: after a rebalance, it resumes.
        if self._since_ms is not None:
            asked = [TopicPartition(tp.topic, tp.partition, self._since_ms) for tp in parts]
            found = consumer.offsets_for_times(asked, timeout=15)
            for tp, at in zip(parts, found, strict=True):
                # -1: nothing that recent in the partition: start at its end
                tp.offset = at.offset if at.offset >= 0 else OFFSET_END
                self._skip_before[tp.partition] = self._since_ms
            self._since_ms = None
            consumer.assign(parts)
        elif self._from_beginning:
            self._from_beginning = False
            for tp in parts:
                tp.offset = OFFSET_BEGINNING
            consumer.assign(parts)
        log.info("assigned partitions %s", sorted(tp.partition for tp in parts))

    def stop(self) -> None:
        self._stop.set()

    def run(self, idle_exit_s: float | None = None) -> SyncStats:
        """Until ``stop`` (SIGTERM, SIGINT), or ``idle_exit_s`` without a record."""
        last = time.monotonic()
        try:
            while not self._stop.is_set():
                if self.step():
                    last = time.monotonic()
                elif idle_exit_s is not None and time.monotonic() - last > idle_exit_s:
                    break
        finally:
            self.close()
        return self.stats

    def step(self, timeout: float = 0.2) -> int:
        """One batch out, and the inbound poll when it is due; how many records."""
        msgs = self._consumer.consume(num_messages=self._batch, timeout=timeout)
        good = [m for m in msgs if m.error() is None]
        if self._skip_before:
            good, skipped = self._after_since(good)
            if skipped:  # older than the replay asked for: passed over for good
                self._commit(skipped)
        for m in msgs:
            if m.error() is not None:
                log.warning("consumer: %s", m.error())
        if good:
            self.deliver(good)
        for h in self.hooks:
            try:
                h.retry_step()
            except Exception as exc:  # a rebalance, the broker away: the next step again
                log.error("webhook %s: retry loop: %s", h.name, exc)
        if self.tables and time.monotonic() >= self._next_poll:
            self._next_poll = time.monotonic() + min(d.poll_s for d in self.dests)
            if self._leads():
                try:
                    self.take_edits()
                except Exception as exc:  # the database away: read them next time
                    log.error("reading the apps' edits: %s; again in %.0f s", exc, 1.0)
                    for t in self.tables:
                        self._reconnect(t)
        return len(good)

    def _after_since(self, msgs: list[Message]) -> tuple[list[Message], list[Message]]:
        """The records to deliver, and those before the replay's time (skipped)."""
        kept: list[Message] = []
        skipped: list[Message] = []
        for m in msgs:
            floor = self._skip_before.get(m.partition() or 0)
            if floor is not None:
                if m.timestamp()[1] < floor:
                    skipped.append(m)
                    continue
                del self._skip_before[m.partition() or 0]
            kept.append(m)
        return kept, skipped

    def _leads(self) -> bool:
        """Whether this process reads the apps' edits: the one holding partition 0."""
        try:
            return any(tp.partition == 0 for tp in self._consumer.assignment())
        except KafkaException:
            return False

    def _ops(self, msgs: list[Message]) -> tuple[list[ProfileUpdate | ProfileRemoved], list[float]]:
        ops: list[ProfileUpdate | ProfileRemoved] = []
        stamps: list[float] = []
        self._sources = []
        for m in msgs:
            try:
                ops.append(update_from(m.key(), m.value(), m.headers(), explained=False))
            except FeedError as exc:  # a record we cannot read: a dead letter, go on
                self._dead_letter(m, "sync", f"unreadable profile-updates record: {exc}")
                continue
            stamps.append(m.timestamp()[1] / 1000)
            self._sources.append(m)
        return self._opened(ops), stamps

    def _dead_letter(self, m: Message, stage: str, reason: str) -> None:
        """The record as it was on profile-updates (sealed) to the dead-letter topic."""
        if self._dlq is None:
            self._dlq = Producer(
                {"bootstrap.servers": self.settings.bootstrap_servers, "logger": client_logger()}
            )
        headers = dlq_headers(stage, reason[:1000], m.topic() or "", m.partition() or 0,
                              m.offset() or 0)  # fmt: skip
        self._dlq.produce(self.settings.topic_dlq, key=m.key(), value=m.value(),
                          headers=headers)  # type: ignore[arg-type]  # fmt: skip
        if self._dlq.flush(30):
            raise KafkaException("a dead letter was not delivered")
        log.error("dead-lettered %s[%s]@%s: %s", m.topic(), m.partition(), m.offset(),
                  reason[:300])  # fmt: skip

    def _apply(self, t: TableDestination, ops: list[ProfileUpdate | ProfileRemoved]) -> Applied:
        """A batch into one table. A database that is down holds it (retried each second);
        a change the database refuses (a constraint of the app's table, a value it will
        not take) is found by applying the batch's changes one at a time, and goes to
        the dead letters with the database's reason."""
        while True:
            try:
                return t.apply(ops)
            except Exception as exc:
                FAILURES.labels(t.name).inc()
                self._reconnect(t)
                if not _refused(exc):
                    log.error("destination %s: %s; retrying in 1 s", t.name, exc)
                    if self._stop.wait(1.0):
                        raise
                    continue
                log.error("destination %s refused a change (%s); one at a time", t.name, exc)
                return self._one_by_one(t, ops)

    def _one_by_one(
        self, t: TableDestination, ops: list[ProfileUpdate | ProfileRemoved]
    ) -> Applied:
        total = Applied()
        for op, m in zip(ops, self._sources, strict=True):
            while True:
                try:
                    done = t.apply([op])
                    break
                except Exception as exc:
                    self._reconnect(t)
                    if _refused(exc):
                        self._dead_letter(m, f"sync:{t.name}", f"{t.name} refused it: {exc}")
                        done = Applied()
                        break
                    log.error("destination %s: %s; retrying in 1 s", t.name, exc)
                    if self._stop.wait(1.0):
                        raise
            total.add(done)
        return total

    def _opened(
        self, ops: list[ProfileUpdate | ProfileRemoved]
    ) -> list[ProfileUpdate | ProfileRemoved]:
        """Identifiers and traits opened, the whole batch's in one key lookup (the
        explanation, which no destination sends, is left out)."""
        if self._sealer is None:
            return ops
        sealed: dict[str, Any] = {}
        for op in ops:
            if isinstance(op, ProfileUpdate):
                for values in op.identifiers.values():
                    sealed.update((v, None) for v in values if v.startswith("~"))
                for v in op.traits.values():
                    if isinstance(v, str) and v.startswith("~"):
                        sealed[v] = None
        plain = dict(zip(sealed, self._sealer.open_many(list(sealed)), strict=True))
        out: list[ProfileUpdate | ProfileRemoved] = []
        for op in ops:
            if not isinstance(op, ProfileUpdate):
                out.append(op)
                continue
            ids = {t: sorted(plain.get(v, v) for v in vs) for t, vs in op.identifiers.items()}
            traits = {k: plain.get(v, v) if isinstance(v, str) else v for k, v in op.traits.items()}
            out.append(replace(op, identifiers=ids, traits=traits, why={}))
        return out

    def deliver(self, msgs: list[Message]) -> None:
        ops, stamps = self._ops(msgs)
        for t in self.tables:
            self._count(t.name, self._apply(t, ops), stamps)
        for h in self.hooks:
            while True:
                try:
                    h.deliver(ops, self._stop)
                    break
                except KafkaException as exc:  # parking failed: the batch is not done
                    FAILURES.labels(h.name).inc()
                    log.error("destination %s: %s; retrying in 1 s", h.name, exc)
                    if self._stop.wait(1.0):
                        raise
            now = self._clock()
            for s in stamps:
                LATENCY.labels(h.name).observe(max(now - s, 0.0))
                self.latencies.append(max(now - s, 0.0))
            DELIVERED.labels(h.name).inc(len(ops))
        self._commit(msgs)
        self.stats.batches += 1
        self.stats.records += len(msgs)

    def _reconnect(self, t: TableDestination) -> None:
        try:
            t.reconnect()
        except Exception as exc:
            log.error("destination %s: cannot connect: %s", t.name, exc)

    def _count(self, name: str, done: Applied, stamps: list[float]) -> None:
        self.stats.applied.setdefault(name, Applied()).add(done)
        DELIVERED.labels(name).inc(done.profiles)
        for kind in ("inserted", "updated", "deleted", "marked"):
            n = getattr(done, f"rows_{kind}")
            if n:
                WRITES.labels(name, kind).inc(n)
        if done.held:
            HELD.labels(name).inc(done.held)
        now = self._clock()
        hist = LATENCY.labels(name)
        for s in stamps:
            hist.observe(max(now - s, 0.0))
            self.latencies.append(max(now - s, 0.0))

    def _commit(self, msgs: list[Message]) -> None:
        last: dict[tuple[str, int], int] = {}
        for m in msgs:
            key = (m.topic() or "", m.partition() or 0)
            last[key] = max(last.get(key, -1), m.offset() or 0)
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:  # a rebalance: the next owner gets the batch again
            log.warning("commit: %s", exc)

    def take_edits(self) -> int:
        """Send the apps' edits into the pipeline; how many."""
        sent = 0
        for t in self.tables:
            if not t.dest.inbound:
                continue
            polled = t.poll()
            self.stats.echoes += polled.echoes
            if polled.echoes:
                ECHOES.labels(t.name).inc(polled.echoes)
            if not polled.edits and not polled.revs:
                continue
            producer = self._producer_()
            refused = []
            for e in polled.edits:
                try:
                    producer.send(
                        validate_event(e.doc, self._rules, self.settings.default_phone_region)
                    )
                except InvalidTouchpoint as exc:
                    refused.append(e.row_id)
                    EDITS.labels(t.name, "refused").inc()
                    log.warning("destination %s: row %s edit refused: %s", t.name, e.row_id, exc)
            report = producer.flush(30.0)
            if not report.ok:
                log.error("destination %s: edits not delivered (%s); read again next poll",
                          t.name, "; ".join(report.errors[-3:]))  # fmt: skip
                report.errors.clear()
                report.events_failed = 0
                continue
            t.confirm(polled, refused)
            n = len(polled.edits) - len(refused)
            EDITS.labels(t.name, "sent").inc(n)
            self.stats.edits_sent += n
            self.stats.edits_refused += len(refused)
            sent += n
        return sent

    def _producer_(self) -> TouchpointProducer:
        if self._producer is None:
            self._producer = TouchpointProducer(self.settings)
        return self._producer

    def close(self) -> None:
        with contextlib.suppress(KafkaException, RuntimeError):
            self._consumer.close()
        if self._producer is not None:
            self._producer.close(10.0)
            self._producer = None
        if self._dlq is not None:
            self._dlq.flush(10)
        for t in self.tables:
            t.close()
        for h in self.hooks:
            h.close()


def _refused(exc: BaseException) -> bool:
    """A database's answer that will not change if asked again (sqlite3's and
    psycopg's IntegrityError and DataError), as opposed to being away."""
    return any(k.__name__ in ("IntegrityError", "DataError") for k in type(exc).__mro__)


def install_signals(syncer: Syncer) -> None:
    def handler(signum: int, _frame: Any) -> None:
        syncer.stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def destination_status(settings: Settings, dest: Destination) -> dict[str, Any]:
    """What ``unifier sync status`` shows of one destination."""
    row: dict[str, Any] = {"name": dest.name, "kind": dest.kind, "mode": dest.mode,
                           "group": dest.group}  # fmt: skip
    if dest.kind != "webhook":
        try:
            t = open_table(dest, settings.default_phone_region)
            try:
                row.update(t.counts())
            finally:
                t.close()
        except Exception as exc:
            row["error"] = str(exc)
    try:
        row["lag"] = group_lag(settings, settings.sync_group(dest.group))
    except Exception as exc:
        row["lag_error"] = str(exc)
    return row


def group_lag(settings: Settings, group: str) -> int | None:
    """Records of profile-updates the group has not taken yet (None: never committed)."""
    from serve.lag import group_lags

    rows = group_lags(settings, {group: settings.topic_profile_updates})
    if all(r.committed is None for r in rows):
        return None
    return sum(r.lag for r in rows)
