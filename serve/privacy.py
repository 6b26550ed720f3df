"""Privacy requests as an operator (or the API) makes them: erase a person, undo the
suppression of a returning customer, show a request's receipt, export everything held
about a person, and the audit trail.

An erasure (``request_erasure``) finds the profile through any identifier, records the
request on the receipts topic, and sends ``Erase`` to the profile's partition; the
workers do the rest (``profiles.graph.erase``: tables, keys, ledger, view, topics,
segments) and record each step on the receipts topic. The dead letters that name the
person are found here, by opening each (``shred_dead_letters``), and their keys
destroyed. Nothing written carries personal data: tokens, ids and counts.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from prometheus_client import Counter

from config.settings import Settings
from profiles.graph.messages import ASKED, Erase, Forget
from profiles.privacy import SEALED_BYTES, Sealer
from profiles.routing import partition_for
from profiles.sealed import unb64
from profiles.touchpoint import Touchpoint
from schemas.records import receipt_step
from schemas.wire import encode_messages
from serve.view import RedisProfileView
from sinks.keys import SqliteKeyStore, sealer_for
from streams.privacy import LedgerEntry, ledger_entry, ledger_record
from streams.segments import DefinitionsLog

log = logging.getLogger("unifier.privacy")

AUDIT_FAILURES = Counter(
    "unifier_audit_failures", "Audit records the broker did not take (the read was served)"
)


class PrivacyError(RuntimeError):
    """A request that cannot be made; the message says why."""


def new_receipt() -> str:
    return f"er_{uuid.uuid4().hex[:20]}"


def _sealer(settings: Settings) -> Sealer:
    sealer = sealer_for(settings)
    if sealer is None:  # tokens still come from the key store's secret
        from profiles.configured import identity_rules

        return Sealer(SqliteKeyStore.open(settings), identity_rules(settings))
    return sealer


@dataclass
class Subject:
    """Whom a request is about: the profile holding the identifier (None when no
    profile does), and the identifiers it holds, opened (for the dead letters)."""

    profile_id: str | None
    identifiers: dict[str, list[str]] = field(default_factory=dict)
    asked: tuple[str, str] | None = None  # (type, normalized value) given, if any

    def values(self) -> set[str]:
        out = {v for vs in self.identifiers.values() for v in vs}
        if self.asked is not None:
            out.add(self.asked[1])
        return out


def find_subject(settings: Settings, identifier: tuple[str, str] | None, profile_id: str | None
                 ) -> Subject:  # fmt: skip
    """The subject of a request, from the view (``identifier``: type and normalized
    value)."""
    view = RedisProfileView.for_settings(settings)
    try:
        if identifier is not None:
            found = view.lookup(*identifier)
        else:
            assert profile_id is not None
            found = view.get(profile_id)
    finally:
        view.close()
    if found is None:
        return Subject(None, {}, identifier)
    return Subject(found["profile_id"], dict(found.get("identifiers", {})), identifier)


class _Out:
    """A producer that raises unless every record is acknowledged."""

    def __init__(self, settings: Settings) -> None:
        self._p = Producer({"bootstrap.servers": settings.bootstrap_servers, "acks": "all"})
        self._failed: list[str] = []

    def send(self, topic: str, key: bytes, value: bytes | None, partition: int = -1) -> None:
        def report(err: object, _msg: object) -> None:
            if err is not None:
                self._failed.append(str(err))

        if partition >= 0:
            self._p.produce(topic, value, key, partition=partition, on_delivery=report)
        else:
            self._p.produce(topic, value, key, on_delivery=report)

    def flush(self, timeout_s: float = 15.0) -> None:
        left = self._p.flush(timeout_s)
        if left or self._failed:
            why = self._failed[0] if self._failed else "the broker did not answer in time"
            raise PrivacyError(f"the request was not recorded: {why}")


def audit(settings: Settings, out: _Out, actor: str, action: str, **what: Any) -> None:
    """One record of the audit trail: who did what to which profile, no personal data."""
    record = {"at": int(time.time() * 1000), "actor": actor, "action": action, **what}
    out.send(settings.topic_audit, action.encode(), orjson.dumps(record))


def request_erasure(
    settings: Settings,
    subject: Subject,
    suppress: bool = True,
    reason: str = "",
    actor: str = "cli",
) -> str:
    """Record the request and send it to the workers; its receipt id."""
    receipt = new_receipt()
    out = _Out(settings)
    now = int(time.time() * 1000)
    held = sum(len(v) for v in subject.identifiers.values())
    key, value = receipt_step(
        receipt, "requested", subject.profile_id or "-", now, identifiers=held,
        suppress=int(suppress), reason=reason[:200], actor=actor,
    )  # fmt: skip
    out.send(settings.topic_privacy, key.encode(), value)
    if subject.profile_id is not None:
        pid = subject.profile_id
        message = encode_messages([Erase(pid, receipt, suppress)])
        out.send(settings.topic_profile_ops, pid.encode(), message,
                 partition_for(pid, settings.internal_partitions))  # fmt: skip
    if subject.asked is not None:
        # The identifier asked for goes to its identity partition too: whatever profile
        # holds it there is erased even when the view does not show it (lagging, being
        # rebuilt). Its key goes now, and the ledger stops what is sealed with it (and,
        # suppressed, any more).
        sealer = _sealer(settings)
        ident = graph_key(settings, sealer, *subject.asked)
        forget = encode_messages([Forget(ident, ASKED, receipt, suppress)])
        out.send(settings.topic_identity, ident.encode(), forget,
                 partition_for(ident, settings.internal_partitions))  # fmt: skip
        token = sealer.token(*subject.asked)
        gens = sealer.store.destroy([unb64(token)])
        entry = LedgerEntry(gens.get(unb64(token), 0), suppress, receipt)
        _keep_on_disk(settings, token, entry)
        lkey, lvalue = ledger_record(token, entry, now)
        out.send(settings.topic_erasures, lkey, lvalue, 0)
    audit(settings, out, actor, "erase", profile=subject.profile_id, receipt=receipt,
          suppress=suppress)  # fmt: skip
    out.flush()
    return receipt


def _keep_on_disk(settings: Settings, token: str, entry: LedgerEntry) -> None:
    """The ledger's copy in the key store (the embedded stack restores the topic from it)."""
    store = SqliteKeyStore.open(settings)
    try:
        store.record_erasures({token: (entry.gen, entry.suppress, entry.receipt)})
    finally:
        store.close()


def restore_ledger(settings: Settings) -> int:
    """Publish the ledger again from the key store's copy when its topic came back
    empty (the embedded broker keeps its log in memory); how many entries."""
    store = SqliteKeyStore.open(settings)
    try:
        kept = store.erasures()
    finally:
        store.close()
    if not kept or read_compacted(settings, settings.topic_erasures):
        return 0
    out = _Out(settings)
    now = int(time.time() * 1000)
    for token, (gen, suppress, receipt) in kept.items():
        key, value = ledger_record(token, LedgerEntry(gen, suppress, receipt), now)
        out.send(settings.topic_erasures, key, value, 0)
    out.flush()
    return len(kept)


def graph_key(settings: Settings, sealer: Sealer, id_type: str, normalized: str) -> str:
    """The identity graph's key of a normalized identifier: ``type:~TOKEN.GEN.CT`` under
    its live key when values are sealed (``type:value`` when not)."""
    if not settings.seal_pii:
        return f"{id_type}:{normalized}"
    [tp] = sealer.seal([Touchpoint("-", "-", "-", 0, {id_type: normalized})])
    return f"{id_type}:{tp.identifiers[id_type]}"


# --- receipts -------------------------------------------------------------------------


@dataclass
class Receipt:
    receipt: str
    steps: list[dict[str, Any]]

    def step(self, name: str) -> list[dict[str, Any]]:
        return [s for s in self.steps if s["step"] == name]

    @property
    def requested(self) -> dict[str, Any] | None:
        found = self.step("requested")
        return found[0] if found else None

    def done(self) -> bool:
        """The profile is gone from the tables and view, and every identifier it held
        was shredded (or kept: shared with other profiles)."""
        req = self.requested
        if req is None:
            return False
        if req["subject"] == "-":  # no profile in the view: its identifier reached the workers
            return bool(self.step("identifier"))
        profiles = self.step("profile")
        if not profiles:
            return False
        held = max([req.get("identifiers", 0), *(p.get("identifiers", 0) for p in profiles)])
        return len(self.step("identifier")) + len(self.step("kept")) >= held

    def to_json(self) -> dict[str, Any]:
        req = self.requested or {}
        at = req.get("at")

        def last(name: str) -> int | None:
            times = [s["at"] for s in self.step(name)]
            return max(times) if times else None

        def took(name: str) -> float | None:
            t = last(name)
            return None if t is None or at is None else round((t - at) / 1000, 3)

        return {
            "receipt": self.receipt,
            "requested_at": at,
            "suppress": bool(req.get("suppress", 0)),
            "reason": req.get("reason", ""),
            "actor": req.get("actor", ""),
            "done": self.done(),
            "steps": {
                "profiles erased (tables, view, profile-updates, segments)": {
                    "count": len(self.step("profile")), "seconds": took("profile")},
                "identifiers shredded (keys, index, ledger)": {
                    "count": len(self.step("identifier")), "seconds": took("identifier")},
                "shared identifiers kept": {"count": len(self.step("kept"))},
                "dead letters shredded": {
                    "count": sum(s.get("letters", 0) for s in self.step("dead letters")),
                    "seconds": took("dead letters")},
            },
        }  # fmt: skip


def read_receipt(settings: Settings, receipt: str, timeout_s: float = 15.0) -> Receipt:
    records = read_compacted(settings, settings.topic_privacy, timeout_s)
    steps = [orjson.loads(v) for k, v in sorted(records.items()) if k.startswith(f"{receipt}|")]
    return Receipt(receipt, steps)


def read_compacted(settings: Settings, topic: str, timeout_s: float = 15.0) -> dict[str, bytes]:
    """The latest record of each key of a one-partition topic, read to its end."""
    deadline = time.monotonic() + timeout_s
    with DefinitionsLog(settings.bootstrap_servers, topic, f"unifier.{topic}-cli") as log:
        while log.poll(0.1) or not log.at_end():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic} not read within {timeout_s:.0f}s")
        return dict(log.records)


def wait_for(settings: Settings, receipt: str, timeout_s: float) -> Receipt:
    deadline = time.monotonic() + timeout_s
    while True:
        found = read_receipt(settings, receipt)
        if found.done() or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


# --- dead letters -------------------------------------------------------------------

_SEALED = re.compile(rb"~~?([A-Za-z0-9_-]{22})\.\d{1,9}\.")


def letter_tokens(raw: bytes) -> set[bytes]:
    """Every key a dead letter's bytes were sealed with."""
    tokens = {unb64(m.group(1).decode()) for m in _SEALED.finditer(raw)}
    if raw.startswith(SEALED_BYTES):
        at = len(SEALED_BYTES)
        tokens.add(raw[at : at + 16])
    return tokens


def shred_dead_letters(settings: Settings, subject: Subject, receipt: str) -> int:
    """Destroy the keys of every dead letter that names the subject (any identifier it
    held, as normalized or as sent); how many letters."""
    from serve.dlq import read

    values = {v.lower() for v in subject.values() if v}
    if not values:
        return 0
    doomed: set[bytes] = set()
    letters = 0
    for letter in read(settings):
        text = orjson.dumps([letter.to_json(unmasked=True)]).decode().lower()
        if any(v in text for v in values) or any(
            v.encode() in letter.value.lower() for v in values
        ):
            doomed |= letter_tokens(letter.raw)
            letters += 1
    if doomed:
        store = SqliteKeyStore.open(settings)
        try:
            store.destroy(doomed)
        finally:
            store.close()
    out = _Out(settings)
    key, value = receipt_step(receipt, "dead letters", "dlq", int(time.time() * 1000),
                              letters=letters)  # fmt: skip
    out.send(settings.topic_privacy, key.encode(), value)
    out.flush()
    return letters


# --- suppression ----------------------------------------------------------------------


def read_ledger(settings: Settings) -> dict[str, LedgerEntry]:
    return {
        k: ledger_entry(v) for k, v in read_compacted(settings, settings.topic_erasures).items()
    }


def unsuppress(settings: Settings, identifier: tuple[str, str], actor: str = "cli") -> bool:
    """Let events carrying an erased identifier in again (a returning customer); False
    when it was not suppressed. What was sealed before the erasure stays dropped."""
    token = _sealer(settings).token(*identifier)
    entry = read_ledger(settings).get(token)
    if entry is None or not entry.suppress:
        return False
    out = _Out(settings)
    entry = LedgerEntry(entry.gen, False, entry.receipt)
    _keep_on_disk(settings, token, entry)
    key, value = ledger_record(token, entry, int(time.time() * 1000))
    out.send(settings.topic_erasures, key, value, 0)
    audit(settings, out, actor, "unsuppress", receipt=entry.receipt)
    out.flush()
    return True


# --- audit ------------------------------------------------------------------------------


def read_audit(settings: Settings, since_ms: int) -> Iterator[dict[str, Any]]:
    """The audit trail from ``since_ms`` on, oldest first."""
    for msg in read_partition(settings, settings.topic_audit, 0, since_ms=since_ms):
        record: dict[str, Any] = orjson.loads(msg.value() or b"{}")
        if record.get("at", 0) >= since_ms:
            yield record


# --- access export --------------------------------------------------------------------


def read_partition(
    settings: Settings,
    topic: str,
    partition: int,
    timeout_s: float = 60.0,
    since_ms: int | None = None,
) -> Iterator[Any]:
    """Every record of one partition, from its start (or the first record the broker
    accepted at or after ``since_ms``) to its end as of now."""
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers,
                         "group.id": f"unifier.reader.{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "enable.partition.eof": True})  # fmt: skip
    deadline = time.monotonic() + timeout_s
    try:
        start = [TopicPartition(topic, partition, 0)]
        if since_ms is not None:
            start = consumer.offsets_for_times([TopicPartition(topic, partition, since_ms)], 10)
        consumer.assign(start)
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    return
                raise PrivacyError(f"reading {topic}: {error}")
            yield msg
        raise TimeoutError(f"{topic}[{partition}] not read within {timeout_s:.0f}s")
    finally:
        consumer.close()


def _iso(ms: int) -> str:
    from profiles.profile import iso

    return iso(ms)


def access_export(settings: Settings, profile_id: str, actor: str = "cli") -> dict[str, Any]:
    """Everything held about the person whose profile this is (see ``unifier privacy
    export``): the profile and its explanation from the view, every event it holds from
    the workers' table (its changelog), its segment history from ``segment-membership``,
    all personal data opened."""
    from profiles.projection import why_of

    sealer = _sealer(settings)
    view = RedisProfileView.for_settings(settings)
    try:
        found = view.get(profile_id)
    finally:
        view.close()
    if found is None:
        raise PrivacyError(f"no profile {profile_id}")
    pid = found["profile_id"]  # the survivor, if a merged-away id was given
    part = partition_for(pid, settings.internal_partitions)
    node = _stored_node(settings, pid, part)
    events, consent = _events(node, sealer)
    why = _open(why_of(node), sealer)
    out = _Out(settings)
    audit(settings, out, actor, "export", profile=pid)
    out.flush()
    return {
        "generated_at": _iso(int(time.time() * 1000)),
        "profile": found,
        "identifiers": why["identifiers"],
        "events": events,
        "consent_history": consent,
        "segments": found.get("segments", []),
        "segment_history": _segment_history(settings, pid, part),
        "merges": why["merges"],
        "refused_links": why["refused"],
    }


def _stored_node(settings: Settings, pid: str, part: int) -> Any:
    """The profile as the workers' table holds it: its latest record on the changelog,
    and the parts of its events stored under keys of their own."""
    from schemas.wire import ledger_key, node_from
    from streams.topology import topology

    changelog = topology(settings).tables["profiles"].changelog
    key = orjson.dumps(pid)
    records: dict[bytes, bytes | None] = {}
    for msg in read_partition(settings, changelog, part):
        k = msg.key() or b""
        if k == key or k.startswith(key[:-1] + b"#"):
            records[k] = msg.value()
    stored = records.get(key)
    if stored is None:
        raise PrivacyError(f"profile {pid} is in the view but not in the workers' table")

    def chunk(n: int) -> bytes:
        value = records.get(orjson.dumps(ledger_key(pid, n)))
        if value is None:
            raise PrivacyError(f"part {n} of {pid}'s events is missing from the table")
        return value

    return node_from(stored, chunk)


def _events(node: Any, sealer: Sealer) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every event the profile holds, oldest first, and its consent history."""
    events = sorted(node.state.ledger.events(), key=lambda e: (e.time_ms, e.event_id))
    shown: list[dict[str, Any]] = []
    consent: list[dict[str, Any]] = []
    for e in events:
        at = _iso(e.time_ms)
        traits = _open(dict(e.traits), sealer)
        doc: dict[str, Any] = {"event_id": e.event_id, "type": e.type, "source": e.source,
                               "occurred_at": at, "traits": traits}  # fmt: skip
        if e.purchase is not None:
            doc["purchase"] = {"currency": e.purchase.currency, "total": str(e.purchase.total),
                               "categories": list(e.purchase.categories)}  # fmt: skip
        if e.campaign is not None:
            doc["campaign"] = {"name": e.campaign[0], "channel": e.campaign[1]}
        if e.consent:
            doc["consent"] = dict(e.consent)
            consent += [
                {"at": at, "purpose": p, "granted": g, "event_id": e.event_id, "source": e.source}
                for p, g in e.consent
            ]
        shown.append(doc)
    return shown, consent


def _segment_history(settings: Settings, pid: str, part: int) -> list[dict[str, Any]]:
    from schemas.records import membership_from

    moves = []
    for msg in read_partition(settings, settings.topic_segment_membership, part):
        if (msg.key() or b"").decode() == pid and msg.value() is not None:
            t = membership_from(msg.value())
            move = "entered" if t.entered else "exited"
            moves.append({"segment": t.segment, "event": move, "at": _iso(t.at_ms),
                          "definition_version": t.definition_version})  # fmt: skip
    return moves


def _open(doc: Any, sealer: Sealer) -> Any:
    from profiles.privacy import open_document

    return open_document(doc, sealer.open_many)


class Auditor:
    """The audit trail of a long-running process (the read API): one record per read of
    a profile or privacy request — the key's name, the action, the profile; queued on
    a producer, never awaited per request. A record the broker refuses is logged and
    counted (``unifier_audit_failures``); the read is served all the same."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topic_audit
        self._p = Producer({"bootstrap.servers": settings.bootstrap_servers, "linger.ms": 20,
                            "message.timeout.ms": 30_000})  # fmt: skip
        self.failures = 0

    def _report(self, err: object, _msg: object) -> None:
        if err is not None:
            self.failures += 1
            AUDIT_FAILURES.inc()
            if self.failures in (1, 10, 100) or self.failures % 1000 == 0:
                log.error("audit records not delivered (%d so far): %s", self.failures, err)

    def record(self, actor: str, action: str, **what: Any) -> None:
        record = {"at": int(time.time() * 1000), "actor": actor, "action": action, **what}
        try:
            self._p.produce(self.topic, orjson.dumps(record), action.encode(),
                            on_delivery=self._report)  # fmt: skip
        except BufferError:
            self._report("the producer's queue is full", None)
        self._p.poll(0)

    def close(self, timeout_s: float = 5.0) -> None:
        self._p.flush(timeout_s)
        del self._p  # the client goes now, not when collected
