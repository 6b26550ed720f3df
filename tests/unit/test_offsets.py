"""The commit rule of streams/patches/offsets.py: a commit never passes a record that was not
acknowledged, and a consecutive run from the committed offset is always committed."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from faust.types import TP
from hypothesis import given
from hypothesis import strategies as st
from intervaltree import IntervalTree

from streams.patches import offsets
from tests.support.group import ConsumerThread, Coordinator

TP0 = TP("unifier.profile-ops", 0)


def consumer_state(committed: int | None, acked: list[int], gaps: list[tuple[int, int]]) -> Any:
    offsets.patch_consumer()
    tree = IntervalTree()
    for begin, end in gaps:
        tree.addi(begin, end)
    state = SimpleNamespace(
        _acked=defaultdict(list, {TP0: list(acked)}),
        _acked_index=defaultdict(set, {TP0: set(acked)}),
        _committed_offset=defaultdict(lambda: None, {TP0: committed}),
        _gap=defaultdict(IntervalTree, {TP0: tree} if gaps else {}),
    )
    return state


def new_offset(
    committed: int | None, acked: list[int], gaps: list[tuple[int, int]] | None = None
) -> Any:
    return offsets._new_offset(consumer_state(committed, acked, gaps or []), TP0)


def test_a_hole_at_the_head_blocks_the_commit_however_small() -> None:
    # Committed 165 means 165 is the next record to process.
    assert new_offset(165, [166, 167]) is None  # Faust 0.15.3 committed 168 here
    assert new_offset(165, [170, 171]) is None
    assert new_offset(0, [1, 2]) is None  # and ignored the head when committed was 0


def test_a_partition_without_a_known_start_is_not_committed() -> None:
    assert new_offset(None, [5, 6]) is None


def test_a_run_from_the_committed_offset_is_committed_up_to_the_first_hole() -> None:
    assert new_offset(165, [165, 166, 167, 170]) == 168
    assert new_offset(0, [0, 1, 2]) == 3


class Broker:
    """What a commit meets: the group's committed offsets, and a hook run while the
    commit is on its way (a rebalance's seek, a cancellation)."""

    def __init__(self) -> None:
        self.committed: dict[Any, int] = {}
        self.during: Any = None
        self.accept = True


def committer(state: Any, broker: Broker) -> Any:
    """``state`` made able to commit (Faust's consumer, as ``_commit_offsets`` uses it)."""

    async def flush() -> None:
        return None

    async def commit(offs: dict[Any, int]) -> bool:
        if broker.during is not None:
            await broker.during()
        if broker.accept:
            broker.committed.update(offs)
        return broker.accept

    state.in_transaction = False
    state.assignment = lambda: {TP0}
    state._commit = commit
    state.log = SimpleNamespace(info=lambda *a, **k: None, dev=lambda *a, **k: None)
    state._is_changelog_tp = lambda tp: False
    state.app = SimpleNamespace(
        producer=SimpleNamespace(flush=flush),
        tables=SimpleNamespace(on_commit=lambda offs: None),
        monitor=SimpleNamespace(on_tp_commit=lambda offs: None),
    )
    return state


def test_records_the_fetch_loop_skipped_are_not_taken_as_processed() -> None:
    # Faust records offsets its fetch loop jumped over as a "gap" and committed them
    # as if processed; those were records skipped while a partition was paused.
    assert new_offset(10, [10, 11, 14, 15], gaps=[(12, 14)]) == 12
    state = consumer_state(10, [10, 11, 14, 15], gaps=[(12, 14)])
    assert offsets._new_offset(state, TP0) == 12

    asyncio.run(offsets._commit_offsets(committer(state, Broker()), {TP0: 12}))
    assert offsets._new_offset(state, TP0) is None  # nothing more until 12 is acked
    assert state._acked[TP0] == [14, 15]


@given(
    committed=st.integers(0, 50),
    acked=st.sets(st.integers(0, 80), max_size=40),
)
def test_a_commit_only_covers_acknowledged_records(committed: int, acked: set[int]) -> None:
    acked_from = sorted(o for o in acked if o >= committed)  # Faust drops older acks
    got = new_offset(committed, acked_from)
    run = committed
    while run in acked:
        run += 1
    if run == committed:
        assert got is None
    else:
        assert got == run
        assert all(o in acked for o in range(committed, got))


class FakeConsumer:
    """The parts of Faust's consumer the watchdog reads, and a log of what it does."""

    def __init__(self, committed: int, read: int, high: int) -> None:
        self._committed_offset = defaultdict(lambda: None, {TP0: committed})
        self._read_offset = defaultdict(lambda: None, {TP0: read})
        self._acked_index: defaultdict[Any, set[int]] = defaultdict(set)
        self._unacked_messages: list[Any] = []
        self.high = high
        self.flow_active = True
        self._commit_fut: Any = None
        self.earliest = 0
        self.fetched: int | None = None
        self.calls: list[tuple[str, Any]] = []

    def assignment(self) -> set[Any]:
        return {TP0, TP("unifier.identity-changelog", 0)}

    def highwater(self, tp: Any) -> int:
        return self.high

    async def position(self, tp: Any) -> int:
        """The fetcher's next offset (``fetched``: how far it has fetched)."""
        return self.fetched if self.fetched is not None else self.high

    async def earliest_offsets(self, *tps: Any) -> dict[Any, int]:
        return {tp: self.earliest for tp in tps}

    def pause_partitions(self, tps: Any) -> None:
        self.calls.append(("pause", set(tps)))

    async def seek_wait(self, offsets: dict[Any, int]) -> None:
        self.calls.append(("seek", dict(offsets)))

    def resume_partitions(self, tps: Any) -> None:
        self.calls.append(("resume", set(tps)))


def watchdog(consumer: FakeConsumer, queued: list[Any] | None = None) -> offsets.Watchdog:
    queue = SimpleNamespace(_queue=list(queued or []))
    app = SimpleNamespace(
        consumer=consumer,
        rebalancing=False,
        should_stop=False,
        flow_control=SimpleNamespace(_queues=[queue]),
    )
    return offsets.Watchdog(app, [TP0.topic])


def message(offset: int) -> Any:
    return SimpleNamespace(tp=TP0, offset=offset, acked=False)


def run_checks(dog: offsets.Watchdog, n: int) -> None:
    import asyncio

    async def checks() -> None:
        for _ in range(n):
            await dog.check()

    asyncio.run(checks())


def test_a_lost_head_is_re_read_after_three_checks() -> None:
    consumer = FakeConsumer(committed=165, read=175, high=180)
    consumer._acked_index[TP0] = set(range(170, 176))  # 165..169 never came back
    dog = watchdog(consumer)
    run_checks(dog, 2)
    assert consumer.calls == []  # not yet: it may be a moment's race
    run_checks(dog, 1)
    assert consumer.calls == [("pause", {TP0}), ("seek", {TP0: 165}), ("resume", {TP0})]
    assert consumer._read_offset[TP0] == 165


def test_a_head_being_processed_or_queued_is_left_alone() -> None:
    busy = FakeConsumer(committed=165, read=175, high=180)
    busy._unacked_messages = [message(165)]
    queued = FakeConsumer(committed=165, read=175, high=180)
    done = FakeConsumer(committed=165, read=175, high=180)
    done._acked_index[TP0] = {165}
    caught_up = FakeConsumer(committed=180, read=179, high=180)
    not_fetched = FakeConsumer(committed=165, read=164, high=180)
    committing = FakeConsumer(committed=165, read=175, high=180)
    committing._unifier_committing = {TP0: 170}  # type: ignore[attr-defined]
    committing._commit_fut = object()  # the commit is running
    for consumer, queue in [(busy, []), (queued, [SimpleNamespace(message=message(165))]),
                            (done, []), (caught_up, []), (not_fetched, []),
                            (committing, [])]:  # fmt: skip
        run_checks(watchdog(consumer, queue), offsets.CHECKS_BEFORE_SEEK_UNREAD - 1)
        assert consumer.calls == []


def test_records_deleted_by_retention_move_the_start_to_the_earliest_left() -> None:
    consumer = FakeConsumer(committed=10, read=60, high=80)
    consumer.earliest = 50
    run_checks(watchdog(consumer), 3)
    # Not a wait for 10..49, which are gone: read again from the first record left
    # (the gate held back whatever came after the hole).
    assert consumer.calls == [("pause", {TP0}), ("seek", {TP0: 50}), ("resume", {TP0})]
    assert consumer._committed_offset[TP0] == 50


def test_table_writes_wait_for_flush() -> None:
    from streams.state import Overlay

    table = {"a": "1", "b": "2"}
    writes = Overlay(table)
    writes["a"] = "9"
    writes["c"] = "3"
    del writes["b"]
    assert (writes["a"], writes.get("b"), writes["c"]) == ("9", None, "3")
    assert sorted(writes) == ["a", "c"]
    assert table == {"a": "1", "b": "2"}  # nothing reaches the table (its changelog) yet
    writes.flush()
    assert table == {"a": "9", "c": "3"}


def test_the_gate_hands_over_each_record_once_in_log_order() -> None:
    gate = offsets.Gate([TP0.topic])
    gate.reset({TP0: 5})
    assert [gate.admit(TP0, o) for o in (5, 6, 6, 7)] == [True, True, False, True]
    # 8 never came (dropped around a rebalance): 9 is held back, not handed over.
    assert gate.admit(TP0, 9) is None
    assert gate.next[TP0] == 8
    gate.reset({TP0: 8})  # the seek back
    assert [gate.admit(TP0, o) for o in (8, 9)] == [True, True]


def test_the_gate_leaves_other_topics_alone_and_learns_an_unknown_start() -> None:
    gate = offsets.Gate([TP0.topic])
    changelog = TP("unifier-profiles-changelog", 0)
    assert [gate.admit(changelog, o) for o in (3, 1, 9)] == [True, True, True]
    gate.reset({TP0: None})
    assert [gate.admit(TP0, o) for o in (40, 42)] == [True, None]


@given(st.integers(0, 50), st.lists(st.integers(0, 80), max_size=60))
def test_whatever_arrives_the_gate_admits_a_run_from_the_start(
    start: int, arrivals: list[int]
) -> None:
    """The law the identity protocol needs of its inputs: handed over in log order,
    each record once, no hole — whatever the fetcher delivers (drops, repeats, jumps)."""
    gate = offsets.Gate([TP0.topic])
    gate.reset({TP0: start})
    admitted = [o for o in arrivals if gate.admit(TP0, o)]
    assert admitted == list(range(start, start + len(admitted)))


def test_a_held_partition_is_sought_back_by_the_watchdogs_next_check() -> None:
    """The fetch loop names partitions with aiokafka's type; Faust's pause and resume
    refuse anything but its own (an AssertionError that stopped the worker once). The
    seek runs from the watchdog's timer, once for all held partitions: seeks started
    from the fetch loop once left a restarted worker stalled."""
    from aiokafka import TopicPartition

    consumer = FakeConsumer(committed=5, read=9, high=20)
    dog = watchdog(consumer)
    gate = offsets.Gate([TP0.topic])
    gate.reset({TP0: 5})
    dog.app._unifier_gate = gate
    fetched = TopicPartition(TP0.topic, TP0.partition)
    assert gate.admit(fetched, 9) is None
    assert gate.admit(fetched, 10) is None  # held back too, not a second seek
    assert consumer.calls == []
    run_checks(dog, 1)
    assert consumer.calls == [("pause", {TP0}), ("seek", {TP0: 5}), ("resume", {TP0})]
    assert {type(tp) for _, tps in consumer.calls for tp in tps} == {TP}
    assert gate.held == {} and gate.next[TP0] == 5
    assert gate.admit(fetched, 5) is True


def test_a_held_partition_that_moved_to_another_worker_is_forgotten() -> None:
    """Seeking a partition this worker no longer owns fails, and failing every second
    would stop the watchdog's re-reads of the ones it does own."""
    moved = TP(TP0.topic, 7)
    gate = offsets.Gate([TP0.topic])
    gate.reset({TP0: 5, moved: 3})
    assert gate.admit(moved, 6) is None and gate.admit(TP0, 9) is None
    assert gate.take_held([TP0]) == {TP0: 5}
    assert moved not in gate.next
    # The record it waited for comes (the seek happened): the partition is free again.
    gate.reset({TP0: 5})
    assert gate.admit(TP0, 9) is None  # fetched before the seek: held once more ...
    assert gate.admit(TP0, 5) is True and gate.held == {}  # ... until 5 arrives


def test_a_partition_standing_still_is_described_once_per_interval_until_it_moves() -> None:
    consumer = FakeConsumer(committed=3, read=5, high=9)
    consumer._paused_partitions = {TP0}  # type: ignore[attr-defined]
    consumer._buffered_partitions = set()  # type: ignore[attr-defined]
    consumer._acked_index[TP0] = {4, 5}
    dog = watchdog(consumer)
    still = offsets.STANDSTILL_S
    assert dog.standstill(0.0) == []
    assert dog.standstill(still - 1) == []
    (report,) = dog.standstill(still)
    assert "committed offset 3 unchanged for 30 s with 6 records waiting" in report
    assert "paused True" in report and "acknowledged 2 (lowest 4)" in report
    assert dog.standstill(still + 1) == []  # told already
    assert len(dog.standstill(2 * still)) == 1
    consumer._committed_offset[TP0] = 4  # it moved: the clock starts again
    assert dog.standstill(2 * still + 1) == []
    assert dog.standstill(3 * still) == []
    consumer.high = 4  # caught up: nothing to say
    assert dog.standstill(10 * still) == []


def test_a_commit_that_never_lands_leaves_the_acknowledged_records_for_the_next() -> None:
    """The acknowledged offsets are forgotten only once a commit covers them: one that
    was cancelled or refused must not leave a hole at the committed offset."""
    import contextlib

    broker = Broker()
    state = committer(consumer_state(committed=10, acked=[10, 11, 12], gaps=[]), broker)
    assert offsets._new_offset(state, TP0) == 13

    async def cancelled() -> None:
        raise asyncio.CancelledError

    broker.during = cancelled
    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(offsets._commit_offsets(state, {TP0: 13}))
    assert offsets.committing(state) == {}
    assert state._acked_index[TP0] == {10, 11, 12}
    broker.during, broker.accept = None, False  # refused: the group rebalanced
    assert asyncio.run(offsets._commit_offsets(state, {TP0: 13})) is False
    assert state._committed_offset[TP0] == 10 and state._acked_index[TP0] == {10, 11, 12}
    assert offsets._new_offset(state, TP0) == 13  # the next commit still can
    broker.accept = True
    assert asyncio.run(offsets._commit_offsets(state, {TP0: 13})) is True
    assert state._committed_offset[TP0] == 13 == broker.committed[TP0]
    assert state._acked_index[TP0] == set() and state._acked[TP0] == []


def test_a_commit_overlapping_a_seek_leaves_the_committed_offset_to_the_seek() -> None:
    """Seen: a commit begun before a rebalance ended after the new assignment's seek and
    set the committed offset to its own (6) while the partition was read from the
    seek's (2): the worker read from 2, waited at 6, and never moved again."""
    broker = Broker()
    state = committer(consumer_state(committed=2, acked=[2, 3, 4, 5], gaps=[]), broker)
    state._read_offset = defaultdict(lambda: None, {TP0: 6})

    async def faust_seek(self: Any) -> None:  # Faust's: the broker's committed offsets
        self._committed_offset[TP0] = 2
        self._read_offset[TP0] = 2

    async def rebalance() -> None:  # the seek of the next assignment, meanwhile
        state._acked[TP0], state._acked_index[TP0] = [], set()
        await offsets._perform_seek(state)

    original = offsets._original["perform_seek"]
    offsets._original["perform_seek"] = faust_seek
    broker.during = rebalance
    try:
        assert asyncio.run(offsets._commit_offsets(state, {TP0: 6})) is True
    finally:
        offsets._original["perform_seek"] = original
    assert broker.committed[TP0] == 6  # it landed (the broker took it) ...
    assert state._committed_offset[TP0] == 2  # ... but the worker reads on from the seek
    # Read again from 2 and acknowledged, they are committed on from there.
    state._acked[TP0], state._acked_index[TP0] = [2, 3, 4, 5, 6], {2, 3, 4, 5, 6}
    assert offsets._new_offset(state, TP0) == 7


def test_a_head_the_worker_never_read_to_is_re_read_after_ten_checks() -> None:
    """A record dropped at the end of a partition, or a read offset left behind by a
    seek: the worker has not read up to the committed offset, and no later record comes
    to show the gate the hole. Re-read, later than a lost head, but re-read."""
    for read in (5, 1):  # the next record not arrived; a read offset left behind
        consumer = FakeConsumer(committed=6, read=read, high=7)  # fetched up to 7
        dog = watchdog(consumer)
        run_checks(dog, offsets.CHECKS_BEFORE_SEEK_UNREAD - 1)
        assert consumer.calls == []  # it may only be on its way
        run_checks(dog, 1)
        assert ("seek", {TP0: 6}) in consumer.calls


def test_a_head_not_fetched_yet_is_left_to_the_fetcher_longer() -> None:
    """Not read and not fetched: the fetcher is behind, not the record lost — unless it
    stays so for thirty checks (a fetch that stopped: a seek restarts it)."""
    consumer = FakeConsumer(committed=6, read=5, high=9)
    consumer.fetched = 6  # the fetcher's next offset is the head itself
    dog = watchdog(consumer)
    run_checks(dog, offsets.CHECKS_BEFORE_SEEK_UNFETCHED - 1)
    assert consumer.calls == []
    run_checks(dog, 1)
    assert ("seek", {TP0: 6}) in consumer.calls


def test_a_head_never_handed_over_since_the_seek_is_re_read() -> None:
    """Records fetched early in a rebalance and cleared from the stream queues: the
    read offset is unknown, and the watchdog re-reads the partition all the same."""
    consumer = FakeConsumer(committed=7, read=0, high=12)
    consumer._read_offset[TP0] = None
    run_checks(watchdog(consumer), offsets.CHECKS_BEFORE_SEEK)
    assert ("seek", {TP0: 7}) in consumer.calls


def test_records_skipped_while_the_flow_is_stopped_are_not_counted_as_processed() -> None:
    """Faust's streams acknowledge the records they skip while a rebalance or a
    shutdown has stopped the flow: a commit must not cover them."""
    offsets.patch_consumer()
    active = {"on": True}
    state = consumer_state(committed=10, acked=[], gaps=[])
    state.app = SimpleNamespace(
        consumer_generation_id=3,
        flow_control=SimpleNamespace(is_active=lambda: active["on"]),
        topics=SimpleNamespace(acks_enabled_for=lambda topic: True),
    )
    state._unacked_messages = set()
    state._waiting_for_ack = None
    state._n_acked = 0

    class Msg(SimpleNamespace):
        __hash__ = object.__hash__  # as Faust's messages: by identity

    def msg(offset: int, generation: int = 3) -> Any:
        return Msg(tp=TP0, topic=TP0.topic, offset=offset, acked=False, generation_id=generation)

    assert offsets._ack(state, msg(10)) is True
    active["on"] = False
    skipped = msg(11)
    assert offsets._ack(state, skipped) is False and skipped.acked
    active["on"] = True
    assert offsets._ack(state, msg(12, generation=2)) is False  # an older generation
    assert state._acked_index[TP0] == {10}
    assert offsets._new_offset(state, TP0) == 11


def test_a_commit_the_broker_does_not_confirm_as_this_generations_is_not_sent() -> None:
    """Tansu does not check a commit's generation: a worker that has not heard of a
    rebalance yet could commit past records whose table writes the new owner never
    read. The commit goes only while a heartbeat of its generation answers no error."""
    broker = Broker()
    state = committer(consumer_state(committed=10, acked=[10, 11, 12], gaps=[]), broker)
    state.app.consumer_generation_id = 4
    coordinator = Coordinator(4, 27)  # a rebalance under way, asked twice
    state._thread = ConsumerThread(coordinator)
    assert offsets._new_offset(state, TP0) == 13
    assert asyncio.run(offsets._commit_offsets(state, {TP0: 13})) is False
    assert broker.committed == {} and state._committed_offset[TP0] == 10
    assert state._acked_index[TP0] == {10, 11, 12}  # for the next commit
    assert not coordinator.rejoin_requested  # the client is rejoining already
    coordinator.codes = [0]
    assert asyncio.run(offsets._commit_offsets(state, {TP0: 13})) is True
    assert broker.committed[TP0] == 13
