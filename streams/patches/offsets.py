"""Faust's offset bookkeeping never commits past a record it did not process.

**Corrects** (faust-streaming 0.15.3, upstream faust-streaming/faust#596): around a
rebalance, records a worker had fetched are dropped from its stream queues, or
skipped by the drain loop, while its read offsets move past them. They are never
processed or acknowledged, and Faust then either stops committing the partition
(a gap at the head of its acknowledged offsets: ``unifier lag --wait`` never
returns) or commits past the gap when it is one record or nothing was committed yet
(the record is lost). A stream also acknowledges, without handing it over, every
record fetched in the previous consumer generation that it finds after a rebalance.

**What holds with this patch** (each safe because every stage is idempotent: a
record handled twice changes nothing, see ``profiles.graph``):

* A record fetched before the latest rebalance, or acknowledged while the flow is
  stopped (a rebalance or a shutdown under way, when Faust's streams acknowledge the
  records they skip), is forgotten: its partition is re-read from the committed
  offset anyway.
* An offset is committed only when every record from the committed offset up to it
  was acknowledged; a partition without a commit starts where the broker says. The
  acknowledged offsets are forgotten only once a commit covering them has landed (one
  cancelled or discarded around a rebalance left a hole at the committed offset, and
  the partition was never committed again).
* Each input partition reaches its stage in log order, without a hole: a record past
  the next one expected (the committed offset after each seek, then one more per
  record handed over) is held back with every later one, and the watchdog's next
  check (within a second) seeks the partition back to the hole: seeks run from the
  watchdog's timer, one call for all partitions, never from inside the fetch loop
  (a seek started there can leave the worker fetching nothing). Records
  handled out of order break the identity protocol: a claim handled before the
  re-read of the observation that founded its identifier's first profile leaves that
  profile orphaned (one profile too many, for good).
* A watchdog re-reads lost records: once a second, for each assigned input partition
  with records after its committed offset, when the record at the committed offset
  is nowhere in the worker (not acknowledged, processing or queued) for three checks
  in a row, the partition is sought back to the committed offset — also when nothing
  was handed over since the last seek (records fetched early in a rebalance are
  cleared from the stream queues when the flow resumes), and, after ten checks, when
  the worker has not read up to the committed offset but the fetcher has gone past it
  (a record the fetch loop dropped at the end of a partition: no later record shows
  the gate the hole); after thirty when the fetcher has not (a fetch that stopped).
* The committed offsets the worker believes are those the broker gave at the last
  seek, moved only by commits that landed with no seek begun meanwhile, so a commit
  begun before a rebalance cannot overwrite what the new assignment read. A commit is
  sent only while the broker confirms this worker's generation (``fence``).
* A partition whose committed offset stands still for 30 s while records wait is
  described in the log (what the worker knows of it), every 30 s.

**Pinned to** faust-streaming 0.15.3 (``streams.patches.PATCHED_FOR``): it replaces
private methods of ``faust.transport.consumer.Consumer``. **Shown by**
``tests/unit/test_offsets.py`` (and the kill/restart tests in
``tests/integration/test_ops.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Container, Iterable, Mapping
from typing import Any

from faust.transport.consumer import Consumer
from faust.types import TP
from mode.utils.futures import notify

from streams.patches import fence, require_patched_faust

log = logging.getLogger("unifier.offsets")

CHECKS_BEFORE_SEEK = 3
#: The same when the worker has not read up to the committed offset: it may be only
#: that the record was not fetched yet, so the watchdog waits longer — but not for
#: ever: a record the fetch loop dropped at the end of a partition (no later record
#: shows the gate the hole), or a read offset left behind by a seek, is otherwise
#: never re-read, and the partition stands still for good.
CHECKS_BEFORE_SEEK_UNREAD = 10
#: ... once the fetcher has gone past the record (fetched, never handed over); one
#: not fetched yet is left to the fetcher this long, then sought all the same (a seek
#: restarts a fetch that stopped).
CHECKS_BEFORE_SEEK_UNFETCHED = 30
CHECK_INTERVAL_S = 1.0
#: A partition with records to process whose committed offset has not moved for this
#: long is reported (with everything the worker knows about it), every as long again.
STANDSTILL_S = 30.0
SEEK_TIMEOUT_S = 30.0

_original: dict[str, Callable[..., Any]] = {}


def committed_run(committed: int | None, acked: Container[int]) -> int | None:
    """The offset to commit: the end of the run of acknowledged offsets that starts at
    the committed one (the next record to read), or None when that record is not
    acknowledged yet."""
    if committed is None:
        return None
    end = committed
    while end in acked:
        end += 1
    return end if end > committed else None


def counts(app: Any, message: Any) -> bool:
    """Whether handling this record now may count for a commit: it was fetched in the
    current consumer generation and the flow is on (no rebalance or shutdown under
    way)."""
    return bool(
        message.generation_id == app.consumer_generation_id and app.flow_control.is_active()
    )


def _ack(self: Any, message: Any) -> bool:
    if not counts(self.app, message) and not message.acked:
        # Fetched before the latest rebalance, or met while the flow is stopped (a
        # rebalance or a shutdown under way): Faust's streams acknowledge the records
        # they skip then (faust/streams.py, "Skipping message"); counting that would
        # commit records nobody processed. A record really handled in that window is
        # read again after the rebalance or restart: handling is idempotent.
        let_go(self, [message])
        return False
    return bool(_original["ack"](self, message))


def let_go(consumer: Any, messages: Iterable[Any]) -> None:
    """Done with these records as far as Faust's waiting goes (a rebalance waits for
    every record it handed over), never counted for a commit: they are read again
    from the committed offset, by whichever worker owns their partition then."""
    for message in messages:
        if not message.acked:
            message.acked = True
            consumer._unacked_messages.discard(message)
    notify(consumer._waiting_for_ack)


class Gate:
    """The next offset each input partition may hand its stage: records arrive in log
    order, each once, with no hole. A partition with a hole is *held* (every later
    record held back) until the watchdog's next check seeks it back."""

    def __init__(self, topics: Iterable[str]) -> None:
        self.topics = set(topics)
        self.next: dict[Any, int] = {}
        self.held: dict[Any, int] = {}  # tp -> where to read again from

    def reset(self, offsets: Mapping[Any, int | None]) -> None:
        """Positions after a seek (``None``: unknown — the first record sets it)."""
        for tp, offset in offsets.items():
            if tp.topic not in self.topics:
                continue
            key = TP(tp.topic, tp.partition)
            self.held.pop(key, None)
            if offset is None:
                self.next.pop(key, None)
            else:
                self.next[key] = offset

    def admit(self, tp: Any, offset: int) -> bool | None:
        """True: hand it over. False: handed over already. None: records before it are
        missing — hold it back (``held``: re-read from ``next[tp]``)."""
        if tp.topic not in self.topics:
            return True
        key = TP(tp.topic, tp.partition)  # aiokafka's type from the fetch, Faust's elsewhere
        expected = self.next.get(key)
        if expected is None or offset == expected:
            self.next[key] = offset + 1
            self.held.pop(key, None)  # a record fetched before the seek no longer counts
            return True
        if offset < expected:
            return False
        if key not in self.held:
            self.held[key] = expected
            log.warning(
                "%s[%d]: record %d arrived while %d was expected (records dropped around "
                "a rebalance, faust-streaming/faust#596); holding the partition back to "
                "re-read it from %d",
                tp.topic,
                tp.partition,
                offset,
                expected,
                expected,
            )
        return None

    def take_held(self, assigned: Iterable[Any]) -> dict[Any, int]:
        """The held partitions still assigned, and where to re-read them from (the
        watchdog seeks); held partitions no longer assigned are forgotten."""
        self.forget_all_but(assigned)
        return dict(self.held)

    def forget_all_but(self, assigned: Iterable[Any]) -> None:
        keep = {TP(tp.topic, tp.partition) for tp in assigned}
        for table in (self.held, self.next):
            for key in [k for k in table if k not in keep]:
                del table[key]


def gate_of(app: Any) -> Gate | None:
    gate: Gate | None = getattr(app, "_unifier_gate", None)
    return gate


async def _getmany(self: Any, timeout: float) -> AsyncIterator[tuple[Any, Any]]:  # noqa: ASYNC109
    """Faust's ``getmany`` (its signature), through the gate."""
    gate = gate_of(self.app)
    async for tp, message in _original["getmany"](self, timeout):
        if gate is None or gate.admit(tp, message.offset):
            yield tp, message


def _new_offset(self: Any, tp: Any) -> int | None:
    # Replaces Faust's, which fills "gaps" (offsets its fetch loop jumped over, meant
    # for compacted topics) as if they were processed: records skipped while a
    # partition was paused were committed that way. Our input topics are never
    # compacted and carry no transaction markers, so every offset is a record.
    end = committed_run(self._committed_offset[tp], self._acked_index[tp])
    if end is None:
        return None
    self._gap.pop(tp, None)
    # The acknowledged offsets stay until the commit has landed (``_commit_offsets``):
    # dropped here, a commit that never lands (cancelled, failed, or discarded for a
    # partition reassigned meanwhile) left a hole at the committed offset, and the
    # partition was never committed again. Until it returns (it first flushes the
    # producer: seconds under load), the watchdog knows a commit is under way.
    committing(self)[tp] = end
    return end


async def _commit_offsets(
    self: Any, offsets: Mapping[Any, int], start_new_transaction: bool = True
) -> Any:
    """Faust's ``_commit_offsets`` (at-least-once only), except what it believes after
    the commit: the committed offsets move only when the commit landed *and* no seek to
    the committed offsets began while it ran. Why: a commit begun before a rebalance
    ends after the new assignment's seek; taking its offsets then would leave the
    partition read from the seek's offset while commits wait at another, for good."""
    if self.in_transaction:  # not used here (at-least-once); Faust's own path
        return await _original["_commit_offsets"](self, offsets, start_new_transaction)
    seeks = seek_count(self)
    assignment = self.assignment()
    committable = {tp: offset for tp, offset in offsets.items() if tp in assignment}
    if len(committable) < len(offsets):
        self.log.info(
            "Discarded commit for revoked partitions that will be eventually processed again: %r",
            {tp: o for tp, o in offsets.items() if tp not in committable},
        )
    did_commit = False
    try:
        if committable:
            await self.app.producer.flush()
            # Only while the broker confirms the partitions are still this worker's
            # (``streams.patches.fence``: it does not check a commit's generation).
            generation = getattr(self.app, "consumer_generation_id", None)
            if await fence.in_generation(self, generation, rejoin=False):
                did_commit = bool(await self._commit(committable))
    finally:
        pending = committing(self)
        for tp, end in offsets.items():
            if pending.get(tp) == end:
                del pending[tp]
    if not did_commit:
        return False  # the acknowledged offsets stay: the next commit tries again
    self.app.tables.on_commit(committable)
    if seek_count(self) != seeks:
        # The partitions were sought to their committed offsets meanwhile: that seek's
        # answer stands (it is at or below this commit). Records between are read
        # again, and handled again: idempotent.
        return True
    self._committed_offset.update(committable)
    self.app.monitor.on_tp_commit(committable)
    for tp in committable:  # forget what the committed offset now covers
        committed = self._committed_offset[tp]
        self._acked[tp] = [o for o in self._acked[tp] if o >= committed]
        self._acked_index[tp] = {o for o in self._acked_index[tp] if o >= committed}
    return True


def seek_count(consumer: Any) -> int:
    """How many seeks to the committed offsets began (``_perform_seek``)."""
    return int(getattr(consumer, "_unifier_seeks", 0))


def committing(consumer: Any) -> dict[Any, int]:
    """tp -> the offset a commit under way will set."""
    pending: dict[Any, int] | None = getattr(consumer, "_unifier_committing", None)
    if pending is None:
        pending = consumer._unifier_committing = {}
    return pending


async def _perform_seek(self: Any) -> None:
    # Counted before and after: a commit that overlaps a seek in any way leaves the
    # committed offsets to the seek (``_commit_offsets``).
    self._unifier_seeks = seek_count(self) + 1
    try:
        await _seek_to_committed(self)
    finally:
        self._unifier_seeks = seek_count(self) + 1


async def _seek_to_committed(self: Any) -> None:
    await _original["perform_seek"](self)
    committing(self).clear()  # commits of the previous assignment are over or void
    gate = gate_of(self.app)
    # Faust records "no committed offset" and "committed offset 0" both as None, and
    # then commits from wherever the first acknowledged record happens to be. The
    # partition starts at the broker's earliest offset then (auto_offset_reset).
    unknown = [
        tp
        for tp in self.assignment()
        if not self._is_changelog_tp(tp) and self._committed_offset.get(tp) is None
    ]
    if unknown:
        earliest = await self.earliest_offsets(*unknown)
        for tp in unknown:
            start = earliest.get(tp)
            if start is not None and self._committed_offset.get(tp) is None:
                self._committed_offset[tp] = start
    if gate is not None:
        assigned = self.assignment()
        gate.forget_all_but(assigned)  # a partition revoked while held is not ours to seek
        gate.reset({tp: self._committed_offset.get(tp) for tp in assigned})


def patch_consumer() -> None:
    """Replace five methods of Faust's consumer (once per process)."""
    if _original:
        return
    require_patched_faust("streams/patches/offsets.py")
    for name, replacement in (
        ("ack", _ack),
        ("_new_offset", _new_offset),
        ("perform_seek", _perform_seek),
        ("getmany", _getmany),
        ("_commit_offsets", _commit_offsets),
    ):
        _original[name] = getattr(Consumer, name)
        setattr(Consumer, name, replacement)


class Watchdog:
    """Finds input partitions whose head record the worker lost, and re-reads them."""

    def __init__(self, app: Any, topics: Iterable[str]) -> None:
        self.app = app
        self.topics = set(topics)
        self.suspects: dict[Any, tuple[int, int]] = {}  # tp -> (committed, checks)
        self.seeks = 0
        self.still: dict[Any, tuple[int, float, float]] = {}  # tp -> (committed, since, told)

    def standstill(self, now: float) -> list[str]:
        """Input partitions with records waiting whose committed offset has not moved
        for ``STANDSTILL_S``, each described once per ``STANDSTILL_S`` (for the log)."""
        app = self.app
        consumer = app.consumer
        gate = gate_of(app)
        reports = []
        still = {}
        assigned = [tp for tp in consumer.assignment() if tp.topic in self.topics]
        for tp in assigned:
            committed = consumer._committed_offset.get(tp)
            high = consumer.highwater(tp)
            if committed is None or high is None or high <= committed:
                continue
            seen, since, told = self.still.get(tp, (committed, now, now))
            if seen != committed:
                since = told = now
            still[tp] = (committed, since, told)
            if now - since >= STANDSTILL_S and now - told >= STANDSTILL_S - 1e-6:
                still[tp] = (committed, since, now)
                key = TP(tp.topic, tp.partition)
                acked = consumer._acked_index.get(tp, ())
                in_flight = sorted(o for t, o in self._in_flight() if t == tp)
                reports.append(
                    f"{tp.topic}[{tp.partition}]: committed offset {committed} unchanged "
                    f"for {now - since:.0f} s with {high - committed} records waiting; "
                    f"read to {consumer._read_offset.get(tp)}, high watermark {high}, "
                    f"next for the gate {gate.next.get(key) if gate else None}, held from "
                    f"{gate.held.get(key) if gate else None}, paused "
                    f"{tp in consumer._paused_partitions}, buffered "
                    f"{tp in consumer._buffered_partitions}, acknowledged "
                    f"{len(acked)} (lowest {min(acked) if acked else None}), in flight "
                    f"{in_flight[:3]}{'…' if len(in_flight) > 3 else ''} ({len(in_flight)}), "
                    f"commit under way {committing(consumer).get(tp)} "
                    f"(running: {consumer._commit_fut is not None}), rebalancing "
                    f"{app.rebalancing}, flow active {consumer.flow_active}, "
                    f"re-reads so far {self.seeks}"
                )
        self.still = still
        return reports

    def _in_flight(self) -> set[tuple[Any, int]]:
        """(tp, offset) of every record being processed or waiting in a stream queue."""
        consumer = self.app.consumer
        found = {(m.tp, m.offset) for m in list(consumer._unacked_messages) if not m.acked}
        for queue in list(self.app.flow_control._queues):
            for item in list(getattr(queue, "_queue", ())):
                message = getattr(item, "message", item)
                found.add((getattr(message, "tp", None), getattr(message, "offset", None)))
        return found

    def lost_heads(self) -> dict[Any, tuple[int, bool]]:
        """Partitions whose record at the committed offset exists on the broker but
        nowhere in this worker (not acknowledged, not being processed, not queued),
        with that offset and whether the worker has not read up to it."""
        consumer = self.app.consumer
        candidates: dict[Any, tuple[int, bool]] = {}
        for tp in consumer.assignment():
            if tp.topic not in self.topics:
                continue
            committed = consumer._committed_offset.get(tp)
            high = consumer.highwater(tp)
            if committed is None or high is None or high <= committed:
                continue
            read = consumer._read_offset.get(tp)
            # Not read that far: the fetcher may not have reached it yet (waits longer).
            # (None: nothing handed over since the last seek. Records fetched early in
            # a rebalance are cleared from the stream queues when the flow resumes; if
            # that was all the input, nothing else would ever bring them back.)
            unread = read is not None and read < committed
            if (
                consumer._commit_fut is not None
                and committing(consumer).get(tp, committed) > committed
            ):
                continue  # a commit past it is under way
            if committed not in consumer._acked_index.get(tp, ()):
                candidates[tp] = (committed, unread)
        if not candidates:
            return {}
        in_flight = self._in_flight()
        return {tp: c for tp, c in candidates.items() if (tp, c[0]) not in in_flight}

    async def check(self) -> None:
        app = self.app
        if app.rebalancing or not app.consumer.flow_active or app.should_stop:
            self.suspects.clear()
            return
        lost = self.lost_heads()
        suspects: dict[Any, tuple[int, int]] = {}
        due = {}
        for tp, (offset, unread) in lost.items():
            seen_at, checks = self.suspects.get(tp, (offset, 0))
            checks = checks + 1 if seen_at == offset else 1
            if await self._due(tp, offset, unread, checks):
                due[tp] = offset
            else:
                suspects[tp] = (offset, checks)
        self.suspects = suspects
        gate = gate_of(app)
        held = gate.take_held(app.consumer.assignment()) if gate is not None else {}
        if held:  # a hole the gate found: no need to wait three checks
            await self.reread(held, quiet=True)
        due = {tp: o for tp, o in due.items() if tp not in held}
        if due:
            await self.reread(due)

    async def _due(self, tp: Any, offset: int, unread: bool, checks: int) -> bool:
        """Whether a head missing for ``checks`` checks is to be re-read now: after
        ``CHECKS_BEFORE_SEEK``; one the worker has not read up to (``unread``) after
        ``CHECKS_BEFORE_SEEK_UNREAD`` if the fetcher has gone past it, and after
        ``CHECKS_BEFORE_SEEK_UNFETCHED`` otherwise."""
        if not unread:
            return checks >= CHECKS_BEFORE_SEEK
        if checks < CHECKS_BEFORE_SEEK_UNREAD:
            return False
        if checks >= CHECKS_BEFORE_SEEK_UNFETCHED:
            return True
        try:
            position = await asyncio.wait_for(self.app.consumer.position(tp), SEEK_TIMEOUT_S)
        except Exception:  # unknown: re-read (it costs records read twice, nothing more)
            return True
        return position is None or position > offset

    async def reread(self, offsets: dict[Any, int], quiet: bool = False) -> None:
        """Seek these partitions back (``quiet``: the gate has said why already)."""
        consumer = self.app.consumer
        gate = gate_of(self.app)
        earliest = await asyncio.wait_for(consumer.earliest_offsets(*offsets), SEEK_TIMEOUT_S)
        for tp in list(offsets):
            start = earliest.get(tp)
            if start is not None and start > offsets[tp]:
                # Retention removed records nobody had processed: they are gone, and
                # waiting for them would stop this partition for good. Loud, not silent.
                log.error(
                    "%s[%d]: records %d..%d were deleted by retention before this "
                    "group processed them; continuing from %d",
                    tp.topic,
                    tp.partition,
                    offsets[tp],
                    start - 1,
                    start,
                )
                consumer._committed_offset[tp] = start
                offsets[tp] = start
        for tp, offset in sorted(offsets.items()) if not quiet else ():
            log.warning(
                "re-reading %s[%d] from offset %d: records after the committed offset "
                "were dropped around a rebalance (faust-streaming/faust#596)",
                tp.topic,
                tp.partition,
                offset,
            )
        # Paused while seeking, so a fetch already under way cannot hand over records
        # from the old position and move the read offset past the re-read ones.
        consumer.pause_partitions(offsets)
        try:
            await asyncio.wait_for(consumer.seek_wait(offsets), SEEK_TIMEOUT_S)
            for tp, offset in offsets.items():
                consumer._read_offset[tp] = offset
            if gate is not None:
                gate.reset(offsets)
        finally:
            consumer.resume_partitions(offsets)
        self.seeks += len(offsets)


def install(app: Any, topics: Iterable[str]) -> Watchdog:
    """Patch Faust's consumer and run the watchdog on `app` for these input topics."""
    patch_consumer()
    topics = list(topics)
    watchdog = Watchdog(app, topics)
    app._unifier_gate = Gate(topics)

    @app.timer(interval=CHECK_INTERVAL_S, on_leader=False)
    async def _offset_watchdog() -> None:
        try:
            await watchdog.check()
        except Exception:  # the watchdog must never take the worker down
            log.exception("offset watchdog check failed")

    @app.timer(interval=CHECK_INTERVAL_S, on_leader=False)
    async def _offset_standstill() -> None:
        # Its own timer: a check stuck on the broker must not silence the report.
        try:
            for report in watchdog.standstill(time.monotonic()):
                log.warning("%s", report)
        except Exception:
            log.exception("offset standstill report failed")

    return watchdog
