"""The dead-letter topic, for the engineer who has to look at it.

``read`` lists dead letters with their headers (reason, stage, where they came
from) and, when the bytes still decode, the events in the touchpoint JSON form.
Personal data is masked unless asked for (``--unmasked``, e.g. to fix and replay).

Two ways back in:

* ``replay_file``: lines of ``unifier dlq show --json --unmasked`` (events fixed by
  hand) or plain touchpoint JSON lines; each event is validated like ``ingest``
  and sent, the rest go to a rejects file with line numbers.
* ``replay_topic``: records whose bytes are fine now (a schema became known, a
  setting was fixed) are sent again as they are; the others are reported with
  today's reason. The worker applies each event id once, so replaying twice is safe.
"""

from __future__ import annotations

import base64
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from config.settings import Settings
from producers.loader import Loader, LoadResult
from profiles.configured import identity_rules
from profiles.routing import observe, validate_event
from profiles.touchpoint import InvalidTouchpoint, Touchpoint, to_json_form
from schemas.codec import DecodeError, UnknownSchema, decode_touchpoints, encode_batch
from schemas.resolve import Resolver
from sinks.keys import sealer_for
from streams.dlq import SEALED_HEADER
from unifier.ingest import _lines

HEADERS = {
    "x-dlq-reason": "reason",
    "x-dlq-stage": "stage",
    "x-source-topic": "source_topic",
    "x-source-partition": "source_partition",
    "x-source-offset": "source_offset",
    "x-dlq-time-ms": "time_ms",
}
#: Context fields that can carry personal data (marked ``pii`` in the schema).
PII_CONTEXT = ("ip", "page_url", "referrer")


def mask(value: str) -> str:
    """Enough to recognise a value, not enough to use it: ``a***@example.com``, ``+1***00``."""
    if "@" in value:
        local, _, domain = value.partition("@")
        return f"{local[:1]}***@{domain}"
    if len(value) <= 4:
        return "***"
    return f"{value[:2]}***{value[-2:]}"


def masked(event: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(event)
    out["identifiers"] = {k: mask(str(v)) for k, v in event.get("identifiers", {}).items()}
    if "traits" in out:
        out["traits"] = {k: "***" if isinstance(v, str) else v for k, v in out["traits"].items()}
    if "properties" in out:
        out["properties"] = "(hidden: may hold personal data)"
    if "context" in out:
        out["context"] = {k: "***" if k in PII_CONTEXT else v for k, v in out["context"].items()}
    if out.get("pos", {}).get("card_last4"):
        out["pos"] = {**out["pos"], "card_last4": "***"}
    return out


@dataclass
class DeadLetter:
    offset: int
    partition: int
    value: bytes
    headers: dict[str, str]
    events: list[Touchpoint] | None
    decode_error: str | None
    raw: bytes = b""  # the record's bytes as stored (sealed), when they were opened

    def to_json(self, unmasked: bool = False) -> dict[str, Any]:
        meta = {name: self.headers.get(header) for header, name in HEADERS.items()}
        time_ms = meta.pop("time_ms")
        doc: dict[str, Any] = {
            "dlq_partition": self.partition,
            "dlq_offset": self.offset,
            "time": (
                datetime.fromtimestamp(int(time_ms) / 1000, UTC).isoformat(timespec="seconds")
                if time_ms
                else None
            ),
            **meta,
            "bytes": len(self.value),
        }
        if self.events is not None:
            forms = [to_json_form(tp) for tp in self.events]
            doc["events"] = forms if unmasked else [masked(f) for f in forms]
        else:
            doc["decode_error"] = self.decode_error
            if unmasked:
                doc["value_base64"] = base64.b64encode(self.value).decode()
        return doc


def _decode(value: bytes, resolver: Resolver | None) -> tuple[list[Touchpoint] | None, str | None]:
    try:
        return decode_touchpoints(value), None
    except UnknownSchema as missing:
        if resolver is not None and resolver.resolve(missing) is None:
            return _decode(value, None)
        return None, str(missing)
    except DecodeError as exc:
        return None, str(exc)


def read(
    settings: Settings, limit: int | None = None, idle_s: float = 2.0, resolve: bool = True
) -> Iterator[DeadLetter]:
    """Dead letters from the oldest, until ``limit`` or nothing new for ``idle_s``."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"unifier.dlq-reader.{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    resolver = Resolver(settings) if resolve else None
    sealer = sealer_for(settings)  # dead letters are read opened (and shown masked)
    try:
        meta = consumer.list_topics(settings.topic_dlq, timeout=10)
        topic = meta.topics.get(settings.topic_dlq)
        if topic is None or topic.error is not None:
            raise RuntimeError(f"topic '{settings.topic_dlq}' does not exist")
        consumer.assign(
            [TopicPartition(settings.topic_dlq, p, OFFSET_BEGINNING) for p in topic.partitions]
        )
        seen = 0
        last = time.monotonic()
        while (limit is None or seen < limit) and time.monotonic() - last < idle_s:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            kafka_error = msg.error()
            if kafka_error is not None:
                if kafka_error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise RuntimeError(str(kafka_error))
            last = time.monotonic()
            seen += 1
            headers = {str(k): _text(v) for k, v in list(msg.headers() or [])}
            value = raw = msg.value() or b""
            where = msg.offset() or 0, msg.partition() or 0
            if headers.get(SEALED_HEADER) and sealer is not None:
                opened = sealer.open_bytes(value)
                if opened is None:  # an erasure destroyed its key
                    yield DeadLetter(*where, b"", headers, None, "erased", raw)
                    continue
                value = opened
            events, error = _decode(value, resolver)
            if events is not None and sealer is not None:
                events = [sealer.open_touchpoint(tp) for tp in events]
            yield DeadLetter(*where, value, headers, events, error, raw)
    finally:
        consumer.close()


def _text(value: str | bytes | None) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value or ""


def replay_file(
    path: Path,
    settings: Settings,
    rejects_path: Path | None = None,
    progress: bool | None = None,
    err: IO[str] = sys.stderr,
) -> LoadResult:
    with (
        Loader(path, settings, rejects_path, progress, err, "replay") as loader,
        open(path, "rb") as fh,
    ):
        result = loader.result
        rules = identity_rules(settings)
        position = 0
        for number, raw in _lines(fh):
            position += len(raw) + 1
            loader.progress_to(position)
            line = raw.strip()
            result.lines += 1
            if not line:
                result.blank += 1
                continue
            try:
                doc = orjson.loads(line)
                docs = doc["events"] if isinstance(doc, dict) and "events" in doc else [doc]
                if not isinstance(docs, list) or not docs:
                    raise InvalidTouchpoint("events: a non-empty list is required")
                if any(masked_value(d) for d in docs):
                    raise InvalidTouchpoint(
                        "holds masked values (***): export with `dlq show --json --unmasked`"
                    )
                events = [validate_event(d, rules, settings.default_phone_region) for d in docs]
            except orjson.JSONDecodeError as exc:
                loader.reject(number, f"malformed JSON: {exc}", line.decode("utf-8", "replace"))
                continue
            except InvalidTouchpoint as exc:
                loader.reject(number, str(exc), line.decode("utf-8", "replace"))
                continue
            for tp in events:
                loader.send(tp)
    return result


def masked_value(doc: Any) -> bool:
    return isinstance(doc, dict) and any(
        "***" in str(v) for v in (doc.get("identifiers") or {}).values()
    )


@dataclass
class TopicReplay:
    resent: int = 0
    still_bad: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


def replay_topic(settings: Settings, stage: str | None = None) -> TopicReplay:
    """Send again, as they are, the dead letters that decode and validate now."""
    outcome = TopicReplay()
    rules = identity_rules(settings)
    sealer = sealer_for(settings)
    producer = Producer(
        {"bootstrap.servers": settings.bootstrap_servers, "enable.idempotence": True}
    )
    for letter in read(settings):
        if stage is not None and letter.headers.get("x-dlq-stage") != stage:
            continue
        reason = letter.decode_error
        if letter.events is not None:
            try:
                for tp in letter.events:
                    observe(tp, rules, settings.default_phone_region)  # validation only
            except InvalidTouchpoint as exc:
                reason = str(exc)
        if reason is not None:
            outcome.still_bad += 1
            outcome.reasons[reason] = outcome.reasons.get(reason, 0) + 1
            continue
        value = letter.value
        if letter.headers.get(SEALED_HEADER) and letter.events is not None and sealer:
            value = encode_batch(sealer.seal(letter.events))  # opened to be read: sealed again
        producer.produce(settings.topic_touchpoints, value=value)
        producer.poll(0)
        outcome.resent += 1
    if producer.flush(60):
        raise RuntimeError("replayed records were not all acknowledged by the broker")
    return outcome
