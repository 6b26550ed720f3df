"""Segment definitions as an operator handles them: read the set in force from the
definitions topic, plan and publish a ``segments.toml`` (``unifier segments apply``),
and read membership from the Redis view (``list``, ``members``, ``check``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import orjson
import redis
from confluent_kafka import Producer

from config.settings import Settings
from profiles.segments import Definition, SegmentError, compile_segment
from sinks.redis_view import segment_members_sync, segment_sizes_sync
from streams.segments import DefinitionsLog, definition_value


def read_definitions(settings: Settings, timeout_s: float = 15.0) -> dict[str, Definition]:
    """The definitions in force: the latest record of each name on the topic."""
    deadline = time.monotonic() + timeout_s
    with DefinitionsLog(
        settings.bootstrap_servers, settings.topic_segments, "unifier.segments-cli"
    ) as topic:
        while topic.poll(0.1) or not topic.at_end():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{settings.topic_segments} not read within {timeout_s:.0f}s")
        records = topic.records
    out = {}
    for name, value in records.items():
        try:
            out[name] = Definition.from_json(orjson.loads(value))
        except (ValueError, KeyError, TypeError):
            continue  # a record this version cannot read: the workers say so too
    return out


@dataclass
class Plan:
    """What applying a file changes: definitions to publish and names to remove."""

    added: list[Definition] = field(default_factory=list)
    changed: list[Definition] = field(default_factory=list)
    described: list[Definition] = field(default_factory=list)  # description only
    unchanged: list[Definition] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def publish(self) -> list[Definition]:
        return [*self.added, *self.changed, *self.described]

    def __bool__(self) -> bool:
        return bool(self.publish or self.removed)


def check_all(definitions: list[Definition]) -> list[SegmentError]:
    """Every definition that does not compile (all of them, not only the first)."""
    errors = []
    for d in definitions:
        try:
            compile_segment(d)
        except SegmentError as exc:
            errors.append(exc)
    return errors


def plan(
    wanted: list[Definition], current: dict[str, Definition], now_ms: int | None = None
) -> Plan:
    """The file is the whole set: names it lacks are removed. A new or changed
    expression gets a new version (the time of the apply, in ms: versions only grow,
    even for a name removed and defined again)."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    out = Plan()
    for d in wanted:
        old = current.get(d.name)
        if old is None:
            out.added.append(Definition(d.name, d.where, d.description, now))
        elif old.where != d.where:
            version = max(now, old.version + 1)
            out.changed.append(Definition(d.name, d.where, d.description, version))
        elif old.description != d.description:
            out.described.append(Definition(d.name, d.where, d.description, old.version))
        else:
            out.unchanged.append(old)
    names = {d.name for d in wanted}
    out.removed = sorted(n for n in current if n not in names)
    return out


def publish(settings: Settings, p: Plan, timeout_s: float = 15.0) -> None:
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers, "acks": "all"})
    failed: list[str] = []

    def report(err: object, msg: object) -> None:
        if err is not None:
            failed.append(str(err))

    for d in p.publish:
        producer.produce(settings.topic_segments, definition_value(d), d.name.encode(),
                         on_delivery=report)  # fmt: skip
    for name in p.removed:
        producer.produce(settings.topic_segments, None, name.encode(), on_delivery=report)
    left = producer.flush(timeout_s)
    if left or failed:
        raise RuntimeError(
            f"{left} definitions undelivered; {failed[0] if failed else 'broker too slow'}"
        )


def sizes(client: redis.Redis, names: list[str]) -> dict[str, int]:
    return segment_sizes_sync(client, names)


def members(client: redis.Redis, name: str, page: int = 1000) -> Iterator[str]:
    yield from segment_members_sync(client, name, page)
