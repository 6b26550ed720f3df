"""A batch a rebalance overtook is given up before its table write (streams.batches)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from streams import batches
from tests.support.group import ConsumerThread, Coordinator


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


def in_group(coordinator: Coordinator, generation: int = 4) -> Any:
    """An app whose consumer runs on Faust's thread, with this coordinator."""
    current = app(generation)
    current.consumer._thread = ConsumerThread(coordinator)
    return current


def fenced(current: Any, batch: list[Any]) -> bool:
    return asyncio.run(batches.fenced(current, batch, "profile"))


def test_a_table_write_goes_ahead_only_when_the_broker_says_this_worker_is_a_member() -> None:
    member = Coordinator(4)
    current = in_group(member)
    batch = events(current, 4, 4)
    assert fenced(current, batch) is False
    assert not any(e.message.acked for e in batch)  # the stage's to write and acknowledge
    (heartbeat,) = member.sent  # one question per batch, with its generation and member id
    assert (heartbeat._generation_id, heartbeat._member_id) == (4, "member-1")
    assert not member.rejoin_requested


def test_a_rebalance_the_worker_has_not_heard_of_gives_the_batch_up_and_rejoins() -> None:
    for coordinator in [
        Coordinator(4, 27),  # the broker: a rebalance under way
        Coordinator(4, 22),  # a generation not current
        Coordinator(4, 25),  # no longer a member
        Coordinator(4, None),  # no answer: not sure, so not written
    ]:
        current = in_group(coordinator)
        batch = events(current, 4, 4)
        assert fenced(current, batch) is True
        assert all(e.message.acked for e in batch)  # let go, uncounted: read again
        assert current.consumer._unacked_messages == set()
        assert coordinator.rejoin_requested  # the assignment that follows seeks back
    rejoining = Coordinator(5)  # the client is rejoining already
    current = in_group(rejoining)
    assert fenced(current, events(current, 4, 4)) is True
    assert rejoining.sent == []


def test_a_lapsed_member_removed_is_asked_once_more_and_the_batch_written() -> None:
    # The broker answers "rebalance under way" to the call that removed a lapsed member,
    # the group otherwise unchanged: the next answer is "no error".
    coordinator = Coordinator(4, 27, 0)
    current = in_group(coordinator)
    batch = events(current, 4, 4)
    assert fenced(current, batch) is False
    assert len(coordinator.sent) == 2
    assert not coordinator.rejoin_requested
    assert not any(e.message.acked for e in batch)


def test_after_a_batch_given_up_none_is_handled_before_the_seek_that_reads_it_again() -> None:
    coordinator = Coordinator(4, 27, 27, 0)
    current = in_group(coordinator)
    first, second, third, fourth = (events(current, 4, 4) for _ in range(4))
    assert fenced(current, first) is True
    # Taken now, the second would go before the records given up ahead of it: given up
    # before any work (``batches``), and were it handled, before its table write.
    queued = [second, third]

    class Stream:
        async def noack_take(self, max_records: int, within: float) -> Any:
            for batch in queued:
                yield batch

    async def taken() -> list[Any]:
        return [b async for b in batches.batches(Stream(), 10, 0.1, current, "identity")]

    assert asyncio.run(taken()) == []
    assert all(e.message.acked for e in second + third)
    assert fenced(current, events(current, 4, 4)) is True
    asked = len(coordinator.sent)
    current.consumer._unifier_seeks = 2  # the rejoin's assignment sought back
    assert fenced(current, fourth) is False  # the broker is asked again, and confirms
    assert len(coordinator.sent) == asked + 1
    assert not any(e.message.acked for e in fourth)
