"""The worker's fetch wait: how long the broker may hold a fetch that has no data.

Faust 0.15.3 hard-codes ``fetch_max_wait_ms=1500`` for the worker's aiokafka consumer
(``faust/transport/drivers/aiokafka.py``, ``_create_worker_consumer``). Real Kafka
answers a waiting fetch as soon as a record arrives, so the value costs nothing
there. The embedded broker (Tansu 0.6) does not: measured with ``bench/run.py``'s
hop section, a record produced to a partition a consumer is already polling reaches
it after about a quarter of the fetch wait at the median (1,500 ms: p50 386 ms;
500 ms: 130 ms; 100 ms: 15 ms; 20 ms: 6.6 ms; 5 ms: 3.4 ms). Every event crosses
several stage-to-stage hops, so that delay, not CPU, bounded the worker's speed.

``install(wait_ms)`` sets the consumer's wait (``Settings.consumer_fetch_max_wait_ms``)
right after Faust creates it and before it starts, when aiokafka builds its fetcher
from the value. Pinned with the other Faust patches (streams.offsets).
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from streams.offsets import require_patched_faust

_ORIGINAL = AIOKafkaConsumerThread._create_worker_consumer


def install(wait_ms: int) -> None:
    require_patched_faust("streams/fetch.py")

    def _create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = _ORIGINAL(self, transport)
        consumer._fetch_max_wait_ms = wait_ms  # read by AIOKafkaConsumer.start()
        return consumer

    AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]
