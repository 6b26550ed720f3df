"""Reading the dead-letter topic (``unifier dlq show``, erasure's search for the dead
letters that name a person): each letter with its headers (reason, stage, where it
came from) and, when the bytes decode, its events — opened (``profiles.privacy``), and
masked in the JSON form unless asked for (``--unmasked``, e.g. to fix and replay).
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from config.settings import Settings
from profiles.touchpoint import Touchpoint, to_json_form
from schemas.codec import DecodeError, UnknownSchema, decode_touchpoints
from schemas.resolve import Resolver
from sinks.keys import sealer_for
from streams.dlq import SEALED_HEADER

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
