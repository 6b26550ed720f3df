"""A batching touchpoint producer over confluent-kafka.

Events are grouped into Avro ``TouchpointBatch`` records (``producer_batch_events``
per record) because the worker pays its cost per Kafka record. Idempotence is on
(librdkafka retries without duplicating), every record has a delivery callback,
``poll(0)`` runs in the loop and there is one ``flush()`` at the end — never one per
message.

Memory is bounded: at most ``max_in_flight_events`` events sit in the client
between ``send`` and their delivery report. Past that, ``send`` blocks (serving
delivery reports) for up to ``block_timeout_s`` and then raises ``BufferFull`` —
back-pressure instead of an ever-growing queue when the broker is away.

Framing: Avro single-object encoding, and the writer schemas are announced on the
schema topic before the first record; with ``schema_registry_url`` set, Confluent
Schema Registry framing instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from config.settings import Settings
from profiles.privacy import Sealer
from profiles.touchpoint import Touchpoint
from schemas.codec import BATCH, TOUCHPOINT, encode_batches
from schemas.resolve import RegistryFraming, SchemaLog, registry_client
from sinks.keys import sealer_for

log = logging.getLogger("unifier.producer")

#: Called with (the events of a record that could not be delivered, the error).
ErrorCallback = Callable[[list[Touchpoint], str], None]


class ProducerClosed(RuntimeError):
    """send() after close()."""


class BufferFull(RuntimeError):
    """Too many events wait for delivery and none completed within the block timeout."""


class _Closed:
    def __getattr__(self, name: str) -> object:
        raise ProducerClosed("this producer is closed")


@dataclass
class DeliveryReport:
    records_sent: int = 0
    events_sent: int = 0
    events_failed: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.events_failed and not self.errors


class TouchpointProducer:
    def __init__(
        self,
        settings: Settings,
        *,
        max_in_flight_events: int = 200_000,
        block_timeout_s: float = 30.0,
        on_error: ErrorCallback | None = None,
        sealer: Sealer | Literal["settings"] | None = "settings",
        **overrides: str | int | bool,
    ) -> None:
        """``sealer``: what seals personal data before it is sent (profiles.privacy);
        by default the deployment's (``sinks.keys.sealer_for``), None: send as given."""
        self._settings = settings
        self._sealer = sealer_for(settings) if sealer == "settings" else sealer
        self._topic = settings.topic_touchpoints
        self._batch = settings.producer_batch_events
        self._buffer: list[Touchpoint] = []
        self._max_in_flight = max_in_flight_events
        self._block_timeout = block_timeout_s
        self._on_error = on_error
        self._in_flight = 0
        self._registry: RegistryFraming | None = None
        self._announced = False
        self.report = DeliveryReport()
        config: dict[str, str | int | bool] = {
            "bootstrap.servers": settings.bootstrap_servers,
            "enable.idempotence": True,
            "linger.ms": 5,
            "compression.type": "lz4",
            "message.max.bytes": 8 * 1024 * 1024,
            # A record not delivered in 2 minutes (retries included) is reported failed.
            "delivery.timeout.ms": 120_000,
        }
        config.update(overrides)
        self._producer = Producer(config)
        if settings.schema_registry_url:
            self._registry = RegistryFraming(
                registry_client(settings.schema_registry_url), self._topic
            )

    def _on_delivery(
        self, events: list[Touchpoint]
    ) -> Callable[[KafkaError | None, Message], None]:
        def callback(err: KafkaError | None, _msg: Message) -> None:
            self._in_flight -= len(events)
            if err is None:
                self.report.events_sent += len(events)
                return
            self.report.events_failed += len(events)
            self.report.errors.append(str(err))
            if self._on_error is not None:
                self._on_error(events, str(err))

        return callback

    def send(self, tp: Touchpoint) -> None:
        """Queue one (already validated) touchpoint; sent in batches."""
        self._buffer.append(tp)
        if len(self._buffer) >= self._batch:
            self._send_buffer()

    def send_many(self, tps: Iterable[Touchpoint]) -> None:
        for tp in tps:
            self.send(tp)

    def _framing(self) -> bytes | None:
        if self._registry is not None:
            return self._registry.prefix(BATCH)
        if not self._announced:
            self._announced = True
            try:
                SchemaLog(self._settings).announce((TOUCHPOINT, BATCH), timeout=5.0)
            except KafkaException as exc:
                log.warning(
                    "%s; workers older than this producer will dead-letter its records", exc
                )
        return None

    def _wait_for_room(self, incoming: int) -> None:
        deadline = time.monotonic() + self._block_timeout
        while self._in_flight + incoming > self._max_in_flight and self._in_flight > 0:
            if time.monotonic() > deadline:
                raise BufferFull(
                    f"{self._in_flight} events still wait for the broker after "
                    f"{self._block_timeout:.0f}s; is {self._settings.bootstrap_servers} reachable?"
                )
            self._producer.poll(0.1)

    def _send_buffer(self) -> None:
        if not self._buffer:
            return
        events, self._buffer = self._buffer, []
        prefix = self._framing()
        sealed = events if self._sealer is None else self._sealer.seal(events)
        at = 0
        for part, value in encode_batches(sealed, prefix, self._settings.max_record_bytes):
            # delivery reports name the events as they were given, not as sealed
            self._produce(events[at : at + len(part)], value)
            at += len(part)

    def _produce(self, events: list[Touchpoint], value: bytes) -> None:
        self._wait_for_room(len(events))
        deadline = time.monotonic() + self._block_timeout
        while True:
            try:
                self._producer.produce(
                    self._topic, value=value, on_delivery=self._on_delivery(events)
                )
                break
            except BufferError:  # librdkafka's queue is full: serve deliveries, retry
                if time.monotonic() > deadline:
                    self._buffer = events + self._buffer
                    raise BufferFull(
                        f"the client queue stayed full for {self._block_timeout:.0f}s"
                    ) from None
                self._producer.poll(0.1)
        self._in_flight += len(events)
        self.report.records_sent += 1
        self._producer.poll(0)

    def flush(self, timeout: float = 60.0) -> DeliveryReport:
        """Send what is buffered and wait for every delivery report."""
        self._send_buffer()
        remaining = self._producer.flush(timeout)
        if remaining:
            self.report.errors.append(f"{remaining} records still undelivered after {timeout}s")
        return self.report

    def close(self, timeout: float = 60.0) -> DeliveryReport:
        """Flush, then release the client (its threads and broker connections)."""
        if isinstance(self._producer, _Closed):
            return self.report
        report = self.flush(timeout)
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
