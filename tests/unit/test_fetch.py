"""The worker's consumer gets the fetch wait from the settings, not Faust's 1500 ms."""

import asyncio

import faust
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from streams.patches import fetch


def worker_consumer(app: faust.App) -> object:
    async def create() -> object:
        thread = app.consumer._thread
        assert isinstance(thread, AIOKafkaConsumerThread)
        return thread._create_worker_consumer(app.transport)

    return asyncio.run(create())


def test_the_worker_consumer_waits_as_configured() -> None:
    app = faust.App("fetch-test", broker="kafka://127.0.0.1:1", web_enabled=False)
    stock = AIOKafkaConsumerThread._create_worker_consumer
    AIOKafkaConsumerThread._create_worker_consumer = fetch._ORIGINAL  # type: ignore[method-assign]
    try:
        assert worker_consumer(app)._fetch_max_wait_ms == 1500  # type: ignore[attr-defined]
        fetch.install(37)
        assert worker_consumer(app)._fetch_max_wait_ms == 37  # type: ignore[attr-defined]
    finally:
        AIOKafkaConsumerThread._create_worker_consumer = stock  # type: ignore[method-assign]
