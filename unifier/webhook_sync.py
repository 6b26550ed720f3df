"""A webhook destination inside ``unifier sync``: delivery, parking, retry, dead letters.

**Delivery.** Each batch of ``profile-updates`` records becomes events
(``sinks.destinations.webhook.events_for``), sent in requests of ``batch_events``;
a failing request is retried with backoff (``Retry-After`` honoured) for up to
``park_after_s``.

**Parking.** A request that still fails is *parked*: its events go to the
destination's retry topic (``APP_ID.sync.NAME.retry``, keyed by profile, sealed
whole), and its profiles are marked parked, so their later events follow them there
(a profile's order is never inverted) while everyone else's keep flowing — the
partition does not stall. The retry loop reads that topic in order and tries each
record again with backoff; delivered, its profile is unparked once its last parked
record went. A record still failing ``dead_letter_after_s`` after its first failure,
or refused with a 4xx that will not get better, goes to the dead-letter topic with
the reason (``x-dlq-stage: sync:NAME``; sealed whole, like every dead letter that may
hold personal data) and its profile is unparked.

**State** (what the receiver was told of each profile: version, segments, whether
it was in scope; which profiles are parked) is a small SQLite file per destination
under ``STATE_DIR/sync``. Offsets are committed only after a batch was delivered or
parked, and a retry record's only after it was delivered or dead-lettered: a killed
process sends some events again (same ``id``), never loses one.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client import Counter

from config.kafkalog import client_logger
from config.settings import Settings
from profiles.privacy import Sealer
from schemas.records import ProfileRemoved, ProfileUpdate
from sinks.destinations.config import Destination
from sinks.destinations.webhook import (
    Backoff,
    Known,
    Outcome,
    WebhookClient,
    batches,
    events_for,
    retryable,
)
from streams.dlq import SEALED_HEADER, dlq_headers

log = logging.getLogger("unifier.sync")

HOOK_EVENTS = Counter(
    "unifier_sync_webhook_events",
    "Webhook events, by outcome (delivered, retried, parked, dead_lettered)",
    ["destination", "outcome"],
)

FIRST_FAILURE = "x-first-failure-ms"
ATTEMPTS = "x-attempts"
REASON = "x-reason"


class HookState:
    """What the receiver knows of each profile, and which profiles are parked."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS known (profile_id TEXT PRIMARY KEY, version INTEGER, "
            "segments TEXT, sent INTEGER)"
        )
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS parked (profile_id TEXT PRIMARY KEY, "
            "part INTEGER, off INTEGER)"
        )

    def known(self, pids: Sequence[str]) -> dict[str, Known]:
        out: dict[str, Known] = {}
        ids = sorted(set(pids))
        for at in range(0, len(ids), 500):
            part = ids[at : at + 500]
            marks = ", ".join("?" * len(part))
            for pid, version, segs, sent in self.db.execute(
                "SELECT profile_id, version, segments, sent FROM known "
                f"WHERE profile_id IN ({marks})",
                part,
            ):
                out[pid] = Known(version, tuple(orjson.loads(segs)), bool(sent))
        return out

    def save(self, told: dict[str, Known | None]) -> None:
        self.db.execute("BEGIN")
        for pid, k in told.items():
            if k is None:
                self.db.execute("DELETE FROM known WHERE profile_id = ?", (pid,))
            else:
                self.db.execute(
                    "INSERT OR REPLACE INTO known VALUES (?, ?, ?, ?)",
                    (pid, k.version, orjson.dumps(list(k.segments)).decode(), int(k.sent)),
                )
        self.db.execute("COMMIT")

    def parked(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT profile_id FROM parked")}

    def park(self, where: dict[str, tuple[int, int]]) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO parked VALUES (?, ?, ?)",
            [(pid, p, o) for pid, (p, o) in where.items()],
        )

    def unpark_if_last(self, pid: str, part: int, off: int) -> None:
        self.db.execute(
            "DELETE FROM parked WHERE profile_id = ? AND part = ? AND off <= ?", (pid, part, off)
        )

    def close(self) -> None:
        self.db.close()


class WebhookSync:
    """One webhook destination of a sync process (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        dest: Destination,
        sealer: Sealer | None,
        group: str,
        partitions: int,
        secret: bytes | None = None,
    ) -> None:
        self.settings = settings
        self.dest = dest
        self.name = dest.name
        self.client = WebhookClient(dest, secret)
        self.state = HookState(settings.state_dir / "sync" / f"{dest.name}.sqlite")
        self._sealer = sealer
        self.retry_topic = f"{settings.sync_group(group)}.{dest.name}.retry"
        self._ensure_topic(partitions)
        common = {"bootstrap.servers": settings.bootstrap_servers, "logger": client_logger()}
        self._producer = Producer({**common, "enable.idempotence": True, "linger.ms": 5})
        self._retry = Consumer(
            {**common, "group.id": f"{settings.sync_group(group)}.{dest.name}.retry",
             "enable.auto.commit": False, "auto.offset.reset": "earliest",
             "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}
        )  # fmt: skip
        self._retry.subscribe([self.retry_topic], on_revoke=self._revoked)
        self._heads: dict[int, tuple[Message, float, Backoff]] = {}  # partition -> waiting
        self.delivered = self.parked_events = self.dead_lettered = 0

    def _revoked(self, _consumer: Consumer, parts: list[TopicPartition]) -> None:
        for tp in parts:  # its next owner starts again from the last commit
            self._heads.pop(tp.partition, None)

    def _ensure_topic(self, partitions: int) -> None:
        admin = AdminClient({"bootstrap.servers": self.settings.bootstrap_servers})
        if self.retry_topic in admin.list_topics(timeout=10).topics:
            return
        retention = int((self.dest.dead_letter_after_s + 86_400) * 1000)
        fut = admin.create_topics(
            [NewTopic(self.retry_topic, partitions, self.settings.replication_factor,
                      config={"retention.ms": str(retention)})]
        )[self.retry_topic]  # fmt: skip
        try:
            fut.result(15)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise

    # --- the main path ---------------------------------------------------------
    def deliver(self, ops: Sequence[ProfileUpdate | ProfileRemoved], stop: Any) -> None:
        """Send a batch's events, parking what keeps failing; returns when every event
        was delivered, parked or dead-lettered."""
        now_ms = int(time.time() * 1000)
        known = self.state.known([op.profile_id for op in ops])
        told: dict[str, Known | None] = {}
        events: list[dict[str, Any]] = []
        for op in ops:
            before = told[op.profile_id] if op.profile_id in told else known.get(op.profile_id)
            evs, after = events_for(
                self.dest, op, before, now_ms, self.settings.default_phone_region
            )
            told[op.profile_id] = after
            events += evs
        parked = self.state.parked()
        to_park: list[dict[str, Any]] = []
        for request in batches(events, self.dest.batch_events):
            ready = [e for e in request if e["profile_id"] not in parked]
            to_park += [e for e in request if e["profile_id"] in parked]
            if not ready:
                continue
            outcome = self._send(ready, stop, deadline=time.monotonic() + self.dest.park_after_s)
            if outcome.ok:
                self.delivered += len(ready)
                HOOK_EVENTS.labels(self.name, "delivered").inc(len(ready))
            elif retryable(outcome):
                to_park += ready
                parked |= {e["profile_id"] for e in ready}
            else:
                self._refused(ready, outcome, now_ms)
        if to_park:
            self._park(to_park, now_ms, "not delivered in time")
        self.state.save(told)

    def _refused(self, events: list[dict[str, Any]], outcome: Outcome, now_ms: int) -> None:
        """A 4xx that will not get better: halves until the refused events are alone;
        those go to the dead letters, the others are delivered."""
        if len(events) == 1:
            self._dead_letter(events, outcome.reason, now_ms, 1)
            return
        for half in (events[: len(events) // 2], events[len(events) // 2 :]):
            again = self.client.post(half)
            if again.ok:
                self.delivered += len(half)
                HOOK_EVENTS.labels(self.name, "delivered").inc(len(half))
            elif retryable(again):  # the receiver went away meanwhile: park these
                self._park(half, now_ms, again.reason)
            else:
                self._refused(half, again, now_ms)

    def _send(self, events: list[dict[str, Any]], stop: Any, deadline: float) -> Outcome:
        backoff = Backoff(max_s=self.dest.max_backoff_s)
        while True:
            outcome = self.client.post(events)
            if outcome.ok or not retryable(outcome):
                return outcome
            HOOK_EVENTS.labels(self.name, "retried").inc(len(events))
            wait = backoff.next(outcome.retry_after_s)
            if time.monotonic() + wait > deadline or stop.is_set():
                return outcome
            log.warning("webhook %s: %s; again in %.2f s", self.name, outcome.reason, wait)
            stop.wait(wait)

    def _seal(self, data: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
        if self._sealer is None:
            return data, []
        return self._sealer.seal_bytes(data), [(SEALED_HEADER, b"1")]

    def _open(self, data: bytes, headers: dict[str, bytes]) -> bytes | None:
        if self._sealer is None or headers.get(SEALED_HEADER) != b"1":
            return data
        return self._sealer.open_bytes(data)

    def _park(self, events: list[dict[str, Any]], first_ms: int, reason: str) -> None:
        by_profile: dict[str, list[dict[str, Any]]] = {}
        for e in events:
            by_profile.setdefault(e["profile_id"], []).append(e)
        where: dict[str, tuple[int, int]] = {}
        failed: list[str] = []

        def noted(pid: str) -> Any:
            def cb(err: Any, msg: Message) -> None:
                if err is not None:
                    failed.append(str(err))
                else:
                    where[pid] = (msg.partition() or 0, msg.offset() or 0)

            return cb

        for pid, evs in by_profile.items():
            value, extra = self._seal(orjson.dumps(evs))
            headers: list[tuple[str, str | bytes | None]] = [
                (FIRST_FAILURE, str(first_ms).encode()), (ATTEMPTS, b"1"),
                (REASON, reason.encode()[:500]), *extra]  # fmt: skip
            self._producer.produce(
                self.retry_topic, key=pid.encode(), value=value, headers=headers,
                on_delivery=noted(pid),
            )  # fmt: skip
        left = self._producer.flush(30)
        if left or failed:  # the broker did not take them: the batch is not done
            raise KafkaException(f"parking failed: {failed[:1] or left}")
        self.state.park(where)
        self.parked_events += len(events)
        HOOK_EVENTS.labels(self.name, "parked").inc(len(events))
        log.warning("webhook %s: parked %d events of %d profiles (%s)",
                    self.name, len(events), len(by_profile), reason)  # fmt: skip

    def _dead_letter(
        self, events: list[dict[str, Any]], reason: str, first_ms: int, attempts: int
    ) -> None:
        body = {"destination": self.name, "events": events}
        value, extra = self._seal(orjson.dumps(body))
        stage = f"sync:{self.name}"
        headers: list[tuple[str, str | bytes | None]] = [
            *dlq_headers(stage, f"webhook: {reason}"[:1000], self.retry_topic, -1, -1)
        ]
        headers += [(FIRST_FAILURE, str(first_ms).encode()),
                    (ATTEMPTS, str(attempts).encode()), *extra]  # fmt: skip
        key = events[0]["profile_id"].encode() if events else None
        self._producer.produce(self.settings.topic_dlq, key=key, value=value, headers=headers)
        if self._producer.flush(30):
            raise KafkaException("dead letter not delivered")
        self.dead_lettered += len(events)
        HOOK_EVENTS.labels(self.name, "dead_lettered").inc(len(events))
        log.error("webhook %s: dead-lettered %d events: %s", self.name, len(events), reason[:200])

    # --- the retry loop --------------------------------------------------------
    def retry_step(self) -> int:
        """Try the parked records that are due; how many were settled."""
        settled = 0
        if len(self._heads) < 64:
            for msg in self._retry.consume(num_messages=16, timeout=0):
                if msg.error() is not None:
                    continue
                p = msg.partition() or 0
                if p in self._heads:  # one at a time per partition, in order
                    continue
                self._heads[p] = (msg, 0.0, Backoff(max_s=self.dest.max_backoff_s))
                self._retry.pause([TopicPartition(msg.topic() or "", p)])
        now = time.monotonic()
        for p, (msg, due, backoff) in list(self._heads.items()):
            if due > now:
                continue
            if self._try(msg, backoff):
                del self._heads[p]
                tp = TopicPartition(msg.topic() or "", p, (msg.offset() or 0) + 1)
                self._retry.commit(offsets=[tp], asynchronous=False)
                self._retry.seek(tp)
                self._retry.resume([TopicPartition(msg.topic() or "", p)])
                settled += 1
            else:
                wait = backoff.next()
                self._heads[p] = (msg, time.monotonic() + wait, backoff)
        return settled

    def _try(self, msg: Message, backoff: Backoff) -> bool:
        """Deliver or dead-letter one parked record (True), or not yet (False)."""
        pairs: list[tuple[str, Any]] = list(msg.headers() or ())  # type: ignore[arg-type]
        headers = {k: v for k, v in pairs if isinstance(v, bytes)}
        pid = (msg.key() or b"").decode()
        first_ms = int(headers.get(FIRST_FAILURE, b"0") or 0)
        attempts = int(headers.get(ATTEMPTS, b"1") or 1) + backoff.attempt
        raw = self._open(msg.value() or b"", headers)
        if raw is None:  # its key is gone (already settled, or erased): nothing to send
            self.state.unpark_if_last(pid, msg.partition() or 0, msg.offset() or 0)
            return True
        events = orjson.loads(raw)
        outcome = self.client.post(events)
        if outcome.ok:
            self.delivered += len(events)
            HOOK_EVENTS.labels(self.name, "delivered").inc(len(events))
        elif retryable(outcome) and time.time() - first_ms / 1000 < self.dest.dead_letter_after_s:
            HOOK_EVENTS.labels(self.name, "retried").inc(len(events))
            return False
        else:
            self._dead_letter(events, outcome.reason, first_ms, attempts)
        self.state.unpark_if_last(pid, msg.partition() or 0, msg.offset() or 0)
        if self._sealer is not None:  # settled: its key was only for the wait
            self._sealer.discard_bytes(msg.value() or b"")
        return True

    def close(self) -> None:
        self.client.close()
        with contextlib.suppress(KafkaException, RuntimeError):
            self._retry.close()
        self._producer.flush(10)
        self.state.close()
