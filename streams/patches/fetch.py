"""The worker's fetch wait is a setting, not Faust's hard-coded 1.5 s.

**Corrects** (faust-streaming 0.15.3): Faust creates the worker's aiokafka consumer
with ``fetch_max_wait_ms=1500`` (``faust/transport/drivers/aiokafka.py``,
``_create_worker_consumer``). Real Kafka answers a waiting fetch as soon as a record
arrives, so the value costs nothing there; the embedded broker (Tansu 0.6) does not,
and a record reaches a consumer that is already polling after about a quarter of the
wait at the median (1,500 ms: p50 386 ms; 20 ms: 6.6 ms; measured by ``bench/run.py``'s
hop section). Every event crosses several stage-to-stage hops.

**What holds with this patch**: the consumer waits at most
``Settings.consumer_fetch_max_wait_ms`` (set right after Faust creates it, before it
starts, when aiokafka builds its fetcher from the value).

**Pinned to** faust-streaming 0.15.3 (``streams.patches.PATCHED_FOR``). **Shown by**
``tests/unit/test_fetch.py``.
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from streams.patches import require_patched_faust

_ORIGINAL = AIOKafkaConsumerThread._create_worker_consumer


def install(wait_ms: int) -> None:
    require_patched_faust("streams/patches/fetch.py")

    def _create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = _ORIGINAL(self, transport)
        consumer._fetch_max_wait_ms = wait_ms  # read by AIOKafkaConsumer.start()
        return consumer

    AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]
