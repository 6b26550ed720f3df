"""The worker's producer (streams.producer): a record the broker never takes stops the
worker, and no stage acknowledges anything after it."""

from __future__ import annotations

import asyncio

import pytest

from config.settings import Settings
from streams.producer import DeliveryFailed, FastProducer
from unifier.processes import free_port


def test_a_failed_delivery_is_fatal_for_every_stage() -> None:
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens there
    stopped: list[str] = []
    producer = FastProducer(
        Settings(bootstrap_servers=nobody), on_fatal=stopped.append, **{"message.timeout.ms": 300}
    )

    async def go() -> None:
        producer.produce("unifier.profile-ops", b"[]", None, 0)
        with pytest.raises(DeliveryFailed, match="1 records were not delivered"):
            await producer.delivered()
        # Another stage that produced nothing itself must not go on either.
        with pytest.raises(DeliveryFailed):
            await producer.delivered()

    asyncio.run(go())
    assert len(stopped) == 1 and "not delivered" in stopped[0]
