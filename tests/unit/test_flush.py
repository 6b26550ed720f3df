"""Faust's pre-commit flush, on Faust's own producer buffer: ours drains it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest
from faust.transport.producer import ProducerBuffer

from streams.patches import flush

flush.install()
STOCK_FLUSH = flush._original["flush"]


class SlowChannel:
    """Where a record goes: taking ``seconds`` each, as a changelog record does when
    it waits for the previous batch to its partition."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.sent: list[int] = []
        self.sending = asyncio.Event()

    async def publish_message(self, fut: Any, wait: bool = False) -> None:
        self.sending.set()
        await asyncio.sleep(self.seconds)
        self.sent.append(fut.n)


def run_with_buffer(
    records: int, check: Callable[[Any, SlowChannel], Awaitable[Any]], seconds: float = 0.15
) -> Any:
    async def main() -> Any:
        buffer = ProducerBuffer()
        buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))  # type: ignore[assignment]
        channel = SlowChannel(seconds)
        await buffer.start()
        try:
            for n in range(records):
                buffer.put(SimpleNamespace(n=n, message=SimpleNamespace(channel=channel)))  # type: ignore[arg-type]
            return await check(buffer, channel)
        finally:
            await flush.flush_all(buffer)
            await buffer.stop()

    return asyncio.run(main())


def test_fausts_own_flush_returns_with_records_unsent() -> None:
    """Why streams.patches.flush exists: if this starts failing, Faust fixed it upstream."""

    async def check(buffer: Any, channel: SlowChannel) -> list[int]:
        await STOCK_FLUSH(buffer)
        return list(channel.sent)

    assert len(run_with_buffer(4, check)) < 4


def test_the_flush_before_a_commit_waits_for_every_record_to_be_sent() -> None:
    async def check(buffer: Any, channel: SlowChannel) -> tuple[int, list[int]]:
        await buffer.flush()  # what the consumer calls before it commits
        return buffer.size, list(channel.sent)

    assert run_with_buffer(4, check) == (0, [0, 1, 2, 3])


def test_a_record_taken_from_the_queue_but_not_sent_yet_is_waited_for() -> None:
    async def check(buffer: Any, channel: SlowChannel) -> list[int]:
        await channel.sending.wait()  # the sender took the only record off the queue
        assert buffer.size == 0
        await buffer.flush()
        return list(channel.sent)

    assert run_with_buffer(1, check, seconds=0.3) == [0]


def test_a_stopped_buffer_with_records_fails_the_flush() -> None:
    """Nothing is committed then: the records are read again after the restart."""

    async def main() -> None:
        buffer = ProducerBuffer()
        buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))  # type: ignore[assignment]
        await buffer.start()
        await buffer.stop()
        buffer.pending.put_nowait(SimpleNamespace())
        await flush.flush_all(buffer)

    with pytest.raises(RuntimeError, match="stopped with 1 records unsent"):
        asyncio.run(main())
