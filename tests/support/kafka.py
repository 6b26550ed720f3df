"""Reading what is on a topic, the way a downstream consumer would."""

from __future__ import annotations

import time
import uuid
from collections.abc import Collection

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from config.settings import Settings
from profiles.touchpoint import Touchpoint
from schemas.codec import decode_touchpoints
from sinks.keys import sealer_for


def consume_all(
    settings: Settings, topic: str, partitions: int, idle_s: float = 3.0
) -> list[Message]:
    """Every record on ``topic``, read from the beginning until nothing new came for ``idle_s``."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"test-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        out: list[Message] = []
        last = time.monotonic()
        while time.monotonic() - last < idle_s:
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            out.append(msg)
            last = time.monotonic()
        return out
    finally:
        consumer.close()


def touchpoints_on_topic(
    settings: Settings, idle_s: float = 3.0, skip: Collection[bytes] = (), opened: bool = True
) -> list[Touchpoint]:
    """Every touchpoint on the input topic (each record decoded; batches flattened),
    leaving out records whose bytes are in ``skip``; with ``opened``, personal data
    opened (it is sealed on the topic: ``profiles.privacy``)."""
    records = consume_all(
        settings, settings.topic_touchpoints, settings.touchpoint_partitions, idle_s
    )
    tps = [
        tp for msg in records if msg.value() not in skip for tp in decode_touchpoints(msg.value())
    ]
    sealer = sealer_for(settings) if opened else None
    return tps if sealer is None else [sealer.open_touchpoint(tp) for tp in tps]
