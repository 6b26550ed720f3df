"""The worker's own producer: every record its stages write — internal messages, the
output topics, the tables' changelogs — through one confluent-kafka producer.

Why not Faust's: Faust hands each record to aiokafka through futures, callbacks and a
buffer task, ~100-160 µs of Python per record (measured, DESIGN.md "Throughput"); a
profile stage writes a changelog record and a profile update per changed profile, so
that cost was paid twice per event. librdkafka queues a record in ~2 µs and batches,
sends and retries on its own threads.

A stage produces what a batch made, then ``await delivered()``: it returns once the
broker has acknowledged every record produced so far (the flush runs in a thread, so
the event loop — and the other stages — go on meanwhile), and raises if any failed.
The order of the stages' steps is kept by awaiting between them: outputs delivered,
then the table's changelog, then the acknowledgement of the input records.

Records keyed for Faust's consumers land where Faust would put them: the partitioner
is murmur2 (Faust's and aiokafka's), not librdkafka's default (crc32).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from config.settings import Settings

log = logging.getLogger("unifier.producer")

#: How long ``delivered`` waits before it says so in the log (and waits on).
WARN_AFTER_S = 10.0


class DeliveryFailed(RuntimeError):
    """Records the broker did not take. Fatal for the worker: its tables' stores already
    hold writes whose changelog records were lost, so no stage may acknowledge
    anything more, and the worker must start again from its changelogs."""


class FastProducer:
    def __init__(
        self,
        settings: Settings,
        on_fatal: Callable[[str], None] | None = None,
        **overrides: Any,
    ) -> None:
        config: dict[str, Any] = {
            "bootstrap.servers": settings.bootstrap_servers,
            # Ordered and without duplicates across librdkafka's own retries.
            "enable.idempotence": True,
            "linger.ms": 2,  # `delivered` flushes at once; this only gathers concurrent stages
            "compression.type": "lz4",
            "partitioner": "murmur2_random",  # Faust's partitioner, for keyed records
            "delivery.timeout.ms": 120_000,
            "queue.buffering.max.messages": 1_000_000,
            # Reports only for failures: a callback per record would cost what we save.
            "delivery.report.only.error": True,
            "on_delivery": self._on_delivery,
        }
        config.update(overrides)
        self._producer = Producer(config)
        self._failed: list[str] = []
        self.fatal: str | None = None  # set by the first failure, for good
        self._on_fatal = on_fatal

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failed.append(f"{msg.topic()}[{msg.partition()}]: {err.str()}")

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        partition: int = -1,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        """Queue one record (``value`` None: a tombstone); waits only while librdkafka's
        queue is full."""
        while True:
            try:
                if headers:
                    self._producer.produce(topic, value, key, partition, headers=list(headers))
                else:
                    self._producer.produce(topic, value, key, partition)
                return
            except BufferError:
                self._producer.poll(0.05)

    async def delivered(self) -> None:
        """Return once every record produced so far is acknowledged by the broker;
        raise ``DeliveryFailed`` naming those that were not."""
        loop = asyncio.get_running_loop()
        waited = 0.0
        while len(self._producer) and await loop.run_in_executor(
            None, self._producer.flush, WARN_AFTER_S
        ):
            waited += WARN_AFTER_S
            log.warning("producer: records still unacknowledged after %.0f s", waited)
        if self._failed and self.fatal is None:
            failed = self._failed
            self.fatal = f"{len(failed)} records were not delivered, e.g. {'; '.join(failed[:3])}"
            log.critical("producer: %s; the worker stops (its tables restart from their "
                         "changelogs)", self.fatal)  # fmt: skip
            if self._on_fatal is not None:
                self._on_fatal(self.fatal)
        if self.fatal is not None:
            # Every stage, not only the one whose records failed: the stages share this
            # producer, and a store ahead of its changelog must not be acknowledged.
            raise DeliveryFailed(self.fatal)

    def close(self, timeout_s: float = 10.0) -> None:
        left = self._producer.flush(timeout_s)
        if left:
            log.warning("producer closed with %d records unacknowledged", left)


class ProducedTopic:
    """One topic as the stages' ``send`` helpers see it (``streams.messages``): records
    are queued on the worker's producer; the stage awaits ``FastProducer.delivered``."""

    def __init__(self, producer: FastProducer, name: str) -> None:
        self.producer = producer
        self.name = name

    def send(
        self,
        value: bytes | None,
        partition: int = -1,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        self.producer.produce(self.name, value, key, partition, headers)
