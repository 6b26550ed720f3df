"""A batching touchpoint producer over confluent-kafka.

Events are grouped into Avro ``TouchpointBatch`` records (``producer_batch_events``
per record) because the worker pays its cost per Kafka record. Idempotence is on,
every record has a delivery callback, ``poll(0)`` runs in the loop and there is
one ``flush()`` at the end — never one per message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType

from confluent_kafka import KafkaError, Message, Producer

from profiles.touchpoint import Touchpoint
from schemas.codec import encode_batch
from unifier.settings import Settings


class ProducerClosed(RuntimeError):
    """send() after close()."""


class _Closed:
    def __getattr__(self, name: str) -> object:
        raise ProducerClosed("this TouchpointProducer is closed")


@dataclass
class DeliveryReport:
    records_sent: int = 0
    events_sent: int = 0
    events_failed: int = 0
    errors: list[str] = field(default_factory=list)


class TouchpointProducer:
    def __init__(self, settings: Settings, **overrides: str | int | bool) -> None:
        self._topic = settings.topic_touchpoints
        self._batch = settings.producer_batch_events
        self._buffer: list[Touchpoint] = []
        self.report = DeliveryReport()
        config: dict[str, str | int | bool] = {
            "bootstrap.servers": settings.bootstrap_servers,
            "enable.idempotence": True,
            "linger.ms": 5,
            "compression.type": "lz4",
            "message.max.bytes": 8 * 1024 * 1024,
        }
        config.update(overrides)
        self._producer = Producer(config)

    def _on_delivery(self, events: int) -> Callable[[KafkaError | None, Message], None]:
        def callback(err: KafkaError | None, _msg: Message) -> None:
            if err is None:
                self.report.events_sent += events
            else:
                self.report.events_failed += events
                self.report.errors.append(str(err))

        return callback

    def send(self, tp: Touchpoint) -> None:
        self._buffer.append(tp)
        if len(self._buffer) >= self._batch:
            self._send_buffer()

    def send_many(self, tps: Iterable[Touchpoint]) -> None:
        for tp in tps:
            self.send(tp)

    def _send_buffer(self) -> None:
        if not self._buffer:
            return
        value = encode_batch(self._buffer)
        count = len(self._buffer)
        self._buffer = []
        while True:
            try:
                self._producer.produce(
                    self._topic, value=value, on_delivery=self._on_delivery(count)
                )
                break
            except BufferError:  # local queue full: back-pressure, wait for deliveries
                self._producer.poll(0.1)
        self.report.records_sent += 1
        self._producer.poll(0)

    def flush(self, timeout: float = 60.0) -> DeliveryReport:
        self._send_buffer()
        remaining = self._producer.flush(timeout)
        if remaining:
            self.report.errors.append(f"{remaining} records still undelivered after {timeout}s")
        return self.report

    def close(self) -> DeliveryReport:
        """Flush, then release the client (its threads and broker connections)."""
        report = self.flush()
        self._producer = _Closed()  # type: ignore[assignment]
        return report

    def __enter__(self) -> TouchpointProducer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
