"""A batch a rebalance overtook is given up before its table write (streams.batches)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from streams import batches


class Msg(SimpleNamespace):
    __hash__ = object.__hash__  # as Faust's messages: by identity


def app(generation: int = 4, flowing: bool = True) -> Any:
    consumer = SimpleNamespace(_unacked_messages=set(), _waiting_for_ack=None)
    return SimpleNamespace(
        consumer=consumer,
        consumer_generation_id=generation,
        flow_control=SimpleNamespace(is_active=lambda: flowing),
    )


def events(app: Any, *generations: int) -> list[Any]:
    out = []
    for offset, generation in enumerate(generations):
        message = Msg(offset=offset, generation_id=generation, acked=False)
        app.consumer._unacked_messages.add(message)
        out.append(SimpleNamespace(message=message))
    return out


def test_a_batch_of_this_generation_with_the_flow_on_is_handled() -> None:
    current = app()
    batch = events(current, 4, 4)
    assert not batches.superseded(current, batch)
    assert batches.overtaken(current, batch, "profile") is False
    assert all(not e.message.acked for e in batch)  # left for the stage to acknowledge


def test_a_rebalance_since_the_fetch_gives_the_batch_up_uncounted() -> None:
    for overtaking, batch_generations in [
        (app(flowing=False), (4, 4)),  # a rebalance (or a shutdown) under way
        (app(generation=5), (4, 5)),  # one record from before the last rebalance
    ]:
        batch = events(overtaking, *batch_generations)
        assert batches.overtaken(overtaking, batch, "identity") is True
        # Done as far as the rebalance's wait goes, and never counted for a commit:
        # Faust's own acknowledgement (which counts) is not what ran.
        assert all(e.message.acked for e in batch)
        assert overtaking.consumer._unacked_messages == set()
        assert not hasattr(overtaking.consumer, "_acked_index")


def test_batches_skips_those_a_rebalance_overtook_before_any_work() -> None:
    import asyncio

    current = app(generation=5)
    old, fresh = events(current, 4, 5), events(current, 5, 5)

    class Stream:
        async def noack_take(self, max_records: int, within: float) -> Any:
            for batch in (old, fresh):
                yield batch

    async def taken() -> list[Any]:
        return [b async for b in batches.batches(Stream(), 10, 0.1, current, "identity")]

    assert asyncio.run(taken()) == [fresh]
    assert all(e.message.acked for e in old)  # let go, uncounted
    assert not any(e.message.acked for e in fresh)  # the stage's to acknowledge
