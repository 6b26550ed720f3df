"""Segments in the worker: the definitions in force, the pass that keeps each touched
profile's membership, and the scheduler that has profiles looked at again when a
window passes or the definitions change.

* ``Definitions`` follows the compacted definitions topic (``unifier segments apply``
  writes it) from its start, in a thread: every worker holds the same set, and a
  restarted one reads it again before its profile stage handles a record — a stage
  that ran with no definitions would take every profile out of every segment.
* ``segment_pass`` runs in the profile stage on every batch, for the profiles the
  batch touched (``profiles.segments.reconcile``): only the segments whose fields
  changed, whose definition changed, or whose window's instant has passed.
* ``Scheduler`` keeps, per profile partition this worker owns, a heap of the next
  instants at which a profile's answer can change (``Entry.due``); when one passes it
  sends that profile an ``Evaluate`` message through the ``profile-ops`` topic, so the
  change is made by the stage like any other (same table write, same outputs). When a
  partition is assigned, or the definitions change, it reads the partition's profiles
  once: their instants go on the heap, and those evaluated against other definitions
  get an ``Evaluate`` (the backfill), a chunk at a time while events keep flowing.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from profiles.graph.messages import Evaluate
from profiles.graph.node import ProfileNode
from profiles.projection import changed_fields, signature_with_view, version_of
from profiles.routing import partition_for
from profiles.segments import (
    MEMBER,
    SEQ,
    SINCE,
    VERSION,
    Catalog,
    Definition,
    EvalError,
    Segment,
    SegmentError,
    Transition,
    compile_segment,
    keyed_changes,
    members_of,
    next_due,
    reconcile,
    retire,
)
from profiles.traits import TraitRules
from schemas.wire import node_from
from sinks.kafka import SOURCE_OFFSET
from streams import metrics

log = logging.getLogger("unifier.segments")

#: Profiles read per step of a scan (the loop is yielded between steps).
SCAN_CHUNK = 500
#: Evaluations a scan lets wait in ``profile-ops`` at most: new events queue behind
#: them, so a backfill of a million profiles delays an event by this many, not by all.
MAX_IN_FLIGHT = 1000
#: How long a scan waits for the stage to take its evaluations before it sends more
#: anyway (a partition that moved to another worker never reports them here).
IN_FLIGHT_WAIT_S = 10.0
#: How often the scheduler looks at its heaps.
TICK_S = 0.25


def definition_value(d: Definition) -> bytes:
    return orjson.dumps(d.to_json())


def catalog_of(records: dict[str, bytes]) -> tuple[Catalog, list[str]]:
    """The catalog of the definitions topic's latest records (by segment name); a record
    this worker cannot compile (written by a newer version?) is left out, with why."""
    compiled: list[Segment] = []
    problems = []
    for name, value in sorted(records.items()):
        try:
            compiled.append(compile_segment(Definition.from_json(orjson.loads(value))))
        except (SegmentError, ValueError, KeyError, TypeError) as exc:
            problems.append(f"segment {name!r} left out: {exc}")
    return Catalog(tuple(sorted(compiled, key=lambda s: (s.reads_segments, s.name)))), problems


class DefinitionsLog:
    """The definitions topic read from its start, without a consumer group: the latest
    record of each segment name (a tombstone removes it)."""

    def __init__(self, bootstrap: str, topic: str, client: str) -> None:
        self.topic = topic
        self.records: dict[str, bytes] = {}
        self.next_offset = 0
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": client,  # never joins: the partition is assigned
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 50,
                "enable.partition.eof": True,
            }
        )
        self._consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])

    def __enter__(self) -> DefinitionsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self._consumer.close()

    def poll(self, timeout_s: float) -> bool:
        """Take the next record, if one comes within ``timeout_s``; whether one did."""
        msg = self._consumer.poll(timeout_s)
        if msg is None:
            return False
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                return False
            raise RuntimeError(f"reading {self.topic}: {err}")
        self.next_offset = (msg.offset() or 0) + 1
        key = (msg.key() or b"").decode()
        value = msg.value()
        if value is None:
            self.records.pop(key, None)
        else:
            self.records[key] = value
        return True

    def at_end(self) -> bool:
        """Whether every record there was at the latest fetch has been taken (the fetch's
        high watermark: the embedded broker's ListOffsets can be wrong)."""
        _low, high = self._consumer.get_watermark_offsets(
            TopicPartition(self.topic, 0), cached=True
        )
        return high >= 0 and self.next_offset >= high


class Definitions:
    """The definitions topic, followed in a thread. ``catalog`` is what is in force;
    ``generation`` grows when it changes; ``ready`` is set once the topic was read to
    the end it had when the follower started."""

    def __init__(self, bootstrap: str, topic: str, poll_s: float = 0.2) -> None:
        self.topic = topic
        self.catalog = Catalog()
        self.generation = 0
        self.ready = threading.Event()
        self._records: dict[str, bytes] = {}
        self._bootstrap = bootstrap
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="segments", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
            except Exception:  # the broker away: start again (the set in force stays)
                log.exception("reading %s failed; trying again", self.topic)
                self._stop.wait(2.0)

    def _follow(self) -> None:
        with DefinitionsLog(self._bootstrap, self.topic, "unifier.segments-reader") as topic:
            dirty = False
            while not self._stop.is_set():
                try:
                    if topic.poll(self._poll_s):
                        dirty = True
                        continue
                except RuntimeError as exc:  # an error the broker reported: try again
                    log.warning("%s", exc)
                    continue
                if topic.at_end() and (dirty or not self.ready.is_set()):
                    self._install(topic.records)
                    dirty = False

    def _install(self, records: dict[str, bytes]) -> None:
        if records != self._records or not self.ready.is_set():
            catalog, problems = catalog_of(records)
            for problem in problems:
                log.error("%s", problem)
            changed = catalog.versions != self.catalog.versions
            self._records = dict(records)
            self.catalog = catalog
            if changed:
                self.generation += 1
                log.info(
                    "segments in force: %s",
                    ", ".join(f"{n} v{v}" for n, v in catalog.versions.items()) or "none",
                )
        self.ready.set()

    @property
    def records(self) -> dict[str, bytes]:
        """The definitions in force as they are on the topic (segment name -> JSON)."""
        return dict(self._records)

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready.is_set():
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the segment definitions ({self.topic}) were not read within {timeout_s:.0f}s"
                )
            await asyncio.sleep(0.05)


#: The definitions readers see in Redis are written again at least this often (a
#: Redis that lost its data has them back).
MIRROR_EVERY_S = 30.0


class Mirror:
    """Keeps the definitions in force in Redis for the read API (``GET /v1/segments``)."""

    def __init__(self, definitions: Definitions, write: Callable[[dict[str, bytes]], Any]):
        self.definitions = definitions
        self.write = write
        self.generation = -1
        self.at = 0.0

    async def sync(self) -> None:
        generation = self.definitions.generation
        if generation == self.generation and time.monotonic() - self.at < MIRROR_EVERY_S:
            return
        await self.write(self.definitions.records)
        self.generation, self.at = generation, time.monotonic()


@dataclass
class PassResult:
    transitions: list[Transition] = field(default_factory=list)
    errors: list[EvalError] = field(default_factory=list)
    dues: dict[str, int] = field(default_factory=dict)  # profile -> next instant


def segment_pass(
    shown: list[tuple[str, ProfileNode]],
    views: dict[str, dict[str, Any]],
    before: dict[str, Any],
    rules: TraitRules,
    catalog: Catalog,
    now_ms: int,
    published: Published | None = None,
    afters: dict[str, dict[str, Any]] | None = None,
) -> PassResult:
    """Bring the membership of the profiles a batch touched up to date; each live
    view gets its ``segments`` and version. ``before`` holds the signature of each
    profile as read (``streams.profile.as_read``; "redirect" or absent when new);
    ``afters`` the signatures of the views as made, when the caller has them (they
    are brought up to date with the segments too)."""
    out = PassResult()
    for key, node in shown:
        adopted = published.adopt(key, node) if published is not None else False
        if node.redirect is not None:
            if node.segments:  # merged away: it leaves its segments
                version = version_of(node.state) + node.segment_moves
                moved = retire(key, node.segments, now_ms, version)
                node.segment_moves += len(moved)
                out.transitions += moved
            continue
        view = views[key]
        was = before.get(key)
        changed: list[str] | None = None
        after = afters.get(key) if afters is not None else None
        if isinstance(was, dict):
            if after is None:
                after = signature_with_view(node, view, rules)
            changed = _changed(was, after)
            if catalog.deep:
                changed = keyed_changes(changed, was, after, catalog.deep)
        moved, errors = reconcile(key, view, node.segments, catalog, now_ms, changed)
        if moved or adopted:
            node.segment_moves += len(moved)
            version = version_of(node.state) + node.segment_moves
            view["version"] = version
            view["segments"] = members_of(node.segments)
            out.transitions += [replace(t, profile_version=version) for t in moved]
            if after is not None:
                after["version"], after["segments"] = version, view["segments"]
        out.errors += errors
        due = next_due(node.segments)
        if due:
            out.dues[key] = due
    return out


def _changed(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    names = changed_fields(before, after)
    if before.get("version") != after.get("version"):
        names.append("version")
    return names


def stale(node: ProfileNode, catalog: Catalog) -> bool:
    """Whether a profile was last evaluated against other definitions than these."""
    if node.redirect is not None:
        return bool(node.segments)
    if not node.state.held:
        return False
    entries = node.segments
    if set(entries) != {s.name for s in catalog.segments}:
        return True
    return any(entries[s.name][VERSION] != s.version for s in catalog.segments)


class Scheduler:
    """The instants at which profiles' answers can change, per owned partition; sends
    ``Evaluate`` messages when they pass and for profiles the definitions left stale."""

    def __init__(
        self,
        table: Any,
        partitions: int,
        definitions: Definitions,
        owned: Callable[[], Iterable[int]],
        send: Callable[[dict[int, list[Any]]], Any],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.table = table
        self.partitions = partitions
        self.definitions = definitions
        self.owned = owned
        self.send = send
        self.clock = clock
        self.heaps: dict[int, list[tuple[int, str]]] = {}
        self.scanned: dict[int, int] = {}  # partition -> definitions generation scanned
        self.in_flight = 0  # evaluations sent that the stage has not reported handled
        self._room: asyncio.Event | None = None  # set when in_flight falls low again

    def handled(self, n: int) -> None:
        """The profile stage handled ``n`` Evaluate messages."""
        self.in_flight = max(0, self.in_flight - n)
        if self.in_flight <= MAX_IN_FLIGHT and self._room is not None:
            self._room.set()

    async def _paced(self) -> None:
        """Wait (bounded) until the stage has taken most of what was sent."""
        if self.in_flight <= MAX_IN_FLIGHT:
            return
        if self._room is None:
            self._room = asyncio.Event()
        self._room.clear()
        try:
            await asyncio.wait_for(self._room.wait(), IN_FLIGHT_WAIT_S)
        except TimeoutError:
            self.in_flight = 0  # reported by another worker now: go on

    def note(self, dues: dict[str, int]) -> None:
        """Instants a batch of the profile stage left (profiles it touched)."""
        for key, due in dues.items():
            heap = self.heaps.get(partition_for(key, self.partitions))
            if heap is not None:
                heapq.heappush(heap, (due, key))

    async def tick(self) -> int:
        """Drop partitions no longer owned, scan new ones (or all, when the definitions
        changed), and send the profiles whose instant has passed; how many were sent."""
        owned = set(self.owned())
        for p in list(self.heaps):
            if p not in owned:
                del self.heaps[p]
                self.scanned.pop(p, None)
                self.in_flight = 0  # what went to it is counted by its new owner
        generation = self.definitions.generation
        todo = sorted(p for p in owned if self.scanned.get(p) != generation)
        if todo:
            await self.scan(todo, generation)
        now_ms = int(self.clock() * 1000)
        groups: dict[int, list[Any]] = {}
        for p, heap in self.heaps.items():
            seen: set[str] = set()
            while heap and heap[0][0] <= now_ms:
                _, key = heapq.heappop(heap)
                if key not in seen:
                    seen.add(key)
                    groups.setdefault(p, []).append(Evaluate(key))
        if groups:
            await self.send(groups)
            self.in_flight += sum(len(g) for g in groups.values())
        return sum(len(g) for g in groups.values())

    def _keys(self, partition: int) -> list[str]:
        data = self.table.data
        return [
            k for k in list(data) if "#" not in k and partition_for(k, self.partitions) == partition
        ]

    async def scan(self, partitions: list[int], generation: int) -> None:
        catalog = self.definitions.catalog
        keys = {p: self._keys(p) for p in partitions}
        total = sum(len(k) for k in keys.values())
        started = time.monotonic()
        sent = 0
        for p in partitions:
            heap: list[tuple[int, str]] = []
            self.heaps[p] = []  # what batches note meanwhile is kept
            part = keys[p]
            for start in range(0, len(part), SCAN_CHUNK):
                evaluate: list[Any] = []
                for key in part[start : start + SCAN_CHUNK]:
                    raw = self.table.data.get(key)
                    if raw is None:
                        continue
                    node = node_from(bytes(raw))
                    if stale(node, catalog):
                        evaluate.append(Evaluate(key))
                    due = next_due(node.segments)
                    if due:
                        heap.append((due, key))
                if evaluate:
                    await self.send({p: evaluate})
                    sent += len(evaluate)
                    self.in_flight += len(evaluate)
                    metrics.SEGMENT_EVALUATIONS_SENT.labels(why="backfill").inc(len(evaluate))
                    await self._paced()
                await asyncio.sleep(0)  # the stages run between chunks
            heap += self.heaps.get(p, [])
            heapq.heapify(heap)
            self.heaps[p] = heap
            self.scanned[p] = generation
        if sent or total > 10_000:
            log.info(
                "segments: read %d profiles of partitions %s in %.1f s; %d sent for evaluation",
                total,
                partitions,
                time.monotonic() - started,
                sent,
            )


#: Records read back per step when looking for what an earlier run published.
READ_BACK = 2000


Sent = dict[tuple[str, str], Transition]  # (profile, segment) -> the last one sent


class Published:
    """Transitions already on the membership topic that the table does not know of.

    Membership records are sent before the batch's table write (``streams.profile``):
    a worker stopped between the two handles the batch's records again after its
    restart (or another worker does, after a rebalance), from a table without those
    transitions. Each record says which input offset it came from (``SOURCE_OFFSET``):
    when a partition's records arrive from an offset at or before one already handled
    here — or for the first time — the topic's tail is read back to the records made
    from that offset on, and the profiles they name take them as their membership
    (``adopt``) before the batch is evaluated: what was sent is a fact, and what the
    batch derives from there is new (no transition is sent twice, none is missed)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.last: dict[int, int] = {}  # partition -> last input offset handled
        self.sent: dict[int, tuple[int, Sent]] = {}

    async def before(self, offsets: dict[int, tuple[int, int]]) -> None:
        """``offsets``: partition -> (first, last) input offset of the batch."""
        loop = asyncio.get_running_loop()
        for p, (first, _last) in offsets.items():
            handled = self.last.get(p)
            if handled is None or first <= handled:
                found = await loop.run_in_executor(None, self.read_back, p, first)
                log.info(
                    "segments: partition %d from input offset %d (last handled here: %s): "
                    "%d membership records sent before, up to input offset %d",
                    p, first, handled, len(found[1]), found[0],
                )  # fmt: skip
                self.sent[p] = found

    def adopt(self, profile_id: str, node: ProfileNode) -> bool:
        """Give a profile the transitions sent for it that its stored membership lacks;
        whether there were any."""
        if not self.sent:
            return False
        sent = self.sent.get(partition_for(profile_id, self.partitions))
        if sent is None:
            return False
        adopted = False
        for (pid, segment), t in sent[1].items():
            if pid != profile_id:
                continue
            entry = node.segments.setdefault(segment, [0, t.definition_version, 0, 0, 0])
            if t.seq > entry[SEQ]:
                node.segment_moves += t.seq - entry[SEQ]
                entry[MEMBER], entry[SEQ], entry[SINCE] = int(t.entered), t.seq, t.at_ms
                entry[VERSION] = t.definition_version
                adopted = True
        return adopted

    def after(self, offsets: dict[int, tuple[int, int]]) -> None:
        for p, (_first, last) in offsets.items():
            self.last[p] = max(self.last.get(p, -1), last)
            sent = self.sent.get(p)
            if sent is not None and last >= sent[0]:
                del self.sent[p]  # past every record read back

    def read_back(self, partition: int, first: int) -> tuple[int, Sent]:
        """(the highest source offset, the transitions) of the records on the topic's
        partition made from input offset ``first`` on."""
        from schemas.records import membership_from  # the codec: only when reading back

        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": "unifier.segments-read-back",  # never joins
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "fetch.wait.max.ms": 50,
            }
        )
        try:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(self.topic, partition), timeout=10
            )
            window = READ_BACK
            while True:
                start = max(low, high - window)
                found, earliest = self._read(consumer, partition, start, first, membership_from)
                if start <= low or earliest is None or earliest < first:
                    return found
                window *= 4
        finally:
            consumer.close()

    def _read(
        self, consumer: Any, partition: int, start: int, first: int, decode: Any
    ) -> tuple[tuple[int, Sent], int | None]:
        consumer.assign([TopicPartition(self.topic, partition, start)])
        keys: Sent = {}
        top = -1
        earliest: int | None = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    break
                continue
            headers = dict(msg.headers() or [])
            raw = headers.get(SOURCE_OFFSET)
            source = int(raw) if raw else -1
            if earliest is None:
                earliest = source
            value = msg.value()
            if source >= first and value:
                t = decode(value)
                keys[(t.profile_id, t.segment)] = t  # in order: the last one stays
                top = max(top, source)
        else:
            raise RuntimeError(f"{self.topic}[{partition}] not read back within 30 s")
        return (top, keys), earliest


def batch_offsets(events: Iterable[Any]) -> dict[int, tuple[int, int]]:
    """Partition -> (first, last) offset of a batch's records."""
    out: dict[int, tuple[int, int]] = {}
    for event in events:
        p, o = event.message.partition, event.message.offset
        first, last = out.get(p, (o, o))
        out[p] = (min(first, o), max(last, o))
    return out
